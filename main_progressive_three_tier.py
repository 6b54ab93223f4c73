"""Progressive three-tier pruning (prune -> fine-tune, sparser each iteration): see engine/cli/progressive_cli.py."""
import sys

from engine.cli.progressive_cli import main

if __name__ == "__main__":
    sys.exit(main())
