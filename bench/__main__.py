from bench.run import cli

# The media scenario starts "spawn" process pools, which import the main module again.
if __name__ == "__main__":
    cli()
