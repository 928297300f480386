"""`python -m bertrep.figures` (`bertrep figures`): redraw every figure of an analysis run."""

import sys

from bertrep.figures.draw import main

sys.argv[0] = "python -m bertrep.figures"  # what --help and errors call it
main()
