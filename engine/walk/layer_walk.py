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

from engine.errors import Cancelled, UserError
from engine.io.record import encode_array, encode_tier_map
from engine.methods.registry import METHODS
from engine.patterns.registry import PATTERNS, check_spec_fits
from engine.patterns.three_tier import tier_census, tier_weights
from engine.patterns.tier_plan import NO_PLAN, plan_scope, ranking_input
from engine.spec import PruneSpec
from engine.walk.capture import capture_layer_inputs, gradient_pass, targets_per_layer, walk_layers
from engine.walk.discovery import find_decoder_layers
from engine.walk.prune_matrix import matrix_scores, prune_matrix

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
    targets = targets_per_layer(layers, spec.prune_router)
    check_spec_fits(spec, layers)

    use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = False
    try:
        gradients = gradient_pass(model, targets, METHODS[spec.method].needs, windows, progress=progress,
                                  cancel=cancel)
        inputs = None
        if spec.needs_layer_stats:
            progress({"stage": "calibration", "message": f"capturing inputs of {len(windows)} calibration windows"})
            inputs = capture_layer_inputs(model, layers, windows)
            if offload_device is not None:
                inputs.hidden = [h.to(offload_device) for h in inputs.hidden]
        result.timings["capture_s"] = time.perf_counter() - t0

        plans = {}
        if PATTERNS[spec.pattern].scope(spec) == "model":
            plans = _model_wide_plans(layers, targets, spec, inputs, gradients, progress, cancel, offload_device)
        result.timings["plan_s"] = time.perf_counter() - t0 - result.timings["capture_s"]

        walk_start = time.perf_counter()

        def prune(i, layer, mine, stats):
            entries = _prune_layer(i, mine, spec, stats, plans, gradients)
            result.matrices.extend(entries)
            result.layers_done = i + 1
            elapsed = time.perf_counter() - walk_start
            progress({"stage": "prune", "layer": i, "name": f"{layers_path}.{i}", "n_layers": len(layers),
                      "elapsed_s": elapsed,
                      "eta_s": elapsed / (i + 1) * (len(layers) - i - 1), "matrices": entries})
        walk_layers(layers, targets, inputs, prune, hessian=spec.updates_weights, changes_layer=True, cancel=cancel,
                    offload_device=offload_device)
        result.status = "completed"
    except Cancelled as e:
        result.status, result.message = "cancelled", str(e)
    finally:
        model.config.use_cache = use_cache
        result.timings["prune_s"] = time.perf_counter() - t0
    return result


def _prune_layer(index: int, targets, spec: PruneSpec, stats: dict, plans: dict, gradients: dict) -> list[dict]:
    """Prune every target of one decoder layer from its input statistics: (tier scope "layer") one joint plan of
    its matrices first, then each matrix. Consumes its entries of `plans`, `gradients` and `stats`."""
    grads = {t.name: gradients.pop((index, t.name), None) for t in targets}
    scores = {}
    if PATTERNS[spec.pattern].scope(spec) == "layer":
        scores = {t.name: matrix_scores(t.weight(), stats.get(t.name), spec, grads[t.name]) for t in targets}
        layer_plans = plan_scope({t.name: ranking_input(scores[t.name], spec) for t in targets}, spec, "layer")
        plans.update({(index, name): plan for name, plan in layer_plans.items()})
    entries = []
    for t in targets:
        dense_zero = t.weight() == 0
        res = prune_matrix(t.weight(), stats.get(t.name), spec, scores=scores.pop(t.name, None),
                           plan=plans.pop((index, t.name), NO_PLAN), gradient=grads.pop(t.name))
        t.set_weight(res.W)
        entries.append(_entry(index, t, res, spec, dense_zero))
        stats.pop(t.name, None)  # free the Hessian as soon as its matrix is done
    return entries


def _model_wide_plans(layers, targets, spec: PruneSpec, inputs, gradients, progress, cancel, offload_device) -> dict:
    """Tier scope "model": one pass over the dense model scores every matrix, all its blocks are ranked together
    (engine/patterns/tier_plan.py), and the walk then starts again from the first layer's inputs."""
    needs = METHODS[spec.method].needs
    hidden = list(inputs.hidden) if inputs is not None else None
    rankings = {}

    def rank(i, layer, mine, stats):  # the scores' statistics only: a Hessian where the score is OBS's
        progress({"stage": "calibration", "message": f"scored layer {i + 1}/{len(layers)} to rank blocks model-wide"})
        for t in mine:
            scores = matrix_scores(t.weight(), stats.get(t.name), spec, gradients.get((i, t.name)))
            rankings[(i, t.name)] = ranking_input(scores, spec).cpu()
    walk_layers(layers, targets, inputs if needs & {"activations", "hessian"} else None, rank,
                hessian="hessian" in needs, changes_layer=False, cancel=cancel, offload_device=offload_device,
                stopped="stopped while ranking blocks across the model ({done} of {total} layers scored)")
    if inputs is not None:
        inputs.hidden = hidden
    return plan_scope(rankings, spec, "model")


def _entry(layer: int, target, res, spec: PruneSpec, dense_zero: torch.Tensor) -> dict:
    """The record of one pruned matrix. Sparsity is counted from the weights as stored (W == 0, as Wanda's
    check_sparsity counts), beside what the mask pruned (`pruned`). A tier or a mask bounds the weights that may be
    nonzero: weights that were zero before pruning (`dense_zeros`, e.g. a quantized checkpoint's) and are kept stay
    zeros the pattern did not make. Anything else (a pruned weight left nonzero, a kept weight the update zeroed) is
    written into `errors`, never hidden in a number. (Masks obey their tier maps by construction: tier_violations
    checks it in the tests and bench/speed/gpu_check.py, not here on every matrix.)"""
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
