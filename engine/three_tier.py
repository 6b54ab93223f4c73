"""The hybrid three-tier pattern: B x B blocks ranked by importance, split into dense / 2:4 / top-K.

Tier ids everywhere: 0 dense, 1 2:4, 2 top-K. Edge blocks of matrices whose sides are not multiples of B
are partial: their importance sums only real weights, their 2:4 groups follow absolute column index
(col // 4, so a group never straddles a block when B % 4 == 0) and a top-K edge block keeps min(K, size).
"""
from __future__ import annotations

import torch

from .masks import expand_blocks, nm_mask, to_blocks, topk_block_mask
from .spec import tier_counts

DENSE, TWO_FOUR, TOPK = 0, 1, 2


def block_importance(scores: torch.Tensor, block: int) -> torch.Tensor:
    """[out, in] scores -> [ceil(out/B), ceil(in/B)] sum of scores per block (float32)."""
    return to_blocks(scores.float(), block, fill=0.0).sum(dim=2)


def assign_tiers(importance: torch.Tensor, counts: tuple[int, int, int]) -> torch.Tensor:
    """Most important `counts[0]` blocks dense, next `counts[1]` 2:4, the rest top-K. -> int8 grid."""
    n_dense, n_24, _ = counts
    order = torch.argsort(importance.flatten(), descending=True, stable=True)
    tiers = torch.full((importance.numel(),), TOPK, dtype=torch.int8, device=importance.device)
    tiers[order[:n_dense]] = DENSE
    tiers[order[n_dense:n_dense + n_24]] = TWO_FOUR
    return tiers.view(importance.shape)


def assign_tiers_jointly(importances: list[torch.Tensor], ratios) -> list[torch.Tensor]:
    """Rank the blocks of several matrices together (a decoder layer, or the model).

    Each matrix's importances are divided by their mean so that matrices of different activation scale
    compete fairly; the counts of the ratios hold over all blocks together, not per matrix.
    """
    normed = [imp.flatten().float() / imp.float().mean().clamp_min(1e-30) for imp in importances]
    flat = torch.cat([x.cpu() for x in normed])
    tiers = assign_tiers(flat, tier_counts(flat.numel(), ratios))
    return [t.view(imp.shape).to(imp.device) for t, imp in zip(torch.split(tiers, [x.numel() for x in normed]), importances)]


def normalised_importance(importance: torch.Tensor) -> torch.Tensor:
    return importance.float() / importance.float().mean().clamp_min(1e-30)


def three_tier_mask(select: torch.Tensor, tiers: torch.Tensor, block: int, keep: int) -> torch.Tensor:
    """Keep-mask for a tier grid: dense blocks keep all, 2:4 blocks keep 2 of every 4 columns per row,
    top-K blocks keep their `keep` highest `select` scores."""
    per_weight = expand_blocks(tiers, block, select.shape)
    mask = per_weight == DENSE
    mask |= (per_weight == TWO_FOUR) & nm_mask(select, 2, 4)
    mask |= (per_weight == TOPK) & topk_block_mask(select, block, keep)
    return mask


def tier_census(tiers: torch.Tensor) -> dict:
    counts = torch.bincount(tiers.flatten().long(), minlength=3).tolist()
    return {"dense": counts[0], "2:4": counts[1], "topk": counts[2]}
