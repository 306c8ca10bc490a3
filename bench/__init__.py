"""`make bench`: the performance harness of issue 4 (see bench/README section in the README)."""
