"""Calibrate once: what the tier decision needs, measured once on the dense model (the one walk,
engine/walk/capture.py), kept as vectors per matrix; its cache key; a small cache of calibrations."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch
from torch import nn

from engine.errors import UserError
from engine.io.baselines import model_fingerprint
from engine.methods.registry import METHODS
from engine.patterns.registry import PATTERNS
from engine.spec import PruneSpec
from engine.walk.capture import Key, capture_layer_inputs, gradient_pass, targets_per_layer, walk_layers
from engine.walk.discovery import find_decoder_layers
from engine.walk.input_stats import LinearStats

CALIBRATION_VERSION = 1      # bump when what a calibration keeps or how it is measured changes
DEFAULT_ESTIMATE_WINDOWS = 6  # evaluation windows of a quick estimate: a few seconds for SmolLM2 on 2 CPU cores
HESSIAN_BUDGET_BYTES = 4 * 2**30  # input Hessians an update-aware estimate may keep (SmolLM2: 0.5 GiB; 7B: 28 GiB)
Progress = Callable[[dict], None]


# --- the cache key --------------------------------------------------------------------------------------------

NO_UPDATE_NOTE = "masks only: no OBS update of the kept weights"


def masks_only(spec: PruneSpec) -> tuple[PruneSpec, list[str]]:
    """The spec a re-plan builds masks for, and what was replaced: no OBS update; weights inside blocks chosen by
    the method's score instead of the OBS saliency during the update."""
    notes = []
    if spec.updates_weights:
        notes.append(NO_UPDATE_NOTE)
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
    the model (the weights are read, never copied) and refuses to serve once the model's weights have changed (but
    for replan_kept, which reads the per-block choices made from the dense weights, not the model)."""
    key: dict
    model: nn.Module
    matrices: dict[Key, KeptInputs]
    seconds: float = 0.0
    windows: int = 0                          # calibration windows the statistics rest on
    hessians: dict | None = None              # {key: LinearStats with its Hessian}, kept for estimate_with_update
    hessians_note: str = ""                   # why none were kept, when they were asked for
    # the three-tier exact rule's per-block data for one (block, K, within_block, assignment), made on the first
    # re-plan that asks for it: a change of ratios or scope then re-runs only the tier assignment (BlockChoices)
    choices: dict = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.key["spec"]["method"]

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.matrices.values())

    @property
    def hessian_nbytes(self) -> int:
        """Bytes of the Hessians kept (each shared one counted once)."""
        unique = {id(st.XtX): st.XtX for st in (self.hessians or {}).values()}
        return sum(h.numel() * h.element_size() for h in unique.values())


@torch.no_grad()
def calibrate(model: nn.Module, spec: PruneSpec, windows: torch.Tensor | None, *, data: str | None = None,
              progress: Progress | None = None, cancel: threading.Event | None = None,
              hessians: bool = False, hessian_budget: int = HESSIAN_BUDGET_BYTES) -> Calibration:
    """One pass over the dense `model` on calibration windows [nsamples, seqlen] (None for magnitude): the walk the
    exact prune takes (engine/walk/capture.py), each decoder layer run once on the dense layer's inputs with hooks on
    its matrices; methods that read the loss get their one backward pass per window first. data: the source's name, for
    the key. hessians: also keep each matrix's input Hessian for the update-aware estimate (estimate_with_update),
    when the spec updates weights and they fit in `hessian_budget` bytes; `hessians_note` says why not otherwise."""
    progress = progress or (lambda event: None)
    t0 = time.perf_counter()
    key = calibration_key(model, spec, windows, data)
    needs = METHODS[spec.method].needs
    _, layers = find_decoder_layers(model)
    targets = targets_per_layer(layers, spec.prune_router)
    kept = {(i, t.name): KeptInputs() for i, mine in enumerate(targets) for t in mine}
    keep_h, why_not = _keeps_hessians(spec, targets, hessians, hessian_budget)
    held: dict[Key, LinearStats] | None = {} if keep_h else None
    use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = False
    try:
        for k, g in gradient_pass(model, targets, needs, windows, progress=progress, cancel=cancel).items():
            kept[k].gradient = g
        if needs & {"activations", "hessian"} or keep_h:
            progress({"stage": "calibration", "message": f"capturing inputs of {len(windows)} calibration windows"})

            def measure(i, layer, mine, stats):
                progress({"stage": "calibration", "message": f"layer {i + 1}/{len(layers)}: input statistics"})
                for name, st in stats.items():
                    k = kept[(i, name)]
                    k.norm = st.input_norm().cpu()
                    if "hessian" in needs:
                        k.hinv, k.damp = st.hinv_diag(spec.damp).cpu(), spec.damp
                if held is not None:
                    held.update({(i, name): st for name, st in _share_equal_hessians(stats).items()})
            walk_layers(layers, targets, capture_layer_inputs(model, layers, windows), measure,
                        hessian="hessian" in needs or keep_h, changes_layer=False, cancel=cancel,
                        stopped="calibration stopped after {done} of {total} layers")
    finally:
        model.config.use_cache = use_cache
    return Calibration(key, model, kept, time.perf_counter() - t0, windows=0 if windows is None else len(windows),
                       hessians=held, hessians_note=why_not)


FIRST_WINDOWS = 4  # calibration windows of the first maps: an eighth of 32 x 512, seconds on SmolLM2


def calibrate_progressively(model: nn.Module, spec: PruneSpec, windows: torch.Tensor | None, *,
                            first: int = FIRST_WINDOWS, data: str | None = None, progress: Progress | None = None,
                            cancel: threading.Event | None = None, hessians: bool = False,
                            cache: "CalibrationCache | None" = None):
    """First maps in seconds: yields a Calibration on the first `first` calibration windows (its `windows` says
    how many it rests on; no Hessians), then the one on all of them (from `cache` when it has it, and then alone).
    Each is a complete calibration: re-plan and estimate from either. The first costs `first / len(windows)` of
    the full one on top of it."""
    full = partial(cache.get if cache is not None else calibrate, model, spec, windows, data=data,
                   progress=progress, cancel=cancel, hessians=hessians)
    served = cache is not None and cache.peek(model, spec, windows, data=data, hessians=hessians) is not None
    if not first or windows is None or len(windows) <= first or served:
        yield full()
        return
    yield calibrate(model, spec, windows[:first], data=data, progress=progress, cancel=cancel)
    yield full()


def hessian_bytes(targets: list[list]) -> int:
    """Bytes of one float32 input Hessian [in, in] per target matrix, before matrices fed the same input share one
    (q/k/v and gate/up do: what is kept is less, see Calibration.hessian_nbytes)."""
    return sum(4 * t.shape[1] ** 2 for mine in targets for t in mine)


def _keeps_hessians(spec: PruneSpec, targets, asked: bool, budget: int) -> tuple[bool, str]:
    if not asked:
        return False, ""
    if not spec.updates_weights:
        return False, "the recipe does not update weights"
    if not METHODS[spec.method].uses_calibration:
        return False, f"{spec.method} calibrates without data: no Hessians to keep"
    need = hessian_bytes(targets)
    if need > budget:
        return False, (f"the Hessians of every matrix would take {need / 2**30:.1f} GiB, over the budget of "
                       f"{budget / 2**30:.1f} GiB")
    return True, ""


def _share_equal_hessians(stats: dict[str, LinearStats]) -> dict[str, LinearStats]:
    """One layer's statistics with matrices that read the same input (q/k/v, gate/up) holding one Hessian."""
    out: dict[str, LinearStats] = {}
    for name, st in stats.items():
        twin = next((o for o in out.values() if o.XtX is not st.XtX and o.XtX.shape == st.XtX.shape
                     and o.tokens == st.tokens and torch.equal(o.XtX, st.XtX)), None)
        if twin is not None:
            st.XtX = twin.XtX
        out[name] = st
    return out


class CalibrationCache:
    """The last few calibrations in memory, served only while everything they depend on is unchanged (the key
    holds the model's content fingerprint and a hash of the windows: a changed model or data is a miss)."""

    def __init__(self, size: int = 2):
        self.size = size
        self._entries: OrderedDict[str, Calibration] = OrderedDict()

    def peek(self, model: nn.Module, spec: PruneSpec, windows: torch.Tensor | None, *, data: str | None = None,
             hessians: bool = False) -> Calibration | None:
        """The calibration `get` would serve without calibrating, or None."""
        wanted = json.dumps(calibration_key(model, spec, windows, data), sort_keys=True)
        hit = self._entries.get(wanted)
        hessians = hessians and spec.updates_weights
        if hit is not None and hit.model is model and (not hessians or hit.hessians is not None
                                                       or hit.hessians_note):
            self._entries.move_to_end(wanted)
            return hit
        return None

    def get(self, model: nn.Module, spec: PruneSpec, windows: torch.Tensor | None, *, data: str | None = None,
            progress: Progress | None = None, cancel: threading.Event | None = None,
            hessians: bool = False) -> Calibration:
        """hessians: serve only a calibration that kept them (or could not: calibrate's `hessians_note`)."""
        hit = self.peek(model, spec, windows, data=data, hessians=hessians)
        if hit is not None:
            return hit
        cal = calibrate(model, spec, windows, data=data, progress=progress, cancel=cancel,
                        hessians=hessians and spec.updates_weights)
        self._entries[json.dumps(cal.key, sort_keys=True)] = cal
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return cal

    def find(self, key: dict) -> Calibration | None:
        """The calibration of `key` (a Calibration's own key) while the cache still holds it, else None: callers
        that keep only the key never keep a dropped calibration alive."""
        return self._entries.get(json.dumps(key, sort_keys=True))
