"""One module per CLI command; each defines `command` (a click.Command). ggufkit.cli discovers them."""
