r"""The threshold hybrid as the Wanda hybrid fork's main_block_hybrid_2_4.py: the top blocks take 2:4 where it keeps
enough of their score, else stay dense; the rest keep their K largest |W|.

    python main_block_hybrid_2_4.py --model M --top_blocks_ratio 0.9 --score_threshold 0.8 --topk_per_block 10 \
        --save DIR
"""
import sys

from engine.cli.prune_cli import main

if __name__ == "__main__":
    sys.exit(main(defaults={"sparsity_type": "hybrid_2_4", "recipe": "original"}))
