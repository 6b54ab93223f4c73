"""The layer-by-layer walk (Wanda / SparseGPT): capture the first layer's inputs, then for each decoder layer
collect statistics, prune every target matrix, and re-run the pruned layer to make the next layer's inputs.

Progress goes to a callback per decoder layer; a cancel flag is checked between layers, so a stopped run leaves
layers [0, layers_done) pruned and the rest untouched.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .discovery import find_decoder_layers, find_targets, layer_device
from .errors import Cancelled, UserError
from .matrix import matrix_scores, prune_matrix
from .record import encode_array, encode_tier_map
from .scores import fisher_scores
from .sensitivity import fisher_diagonal
from .spec import PruneSpec
from .three_tier import (assign_jointly_by_cost, assign_tiers_jointly, block_importance, tier_census, tier_costs,
                         tier_weights)
from .walk import StatsHooks, capture_layer_inputs, run_layer

Progress = Callable[[dict], None]


@dataclass
class PruneResult:
    spec: PruneSpec
    n_layers: int
    layers_done: int = 0
    status: str = "running"            # completed | cancelled | failed
    message: str | None = None
    matrices: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    @property
    def zeros(self) -> int:
        return sum(m["zeros"] for m in self.matrices)

    @property
    def numel(self) -> int:
        return sum(m["numel"] for m in self.matrices)

    @property
    def sparsity(self) -> float:
        """Share of zeros in the pruned matrices, counted from the weights (W == 0)."""
        return self.zeros / self.numel if self.numel else 0.0

    @property
    def mask_sparsity(self) -> float:
        """Share of weights the masks pruned (what the pattern's counts give)."""
        return sum(m["pruned"] for m in self.matrices) / self.numel if self.numel else 0.0

    @property
    def errors(self) -> list[str]:
        return [f"layer {m['layer']} {m['module']}: {e}" for m in self.matrices for e in m.get("errors", ())]


@torch.no_grad()
def prune_model(model: nn.Module, spec: PruneSpec, windows: torch.Tensor | None, *, progress: Progress | None = None,
                cancel: threading.Event | None = None, offload_device: str | torch.device | None = None) -> PruneResult:
    """Prune `model` in place. windows: calibration token ids [nsamples, seqlen] (None for magnitude).
    offload_device: keep the model where it is (CPU) and move one decoder layer at a time there to compute."""
    progress = progress or (lambda event: None)
    layers_path, layers = find_decoder_layers(model)
    result = PruneResult(spec, len(layers))
    t0 = time.perf_counter()
    if spec.uses_calibration and windows is None:
        raise UserError(f"{spec.method} needs calibration data")
    if spec.uses_blocks or spec.pattern == "nm":
        _check_block_fits(layers, spec)

    use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = False
    try:
        # gradient methods: one backward pass per window first, on the dense model
        fixed = None  # fisher: {(layer, name): scores}, known before the walk
        sens = None   # fisher_wanda: {(layer, name): sum_j F_ij per output row}
        if spec.method == "fisher":
            fixed = _fisher_scores(model, layers, spec, windows, progress, cancel)
        elif spec.method == "fisher_wanda":
            sens = _fisher_rows(model, layers, spec, windows, progress, cancel)
        inputs = None
        if spec.needs_layer_stats:
            progress({"stage": "calibration", "message": f"capturing inputs of {len(windows)} calibration windows"})
            inputs = capture_layer_inputs(model, layers, windows)
            if offload_device is not None:
                inputs.hidden = [h.to(offload_device) for h in inputs.hidden]
        result.timings["capture_s"] = time.perf_counter() - t0

        budgets, grids = None, None
        if spec.pattern == "three_tier" and spec.tier_scope == "model":
            if fixed is not None:  # every block's cost is known: rank them all now, tiers fixed for the walk
                grids = _model_scope_grids(spec, fixed)
            else:
                ranked = _model_scope_ranking(layers, spec, inputs, sens, progress, cancel, offload_device)
                grids, budgets = (ranked, None) if spec.loss_units else (None, ranked)

        walk_start = time.perf_counter()
        for i, layer in enumerate(layers):
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"stopped after {i} of {len(layers)} layers")
            home = layer_device(layer)
            if offload_device is not None:
                layer.to(offload_device)
            try:
                entries = _prune_layer(i, layer, spec, inputs, budgets, fixed, grids, sens)
                if inputs is not None:
                    inputs.hidden = run_layer(layer, inputs)
            except torch.OutOfMemoryError as e:
                raise UserError(f"out of memory in decoder layer {i}: lower nsamples or seqlen, "
                                "or prune layer by layer from CPU (--offload)") from e
            finally:
                if offload_device is not None:
                    layer.to(home)
            result.matrices.extend(entries)
            result.layers_done = i + 1
            elapsed = time.perf_counter() - walk_start
            progress({"stage": "prune", "layer": i, "name": f"{layers_path}.{i}", "n_layers": len(layers),
                      "elapsed_s": elapsed,
                      "eta_s": elapsed / (i + 1) * (len(layers) - i - 1), "matrices": entries})
        result.status = "completed"
    except Cancelled as e:
        result.status, result.message = "cancelled", str(e)
    finally:
        model.config.use_cache = use_cache
        result.timings["prune_s"] = time.perf_counter() - t0
    return result


def _check_block_fits(layers, spec: PruneSpec) -> None:
    """Refuse, before any work, a block or an N:M group wider than a matrix (its masks would pad to that width)."""
    for target in find_targets(layers[0], spec.prune_router):
        if spec.pattern == "nm" and target.shape[-1] < spec.m:
            raise UserError(f"M={spec.m} is wider than matrix {target.name} {list(target.shape)}; "
                            f"choose M of at most {target.shape[-1]}")
        if spec.uses_blocks and min(target.shape) < spec.block:
            raise UserError(f"block size {spec.block} is larger than matrix {target.name} {list(target.shape)}; "
                            f"choose a block size of at most {min(target.shape)}")


def _prune_layer(index: int, layer: nn.Module, spec: PruneSpec, inputs, budgets, fixed=None, grids=None,
                 sens=None) -> list[dict]:
    targets = find_targets(layer, spec.prune_router)
    stats = _collect(layer, targets, spec, inputs)
    scores, tiers = {}, {}
    if fixed is not None:
        scores = {t.name: fixed.pop((index, t.name)).to(t.weight().device) for t in targets}
    elif spec.pattern == "three_tier" or sens is not None:
        scores = {t.name: matrix_scores(t.weight(), stats.get(t.name), spec,
                                           None if sens is None else sens.pop((index, t.name)))
                  for t in targets}
    if grids is not None:
        tiers = {t.name: grids.pop((index, t.name)) for t in targets}
    elif spec.pattern == "three_tier":
        if spec.tier_scope == "layer":
            grids = _assign_jointly([_ranking_input(scores[t.name], spec) for t in targets], spec)
            tiers = {t.name: g for t, g in zip(targets, grids)}
    entries = []
    for t in targets:
        budget = budgets.get((index, t.name)) if budgets else None
        dense_zero = t.weight() == 0
        res = prune_matrix(t.weight(), stats.get(t.name), spec, scores=scores.get(t.name),
                           tiers=tiers.get(t.name), tier_budget=budget)
        t.set_weight(res.W)
        entries.append(_entry(index, t, res, spec, dense_zero))
        stats.pop(t.name, None)  # free the Hessian as soon as its matrix is done
    return entries


def _collect(layer: nn.Module, targets, spec: PruneSpec, inputs, hessian: bool | None = None) -> dict:
    """Input statistics of every target; Hessians when weights will be updated (or `hessian` says so)."""
    if inputs is None:
        return {}
    hooks = StatsHooks(targets, hessian=spec.updates_weights if hessian is None else hessian)
    try:
        run_layer(layer, inputs)
    finally:
        hooks.remove()
    return hooks.stats


def _all_targets(layers, spec: PruneSpec) -> dict:
    """{(layer index, name): Target} of the whole model."""
    return {(i, t.name): t for i, layer in enumerate(layers) for t in find_targets(layer, spec.prune_router)}


def _fisher_rows(model, layers, spec: PruneSpec, windows, progress, cancel) -> dict:
    """fisher_wanda: sum_j F_ij per output row of every target (vectors only)."""
    return fisher_diagonal(model, _all_targets(layers, spec), windows, rows_only=True, progress=progress,
                           cancel=cancel)


def _fisher_scores(model, layers, spec: PruneSpec, windows, progress, cancel) -> dict:
    """fisher method: |W| * sqrt(F) of every target from one gradient pass over the calibration windows (CPU)."""
    targets = _all_targets(layers, spec)
    fisher = fisher_diagonal(model, targets, windows, progress=progress, cancel=cancel)
    return {k: fisher_scores(t.weight().detach().cpu(), fisher.pop(k)) for k, t in targets.items()}


def _model_scope_grids(spec: PruneSpec, fixed: dict) -> dict:
    """Tier grids of every matrix from one ranking of all the model's blocks (scores known before the walk)."""
    keys = list(fixed)
    grids = _assign_jointly([_ranking_input(fixed[k], spec) for k in keys], spec)
    return dict(zip(keys, grids))


def _model_scope_ranking(layers, spec: PruneSpec, inputs, sens, progress, cancel, offload_device) -> dict:
    """Rank blocks across the whole model: one dense pass scores every matrix and all blocks are ranked together.

    Scores in loss units (fisher_wanda) compare as they are, and the winning tier grids are kept as they are:
    {key: grid}. Scores in per-matrix units (magnitude, Wanda, OBS) are normalised per matrix, and each matrix
    only keeps the block counts it won, {key: (dense, 2:4, top-K)}: the pruning walk re-ranks inside each
    matrix with those counts, using its post-upstream-pruning scores."""
    hidden = list(inputs.hidden) if inputs is not None else None
    keys, importances = [], []
    for i, layer in enumerate(layers):
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"stopped while ranking blocks across the model ({i} of {len(layers)} layers scored)")
        progress({"stage": "calibration", "message": f"scoring layer {i + 1}/{len(layers)} to rank blocks model-wide"})
        home = layer_device(layer)
        if offload_device is not None:
            layer.to(offload_device)
        try:
            targets = find_targets(layer, spec.prune_router)
            stats = _collect(layer, targets, spec, inputs, hessian=spec.method == "sparsegpt")  # scores only
            for t in targets:
                scores = matrix_scores(t.weight(), stats.get(t.name), spec,
                                       None if sens is None else sens.get((i, t.name)))
                keys.append((i, t.name))
                importances.append(_ranking_input(scores, spec).cpu())
            if inputs is not None:
                inputs.hidden = run_layer(layer, inputs)
        finally:
            if offload_device is not None:
                layer.to(home)
    if inputs is not None:
        inputs.hidden = hidden  # the pruning walk starts again from the first layer's inputs
    grids = _assign_jointly(importances, spec)
    if spec.loss_units:
        return dict(zip(keys, grids))
    return {k: tuple(tier_census(g).values()) for k, g in zip(keys, grids)}


def _ranking_input(scores: torch.Tensor, spec: PruneSpec) -> torch.Tensor:
    """What blocks are ranked by: their summed score, or (assignment "cost") what each tier would lose."""
    if spec.assignment == "cost":
        return tier_costs(scores, spec.block, spec.keep)
    return block_importance(scores, spec.block)


def _assign_jointly(rankings: list[torch.Tensor], spec: PruneSpec) -> list[torch.Tensor]:
    """Tier grids for matrices ranked together (a layer, or the model), from their `_ranking_input`s."""
    assign = assign_jointly_by_cost if spec.assignment == "cost" else assign_tiers_jointly
    # fisher scores are in units of the model's loss: they compare across matrices as they are
    return assign(rankings, spec.ratios, normalise=not spec.loss_units)


def _entry(layer: int, target, res, spec: PruneSpec, dense_zero: torch.Tensor) -> dict:
    """The record of one pruned matrix. Sparsity is counted from the weights as stored (W == 0, as Wanda's
    check_sparsity counts), beside what the mask pruned (`pruned`). A tier or a mask bounds the weights that may be
    nonzero: weights that were zero before pruning (`dense_zeros`, e.g. a quantized checkpoint's) and are kept stay
    zeros the pattern did not make. Anything else (a pruned weight left nonzero, a kept weight the update zeroed) is
    written into `errors`, never hidden in a number. (Masks obey their tier maps by construction: tier_violations
    checks it in the tests and bench/gpu_check.py, not here on every matrix.)"""
    W, keep = target.weight(), res.keep
    count = torch.count_nonzero
    is_zero = (W == 0).to(keep.device)
    numel, zeros = keep.numel(), int(count(is_zero))
    pruned = numel - int(count(keep))
    kept_zeros = int(count(is_zero & keep))
    errors = []
    if (left := pruned - (zeros - kept_zeros)):
        errors.append(f"{left} pruned weights are not zero")
    dense_zero = dense_zero.to(keep.device)
    if spec.updates_weights and (zeroed := int(count(keep & (res.W == 0) & ~dense_zero))):
        errors.append(f"{zeroed} kept weights were zeroed by the update")
    entry = {"layer": layer, "module": target.name, "shape": list(keep.shape), "numel": numel, "zeros": zeros,
             "sparsity": zeros / numel, "pruned": pruned, "dense_zeros": int(count(dense_zero)),
             # kept values the model's dtype cannot hold (float16 underflow); none in float32
             "rounded_to_zero": 0 if W.dtype == res.W.dtype else int(count(keep & (res.W != 0) & is_zero)),
             "tiers": None, "tier_weights": None, "tier_map": None,
             "block_importance": None}
    if res.tiers is not None:
        entry["tiers"] = tier_census(res.tiers)
        entry["tier_weights"] = tier_weights(~is_zero.cpu(), res.tiers.cpu(), spec.block)  # zeros of the weights
        entry["tier_map"] = encode_tier_map(res.tiers.cpu().numpy())
        entry["block_importance"] = encode_array(res.importance.cpu().numpy())
    if errors:
        entry["errors"] = errors
    return entry
