"""Re-plan many: masks and tier grids of every matrix for any split, from a Calibration, with no forward
pass -> Replan."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import cache, partial
from typing import Callable

import torch

from engine.errors import UserError
from engine.explore.calibration import Calibration, calibration_identity, masks_only
from engine.io.baselines import model_fingerprint
from engine.io.record import encode_array, encode_tier_map
from engine.methods.registry import METHODS, ScoreInputs
from engine.patterns.masks import to_blocks
from engine.patterns.registry import PATTERNS, check_spec_fits
from engine.patterns.three_tier import (
    DENSE,
    TOPK,
    TWO_FOUR,
    block_importance,
    tier_census,
)
from engine.patterns.tier_plan import NO_PLAN, place_tiers, plan_jointly, plan_model_wide, ranking_input
from engine.spec import PruneSpec
from engine.walk.capture import Key
from engine.walk.discovery import find_decoder_layers, find_targets

# --- re-planning ------------------------------------------------------------------------------------------------

@dataclass
class MatrixMask:
    """One matrix of a re-plan. The maps and the counts come first; the keep-mask itself is built on first use
    (the estimate, the storage of patterns without blocks), so moving a ratio costs the tier assignment only."""
    shape: tuple[int, int]                   # [out, in]
    kept: int                                # weights the mask keeps
    tiers: torch.Tensor | None = None        # int8 [rows/B, cols/B] (block patterns)
    importance: torch.Tensor | None = None   # float [rows/B, cols/B]: what the blocks were ranked by
    block_kept: torch.Tensor | None = None   # [rows/B, cols/B] weights kept in each block (when known up front)
    build: Callable[[], torch.Tensor] | None = None
    made: torch.Tensor | None = None

    @property
    def keep(self) -> torch.Tensor:
        """bool [out, in], True = kept."""
        if self.made is None:
            self.made = self.build()
        return self.made

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


def matrix_mask(keep: torch.Tensor, tiers=None, importance=None) -> MatrixMask:
    """A MatrixMask of a mask already built."""
    return MatrixMask(tuple(keep.shape), int(torch.count_nonzero(keep)), tiers, importance, made=keep)


@dataclass
class Replan:
    """Masks (and tier grids) of every matrix for one spec, from a calibration. `spec` is the masks-only spec they
    obey; `requested` the spec asked for; `notes` what a masks-only plan replaced."""
    spec: PruneSpec
    requested: PruneSpec
    notes: list[str]
    fingerprint: str
    matrices: dict[Key, MatrixMask]
    seconds: float = 0.0

    @property
    def numel(self) -> int:
        return sum(m.numel for m in self.matrices.values())

    @property
    def sparsity(self) -> float:
        """Share of weights the masks prune."""
        kept = sum(m.kept for m in self.matrices.values())
        return 1 - kept / self.numel if self.numel else 0.0

    def tier_census(self) -> dict:
        total = {"dense": 0, "2:4": 0, "topk": 0}
        for m in self.matrices.values():
            if m.tiers is not None:
                for name, n in tier_census(m.tiers).items():
                    total[name] += n
        return total


def matrix_entries(plan: Replan) -> list[dict]:
    """The plan's matrices as a run record lists them (engine/io/record.py): layer, module, shape, sparsity and, for
    block patterns, the tier census, tier map and block importances, so the figures that draw a run draw a plan."""
    entries = []
    for (layer, name), m in plan.matrices.items():
        blocks = m.tiers is not None
        entries.append({"layer": layer, "module": name, "shape": list(m.shape), "sparsity": 1 - m.kept / m.numel,
                        "tiers": tier_census(m.tiers) if blocks else None,
                        "tier_map": encode_tier_map(m.tiers.numpy()) if blocks else None,
                        "block_importance": encode_array(m.importance.numpy())
                        if blocks and m.importance is not None else None})
    return entries


def check_fresh(calibration: Calibration, spec: PruneSpec) -> None:
    """Refuse a calibration made for another method (or damp, nsamples, seed ...) than `spec`, or whose model no
    longer holds the weights it was measured on (pruned, fine-tuned, reloaded)."""
    check_settings(calibration, spec)
    if model_fingerprint(calibration.model) != calibration.key["fingerprint"]:
        raise UserError("the model's weights changed since this calibration (pruned, fine-tuned or another model): "
                        "restore the dense weights or calibrate again")


def check_settings(calibration: Calibration, spec: PruneSpec) -> None:
    """Refuse a calibration made for another method (or damp, nsamples, seed ...) than `spec`."""
    identity = calibration_identity(spec)
    have = calibration.key["spec"]
    if identity.get("seqlen", 0) is None:  # the spec leaves seqlen to the model: the calibration's windows decide
        identity["seqlen"] = have.get("seqlen")
    if identity != have:
        differ = sorted(k for k in set(identity) | set(have) if identity.get(k) != have.get(k))
        raise UserError(f"this calibration was made for other settings ({', '.join(differ)}): calibrate again")


@torch.no_grad()
def replan(calibration: Calibration, spec: PruneSpec) -> Replan:
    """Masks of every matrix for `spec` from the calibration's statistics and the model's (dense) weights, through the
    planning stage and the pattern's mask builder (engine/patterns/tier_plan.py, engine/patterns/registry.py), as a
    from-scratch plan on the same statistics builds them. No forward pass."""
    t0 = time.perf_counter()
    twin, notes = masks_only(spec)
    check_fresh(calibration, spec)
    _, layers = find_decoder_layers(calibration.model)
    check_spec_fits(twin, layers)
    pattern = PATTERNS[twin.pattern]
    scope = pattern.scope(twin)

    def scores_of(key: Key, W: torch.Tensor) -> torch.Tensor:
        return METHODS[twin.method].score(W, _inputs(calibration, key, twin))

    targets = [((i, t.name), t) for i, layer in enumerate(layers) for t in find_targets(layer, twin.prune_router)]
    if _tiers_only(twin):
        out = _replan_tiers(calibration, twin, targets, scope, scores_of)
        return Replan(twin, spec, notes, calibration.key["fingerprint"], out, time.perf_counter() - t0)
    plans: dict = {}
    if scope == "model":  # every block of the model competes: rank them all first
        plans = plan_model_wide({k: ranking_input(scores_of(k, t.weight().float()), twin).cpu() for k, t in targets},
                                twin)
    out: dict[Key, MatrixMask] = {}
    for i in range(len(layers)):
        mine = [(k, t) for k, t in targets if k[0] == i]
        known = {}
        if scope == "layer":
            known = {k: scores_of(k, t.weight().float()) for k, t in mine}
            plans.update(plan_jointly({k: ranking_input(s, twin) for k, s in known.items()}, twin))
        for k, t in mine:
            W = t.weight().float()
            scores = partial(known.pop, k) if k in known else partial(scores_of, k, W)
            out[k] = _select(pattern, W, cache(scores), twin, plans.pop(k, NO_PLAN))
    return Replan(twin, spec, notes, calibration.key["fingerprint"], out, time.perf_counter() - t0)


@torch.no_grad()
def replan_kept(calibration: Calibration, spec: PruneSpec) -> Replan | None:
    """replan(calibration, spec) without reading the model, when the calibration already holds the per-block choices
    that the spec's masks follow from (a three-tier split that moves only the ratios or the scope of one planned
    before): the choices were made from the dense weights, so this may run while an estimate holds the model
    masked. None when the spec needs the weights: replan it with the model to itself."""
    t0 = time.perf_counter()
    twin, notes = masks_only(spec)
    check_settings(calibration, spec)
    if not _tiers_only(twin):
        return None
    choices = calibration.choices.get(_choices_key(twin))  # one read: a re-plan elsewhere may swap the set
    if choices is None:
        return None
    out = _place_from_choices(choices, twin, PATTERNS[twin.pattern].scope(twin))
    return Replan(twin, spec, notes, calibration.key["fingerprint"], out, time.perf_counter() - t0)


# The three-tier exact rule, fast: inside a block, which weights 2:4 keeps and which K weights top-K keeps do not
# depend on the ratios or the scope, nor do the blocks' importances and tier costs. They are made once per
# (block, K, within_block, assignment) and kept in the calibration (one byte per weight: 106 MB for
# SmolLM2); a re-plan then assigns tiers (engine/patterns/tier_plan.py, as the pattern does) and picks each
# block's choice. The same masks as the pattern's three_tier_mask (tests/test_explore.py checks every scope).

@dataclass
class BlockChoices:
    importance: torch.Tensor            # [R, C] summed score (what blocks are ranked by)
    ranking: torch.Tensor               # ranking_input: the importance, or the tier costs [3, R, C]
    code: torch.Tensor                  # uint8 [R*B, C*B], matrix layout (padded): which tiers keep each weight,
    shape: tuple[int, int]              # a bit per tier (KEEP_BIT): dense always, 2:4's choice, top-K's choice
    kept: torch.Tensor                  # [3, R, C] weights each tier would keep in each block


KEEP_BIT = torch.tensor([4, 1, 2], dtype=torch.uint8)  # tier id (dense, 2:4, top-K) -> its bit in BlockChoices.code


def _tiers_only(spec: PruneSpec) -> bool:
    """Whether the spec's masks follow from a tier grid and per-block choices made once (the exact three-tier
    rule with weights chosen by score or |W|): ratios are the pattern's only field that moves the grid alone."""
    return PATTERNS[spec.pattern].fixed_grid(spec)


def block_choices(W: torch.Tensor, scores: torch.Tensor, spec: PruneSpec) -> BlockChoices:
    """What a three-tier block would keep as 2:4 and as top-K, for every block of W [out, in] (three_tier_mask's
    rule: padding scores -inf, ties as torch.topk breaks them)."""
    B, K = spec.block, spec.keep
    select = scores if spec.within_block == "score" else W.abs()
    blocks = to_blocks(select.float(), B, fill=-math.inf)
    R, C, _ = blocks.shape
    groups = blocks.view(R, C, B, B // 4, 4)
    two_four = torch.zeros_like(groups, dtype=torch.uint8).scatter_(4, groups.topk(2, dim=4).indices, 1)
    top_k = torch.zeros_like(blocks, dtype=torch.uint8)
    if K:
        top_k.scatter_(2, blocks.topk(K, dim=2).indices, 1)
    two_four = two_four.view(R, C, B * B)
    code = (two_four * KEEP_BIT[TWO_FOUR] | top_k * KEEP_BIT[TOPK] | KEEP_BIT[DENSE])
    code = code.view(R, C, B, B).permute(0, 2, 1, 3).reshape(R * B, C * B)
    real = to_blocks(torch.ones_like(select, dtype=torch.uint8), B, fill=0)  # 0 on an edge block's padding
    kept = torch.stack([real.sum(-1), (two_four & real).sum(-1), (top_k & real).sum(-1)])  # in tier-id order
    return BlockChoices(block_importance(scores, B).cpu(), ranking_input(scores, spec).cpu(), code.cpu(),
                        tuple(W.shape), kept.cpu())


def _choices_key(spec: PruneSpec) -> tuple:
    return spec.block, spec.keep, spec.within_block, spec.assignment, spec.damp


def _replan_tiers(calibration: Calibration, spec: PruneSpec, targets, scope: str, scores_of) -> dict:
    memo_key = _choices_key(spec)
    choices = calibration.choices.get(memo_key)
    if choices is None:
        calibration.choices.clear()  # one set at a time: it holds a byte per weight
        choices = {}
        for k, t in targets:
            W = t.weight().float()
            choices[k] = block_choices(W, scores_of(k, W), spec)
        calibration.choices[memo_key] = choices  # stored whole: replan_kept reads the set without a lock
    return _place_from_choices(choices, spec, scope)


def _place_from_choices(choices: dict, spec: PruneSpec, scope: str) -> dict[Key, MatrixMask]:
    """Every matrix's tier grid placed (as the pattern places them) on its kept block choices, and its mask."""
    plans = {}
    if scope == "model":
        plans = plan_model_wide({k: c.ranking for k, c in choices.items()}, spec)
    elif scope == "layer":
        for i in sorted({k[0] for k in choices}):
            plans.update(plan_jointly({k: c.ranking for k, c in choices.items() if k[0] == i}, spec))
    out = {}
    for k, c in choices.items():
        tiers = place_tiers(plans.get(k, NO_PLAN), c.importance, c.ranking, spec)  # as the pattern places them
        block_kept = c.kept.gather(0, tiers.long().cpu().unsqueeze(0)).squeeze(0)
        out[k] = MatrixMask(c.shape, int(block_kept.sum()), tiers.cpu(), c.importance, block_kept,
                            partial(keep_from_choices, c, tiers, spec.block))
    return out


def keep_from_choices(c: BlockChoices, tiers: torch.Tensor, block: int) -> torch.Tensor:
    """Keep-mask [out, in] for a tier grid [R, C]: each weight's code ANDed with its block's tier bit (dense blocks
    keep all, the others their 2:4 or top-K choice). Two passes over one byte per weight, no block reshuffle."""
    R, C = tiers.shape
    bits = KEEP_BIT[tiers.long().cpu()]
    keep = (c.code.view(R, block, C, block) & bits[:, None, :, None]) != 0
    return keep.view(R * block, C * block)[:c.shape[0], :c.shape[1]].contiguous()


def _inputs(calibration: Calibration, key: Key, spec: PruneSpec) -> ScoreInputs:
    kept = calibration.matrices[key]
    return ScoreInputs(stats=kept, gradient=kept.gradient, damp=spec.damp)


def _select(pattern, W, scores, spec: PruneSpec, plan) -> MatrixMask:
    chosen = pattern.select(W, scores, spec, plan)
    if chosen.choose is not None:  # a method that chooses while updating: the mask its score picks, no update
        fixed = next(m.name for m in METHODS.values() if not m.chooses_while_updating)
        chosen = pattern.select(W, scores, spec.replace(method=fixed, group=spec.unstructured_group), plan)
    return matrix_mask(chosen.keep.cpu(), None if chosen.tiers is None else chosen.tiers.cpu(),
                       None if chosen.importance is None else chosen.importance.cpu())
