"""`python -m pipeline <command> [ARGS]`: see pipeline/cli.py."""

from pipeline.cli import main

main()
