"""`python -m bertrep STAGE ...`: the `bertrep` command (bertrep.cli)."""

from bertrep.cli import main

main()
