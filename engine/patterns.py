"""The sparsity patterns: one entry per pattern, owning its parameters, their validation, its nominal sparsity,
its label and its mask builder (and, where it has one, the chooser SparseGPT's update loop calls). Nothing else
in the engine, the CLI or the dashboard asks which pattern a spec has.

A mask builder `select(W, scores, spec, plan) -> Selection` sees the weight W [out, in], `scores()` (the method's
importance, computed on first call: a pattern that lets SparseGPT choose never pays for it) and the plan the
planning stage made for this matrix (engine/plan.py). It returns a fixed keep-mask or a chooser, never both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .block_patterns import (
    block_prune_mask,
    block_topk_mask,
    int_tier_counts,
    mean_block_importance,
    original_three_tier_mask,
    original_tiers,
    threshold_hybrid_mask,
)
from .errors import SpecError
from .masks import nm_mask, unstructured_mask
from .methods import METHODS
from .plan import MatrixPlan, place_tiers, ranking_input
from .sparsegpt import Choose, adaptive, n_of_m
from .three_tier import (
    block_importance,
    three_tier_chooser,
    three_tier_mask,
)
from .variant import wanda_variant_mask

MAX_GROUP = 65536       # N:M group width M and block side B: above any matrix width; checked per matrix too
# The choices of the block patterns' fields: {value: what it means} (CLI choices, dashboard titles).
GROUPS = {"row": "each output row (Wanda, SparseGPT)", "matrix": "the whole matrix (magnitude)"}
BLOCK_RULES = {"exact": "exact: summed score, exactly K kept, edge blocks padded",
               "original": "original: the arithmetic of the Wanda hybrid of Ji et al. (mean score, int() counts, "
                           "ties with the K-th kept)"}
TIER_SCOPES = {"matrix": "each matrix (original rule)", "layer": "each decoder layer", "model": "whole model"}
WITHIN_BLOCK = {"score": "method's score", "magnitude": "|W| (original rule)",
                "obs": "OBS saliency during the update (SparseGPT-style; needs the OBS update)"}
ASSIGNMENTS = {"importance": "importance: most important dense, next 2:4 (original rule)",
               "cost": "cost: by the squared score mass each tier would drop"}


@dataclass
class Selection:
    """What a pattern decided for one matrix: a fixed mask, or a chooser run inside the OBS update."""
    keep: torch.Tensor | None = None        # bool [out, in], True = keep
    choose: Choose | None = None
    tiers: torch.Tensor | None = None       # int8 [rows/B, cols/B] tier grid (block patterns)
    importance: torch.Tensor | None = None  # float [rows/B, cols/B]: what the blocks were ranked by


Scores = Callable[[], torch.Tensor]


@dataclass(frozen=True)
class Pattern:
    name: str
    title: str
    fields: tuple[str, ...]                                  # the PruneSpec fields it reads
    select: Callable[[torch.Tensor, Scores, object, MatrixPlan], Selection]
    nominal_sparsity: Callable[[object], float]              # before rounding of counts per matrix
    describe: Callable[[object], str]                        # the label after the method's name
    validate: Callable[[object], None] = lambda spec: None   # raises SpecError
    too_wide: Callable[[str, list, object], str | None] = lambda matrix, shape, spec: None  # why it cannot fit
    blocks: bool = False                                     # cut into B x B blocks with a tier grid per matrix
    scope: Callable[[object], str] = lambda spec: "matrix"   # where blocks compete for tiers (engine/plan.py)
    sparsity_type: Callable[[object], str] | None = None     # the Wanda-script name (default: the pattern's name)
    aliases: tuple[str, ...] = ()                            # other names --sparsity_type accepts


def check(ok: bool, message: str) -> None:
    if not ok:
        raise SpecError(message)


def finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def chooses_while_updating(spec) -> bool:
    return METHODS[spec.method].chooses_while_updating


# --- unstructured -------------------------------------------------------------------------------------------

def _unstructured_select(W, scores, spec, plan):
    if chooses_while_updating(spec):
        return Selection(choose=adaptive(spec.sparsity))
    if spec.use_variant:
        return Selection(keep=wanda_variant_mask(scores(), spec.sparsity)[0])
    return Selection(keep=unstructured_mask(scores(), spec.sparsity, spec.unstructured_group))


def _unstructured_validate(spec):
    check(finite(spec.sparsity) and 0.0 <= spec.sparsity < 1.0,
          f"sparsity ratio must lie in [0, 1), got {spec.sparsity}")
    check(spec.group is None or spec.group in GROUPS, f"group must be one of {', '.join(GROUPS)}, got {spec.group!r}")
    check(not spec.use_variant or not chooses_while_updating(spec),
          "the Wanda variant (use_variant) chooses a mask from scores; "
          f"{METHODS[spec.method].label} chooses its own, use wanda or magnitude")
    check(not spec.use_variant or spec.group != "matrix",
          "the Wanda variant (use_variant) prunes per row; it cannot be combined with group 'matrix'")


# --- N:M ----------------------------------------------------------------------------------------------------

def _nm_select(W, scores, spec, plan):
    if chooses_while_updating(spec):
        return Selection(choose=n_of_m(spec.n, spec.m))
    return Selection(keep=nm_mask(scores(), spec.n, spec.m))


def _nm_validate(spec):
    check(isinstance(spec.n, int) and isinstance(spec.m, int) and spec.m >= 1 and 0 <= spec.n < spec.m,
          f"N:M needs 0 <= N < M, got {str(spec.n)[:24]}:{str(spec.m)[:24]}")
    check(spec.m <= MAX_GROUP, f"M must be at most {MAX_GROUP} (and at most a matrix's width), got {spec.m}")


def _nm_too_wide(matrix, shape, spec):
    if shape[-1] < spec.m:
        return f"M={spec.m} is wider than {matrix}; choose M of at most {shape[-1]}"
    return None


# --- B x B blocks: three-tier and the fork's block modes ----------------------------------------------------

def _block_validate(spec):
    check(isinstance(spec.block, int) and 4 <= spec.block <= MAX_GROUP and spec.block % 4 == 0,
          f"block size must be a multiple of 4 (so 2:4 groups never straddle blocks) and in [4, {MAX_GROUP}], "
          f"got {spec.block}")
    check(isinstance(spec.keep, int) and 0 <= spec.keep <= spec.block * spec.block,
          f"K (weights kept per top-K block) must lie in [0, {spec.block * spec.block}] for "
          f"{spec.block}x{spec.block} blocks, got {spec.keep}")
    check(spec.block_rule in BLOCK_RULES,
          f"block rule must be one of {', '.join(BLOCK_RULES)}, got {spec.block_rule!r}")


def _block_too_wide(matrix, shape, spec):
    if min(shape) < spec.block:
        return f"block size {spec.block} is larger than {matrix}; choose a block size of at most {min(shape)}"
    return None


def _within_score_or_magnitude(spec):
    check(spec.within_block in ("score", "magnitude"),
          f"{spec.pattern} keeps weights inside blocks by score or magnitude (|W|), not {spec.within_block!r}")


def _block_share_validate(spec):
    check(finite(spec.sparsity) and 0.0 <= spec.sparsity <= 1.0,
          f"share of blocks pruned (sparsity ratio) must lie in [0, 1], got {spec.sparsity}")


def _top_k_share(spec) -> float:
    return 1 - spec.keep / spec.block ** 2


def _inside(W, scores, spec):
    """What weights inside a block are chosen by: the method's score, or |W| (the original rule)."""
    return scores() if spec.within_block == "score" else W.abs()


def _three_tier_select(W, scores, spec, plan):
    if spec.block_rule == "original":  # the fork's three-tier arithmetic, per matrix
        importance = mean_block_importance(scores(), spec.block)
        tiers = original_tiers(importance, int_tier_counts(importance.numel(), spec.ratios))
        return Selection(keep=original_three_tier_mask(_inside(W, scores, spec), tiers, spec.block, spec.keep),
                         tiers=tiers, importance=importance)
    importance = block_importance(scores(), spec.block)
    ranking = importance if spec.assignment == "importance" else ranking_input(scores(), spec)
    tiers = place_tiers(plan, importance, ranking, spec)
    if spec.within_block == "obs":  # chosen inside the blocks while the weights are updated, as SparseGPT's N:M
        return Selection(choose=three_tier_chooser(tiers, spec.block, spec.keep), tiers=tiers, importance=importance)
    return Selection(keep=three_tier_mask(_inside(W, scores, spec), tiers, spec.block, spec.keep), tiers=tiers,
                     importance=importance)


def _three_tier_validate(spec):
    r = spec.ratios
    check(len(r) == 3, f"three-tier needs three ratios (dense, 2:4, top-K), got {len(r)}")
    check(all(finite(x) for x in r), f"tier ratios must be numbers, got {r}")
    check(all(x >= 0 for x in r), f"tier ratios must be non-negative, got {r}")
    check(abs(sum(r) - 1.0) <= 1e-6, f"tier ratios must sum to 1, got {' + '.join(f'{x:g}' for x in r)} = {sum(r):g}")
    check(spec.tier_scope in TIER_SCOPES,
          f"tier scope must be one of {', '.join(TIER_SCOPES)}, got {spec.tier_scope!r}")
    check(spec.within_block in WITHIN_BLOCK, f"within-block choice must be one of {', '.join(WITHIN_BLOCK)}")
    check(spec.within_block != "obs" or spec.updates_weights,
          "within-block choice 'obs' picks weights while the OBS update runs: turn on reconstruct (or use sparsegpt)")
    check(spec.assignment in ASSIGNMENTS,
          f"tier assignment must be one of {', '.join(ASSIGNMENTS)}, got {spec.assignment!r}")
    check(spec.block_rule == "exact" or (spec.tier_scope == "matrix" and spec.assignment == "importance"
                                         and spec.within_block != "obs"),
          "the original block rule ranks blocks per matrix by importance and keeps weights by score or |W|: "
          "use tier scope matrix, assignment importance, within-block score or magnitude (or block rule exact)")


def _three_tier_describe(spec):
    d, s, t = spec.ratios
    extra = "".join([", by cost" if spec.assignment == "cost" else "", ", +OBS" if spec.reconstruct else "",
                     ", kept by OBS saliency" if spec.within_block == "obs" else ""])
    rule = ", original rule" if spec.block_rule == "original" else ""
    return f"three-tier {d:g}/{s:g}/{t:g} K={spec.keep} ({spec.tier_scope}{extra}{rule})"


def _block_select(W, scores, spec, plan):
    importance = mean_block_importance(scores(), spec.block)
    keep, tiers = block_prune_mask(importance, spec.sparsity, spec.block, W.shape)
    return Selection(keep=keep, tiers=tiers, importance=importance)


def _block_topk_select(W, scores, spec, plan):
    importance = mean_block_importance(scores(), spec.block)
    keep, tiers = block_topk_mask(_inside(W, scores, spec), importance, spec.sparsity, spec.block, spec.keep)
    return Selection(keep=keep, tiers=tiers, importance=importance)


def _threshold_hybrid_select(W, scores, spec, plan):
    keep, tiers = threshold_hybrid_mask(scores(), _inside(W, scores, spec), spec.block, spec.keep,
                                        spec.top_blocks_ratio, spec.score_threshold)
    return Selection(keep=keep, tiers=tiers, importance=mean_block_importance(scores(), spec.block))


def _threshold_hybrid_validate(spec):
    check(finite(spec.top_blocks_ratio) and 0.0 <= spec.top_blocks_ratio <= 1.0,
          f"top blocks ratio must lie in [0, 1], got {spec.top_blocks_ratio}")
    check(finite(spec.score_threshold), f"score threshold must be a number, got {spec.score_threshold}")


def _all(*checks):
    def validate(spec):
        for c in checks:
            c(spec)
    return validate


BLOCK_FIELDS = ("block", "keep", "within_block", "block_rule")
PATTERNS: dict[str, Pattern] = {p.name: p for p in (
    Pattern("three_tier", "Three-tier blocks", BLOCK_FIELDS + ("ratios", "tier_scope", "assignment"),
            _three_tier_select, lambda s: s.ratios[1] / 2 + s.ratios[2] * _top_k_share(s), _three_tier_describe,
            _all(_block_validate, _three_tier_validate), _block_too_wide, blocks=True, scope=lambda s: s.tier_scope,
            aliases=("threetier", "hybrid")),
    Pattern("unstructured", "Unstructured", ("sparsity", "group", "use_variant"), _unstructured_select,
            lambda s: s.sparsity, lambda s: f"unstructured {s.sparsity:g}" + (" (variant)" if s.use_variant else ""),
            _unstructured_validate),
    Pattern("nm", "N:M", ("n", "m"), _nm_select, lambda s: 1 - s.n / s.m, lambda s: f"{s.n}:{s.m}", _nm_validate,
            _nm_too_wide, sparsity_type=lambda s: f"{s.n}:{s.m}"),
    Pattern("block", "Whole blocks removed", BLOCK_FIELDS + ("sparsity",), _block_select, lambda s: s.sparsity,
            lambda s: f"block {s.sparsity:g} of {s.block}x{s.block} blocks",
            _all(_block_validate, _block_share_validate), _block_too_wide, blocks=True),
    Pattern("block_topk", "Blocks removed, top-K kept", BLOCK_FIELDS + ("sparsity",), _block_topk_select,
            lambda s: s.sparsity * _top_k_share(s), lambda s: f"block + top-K {s.sparsity:g} of blocks, K={s.keep}",
            _all(_block_validate, _block_share_validate, _within_score_or_magnitude), _block_too_wide, blocks=True),
    Pattern("threshold_hybrid", "Threshold hybrid (dense / 2:4 by score kept, rest top-K)",
            BLOCK_FIELDS + ("top_blocks_ratio", "score_threshold"), _threshold_hybrid_select,
            # its top-K blocks only: how many top blocks take 2:4 depends on the data
            lambda s: (1 - s.top_blocks_ratio) * _top_k_share(s),
            lambda s: f"threshold hybrid top {s.top_blocks_ratio:g}, threshold {s.score_threshold:g}, K={s.keep}",
            _all(_block_validate, _threshold_hybrid_validate, _within_score_or_magnitude), _block_too_wide,
            blocks=True, sparsity_type=lambda s: "hybrid_2_4", aliases=("hybrid_2_4", "threshold_hybrid")),
)}
