"""Block rules of the Wanda hybrid fork (github.com/Jiajun-Ji/wanda, lib/prune.py), vectorized, mask for mask.

    original_three_tier_mask  its three-tier rule: dense / 2:4 / top-K blocks (main_block_three_tier.py)
    block_prune_mask          whole B x B blocks removed by importance (main_block.py)
    block_topk_mask           those blocks keep their K largest instead (main_block_topk.py)
    threshold_hybrid_mask     the top blocks take 2:4 where it keeps enough score, else stay dense; the rest
                              top-K (main_block_hybrid_2_4.py)

Its arithmetic, kept exactly (a user brings the fork's commands and expects the same masks):
- block importance is the mean score over the block padded with zeros to B x B;
- counts are int(n_blocks * ratio) in floating point; ties at a selection threshold select every tied block;
- three-tier ranks blocks with an unstable descending argsort (as the fork calls it);
- three-tier top-K keeps every weight tied with the K-th largest; block top-K and the hybrid keep exactly K;
  a block of at most K weights keeps all of them;
- three-tier edge blocks (sides not multiples of B) are clipped and flattened row by row, then cut into groups
  of 4 (a last group of fewer than 4 keeps min(2, size)); the hybrid takes 2:4 on the zero-padded block.
Tier ids as in engine/patterns/three_tier.py: 0 dense, 1 2:4, 2 top-K (a block removed whole is top-K with K = 0).
"""
from __future__ import annotations

import math

import torch

from engine.patterns.masks import from_blocks, to_blocks
from engine.patterns.three_tier import DENSE, TOPK, TWO_FOUR


def mean_block_importance(scores: torch.Tensor, block: int) -> torch.Tensor:
    """[out, in] -> [ceil(out/B), ceil(in/B)]: mean score of each block zero-padded to B x B, as the fork
    computes it."""
    out_f, in_f = scores.shape
    padded = torch.nn.functional.pad(scores.float(), (0, (-in_f) % block, 0, (-out_f) % block))
    return padded.unfold(1, block, block).unfold(0, block, block).mean(dim=(-2, -1))


def int_tier_counts(n_blocks: int, ratios) -> tuple[int, int, int]:
    """dense = int(n * r_d), 2:4 = int(n * r_24), top-K = the rest; ratios normalised as the fork does."""
    d, s, t = normalise_ratios(ratios)
    n_dense, n_24 = int(n_blocks * d), int(n_blocks * s)
    return n_dense, n_24, n_blocks - n_dense - n_24


def normalise_ratios(ratios) -> tuple[float, float, float]:
    """The fork's normalisation: ratios whose sum is off 1 by more than 1e-6 are each divided by the sum."""
    d, s, t = (float(r) for r in ratios)
    total = d + s + t
    if abs(total - 1.0) > 1e-6:
        return d / total, s / total, t / total
    return d, s, t


def original_tiers(importance: torch.Tensor, counts: tuple[int, int, int]) -> torch.Tensor:
    """Blocks sorted by importance (descending, the fork's unstable argsort): first dense, next 2:4, rest top-K."""
    n_dense, n_24, _ = counts
    order = torch.argsort(importance.flatten(), descending=True)
    tiers = torch.full((importance.numel(),), TOPK, dtype=torch.int8, device=importance.device)
    tiers[order[:n_dense]] = DENSE
    tiers[order[n_dense:n_dense + n_24]] = TWO_FOUR
    return tiers.view(importance.shape)


def original_three_tier_mask(select: torch.Tensor, tiers: torch.Tensor, block: int, keep: int) -> torch.Tensor:
    """Keep-mask [out, in] of the fork's three-tier rule for a tier grid. select: what weights are kept by (|W|)."""
    def rule(values: torch.Tensor, tier: torch.Tensor) -> torch.Tensor:
        kept = (tier == DENSE).unsqueeze(1).expand_as(values).clone()
        rows = (tier == TWO_FOUR).nonzero().flatten()
        if rows.numel():
            kept[rows] = _two_of_four_flat(values[rows])
        rows = (tier == TOPK).nonzero().flatten()
        if rows.numel():
            kept[rows] = _top_k_with_ties(values[rows], keep)
        return kept
    return _per_clipped_block(select.float(), tiers, block, rule)


def block_selection(importance: torch.Tensor, ratio: float) -> torch.Tensor:
    """Bool grid of the blocks the fork removes: the int(n * ratio) least important, and every block tied with
    the last of them (score <= threshold)."""
    flat = importance.flatten()
    n_prune = int(flat.numel() * ratio)
    if n_prune == 0:
        return torch.zeros_like(importance, dtype=torch.bool)
    if n_prune >= flat.numel():
        return torch.ones_like(importance, dtype=torch.bool)
    return importance <= torch.kthvalue(flat, n_prune).values


def block_prune_mask(importance: torch.Tensor, ratio: float, block: int, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """main_block.py: whole blocks removed. -> (keep-mask [out, in], tier grid: dense or removed (top-K, K=0))."""
    removed = block_selection(importance, ratio)
    tiers = torch.where(removed, TOPK, DENSE).to(torch.int8)
    return _expand(~removed, block, shape), tiers


def block_topk_mask(select: torch.Tensor, importance: torch.Tensor, ratio: float, block: int,
                    keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """main_block_topk.py: the blocks block pruning removes keep their `keep` largest `select` values (exactly K,
    ties as torch.topk breaks them; a block of at most K weights keeps all). -> (keep-mask, tier grid)."""
    tiers = torch.where(block_selection(importance, ratio), TOPK, DENSE).to(torch.int8)
    return _per_clipped_block(select.float(), tiers, block, _exact_top_k_rule(keep)), tiers


def threshold_hybrid_mask(scores: torch.Tensor, select: torch.Tensor, block: int, keep: int, top_ratio: float,
                          score_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """main_block_hybrid_2_4.py. The int(n * top_ratio) most important blocks (and blocks tied with the last) try
    2:4 by `select` on the zero-padded block: they take it when the kept score is >= score_threshold x the block's
    score, else stay dense. Every other block keeps its K largest `select` values. -> (keep-mask, tier grid)."""
    importance = mean_block_importance(scores, block)
    flat = importance.flatten()
    n_top = int(flat.numel() * top_ratio)
    top = importance >= (flat.topk(n_top).values[-1] if 0 < n_top < flat.numel() else -math.inf)

    padded_select = to_blocks(select.float(), block, fill=0.0).flatten(0, 1)   # [blocks, B*B], zero-padded
    padded_scores = to_blocks(scores.float(), block, fill=0.0).flatten(0, 1)
    groups = padded_select.view(-1, block * block // 4, 4)
    two_four = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, groups.topk(2, dim=2).indices, True)
    two_four = two_four.view(-1, block * block)
    metric = padded_scores.view(-1, block, block)
    kept_score = (metric * two_four.view(-1, block, block)).sum(dim=(-2, -1))
    accept = kept_score >= score_threshold * metric.sum(dim=(-2, -1))

    tier = torch.full_like(flat, TOPK, dtype=torch.int8)
    tier[top.flatten()] = DENSE
    tier[top.flatten() & accept] = TWO_FOUR
    tiers = tier.view(importance.shape)
    keep_mask = _per_clipped_block(select.float(), tiers, block, _exact_top_k_rule(keep))
    padded_two_four = from_blocks(two_four.view(*importance.shape, -1), block, select.shape)
    return torch.where(_expand(tiers == TWO_FOUR, block, select.shape), padded_two_four, keep_mask), tiers


# --- helpers: blocks as the fork cuts them ------------------------------------------------------------------

def _per_clipped_block(x: torch.Tensor, tiers: torch.Tensor, block: int, rule) -> torch.Tensor:
    """Apply rule(values [n, h*w], tier [n]) -> keep [n, h*w] to every block of x [out, in], each block clipped to
    the matrix and flattened row by row (the fork's `W[r0:r1, c0:c1].flatten()`). Blocks of one shape go
    together: the whole blocks, the right edge column, the bottom edge row, the corner (at most four calls)."""
    out_f, in_f = x.shape
    keep = torch.empty(x.shape, dtype=torch.bool, device=x.device)
    rows = [(0, out_f - out_f % block, block), (out_f - out_f % block, out_f, out_f % block)]
    cols = [(0, in_f - in_f % block, block), (in_f - in_f % block, in_f, in_f % block)]
    for r0, r1, h in rows:
        for c0, c1, w in cols:
            if r1 == r0 or c1 == c0:
                continue
            nr, nc = (r1 - r0) // h, (c1 - c0) // w
            values = x[r0:r1, c0:c1].reshape(nr, h, nc, w).permute(0, 2, 1, 3).reshape(nr * nc, h * w)
            tier = tiers[r0 // block: r0 // block + nr, c0 // block: c0 // block + nc].flatten()
            kept = rule(values, tier.to(x.device))
            keep[r0:r1, c0:c1] = kept.view(nr, nc, h, w).permute(0, 2, 1, 3).reshape(r1 - r0, c1 - c0)
    return keep


def _expand(grid: torch.Tensor, block: int, shape) -> torch.Tensor:
    """Block grid [R, C] -> per weight [out, in]."""
    return grid.repeat_interleave(block, 0).repeat_interleave(block, 1)[: shape[0], : shape[1]].contiguous()


def _exact_top_k_rule(k: int):
    """Per-block rule: top-K blocks keep exactly their k largest, every other block keeps all (see below)."""
    def rule(values: torch.Tensor, tier: torch.Tensor) -> torch.Tensor:
        kept = torch.ones_like(values, dtype=torch.bool)
        rows = (tier == TOPK).nonzero().flatten()
        if rows.numel():
            kept[rows] = _top_k_exact(values[rows], k)
        return kept
    return rule


def _two_of_four_flat(values: torch.Tensor) -> torch.Tensor:
    """[n, s] -> keep [n, s]: groups of 4 consecutive values keep their 2 largest; a last group of s % 4 values
    keeps min(2, s % 4)."""
    n, s = values.shape
    full = s - s % 4
    kept = torch.zeros_like(values, dtype=torch.bool)
    if full:
        groups = values[:, :full].view(n, -1, 4)
        kept[:, :full] = torch.zeros_like(groups, dtype=torch.bool).scatter_(
            2, groups.topk(2, dim=2).indices, True).view(n, full)
    if s % 4:
        tail = values[:, full:]
        kept[:, full:] = torch.zeros_like(tail, dtype=torch.bool).scatter_(
            1, tail.topk(min(2, s % 4), dim=1).indices, True)
    return kept


def _top_k_with_ties(values: torch.Tensor, k: int) -> torch.Tensor:
    """[n, s] -> keep [n, s]: every value >= the k-th largest (ties with it kept); all when s <= k."""
    if values.shape[1] <= k:
        return torch.ones_like(values, dtype=torch.bool)
    if k == 0:
        return torch.zeros_like(values, dtype=torch.bool)
    return values >= values.topk(k, dim=1).values[:, -1:]


def _top_k_exact(values: torch.Tensor, k: int) -> torch.Tensor:
    """[n, s] -> keep [n, s]: exactly the k largest (torch.topk's choice among ties); all when s <= k."""
    if values.shape[1] <= k:
        return torch.ones_like(values, dtype=torch.bool)
    return torch.zeros_like(values, dtype=torch.bool).scatter_(1, values.topk(k, dim=1).indices, True)
