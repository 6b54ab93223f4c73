"""Calibrate once, re-plan many: what the tier decision needs, measured once on the dense model, then masks for any
split in well under a second and a quick perplexity estimate of them.

    calibrate(model, spec, windows)      one forward pass over the dense model (plus the gradient pass for methods
                                         that read the loss) -> Calibration: vectors per matrix, not scores
    replan(calibration, spec)            masks and tier grids of every matrix for any ratios, K, block size, tier
                                         scope or assignment, from the cache: no forward pass -> Replan
    estimate(model, replan, eval_ids)    apply the masks, evaluate a few windows (running perplexity +- spread
                                         streamed), put the dense weights back bit for bit -> Estimate
    sweep(...)                           one calibration, then re-plan + estimate per split -> one record each
    storage_estimate(replan)             bytes of the pruned weights in a sparse format (formula below)

Masks only: the OBS update is per matrix and expensive, so a re-plan never runs it. A spec that asks for it (a
method that chooses while updating, `reconstruct`, within_block "obs") is planned as its masks-only twin, and the
Replan's `notes` say what was replaced. Statistics are those of the dense model (every layer sees dense inputs),
as the model-wide ranking reads them; the exact walk re-measures each layer after the layers upstream are pruned,
which is the gap bench/explore.py publishes.

What the cache keeps per matrix W [out, in] (float32), by the method's `needs` (engine/methods.py):

    activations    ||X_j||, the input norms                [in]
    hessian        diag((H + damp)^-1), the OBS saliency's [in]  (the Hessian itself is dropped at once)
    gradient_rows  sum_j F_ij, the Fisher row sums          [out]
    gradients      the Fisher diagonal F                   [out, in]  (fisher only: a full float32 tensor)

The scores are recomputed from these and the weights, which stay in the model, dense: for LLaMA-7B (32 layers x 7
matrices, 6.5e9 weights) the vectors take about 4.6 MB (wanda, ria), 9 MB (sparsegpt), 10 MB (fisher_wanda);
fisher keeps F, 26 GB, as much as a float32 copy of the weights (the walk holds it too). A Replan holds one bool
per weight (6.5 GB at 7B, 106 MB for SmolLM2-135M) plus the tier grids (one int8 per 16x16 block).
"""
from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Callable

import torch
from torch import nn

from .baselines import model_fingerprint
from .discovery import find_decoder_layers, find_targets
from .errors import Cancelled, UserError
from .masks import to_blocks
from .methods import METHODS, ScoreInputs
from .patterns import PATTERNS, check_spec_fits
from .perplexity import window_losses
from .plan import NO_PLAN, place_tiers, plan_jointly, plan_model_wide, ranking_input
from .record import encode_array, encode_tier_map
from .sensitivity import fisher_diagonal
from .spec import PruneSpec
from .three_tier import (
    DENSE,
    TOPK,
    TWO_FOUR,
    block_importance,
    tier_census,
)
from .walk import StatsHooks, capture_layer_inputs, run_layer

CALIBRATION_VERSION = 1      # bump when what a calibration keeps or how it is measured changes
DEFAULT_ESTIMATE_WINDOWS = 6  # evaluation windows of a quick estimate: a few seconds for SmolLM2 on 2 CPU cores
Key = tuple[int, str]        # (decoder layer index, matrix name inside the layer), as the walk names matrices
Progress = Callable[[dict], None]


# --- the cache key --------------------------------------------------------------------------------------------

def masks_only(spec: PruneSpec) -> tuple[PruneSpec, list[str]]:
    """The spec a re-plan builds masks for, and what was replaced: no OBS update; weights inside blocks chosen by
    the method's score instead of the OBS saliency during the update."""
    notes = []
    if spec.updates_weights:
        notes.append("masks only: no OBS update of the kept weights")
    if spec.within_block == "obs":
        notes.append("weights inside 2:4 / top-K blocks chosen by the method's score, not by the OBS saliency "
                     "during the update")
    if METHODS[spec.method].chooses_while_updating and not spec.uses_blocks:
        notes.append(f"{spec.method} mask chosen from its saliency on the dense weights, not during the update")
    twin = spec.replace(reconstruct=False, within_block="score" if spec.within_block == "obs" else spec.within_block)
    return twin, notes


def calibration_identity(spec: PruneSpec) -> dict:
    """The part of a spec a calibration depends on: its masks-only canonical form (engine/spec.py) less the fields
    the pattern reads, which a re-plan may change. Derived, so a spec field added later is part of it."""
    twin, _ = masks_only(spec)
    d = twin.canonical()
    for name in PATTERNS[twin.pattern].fields + ("pattern",):
        d.pop(name, None)
    return d


def calibration_key(model: nn.Module, spec: PruneSpec, windows: torch.Tensor | None, data: str | None) -> dict:
    """What a calibration depends on: the model's content (model_fingerprint), the calibration windows themselves
    (a hash of their token ids: data source, tokenizer, nsamples, seqlen and seed all land there), the data
    source's name (for people), and the spec's calibration identity (method, damp, prune_router, ...)."""
    uses_data = METHODS[spec.method].uses_calibration
    if uses_data and windows is None:
        raise UserError(f"{spec.method} needs calibration data")
    identity = calibration_identity(spec if not uses_data else spec.replace(seqlen=int(windows.shape[1])))
    digest = hashlib.sha256(windows.contiguous().cpu().numpy().tobytes()).hexdigest()[:16] if uses_data else None
    return {"version": CALIBRATION_VERSION, "fingerprint": model_fingerprint(model), "windows": digest,
            "data": data if uses_data else None, "spec": identity}


# --- calibration ------------------------------------------------------------------------------------------------

@dataclass
class KeptInputs:
    """What one matrix's score needs besides its weights; stands in for LinearStats in ScoreInputs."""
    norm: torch.Tensor | None = None        # ||X_j|| [in]
    hinv: torch.Tensor | None = None        # diag((H + damp I)^-1) [in]
    damp: float | None = None
    gradient: torch.Tensor | None = None    # F [out, in] or sum_j F_ij [out]

    def input_norm(self) -> torch.Tensor:
        return self.norm

    def hinv_diag(self, damp: float = 0.01) -> torch.Tensor:
        if damp != self.damp:
            raise UserError(f"this calibration holds the OBS saliency for damp {self.damp}, not {damp}: "
                            "calibrate again")
        return self.hinv

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.norm, self.hinv, self.gradient) if t is not None)


@dataclass
class Calibration:
    """Calibration statistics of a dense model for one method: re-plan from it as often as you like. It refers to
    the model (the weights are read, never copied) and refuses to serve once the model's weights have changed."""
    key: dict
    model: nn.Module
    matrices: dict[Key, KeptInputs]
    seconds: float = 0.0
    # the three-tier exact rule's per-block data for one (block, K, within_block, assignment), made on the first
    # re-plan that asks for it: a change of ratios or scope then re-runs only the tier assignment (BlockChoices)
    choices: dict = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.key["spec"]["method"]

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.matrices.values())


@torch.no_grad()
def calibrate(model: nn.Module, spec: PruneSpec, windows: torch.Tensor | None, *, data: str | None = None,
              progress: Progress | None = None, cancel: threading.Event | None = None) -> Calibration:
    """One pass over the dense `model` on calibration windows [nsamples, seqlen] (None for magnitude): each decoder
    layer runs once on the dense layer's inputs with hooks on its matrices; methods that read the loss get their
    one backward pass per window first (engine/sensitivity.py). data: the source's name, for the key."""
    progress = progress or (lambda event: None)
    t0 = time.perf_counter()
    key = calibration_key(model, spec, windows, data)
    method = METHODS[spec.method]
    _, layers = find_decoder_layers(model)
    targets = {(i, t.name): t for i, layer in enumerate(layers) for t in find_targets(layer, spec.prune_router)}
    kept = {k: KeptInputs() for k in targets}
    use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = False
    try:
        if method.needs & {"gradients", "gradient_rows"}:
            grads = fisher_diagonal(model, targets, windows, rows_only="gradients" not in method.needs,
                                    progress=progress, cancel=cancel)
            for k, g in grads.items():
                kept[k].gradient = g
        if method.needs & {"activations", "hessian"}:
            hessian = "hessian" in method.needs
            progress({"stage": "calibration", "message": f"capturing inputs of {len(windows)} calibration windows"})
            inputs = capture_layer_inputs(model, layers, windows)
            for i, layer in enumerate(layers):
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"calibration stopped after {i} of {len(layers)} layers")
                progress({"stage": "calibration", "message": f"layer {i + 1}/{len(layers)}: input statistics"})
                hooks = StatsHooks(find_targets(layer, spec.prune_router), hessian=hessian)
                try:
                    inputs.hidden = run_layer(layer, inputs)  # one run: statistics, and the next layer's inputs
                finally:
                    hooks.remove()
                for name, stats in hooks.stats.items():
                    k = kept[(i, name)]
                    k.norm = stats.input_norm().cpu()
                    if hessian:
                        k.hinv, k.damp = stats.hinv_diag(spec.damp).cpu(), spec.damp
    finally:
        model.config.use_cache = use_cache
    return Calibration(key, model, kept, time.perf_counter() - t0)


class CalibrationCache:
    """The last few calibrations in memory, served only while everything they depend on is unchanged (the key
    holds the model's content fingerprint and a hash of the windows: a changed model or data is a miss)."""

    def __init__(self, size: int = 2):
        self.size = size
        self._entries: OrderedDict[str, Calibration] = OrderedDict()

    def get(self, model: nn.Module, spec: PruneSpec, windows: torch.Tensor | None, *, data: str | None = None,
            progress: Progress | None = None, cancel: threading.Event | None = None) -> Calibration:
        wanted = json.dumps(calibration_key(model, spec, windows, data), sort_keys=True)
        hit = self._entries.get(wanted)
        if hit is not None and hit.model is model:
            self._entries.move_to_end(wanted)
            return hit
        cal = calibrate(model, spec, windows, data=data, progress=progress, cancel=cancel)
        self._entries[wanted] = cal
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return cal

    def find(self, key: dict) -> Calibration | None:
        """The calibration of `key` (a Calibration's own key) while the cache still holds it, else None: callers
        that keep only the key never keep a dropped calibration alive."""
        return self._entries.get(json.dumps(key, sort_keys=True))


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
    """The plan's matrices as a run record lists them (engine/record.py): layer, module, shape, sparsity and, for
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
    identity = calibration_identity(spec)
    have = calibration.key["spec"]
    if identity.get("seqlen", 0) is None:  # the spec leaves seqlen to the model: the calibration's windows decide
        identity["seqlen"] = have.get("seqlen")
    if identity != have:
        differ = sorted(k for k in set(identity) | set(have) if identity.get(k) != have.get(k))
        raise UserError(f"this calibration was made for other settings ({', '.join(differ)}): calibrate again")
    if model_fingerprint(calibration.model) != calibration.key["fingerprint"]:
        raise UserError("the model's weights changed since this calibration (pruned, fine-tuned or another model): "
                        "restore the dense weights or calibrate again")


@torch.no_grad()
def replan(calibration: Calibration, spec: PruneSpec) -> Replan:
    """Masks of every matrix for `spec` from the calibration's statistics and the model's (dense) weights, through
    the planning stage and the pattern's mask builder (engine/plan.py, engine/patterns.py), as a from-scratch plan
    on the same statistics builds them. No forward pass."""
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


# The three-tier exact rule, fast: inside a block, which weights 2:4 keeps and which K weights top-K keeps do not
# depend on the ratios or the scope, nor do the blocks' importances and tier costs. They are made once per
# (block, K, within_block, assignment) and kept in the calibration (one byte per weight: 106 MB for
# SmolLM2); a re-plan then assigns tiers (engine/plan.py, as the pattern does) and picks each
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


def _replan_tiers(calibration: Calibration, spec: PruneSpec, targets, scope: str, scores_of) -> dict:
    memo_key = (spec.block, spec.keep, spec.within_block, spec.assignment, spec.damp)
    if memo_key not in calibration.choices:
        calibration.choices.clear()  # one set at a time: it holds a byte per weight
        made = {}
        for k, t in targets:
            W = t.weight().float()
            made[k] = block_choices(W, scores_of(k, W), spec)
        calibration.choices[memo_key] = made
    choices = calibration.choices[memo_key]
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


# --- storage ------------------------------------------------------------------------------------------------------

def storage_estimate(plan: Replan, value_bits: int = 16) -> dict:
    """Bytes of the pruned weights in a sparse format, a pure function of the masks and tier grids:

        block patterns   sum over blocks:  dense  n_kept * v
                                           2:4    n_kept * (v + 2)             (a 2-bit position in its group of 4)
                                           top-K  n_kept * (v + ceil(log2 B^2)) (a position inside the B x B block)
                                                  or n_kept * v + B^2 if smaller   (an in-block bitmask: K = 96)
        N:M              n_kept * (v + ceil(log2 M))                (a position inside its group of M)
        unstructured     n_kept * (v + ceil(log2 in)) + 32 * out   (column indices and row counts, CSR)
        either of these  or n_kept * v + out * in if smaller        (a bitmask: engine/compact.py picks the smaller)

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
        # the pattern's own format, or a bitmask where that is smaller (engine/compact.py picks the smaller)
        bits += min(PATTERNS[spec.pattern].storage_bits(spec, m.shape, m.kept, v), m.kept * v + m.numel)
    return {"bytes": bits / 8, "dense_bytes": dense / 8, "ratio": bits / dense if dense else 0.0,
            "bits_per_weight": bits / plan.numel if plan.numel else 0.0}


# --- the quick estimate ---------------------------------------------------------------------------------------

@dataclass
class Estimate:
    ppl: float | None           # exp(mean window loss) over the windows done (Wanda's formula)
    ppl_low: float | None       # exp(mean -/+ one standard error of the mean window loss)
    ppl_high: float | None
    windows: int                # windows evaluated
    total: int                  # windows asked for
    seconds: float
    status: str = "completed"   # completed | cancelled
    losses: list[float] = field(default_factory=list)


@torch.no_grad()
def apply_masks(model: nn.Module, plan: Replan) -> Callable[[], None]:
    """Zero the pruned weights of every matrix in place; returns the undo, which writes the removed values back
    bit for bit (it keeps only those values, not a copy of the model)."""
    if model_fingerprint(model) != plan.fingerprint:
        raise UserError("these masks were planned on other weights than the model holds now: re-plan first")
    _, layers = find_decoder_layers(model)
    removed = []
    try:
        for i, layer in enumerate(layers):
            for t in find_targets(layer, plan.spec.prune_router):
                W = t.weight()
                drop = ~plan.matrices[(i, t.name)].keep.to(W.device)
                removed.append((t, drop, W[drop].clone()))
                t.set_weight(W.masked_fill(drop, 0))
    except BaseException:
        _undo(removed)
        raise
    return lambda: _undo(removed)


@torch.no_grad()
def _undo(removed) -> None:
    for t, drop, values in reversed(removed):
        W = t.weight().clone()
        W[drop] = values
        t.set_weight(W)


@torch.no_grad()
def estimate(model: nn.Module, plan: Replan, eval_ids: torch.Tensor, seqlen: int, *,
             windows: int = DEFAULT_ESTIMATE_WINDOWS, progress: Progress | None = None,
             cancel: threading.Event | None = None) -> Estimate:
    """Perplexity of the model under the plan's masks on the first `windows` windows of eval_ids [1, T]
    (evaluate_windows). The dense weights are back, bit for bit, whenever it returns or raises."""
    t0 = time.perf_counter()
    _first_windows(eval_ids, seqlen, windows)  # refuse a too-short text before touching the weights
    undo = apply_masks(model, plan)
    try:
        est = evaluate_windows(model, eval_ids, seqlen, windows=windows, progress=progress, cancel=cancel)
    finally:
        undo()
    est.seconds = time.perf_counter() - t0
    return est


@torch.no_grad()
def evaluate_windows(model: nn.Module, eval_ids: torch.Tensor, seqlen: int, *, windows: int = DEFAULT_ESTIMATE_WINDOWS,
                     progress: Progress | None = None, cancel: threading.Event | None = None) -> Estimate:
    """Perplexity of the model as it is on the first `windows` windows of eval_ids [1, T] (the windows
    engine/perplexity.py evaluates first), streamed after every window as {"stage": "estimate", "done", "total",
    "ppl", "ppl_low", "ppl_high"}. A set `cancel` stops it between windows (status "cancelled")."""
    t0 = time.perf_counter()
    progress = progress or (lambda event: None)
    ids, total = _first_windows(eval_ids, seqlen, windows)
    device = model.get_input_embeddings().weight.device
    losses: list[float] = []
    status = "completed"
    was_training = model.training
    model.eval()
    try:
        for w in range(total):
            if cancel is not None and cancel.is_set():
                status = "cancelled"
                break
            inputs = ids[w * seqlen:(w + 1) * seqlen].unsqueeze(0).to(device)
            losses.append(float(window_losses(model(inputs, use_cache=False).logits, inputs)[0]))
            progress({"stage": "estimate", "done": w + 1, "total": total, **_running(losses)})
    finally:
        model.train(was_training)
    return Estimate(**_running(losses), windows=len(losses), total=total, seconds=time.perf_counter() - t0,
                    status=status, losses=losses)


def _first_windows(eval_ids: torch.Tensor, seqlen: int, windows: int) -> tuple[torch.Tensor, int]:
    ids = eval_ids.reshape(-1)
    total = min(windows, ids.numel() // seqlen)
    if total < 1:
        raise UserError(f"the evaluation text has {ids.numel()} tokens, fewer than one window of seqlen={seqlen}")
    return ids, total


@torch.no_grad()
def held_masks(model: nn.Module, spec: PruneSpec, seconds: float = 0.0) -> Replan:
    """The masks a pruned model holds (kept = W != 0) as a Replan of `spec` (a pattern without blocks: a three-tier
    run's tier grids are in its record), so that storage_estimate and the Pareto view read an exact run as they
    read a plan."""
    _, layers = find_decoder_layers(model)
    out = {(i, t.name): matrix_mask((t.weight() != 0).cpu())
           for i, layer in enumerate(layers) for t in find_targets(layer, spec.prune_router)}
    return Replan(spec, spec, [], model_fingerprint(model), out, seconds)


def _running(losses: list[float]) -> dict:
    if not losses:
        return {"ppl": None, "ppl_low": None, "ppl_high": None}
    mean = sum(losses) / len(losses)
    n = len(losses)
    se = math.sqrt(sum((x - mean) ** 2 for x in losses) / (n - 1) / n) if n > 1 else 0.0
    return {"ppl": math.exp(mean), "ppl_low": math.exp(mean - se), "ppl_high": math.exp(mean + se)}


# --- sweeps -------------------------------------------------------------------------------------------------------

def sweep_spec(base: PruneSpec, values: tuple[float, ...]) -> PruneSpec:
    """One sweep point of `base`: three numbers are the three-tier ratios (dense, 2:4, top-K); one number is the
    sparsity of any other pattern: the share of weights (unstructured) or of blocks (block, block_topk) pruned,
    and for N:M the sparsity 1 - N/M with M kept (0.25 of 2:4 -> 3:4)."""
    pattern = PATTERNS[base.pattern]
    values = tuple(float(x) for x in values)
    if not pattern.axis:
        raise UserError(f"{base.sparsity_type} has no sparsity to sweep; sweep "
                        + ", ".join(name for name, p in PATTERNS.items() if p.axis))
    if len(values) != len(pattern.axis):
        what = "one sparsity" if len(pattern.axis) == 1 else f"{len(pattern.axis)} numbers"
        raise UserError(f"a {base.sparsity_type} sweep point is {what} ({' '.join(pattern.axis)}), "
                        f"got {_show(values)}")
    return pattern.at(base, values, False)


def _show(values) -> str:
    return " ".join(f"{x:g}" for x in values) or "nothing"


def sweep(model: nn.Module, calibration: Calibration, specs: list[PruneSpec], eval_ids: torch.Tensor, seqlen: int, *,
          windows: int = DEFAULT_ESTIMATE_WINDOWS, value_bits: int = 16, progress: Progress | None = None,
          cancel: threading.Event | None = None) -> list[dict]:
    """Re-plan and estimate every spec on one calibration -> one record per spec: spec, label, sparsity (of the
    masks), nominal sparsity, the estimate, storage (storage_estimate), notes, timings. Stops early (the records so
    far) when `cancel` is set."""
    layers = find_decoder_layers(model)[1]
    for spec in specs:  # every point refused before the first estimate
        check_spec_fits(spec, layers)
    records = []
    for spec in specs:
        if cancel is not None and cancel.is_set():
            break
        plan = replan(calibration, spec)
        est = estimate(model, plan, eval_ids, seqlen, windows=windows, progress=progress, cancel=cancel)
        records.append({"spec": plan.spec.to_dict(), "label": plan.spec.label(), "sparsity": plan.sparsity,
                        "nominal_sparsity": plan.spec.nominal_sparsity(), "tiers": plan.tier_census(),
                        "ppl": est.ppl, "ppl_low": est.ppl_low, "ppl_high": est.ppl_high, "windows": est.windows,
                        "status": est.status, "storage": storage_estimate(plan, value_bits), "notes": plan.notes,
                        "replan_s": plan.seconds, "estimate_s": est.seconds})
    return records
