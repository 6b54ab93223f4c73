"""Find what to prune in any Hugging Face causal LM: the decoder-layer stack and the matrices inside each layer.

One code path for every family. The stack is the nn.ModuleList whose items are the model's own
`_no_split_modules` classes (what accelerate never splits: the decoder layers), else the longest ModuleList of
one repeated class holding linear layers. Inside a layer every nn.Linear and GPT-2 `Conv1D` is a target, and
so is every expert of a fused mixture-of-experts block (3-D `gate_up_proj` / `down_proj` parameters).
Router gates (modules named `gate`/`router` whose output width is the number of experts) are left dense by
default: they are tiny and pruning them reroutes tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engine.errors import ModelLoadError

try:  # GPT-2 style layers store weight [in, out]
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = ()


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """-> (dotted path, the ModuleList of decoder layers)."""
    wanted = set(getattr(model, "_no_split_modules", None) or [])
    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        classes = {type(m).__name__ for m in module}
        if len(classes) != 1:
            continue
        has_linear = any(isinstance(m, (nn.Linear, Conv1D)) for m in module[0].modules())
        if not has_linear:
            continue
        candidates.append((classes.pop() in wanted, len(module), name, module))
    if not candidates:
        raise ModelLoadError(f"no decoder-layer stack found in {type(model).__name__} "
                             f"(model type {getattr(getattr(model, 'config', None), 'model_type', '?')}): "
                             "nothing this tool knows how to prune layer by layer")
    candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
    _, _, name, layers = candidates[0]
    return name, layers


@dataclass
class Target:
    """One prunable weight matrix, seen as W [out, in] whatever its storage."""

    name: str            # path inside the decoder layer, e.g. "self_attn.q_proj", "mlp.experts.3.down_proj"
    module: nn.Module
    kind: str            # "linear" | "conv1d" | "expert"
    param: str = "weight"
    expert: int | None = None
    transposed: bool = False

    def weight(self) -> torch.Tensor:
        """W [out, in] (a view of the parameter; do not modify in place)."""
        return self.matrix_of(self.parameter)

    @property
    def parameter(self) -> nn.Parameter:
        """The parameter the matrix lives in (shared by all experts of a fused block)."""
        return getattr(self.module, self.param)

    def matrix_of(self, full: torch.Tensor) -> torch.Tensor:
        """This target's [out, in] view of a tensor shaped like its parameter (the weight, its gradient, ...)."""
        w = full[self.expert] if self.expert is not None else full
        return w.T if self.transposed else w

    def set_weight(self, W: torch.Tensor) -> None:
        p = getattr(self.module, self.param)
        W = (W.T if self.transposed else W).to(p.dtype)
        with torch.no_grad():
            if self.expert is not None:
                p[self.expert].copy_(W)
            else:
                p.copy_(W)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight().shape)


def find_targets(layer: nn.Module, prune_router: bool = False) -> list[Target]:
    """Every prunable matrix inside one decoder layer, in module order."""
    targets = []
    for name, module in layer.named_modules():
        if isinstance(module, Conv1D):
            targets.append(Target(name, module, "conv1d", transposed=True))
        elif isinstance(module, nn.Linear):
            targets.append(Target(name, module, "linear"))
        elif is_fused_experts(module):
            n_experts = module.gate_up_proj.shape[0]
            t = bool(getattr(module, "is_transposed", False))
            for e in range(n_experts):
                for pname in ("gate_up_proj", "down_proj"):
                    targets.append(Target(f"{name}.{e}.{pname}", module, "expert", pname, e, t))
    if not prune_router:
        targets = [t for t in targets if not is_router(t)]
    return targets


def is_fused_experts(module: nn.Module) -> bool:
    """Transformers' fused expert blocks: 3-D `gate_up_proj` [E, 2I, H] and `down_proj` [E, H, I] parameters."""
    gu, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return (isinstance(gu, nn.Parameter) and isinstance(down, nn.Parameter) and gu.dim() == 3 and down.dim() == 3
            and not getattr(module, "has_bias", False))


ROUTER_NAMES = {"gate", "router", "shared_expert_gate", "wg"}


def is_router(target: Target) -> bool:
    """A mixture-of-experts router (or shared-expert gate): a Linear named like one. Kept dense by default."""
    return target.kind == "linear" and target.name.rsplit(".", 1)[-1] in ROUTER_NAMES


def layer_device(layer: nn.Module) -> torch.device:
    for p in layer.parameters():
        return p.device
    return torch.device("cpu")
