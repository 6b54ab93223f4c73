"""The layer-by-layer walk's plumbing: capture what the model feeds its first decoder layer, re-run a layer on
every calibration window, and hook each target matrix to accumulate its input statistics.

Memory holds one layer's activations for all windows (never the whole model's). Activations and every
captured argument follow each layer to the device its weights live on.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .discovery import Target, layer_device
from .stats import LinearStats


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
