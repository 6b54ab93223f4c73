"""Block + top-K as the Wanda hybrid fork's main_block_topk.py: the blocks block pruning removes keep their K
largest |W|.

    python main_block_topk.py --model M --sparsity_ratio 0.5 --topk_per_block 10 --save DIR
"""
import sys

from engine.cli.prune_cli import main

if __name__ == "__main__":
    sys.exit(main(defaults={"sparsity_type": "block_topk", "recipe": "original"}))
