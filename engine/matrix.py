"""One matrix: scores -> mask -> (optional OBS update) -> pruned weight. Composes any method with any pattern."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .block_patterns import (block_prune_mask, block_topk_mask, int_tier_counts, mean_block_importance,
                             original_three_tier_mask, original_tiers, threshold_hybrid_mask)
from .masks import nm_mask, unstructured_mask
from .scores import SCORES, fisher_wanda_scores, obs_scores
from .sparsegpt import sparsegpt_prune
from .spec import PruneSpec, tier_counts
from .stats import LinearStats
from .three_tier import assign_tiers, assign_tiers_by_cost, block_importance, three_tier_mask, tier_costs
from .variant import wanda_variant_mask


@dataclass
class MatrixResult:
    W: torch.Tensor                         # pruned (and, with an OBS update, reconstructed) weight [out, in]
    keep: torch.Tensor                      # bool [out, in]
    tiers: torch.Tensor | None = None       # int8 [rows/B, cols/B] for three-tier
    importance: torch.Tensor | None = None  # float [rows/B, cols/B]: what the blocks were ranked by


def matrix_scores(W: torch.Tensor, stats: LinearStats | None, spec: PruneSpec,
                  fisher_rows: torch.Tensor | None = None) -> torch.Tensor:
    """The method's importance of each weight [out, in] (float32). fisher_wanda needs `fisher_rows`
    (sum_j F_ij per output row, engine/sensitivity.py)."""
    if spec.method == "sparsegpt":
        return obs_scores(W, stats, spec.damp)
    if spec.method == "fisher_wanda":
        return fisher_wanda_scores(W, stats, fisher_rows)
    if spec.method == "fisher":
        raise ValueError("fisher scores come from the whole model's gradients (engine/sensitivity.py), "
                         "not from one matrix: pass them in")
    return SCORES[spec.method](W, stats)


def prune_matrix(W: torch.Tensor, stats: LinearStats | None, spec: PruneSpec, *, scores: torch.Tensor | None = None,
                 tiers: torch.Tensor | None = None, tier_budget: tuple[int, int, int] | None = None) -> MatrixResult:
    """Prune one matrix W [out, in]. For three-tier, `tiers` (a grid decided jointly with other matrices) or
    `tier_budget` (block counts) override the per-matrix rule of the ratios."""
    W = W.float()
    if spec.method == "sparsegpt" and not spec.uses_blocks:
        # SparseGPT chooses its own mask column block by column block while it updates the weights.
        kw = {"sparsity": spec.sparsity} if spec.pattern == "unstructured" else \
             {"prune_n": spec.m - spec.n, "prune_m": spec.m}
        W_new, keep = sparsegpt_prune(W, stats.hessian(), blocksize=spec.obs_blocksize, damp=spec.damp, **kw)
        return MatrixResult(W_new, keep)

    if scores is None:
        scores = matrix_scores(W, stats, spec)
    importance = None
    if spec.pattern == "unstructured" and spec.use_variant:
        keep, _alpha = wanda_variant_mask(scores, spec.sparsity)
    elif spec.pattern == "unstructured":
        keep = unstructured_mask(scores, spec.sparsity, spec.unstructured_group)
    elif spec.pattern == "nm":
        keep = nm_mask(scores, spec.n, spec.m)
    elif spec.pattern != "three_tier":  # the fork's block modes
        select = scores if spec.within_block == "score" else W.abs()
        importance = mean_block_importance(scores, spec.block)
        if spec.pattern == "block":
            keep, tiers = block_prune_mask(importance, spec.sparsity, spec.block, W.shape)
        elif spec.pattern == "block_topk":
            keep, tiers = block_topk_mask(select, importance, spec.sparsity, spec.block, spec.keep)
        else:
            keep, tiers = threshold_hybrid_mask(scores, select, spec.block, spec.keep, spec.top_blocks_ratio,
                                                spec.score_threshold)
    elif spec.block_rule == "original":  # the fork's three-tier arithmetic, per matrix
        importance = mean_block_importance(scores, spec.block)
        tiers = original_tiers(importance, int_tier_counts(importance.numel(), spec.ratios))
        keep = original_three_tier_mask(scores if spec.within_block == "score" else W.abs(), tiers, spec.block,
                                         spec.keep)
    else:
        importance = block_importance(scores, spec.block)
        if tiers is None:
            budget = tier_budget or tier_counts(importance.numel(), spec.ratios)
            tiers = assign_tiers_by_cost(tier_costs(scores, spec.block, spec.keep), budget) \
                if spec.assignment == "cost" else assign_tiers(importance, budget)
        if spec.within_block == "obs":  # SparseGPT-style: chosen while the weights are updated
            W_new, keep = sparsegpt_prune(W, stats.hessian(), tiers=tiers, block=spec.block, keep=spec.keep,
                                          blocksize=spec.obs_blocksize, damp=spec.damp)
            return MatrixResult(W_new, keep, tiers, importance)
        select = scores if spec.within_block == "score" else W.abs()
        keep = three_tier_mask(select, tiers, spec.block, spec.keep)

    if spec.updates_weights:
        W_new, keep = sparsegpt_prune(W, stats.hessian(), keep_mask=keep, blocksize=spec.obs_blocksize, damp=spec.damp)
    else:
        W_new = W * keep
    return MatrixResult(W_new, keep, tiers, importance)
