r"""The three-tier script of the Wanda hybrid fork (github.com/Jiajun-Ji/wanda), with its flags and its rule:

    python main_block_three_tier.py --model M --top_dense_ratio 0.4 --mid_2_4_ratio 0.4 --bottom_topk_ratio 0.2 \
        --save DIR
    python main_block_three_tier.py --model M --sparsity_ratios 0.35 0.45 0.2 --save DIR
"""
import sys

from engine.cli.prune_cli import main

if __name__ == "__main__":
    sys.exit(main(defaults={"sparsity_type": "three_tier", "recipe": "original"}))
