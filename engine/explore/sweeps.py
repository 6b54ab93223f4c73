"""Sweeps: one calibration, then a re-plan and an estimate per split -> one record each."""

from __future__ import annotations

import threading

import torch
from torch import nn

from engine.errors import UserError
from engine.explore.calibration import DEFAULT_ESTIMATE_WINDOWS, Calibration, Progress
from engine.explore.estimates import estimate
from engine.explore.replanning import replan
from engine.explore.storage import storage_estimate
from engine.patterns.registry import PATTERNS, check_spec_fits
from engine.spec import PruneSpec
from engine.walk.discovery import find_decoder_layers

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
