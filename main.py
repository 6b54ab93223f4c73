"""Wanda-compatible entry point: `python main.py --model M --prune_method wanda --sparsity_ratio 0.5 ...`."""
import sys

from engine.cli.prune_cli import main

if __name__ == "__main__":
    sys.exit(main())
