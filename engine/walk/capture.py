"""The layer-statistics stage every walk over the model shares (the exact prune, the explorer's calibration, the
model-wide ranking, progressive pruning): find each decoder layer's target matrices once, the gradient pass of the
methods that read the loss, capture what the model feeds its first decoder layer, then `walk_layers`: each layer
runs on every calibration window with hooks that accumulate its matrices' input statistics, a visitor sees them,
and the layer's outputs become the next layer's inputs.

Memory holds one layer's activations for all windows (never the whole model's). Activations and every
captured argument follow each layer to the device its weights live on.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import Cancelled, UserError
from engine.walk.discovery import Target, find_targets, layer_device
from engine.walk.fisher import fisher_diagonal
from engine.walk.input_stats import LinearStats

Key = tuple[int, str]  # (decoder layer index, matrix name inside the layer): how every walk names a matrix


@dataclass
class LayerInputs:
    """What the model passes a decoder layer, per calibration window: hidden states plus *all* other
    positional and keyword arguments (attention masks, position ids, rotary embeddings, alibi, ...)."""

    hidden: list[torch.Tensor] = field(default_factory=list)
    args: list[tuple] = field(default_factory=list)
    kwargs: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.hidden)


class _Caught(Exception):
    pass


class _Catcher(nn.Module):
    """Stands in for the first decoder layer: records its inputs, then stops the forward pass."""

    def __init__(self, inner: nn.Module, inputs: LayerInputs):
        super().__init__()
        self.inner = inner
        self._inputs = inputs

    def forward(self, *args, **kwargs):
        if args:
            hidden, rest = args[0], args[1:]
        else:
            hidden, rest = kwargs.pop("hidden_states"), ()
        kwargs.pop("past_key_value", None)
        kwargs.pop("past_key_values", None)
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        first = (self._inputs.args[0], self._inputs.kwargs[0]) if self._inputs.hidden else None
        if first is not None:  # share tensors equal to window 0's (masks, rotary tables): one copy, not N
            rest, kwargs = _share(rest, first[0]), _share(kwargs, first[1])
        self._inputs.hidden.append(hidden.detach())
        self._inputs.args.append(rest)
        self._inputs.kwargs.append(kwargs)
        raise _Caught

    def __getattr__(self, name):  # models read attributes of their layers (e.g. attention_type)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, layers: nn.ModuleList, windows: torch.Tensor) -> LayerInputs:
    """Run the model on each calibration window [n, seqlen] up to its first decoder layer."""
    inputs = LayerInputs()
    first = layers[0]
    layers[0] = _Catcher(first, inputs)
    device = model.get_input_embeddings().weight.device
    try:
        for row in windows:
            try:
                model(input_ids=row.unsqueeze(0).to(device), use_cache=False)
            except _Caught:
                pass
    finally:
        layers[0] = first
    if len(inputs) != len(windows):
        raise RuntimeError(f"captured {len(inputs)} of {len(windows)} windows: the model skipped its decoder layers")
    return inputs


@torch.no_grad()
def run_layer(layer: nn.Module, inputs: LayerInputs) -> list[torch.Tensor]:
    """Run one decoder layer on every window; returns the output hidden states (on the layer's device)."""
    device = layer_device(layer)
    outs = []
    for hidden, args, kwargs in zip(inputs.hidden, inputs.args, inputs.kwargs):
        out = layer(to_device(hidden, device), *to_device(args, device), **to_device(kwargs, device))
        outs.append((out[0] if isinstance(out, (tuple, list)) else out).detach())
    return outs


def to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(to_device(x, device) for x in obj)
    if isinstance(obj, list):
        return [to_device(x, device) for x in obj]
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def _share(obj, ref):
    if isinstance(obj, torch.Tensor) and isinstance(ref, torch.Tensor):
        same = obj.shape == ref.shape and obj.dtype == ref.dtype and obj.device == ref.device and torch.equal(obj, ref)
        return ref if same else obj
    if isinstance(obj, tuple) and isinstance(ref, tuple) and len(obj) == len(ref):
        return tuple(_share(a, b) for a, b in zip(obj, ref))
    if isinstance(obj, dict) and isinstance(ref, dict):
        return {k: _share(v, ref[k]) if k in ref else v for k, v in obj.items()}
    return obj


class StatsHooks:
    """Forward hooks that feed each target's input into its LinearStats while a layer runs."""

    def __init__(self, targets: list[Target], hessian: bool):
        self.stats: dict[str, LinearStats] = {}
        self._handles = []
        experts: dict[int, list[Target]] = {}
        for t in targets:
            self.stats[t.name] = LinearStats(t.shape[1], t.weight().device, hessian)
            if t.kind == "expert":
                experts.setdefault(id(t.module), []).append(t)
            else:
                self._handles.append(t.module.register_forward_hook(self._linear_hook(self.stats[t.name])))
        for group in experts.values():
            self._handles.append(group[0].module.register_forward_hook(self._experts_hook(group), with_kwargs=True))

    @staticmethod
    def _linear_hook(stats: LinearStats):
        def hook(module, args, output):
            stats.add(args[0].detach())
        return hook

    def _experts_hook(self, group: list[Target]):
        """Route tokens as the block did and feed each expert's gate_up / down inputs to its statistics."""
        by_expert = {(t.expert, t.param): t for t in group}
        module = group[0].module

        def hook(mod, args, kwargs, output):
            hidden = args[0] if args else kwargs["hidden_states"]
            index = args[1] if len(args) > 1 else kwargs["top_k_index"]
            hidden = hidden.reshape(-1, hidden.shape[-1])
            for e in range(module.gate_up_proj.shape[0]):
                tokens = (index == e).any(dim=-1).nonzero().flatten()
                if tokens.numel() == 0:
                    continue
                x = hidden[tokens]
                gu_t, down_t = by_expert.get((e, "gate_up_proj")), by_expert.get((e, "down_proj"))
                if gu_t is not None:
                    self.stats[gu_t.name].add(x)
                    if down_t is not None:
                        gu = F.linear(x, gu_t.weight())
                        concatenated = getattr(module, "is_concatenated", True)
                        gate, up = gu.chunk(2, dim=-1) if concatenated else (gu[..., ::2], gu[..., 1::2])
                        self.stats[down_t.name].add(module.act_fn(gate) * up)
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


# --- the walk ---------------------------------------------------------------------------------------------------

def targets_per_layer(layers: nn.ModuleList, prune_router: bool = False) -> list[list[Target]]:
    """The target matrices of every decoder layer, found once and passed down to every stage of a walk."""
    return [find_targets(layer, prune_router) for layer in layers]


def gradient_pass(model: nn.Module, targets: list[list[Target]], needs: frozenset, windows: torch.Tensor, *,
                  progress=None, cancel: threading.Event | None = None) -> dict[Key, torch.Tensor]:
    """{(layer, name): the Fisher diagonal F [out, in], or its row sums [out]} when the method's `needs` name
    gradients (one backward pass per calibration window on the dense model, engine/walk/fisher.py); else {}."""
    if not needs & {"gradients", "gradient_rows"}:
        return {}
    keyed = {(i, t.name): t for i, mine in enumerate(targets) for t in mine}
    return fisher_diagonal(model, keyed, windows, rows_only="gradients" not in needs, progress=progress,
                           cancel=cancel)


@contextmanager
def computing_on(layer: nn.Module, offload_device):
    """With an offload device, the decoder layer computes there and goes back home afterwards."""
    if offload_device is None:
        yield
        return
    home = layer_device(layer)
    layer.to(offload_device)
    try:
        yield
    finally:
        layer.to(home)


def layer_statistics(layer: nn.Module, targets: list[Target], inputs: LayerInputs | None,
                     hessian: bool) -> tuple[dict[str, LinearStats], list[torch.Tensor] | None]:
    """One run of `layer` on every window with hooks on its targets -> ({name: LinearStats}, its outputs);
    ({}, None) without inputs (methods that read no activations)."""
    if inputs is None:
        return {}, None
    hooks = StatsHooks(targets, hessian=hessian)
    try:
        outputs = run_layer(layer, inputs)
    finally:
        hooks.remove()
    return hooks.stats, outputs


Visit = Callable[[int, nn.Module, list[Target], dict[str, LinearStats]], None]


def walk_layers(layers: nn.ModuleList, targets: list[list[Target]], inputs: LayerInputs | None, visit: Visit, *,
                hessian: bool, changes_layer: bool, stopped: str = "stopped after {done} of {total} layers",
                cancel: threading.Event | None = None, offload_device=None) -> None:
    """The one layer-by-layer walk: for each decoder layer in order, its input statistics from one run on the
    current inputs, then `visit(i, layer, targets, stats)`, then the layer's outputs become the next layer's inputs
    (`inputs.hidden` is replaced). changes_layer: the visit changes the layer's weights (pruning), so the layer runs
    again to give the next layer what the changed layer outputs; otherwise the statistics run's outputs serve.
    A set `cancel` stops it between layers (Cancelled, with `stopped` formatted with done and total)."""
    for i, layer in enumerate(layers):
        if cancel is not None and cancel.is_set():
            raise Cancelled(stopped.format(done=i, total=len(layers)))
        try:
            with computing_on(layer, offload_device):
                stats, outputs = layer_statistics(layer, targets[i], inputs, hessian)
                visit(i, layer, targets[i], stats)
                if inputs is not None:
                    inputs.hidden = run_layer(layer, inputs) if changes_layer else outputs
        except torch.OutOfMemoryError as e:
            raise UserError(f"out of memory in decoder layer {i}: lower nsamples or seqlen, "
                            "or prune layer by layer from CPU (--offload)") from e
