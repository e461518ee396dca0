"""`python -m lipcheck` runs the command line."""

from lipcheck.cli import main

main()
