"""One module per `cadence` command group; `cadence.cli` gathers them."""
