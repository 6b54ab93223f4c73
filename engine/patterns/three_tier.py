"""The hybrid three-tier pattern: B x B blocks ranked by importance, split into dense / 2:4 / top-K.

Tier ids everywhere: 0 dense, 1 2:4, 2 top-K. Edge blocks of matrices whose sides are not multiples of B
are partial: their importance sums only real weights, their 2:4 groups follow absolute column index
(col // 4, so a group never straddles a block when B % 4 == 0) and a top-K edge block keeps min(K, size).
"""
from __future__ import annotations

import math

import torch

from engine.methods.sparsegpt import Choose, drop_lowest, obs_saliency
from engine.patterns.masks import from_blocks, keep_top_k, to_blocks

DENSE, TWO_FOUR, TOPK = 0, 1, 2


def tier_counts(n_blocks: int, ratios) -> tuple[int, int, int]:
    """Block counts of the exact rule: dense = floor(r_d*n), 2:4 = floor(r_24*n), top-K = the rest.
    (The original rule's int() counts: block_patterns.int_tier_counts.)"""
    n_dense = math.floor(ratios[0] * n_blocks + 1e-9)
    n_24 = math.floor(ratios[1] * n_blocks + 1e-9)
    n_24 = min(n_24, n_blocks - n_dense)
    return n_dense, n_24, n_blocks - n_dense - n_24


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


def assign_tiers_jointly(importances: list[torch.Tensor], ratios, normalise: bool = True) -> list[torch.Tensor]:
    """Rank the blocks of several matrices together (a decoder layer, or the model).

    With `normalise`, each matrix's importances are divided by their mean so that matrices of different
    activation scale compete fairly (scores in per-matrix units, e.g. Wanda's); without, they compare as they
    are (scores in units of the model's loss). The counts of the ratios hold over all blocks together.
    """
    normed = [imp.flatten().float() / (imp.float().mean().clamp_min(1e-30) if normalise else 1.0)
              for imp in importances]
    flat = torch.cat([x.cpu() for x in normed])
    tiers = assign_tiers(flat, tier_counts(flat.numel(), ratios))
    return [t.view(imp.shape).to(imp.device)
            for t, imp in zip(torch.split(tiers, [x.numel() for x in normed]), importances)]


def three_tier_mask(select: torch.Tensor, tiers: torch.Tensor, block: int, keep: int) -> torch.Tensor:
    """Keep-mask for a tier grid: dense blocks keep all, 2:4 blocks keep 2 of every 4 columns per row,
    top-K blocks keep their `keep` highest `select` scores.

    Works in block space ([blocks, B*B]) and touches each block once with its own rule: about twice as fast as
    building the 2:4 and top-K masks of the whole matrix and picking per block."""
    blocks = to_blocks(select.float(), block, fill=-math.inf)  # padding never wins over a real weight
    flat = blocks.view(-1, block * block)
    tier = tiers.flatten().to(flat.device)
    keep_mask = (tier == DENSE).unsqueeze(1).expand_as(flat).clone()
    rows = (tier == TWO_FOUR).nonzero().flatten()
    if rows.numel():
        keep_mask[rows] = keep_top_k(flat[rows].view(-1, block, block // 4, 4), 2).view(-1, block * block)
    rows = (tier == TOPK).nonzero().flatten()
    if rows.numel():  # the top-K tiles of topk_block_mask, on the top-K blocks only
        keep_mask[rows] = keep_top_k(flat[rows], keep)
    return from_blocks(keep_mask.view(blocks.shape), block, select.shape)


def tier_violations(W: torch.Tensor, tiers: torch.Tensor, block: int, keep: int) -> int:
    """How many 2:4 groups hold more than 2 nonzero entries plus how many top-K blocks hold more than `keep`, in
    W [out, in] (weights, or a bool keep-mask): 0 when W obeys its tier map."""
    out_f, in_f = W.shape
    nonzero = torch.nn.functional.pad((W != 0).float(), (0, (-in_f) % block, 0, (-out_f) % block))
    R, C = nonzero.shape[0] // block, nonzero.shape[1] // block
    crowded = (nonzero.view(R * block, C * block // 4, 4).sum(dim=2) > 2).float()  # 2:4 groups holding 3 or 4
    crowded_per_block = crowded.view(R, block, C, block // 4).sum(dim=(1, 3))
    per_block = nonzero.view(R, block, C, block).sum(dim=(1, 3))
    tier = tiers.to(nonzero.device)
    return int(crowded_per_block[tier == TWO_FOUR].sum()) + int((per_block[tier == TOPK] > keep).sum())


def tier_weights(keep: torch.Tensor, tiers: torch.Tensor, block: int) -> dict:
    """{tier name: {"numel", "zeros"}}: how many weights lie in each tier's blocks and how many of them are pruned."""
    grid = tiers.long().repeat_interleave(block, 0).repeat_interleave(block, 1)[: keep.shape[0], : keep.shape[1]]
    numel = torch.bincount(grid.flatten(), minlength=3).tolist()
    zeros = torch.bincount(grid[~keep], minlength=3).tolist()
    return {name: {"numel": numel[i], "zeros": zeros[i]} for i, name in enumerate(("dense", "2:4", "topk"))}


def tier_census(tiers: torch.Tensor) -> dict:
    counts = torch.bincount(tiers.flatten().long(), minlength=3).tolist()
    return {"dense": counts[0], "2:4": counts[1], "topk": counts[2]}


# --- assignment by cost: which blocks can afford each tier --------------------------------------------------

def tier_costs(scores: torch.Tensor, block: int, keep: int) -> torch.Tensor:
    """[3, R, C]: the squared score mass each block would lose as dense (0), 2:4, and top-K.

    A weight's score s = |w| * ||x|| (Wanda) is the size of its contribution to the layer output, so s^2 is the
    output error of dropping it (the OBS saliency for a diagonal Hessian)."""
    s2 = to_blocks(scores.float() ** 2, block, fill=0.0)  # [R, C, B*B]
    R, C, _ = s2.shape
    total = s2.sum(dim=2)
    groups = s2.view(R, C, block, block // 4, 4)
    kept_24 = groups.topk(2, dim=4).values.sum(dim=(2, 3, 4))
    kept_top = s2.topk(min(keep, block * block), dim=2).values.sum(dim=2) if keep else torch.zeros_like(total)
    return torch.stack([torch.zeros_like(total), total - kept_24, total - kept_top])


def assign_tiers_by_cost(costs: torch.Tensor, counts: tuple[int, int, int]) -> torch.Tensor:
    """Tier grid that keeps the lost score mass small under fixed block counts. costs [3, ...] from tier_costs.

    Two greedy orders are tried and the cheaper kept: (a) dense where 2:4 would cost most, then top-K where it
    costs least over 2:4 among the rest; (b) top-K first where it costs least over 2:4, then dense among the rest.
    Each preference is sorted once (ties by block index) and the second tier takes the first blocks of its order
    still free, so the counts hold exactly whatever the costs (inf, NaN).
    """
    c24, ctop = costs[1].flatten(), costs[2].flatten()
    n_dense, n_24, n_top = counts
    preference = {DENSE: torch.argsort(-c24, stable=True), TOPK: torch.argsort(ctop - c24, stable=True)}
    candidates = []
    for dense_first in (True, False):
        tiers = torch.full_like(c24, TWO_FOUR, dtype=torch.int8)
        free = torch.ones_like(c24, dtype=torch.bool)
        for tier in ((DENSE, TOPK) if dense_first else (TOPK, DENSE)):
            order = preference[tier]
            chosen = order[free[order]][:n_dense if tier == DENSE else n_top]
            tiers[chosen] = tier
            free[chosen] = False
        cost = c24[tiers == TWO_FOUR].sum() + ctop[tiers == TOPK].sum()
        candidates.append((float(cost), tiers))
    return min(candidates, key=lambda c: c[0])[1].view(costs.shape[1:])


def assign_jointly_by_cost(costs: list[torch.Tensor], ratios, normalise: bool = True) -> list[torch.Tensor]:
    """Cost-based assignment over several matrices. With `normalise` each matrix's costs are relative to its mean
    2:4 cost (per-matrix score units); without, costs compare as they are (loss units: the fisher method)."""
    normed = [c.flatten(1).float() / ((c[1] + 1e-30).mean().clamp_min(1e-30) if normalise else 1.0) for c in costs]
    flat = torch.cat([x.cpu() for x in normed], dim=1)
    tiers = assign_tiers_by_cost(flat, tier_counts(flat.shape[1], ratios))
    sizes = [x.shape[1] for x in normed]
    return [t.view(c.shape[1:]).to(c.device) for t, c in zip(torch.split(tiers, sizes), costs)]


# --- chosen during SparseGPT's update (within_block "obs") -------------------------------------------------

def three_tier_chooser(tiers: torch.Tensor, block: int, keep: int) -> Choose:
    """SparseGPT's choice inside a fixed tier grid [rows/B, cols/B]: weights chosen by the OBS saliency of the
    weights as updated so far, as SparseGPT chooses N:M. A top-K block keeps its `keep` most salient weights,
    chosen when the loop reaches its first column; a 2:4 block row keeps min(2, g) of each group of g <= 4 columns,
    chosen at the group's first column."""
    row_tier = None

    def choose(W1, d, live, i, col):
        nonlocal row_tier
        if col % 4:
            return None
        if row_tier is None:  # [rows, cols/B]: the tier of each matrix row in each block column
            row_tier = tiers.to(W1.device).repeat_interleave(block, dim=0)[:W1.shape[0]]
        tier = row_tier[:, col // block]
        g = min(4, W1.shape[1] - i)
        two_four = (drop_lowest(W1[:, i:i + g], d[i:i + g], live[i:i + g], max(g - 2, 0))
                    & (tier == TWO_FOUR).unsqueeze(1))
        if col % block:
            return two_four
        width = min(block, W1.shape[1] - i)
        chosen = _top_k_drop(W1[:, i:i + width], d[i:i + width], live[i:i + width], tier == TOPK, keep, block)
        chosen[:, :g] |= two_four
        return chosen
    choose.align = block
    return choose


def _top_k_drop(W1: torch.Tensor, d: torch.Tensor, live: torch.Tensor, rows_top: torch.Tensor, keep: int,
                block: int) -> torch.Tensor:
    """Bool [rows, width]: in the B columns W1 [rows, width <= B] of one block column, all but the `keep` weights
    of highest OBS saliency in every B x B block whose rows are top-K (rows_top [rows] bool)."""
    rows, width = W1.shape
    if not rows_top.any():
        return torch.zeros_like(W1, dtype=torch.bool)
    sal = obs_saliency(W1, d, live)
    pad_rows = -rows % block
    sal = torch.nn.functional.pad(sal, (0, block - width, 0, pad_rows), value=-1.0)  # padding never wins
    flat = sal.reshape(-1, block * block)  # one row per block (rows of B consecutive matrix rows x B columns)
    kept = torch.zeros_like(flat, dtype=torch.bool).scatter_(
        1, flat.topk(min(keep, block * block), dim=1).indices, True)
    return (~kept).reshape(-1, block)[:rows, :width] & rows_top.unsqueeze(1)
