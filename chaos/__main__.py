from chaos.run import cli

cli()
