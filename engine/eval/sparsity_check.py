"""Wanda's sparsity sanity check for any causal LM, pruned here or elsewhere: count W == 0 in the weight matrices
of every decoder layer.

    from engine.eval.sparsity_check import check_sparsity   # or, as in the Wanda hybrid: from lib.prune import ...
    check_sparsity(AutoModelForCausalLM.from_pretrained("out/llama_7b/"))   # prints per layer, returns the overall

Every matrix of a layer counts, routers of mixture-of-experts blocks included (Wanda counts every nn.Linear).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engine.walk.discovery import find_decoder_layers, find_targets


@dataclass
class SparsityReport:
    layers: list[tuple[int, int]]  # (zeros, weights) per decoder layer

    @property
    def zeros(self) -> int:
        return sum(z for z, _ in self.layers)

    @property
    def numel(self) -> int:
        return sum(n for _, n in self.layers)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    def lines(self) -> list[str]:
        """Wanda's printout: one `layer i sparsity x` line per decoder layer."""
        return [f"layer {i} sparsity {z / n if n else 0.0:.6f}" for i, (z, n) in enumerate(self.layers)]

    def sanity_check(self) -> list[str]:
        """The per-layer lines and Wanda's starred "sparsity sanity check" line."""
        return self.lines() + ["*" * 30, f"sparsity sanity check {self.sparsity:.4f}", "*" * 30]

    @classmethod
    def from_record(cls, record: dict) -> "SparsityReport":
        """The same counts from a run record's matrices (layers 0 .. layers_done - 1)."""
        counts: dict[int, list[int]] = {}
        for m in record["matrices"]:
            c = counts.setdefault(m["layer"], [0, 0])
            c[0], c[1] = c[0] + m["zeros"], c[1] + m["numel"]
        return cls([tuple(counts[i]) for i in sorted(counts)])


@torch.no_grad()
def sparsity_report(model: nn.Module, prune_router: bool = True) -> SparsityReport:
    """Zeros and weights per decoder layer; `prune_router=False` leaves out the router gates the engine keeps dense."""
    _, layers = find_decoder_layers(model)
    counts = []
    for layer in layers:
        targets = find_targets(layer, prune_router=prune_router)
        counts.append((sum(int((t.weight() == 0).sum()) for t in targets), sum(t.weight().numel() for t in targets)))
    return SparsityReport(counts)


def check_sparsity(model: nn.Module, verbose: bool = True) -> float:
    """Print each decoder layer's share of zero weights and return the whole model's (as Wanda's does)."""
    report = sparsity_report(model)
    if verbose:
        print("\n".join(report.lines()))
    return report.sparsity
