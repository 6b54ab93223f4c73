"""Bytes of a plan's pruned weights in a sparse format (the formula engine/io/compact.py measures)."""

from __future__ import annotations

import math

import torch

from engine.explore.replanning import Replan
from engine.patterns.registry import PATTERNS
from engine.patterns.three_tier import (
    TOPK,
    TWO_FOUR,
)

# --- storage ------------------------------------------------------------------------------------------------------

def storage_estimate(plan: Replan, value_bits: int = 16) -> dict:
    """Bytes of the pruned weights in a sparse format, a pure function of the masks and tier grids:

        block patterns   sum over blocks:  dense  n_kept * v
                                           2:4    n_kept * (v + 2)             (a 2-bit position in its group of 4)
                                           top-K  n_kept * (v + ceil(log2 B^2)) (a position inside the B x B block)
                                                  or n_kept * v + B^2 if smaller   (an in-block bitmask: K = 96)
        N:M              n_kept * (v + ceil(log2 M))                (a position inside its group of M)
        unstructured     n_kept * (v + ceil(log2 in)) + 32 * out   (column indices and row counts, CSR)
        either of these  or n_kept * v + out * in if smaller        (a bitmask: engine/io/compact.py picks the smaller)

    v = value_bits (16: fp16/bf16). n_kept counts the mask's kept weights (exactly K per top-K block under the exact
    rule). Returns {"bytes", "dense_bytes" (every weight at v bits), "ratio", "bits_per_weight"}."""
    spec, v = plan.spec, value_bits
    bits = dense = 0
    for m in plan.matrices.values():
        out_f, in_f = m.shape
        dense += m.numel * v
        if m.tiers is not None:
            B = spec.block
            per_block = m.block_kept
            if per_block is None:
                kept = torch.nn.functional.pad(m.keep.float(), (0, (-in_f) % B, 0, (-out_f) % B))
                per_block = kept.view(kept.shape[0] // B, B, kept.shape[1] // B, B).sum(dim=(1, 3))
            extra = torch.zeros_like(per_block)
            extra[m.tiers == TWO_FOUR] = 2
            extra[m.tiers == TOPK] = math.ceil(math.log2(B * B))
            index = torch.minimum(per_block * extra, torch.where(m.tiers == TOPK, B * B, per_block * extra))
            bits += int((per_block * v + index).sum())
            continue
        # the pattern's own format, or a bitmask where that is smaller (engine/io/compact.py picks the smaller)
        bits += min(PATTERNS[spec.pattern].storage_bits(spec, m.shape, m.kept, v), m.kept * v + m.numel)
    return {"bytes": bits / 8, "dense_bytes": dense / 8, "ratio": bits / dense if dense else 0.0,
            "bits_per_weight": bits / plan.numel if plan.numel else 0.0}
