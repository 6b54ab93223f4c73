"""Block pruning as the Wanda hybrid fork's main_block.py: whole 16x16 blocks removed by Wanda block score.

    python main_block.py --model M --sparsity_ratio 0.5 --save DIR
"""
import sys

from engine.cli.prune_cli import main

if __name__ == "__main__":
    sys.exit(main(defaults={"sparsity_type": "block", "recipe": "original"}))
