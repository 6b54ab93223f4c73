"""Recover a saved pruned model by masked fine-tuning: see engine/cli/finetune_cli.py."""
import sys

from engine.cli.finetune_cli import main

if __name__ == "__main__":
    sys.exit(main())
