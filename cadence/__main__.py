"""`python -m cadence`: the `cadence` command, for an environment whose scripts folder is not on PATH."""

from cadence.cli import main

main()
