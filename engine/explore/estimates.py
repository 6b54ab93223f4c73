"""The quick estimate: a plan's masks (or the recipe's update) applied, a few windows evaluated, the dense
weights put back bit for bit -> Estimate."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from engine.errors import Cancelled, UserError
from engine.eval.perplexity import window_loop
from engine.explore.calibration import DEFAULT_ESTIMATE_WINDOWS, Calibration, Progress
from engine.explore.replanning import Replan, check_fresh, matrix_mask
from engine.io.baselines import model_fingerprint
from engine.patterns.tier_plan import NO_PLAN, MatrixPlan
from engine.spec import PruneSpec
from engine.walk.capture import targets_per_layer
from engine.walk.discovery import find_decoder_layers, find_targets
from engine.walk.prune_matrix import prune_matrix

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
    kind: str = "masks only"    # masks only | with update (the recipe's OBS update applied: estimate(update_from=))
    note: str = ""              # why an update asked for was not applied
    update_s: float = 0.0       # seconds spent applying the masks (and the update) before the first window


UNDO_COPY_BYTES = 2 * 2**30  # matrices an undo restores by one copy each, up to these bytes (SmolLM2's 210: 0.4 GiB)


@torch.no_grad()
def apply_masks(model: nn.Module, plan: Replan, cancel: threading.Event | None = None,
                copy_bytes: int = UNDO_COPY_BYTES) -> Callable[[], None] | None:
    """Zero the pruned weights of every matrix in place; returns the undo, which writes the dense values back bit
    for bit. The undo keeps a copy of each matrix while the copies fit in `copy_bytes` (putting a copy back is a
    memory copy: 0.1-0.2 s for all of SmolLM2, against 0.6-0.9 s for scattering the removed values back), and only
    the removed values of the matrices beyond. A plan builds its keep-masks here, on first use: a set `cancel` is
    read before each matrix, and then the model is dense again and the result is None."""
    if model_fingerprint(model) != plan.fingerprint:
        raise UserError("these masks were planned on other weights than the model holds now: re-plan first")
    _, layers = find_decoder_layers(model)
    removed = []  # (target, None, the matrix) or (target, where pruned, the values removed there)
    try:
        for i, layer in enumerate(layers):
            for t in find_targets(layer, plan.spec.prune_router):
                if cancel is not None and cancel.is_set():
                    _undo(removed)
                    return None
                W = t.weight()
                drop = ~plan.matrices[(i, t.name)].keep.to(W.device)
                nbytes = W.numel() * W.element_size()
                if nbytes <= copy_bytes:
                    copy_bytes -= nbytes
                    removed.append((t, None, W.clone()))
                else:
                    removed.append((t, drop, W[drop].clone()))
                t.set_weight(W.masked_fill(drop, 0))
    except BaseException:
        _undo(removed)
        raise
    return lambda: _undo(removed)


@torch.no_grad()
def _undo(removed) -> None:
    for t, drop, values in reversed(removed):
        if drop is None:
            t.set_weight(values)
            continue
        W = t.weight().clone()
        W[drop] = values
        t.set_weight(W)


@torch.no_grad()
def estimate(model: nn.Module, plan: Replan, eval_ids: torch.Tensor, seqlen: int, *,
             windows: int = DEFAULT_ESTIMATE_WINDOWS, progress: Progress | None = None,
             cancel: threading.Event | None = None, update_from: Calibration | None = None) -> Estimate:
    """Perplexity of the model under the plan's masks on the first `windows` windows of eval_ids [1, T]
    (evaluate_windows). The dense weights are back, bit for bit, whenever it returns or raises.

    update_from: the calibration the plan came from. When the requested recipe updates weights (SparseGPT,
    reconstruct, the OBS choice inside blocks) and the calibration kept its Hessians (calibrate(hessians=True)),
    every matrix is pruned as the exact walk prunes it (engine/walk/prune_matrix.py, the OBS update included)
    from the Hessian of the dense model's inputs, on the plan's tier grids: `kind` "with update". Otherwise the
    masks alone ("masks only"), and `note` says why when an update was asked for."""
    t0 = time.perf_counter()
    _first_windows(eval_ids, seqlen, windows)  # refuse a too-short text before touching the weights
    kind, note = _estimate_kind(plan, update_from)
    if kind == "with update":
        undo = apply_update(model, update_from, plan, cancel)
    else:
        undo = apply_masks(model, plan, cancel)
    update_s = time.perf_counter() - t0
    try:
        if undo is None:  # stopped while the masks were built or the update ran: nothing changed
            est = Estimate(None, None, None, 0, min(windows, eval_ids.numel() // seqlen), 0.0, "cancelled")
        else:
            est = evaluate_windows(model, eval_ids, seqlen, windows=windows, cancel=cancel,
                                   progress=progress and (lambda event: progress({**event, "kind": kind})))
    finally:
        if undo is not None:
            undo()
    est.seconds, est.kind, est.note, est.update_s = time.perf_counter() - t0, kind, note, update_s
    return est


def _estimate_kind(plan: Replan, calibration: Calibration | None) -> tuple[str, str]:
    if calibration is None or not plan.requested.updates_weights:
        return "masks only", ""
    if calibration.hessians is None:
        return "masks only", (f"masks only: {calibration.hessians_note}" if calibration.hessians_note
                              else "masks only: this calibration kept no Hessians (calibrate with hessians=True)")
    check_fresh(calibration, plan.requested)
    return "with update", ""


@torch.no_grad()
def apply_update(model: nn.Module, calibration: Calibration, plan: Replan,
                 cancel: threading.Event | None = None) -> Callable[[], None] | None:
    """Prune every matrix in place as the requested recipe does (mask, or the choice during the OBS update, and
    the update of the kept weights) from the calibration's dense-input Hessians, on the plan's tier grids. Returns
    the undo (it keeps a copy of each matrix: the update moves kept weights too); None when `cancel` was set
    between two matrices (the model is dense again then)."""
    if model_fingerprint(model) != plan.fingerprint:
        raise UserError("these masks were planned on other weights than the model holds now: re-plan first")
    spec = plan.requested
    _, layers = find_decoder_layers(model)
    saved = []
    try:
        for i, mine in enumerate(targets_per_layer(layers, spec.prune_router)):
            for t in mine:
                if cancel is not None and cancel.is_set():
                    _restore(saved)
                    return None
                m, kept = plan.matrices[(i, t.name)], calibration.matrices[(i, t.name)]
                res = prune_matrix(t.weight(), calibration.hessians[(i, t.name)], spec, gradient=kept.gradient,
                                   plan=NO_PLAN if m.tiers is None else MatrixPlan(tiers=m.tiers))
                saved.append((t, t.weight().clone()))
                t.set_weight(res.W)
    except BaseException:
        _restore(saved)
        raise
    return lambda: _restore(saved)


@torch.no_grad()
def _restore(saved) -> None:
    for t, W in reversed(saved):
        t.set_weight(W)


@torch.no_grad()
def evaluate_windows(model: nn.Module, eval_ids: torch.Tensor, seqlen: int, *, windows: int = DEFAULT_ESTIMATE_WINDOWS,
                     progress: Progress | None = None, cancel: threading.Event | None = None) -> Estimate:
    """Perplexity of the model as it is on the first `windows` windows of eval_ids [1, T] (perplexity's window loop,
    engine/eval/perplexity.py), streamed after every window as {"stage": "estimate", "done", "total", "ppl", "ppl_low",
    "ppl_high"}. A set `cancel` stops it between windows or inside one (status "cancelled", the windows done)."""
    t0 = time.perf_counter()
    progress = progress or (lambda event: None)
    ids, total = _first_windows(eval_ids, seqlen, windows)
    losses: list[float] = []

    def add(done, window_loss):
        losses.append(float(window_loss[0]))
        progress({"stage": "estimate", "done": done, "total": total, **_running(losses)})
    status = "completed"
    try:
        window_loop(model, ids[:total * seqlen].view(total, seqlen), add, cancel=cancel)
    except Cancelled:
        status = "cancelled"
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
