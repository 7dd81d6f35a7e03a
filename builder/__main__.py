"""`python -m builder` runs the pybuild command line."""

from builder.cli import main

main(prog_name="pybuild")
