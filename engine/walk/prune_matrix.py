"""One matrix: scores -> mask (or a chooser) -> (optional OBS update) -> pruned weight. Any method with any pattern:
the method's registry entry scores (engine/methods/registry.py), the pattern's entry decides
(engine/patterns/registry.py)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from engine.methods.registry import METHODS, ScoreInputs
from engine.methods.sparsegpt import sparsegpt_prune
from engine.patterns.registry import PATTERNS
from engine.patterns.tier_plan import NO_PLAN, MatrixPlan
from engine.spec import PruneSpec
from engine.walk.input_stats import LinearStats


@dataclass
class MatrixResult:
    W: torch.Tensor                         # pruned (and, with an OBS update, reconstructed) weight [out, in]
    keep: torch.Tensor                      # bool [out, in]
    tiers: torch.Tensor | None = None       # int8 [rows/B, cols/B] for block patterns
    importance: torch.Tensor | None = None  # float [rows/B, cols/B]: what the blocks were ranked by


def matrix_scores(W: torch.Tensor, stats: LinearStats | None, spec: PruneSpec,
                  gradient: torch.Tensor | None = None) -> torch.Tensor:
    """The method's importance of each weight [out, in] (float32). Gradient methods need `gradient`: the Fisher
    diagonal F [out, in] or its row sums [out], as the method's `needs` say (engine/walk/fisher.py)."""
    return METHODS[spec.method].score(W, ScoreInputs(stats, gradient, spec.damp))


def prune_matrix(W: torch.Tensor, stats: LinearStats | None, spec: PruneSpec, *, scores: torch.Tensor | None = None,
                 plan: MatrixPlan = NO_PLAN, gradient: torch.Tensor | None = None) -> MatrixResult:
    """Prune one matrix W [out, in]: `plan` is what the planning stage decided for it with other matrices;
    `scores` the method's scores when the caller has them already."""
    W = W.float()
    known = scores

    @cache
    def method_scores() -> torch.Tensor:
        return known if known is not None else matrix_scores(W, stats, spec, gradient)

    chosen = PATTERNS[spec.pattern].select(W, method_scores, spec, plan)
    if chosen.choose is not None:
        W_new, keep = sparsegpt_prune(W, stats.hessian(), choose=chosen.choose, blocksize=spec.obs_blocksize,
                                      damp=spec.damp)
    elif spec.updates_weights:
        W_new, keep = sparsegpt_prune(W, stats.hessian(), keep_mask=chosen.keep, blocksize=spec.obs_blocksize,
                                      damp=spec.damp)
    else:
        W_new, keep = W.masked_fill(~chosen.keep, 0), chosen.keep  # +0.0: a pruned weight is 0 bit for bit
    return MatrixResult(W_new, keep, chosen.tiers, chosen.importance)
