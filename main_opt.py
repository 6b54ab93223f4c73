"""Wanda's OPT script name: the same command line (OPT needs no separate code here)."""
import sys

from engine.cli.prune_cli import main

if __name__ == "__main__":
    sys.exit(main())
