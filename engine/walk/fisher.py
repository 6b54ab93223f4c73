"""How much the model's loss cares about each prunable weight: the diagonal of the empirical Fisher information.

F_ij = mean over calibration windows of (dL/dW_ij)^2, with L the model's own next-token loss on a window. Deleting
weight w then costs about F w^2 / 2 of loss (Optimal Brain Damage, LeCun et al. 1990, with the Fisher standing in
for the Hessian). Unlike Wanda's |W|*||X|| or the layer-wise OBS saliency, this is in units of the *model's* loss,
so blocks of different matrices and different layers can be ranked against each other without normalisation.

Costs one forward and one backward pass of the whole model per calibration window, gradients for the target
weights only (everything else is frozen), and a float32 copy of every target weight on the CPU to accumulate into.
"""
from __future__ import annotations

import threading
from typing import Callable

import torch
from torch import nn

from engine.errors import Cancelled, UserError
from engine.walk.discovery import Target


def fisher_diagonal(model: nn.Module, targets: dict[tuple[int, str], Target], windows: torch.Tensor, *,
                    rows_only: bool = False, progress: Callable[[dict], None] | None = None,
                    cancel: threading.Event | None = None) -> dict[tuple[int, str], torch.Tensor]:
    """{key: F [out, in] float32 on CPU} for every target, from windows [n, seqlen] of token ids.
    rows_only: {key: sum_j F_ij [out]} instead, without a float32 copy of the weights (fisher_wanda needs no more)."""
    progress = progress or (lambda event: None)
    params = {id(t.parameter): t.parameter for t in targets.values()}
    if rows_only:
        acc = {key: torch.zeros(t.shape[0], dtype=torch.float32) for key, t in targets.items()}
    else:
        acc = {k: torch.zeros(p.shape, dtype=torch.float32) for k, p in params.items()}
    trainable = {p: p.requires_grad for p in model.parameters()}
    device = model.get_input_embeddings().weight.device
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            for w in range(len(windows)):
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"stopped during the gradient pass ({w} of {len(windows)} windows)")
                progress({"stage": "calibration",
                          "message": f"gradient pass {w + 1}/{len(windows)} (loss sensitivity)"})
                ids = windows[w:w + 1].to(device)
                try:
                    loss = model(input_ids=ids, labels=ids).loss
                    loss.backward()
                except torch.OutOfMemoryError as e:
                    raise UserError("out of memory in the gradient pass of the fisher method: lower seqlen, or use "
                                    "wanda (forward passes only)") from e
                if rows_only:
                    for key, t in targets.items():
                        acc[key] += t.matrix_of(t.parameter.grad).float().square().sum(dim=1).cpu()
                else:
                    for k, p in params.items():
                        acc[k] += p.grad.float().square().cpu()
                for p in params.values():
                    p.grad = None
    finally:
        for p, flag in trainable.items():
            p.requires_grad_(flag)
            p.grad = None
    n = max(len(windows), 1)
    if rows_only:
        return {key: v / n for key, v in acc.items()}
    return {key: t.matrix_of(acc[id(t.parameter)]).div(n).contiguous() for key, t in targets.items()}
