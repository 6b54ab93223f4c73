"""The seed's three-tier script: `python main_block_three_tier.py --model M --sparsity_ratios 0.35 0.45 0.2 --save DIR`."""
import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main(defaults={"sparsity_type": "three_tier"}))
