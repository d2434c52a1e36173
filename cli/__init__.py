"""cli: the `flowctl` command line."""
