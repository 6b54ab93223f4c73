"""Perplexity by the Wanda protocol (locuslab/wanda, lib/eval.py: eval_ppl_wikitext).

The evaluation text, tokenized once, is cut into non-overlapping windows of seqlen tokens (the remainder
is dropped). Each window's loss is the mean cross-entropy of its seqlen-1 next-token predictions; Wanda
weights it by seqlen (`neg_log_likelihood = loss * seqlen`) and reports

    ppl = exp(sum(neg_log_likelihood) / (nsamples * seqlen))

i.e. exp of the mean window loss. We replicate that formula exactly, with the loss computed here from the
logits in float32, so the number never depends on a model family's own loss code.
"""
from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from engine.errors import Cancelled, DataError, UserError
from engine.walk.discovery import find_decoder_layers


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    windows: int    # windows evaluated
    tokens: int     # windows * seqlen
    seconds: float  # wall time of the whole evaluation


def window_losses(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """logits [B, S, V], ids [B, S] -> [B] float32: mean shift-by-one cross-entropy of each window."""
    B, S, V = logits.shape
    labels = ids[:, 1:].to(logits.device).reshape(-1)
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, V), labels, reduction="none")
    return nll.view(B, S - 1).mean(dim=1)


def perplexity(model, input_ids: torch.Tensor, seqlen: int, max_windows: int | None = None,
               batch_size: int = 1, progress=None, cancel=None) -> PerplexityResult:
    """Wanda's perplexity of `model` on `input_ids` [1, T] in windows of `seqlen` tokens.

    max_windows   evaluate at most this many windows (Wanda's C4 evaluation uses 256)
    batch_size    windows per forward pass; the result does not depend on it
    progress      called as progress(windows_done, windows_total) after each forward pass
    cancel        a threading.Event, checked between forward passes; when set, raises Cancelled
    Inputs go to the device of the input embeddings, so `device_map="auto"` models work. The model is put in
    eval mode for the evaluation and returned to its previous mode.
    """
    start = time.perf_counter()
    if input_ids.dim() > 2 or (input_ids.dim() == 2 and input_ids.shape[0] != 1):
        raise UserError(f"perplexity expects token ids of shape [1, T], got {list(input_ids.shape)}")
    if seqlen < 2 or batch_size < 1 or (max_windows is not None and max_windows < 1):
        raise UserError(f"need seqlen >= 2, batch_size >= 1, max_windows >= 1; got seqlen={seqlen}, "
                        f"batch_size={batch_size}, max_windows={max_windows}")
    ids = input_ids.reshape(-1)
    nsamples = ids.numel() // seqlen
    if nsamples == 0:
        raise DataError(f"evaluation text has {ids.numel()} tokens, fewer than one window of seqlen={seqlen}")
    if max_windows is not None:
        nsamples = min(nsamples, max_windows)
    windows = ids[: nsamples * seqlen].view(nsamples, seqlen)
    nlls = []

    def add(done, losses):
        nlls.append(losses.sum() * seqlen)  # Wanda: neg_log_likelihood = loss * seqlen. On the device: no sync here.
        if progress is not None:
            progress(done, nsamples)
    window_loop(model, windows, add, batch_size=batch_size, cancel=cancel)
    total = torch.stack([n.to(nlls[0].device, torch.float64) for n in nlls]).sum().item()
    ppl = math.exp(total / (nsamples * seqlen))
    return PerplexityResult(ppl=ppl, windows=nsamples, tokens=nsamples * seqlen,
                            seconds=time.perf_counter() - start)


def window_loop(model, windows: torch.Tensor, each: Callable[[int, torch.Tensor], None], *, batch_size: int = 1,
                cancel: threading.Event | None = None) -> None:
    """The one evaluation loop (perplexity, the explorer's estimates and references): windows [n, seqlen] of token
    ids, `batch_size` per forward pass, each(windows done, the batch's window_losses [B] on the model's device).

    Eval mode and inference mode while it runs (the model's mode comes back after). A set `cancel` raises Cancelled
    between forward passes and inside one too, at the next decoder layer: a stopped evaluation lets go of the
    machine within a layer's time, not a window's."""
    device = model.get_input_embeddings().weight.device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _abandoned_when(model, cancel):
            for i in range(0, len(windows), batch_size):
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"evaluation cancelled after {i} of {len(windows)} windows")
                inputs = windows[i: i + batch_size].to(device)
                logits = model(inputs, use_cache=False).logits
                losses = window_losses(logits, inputs)
                del logits
                each(min(i + batch_size, len(windows)), losses)
    finally:
        model.train(was_training)


@contextmanager
def _abandoned_when(model, cancel: threading.Event | None):
    """Forward pre-hooks on the decoder layers that raise Cancelled once `cancel` is set."""
    if cancel is None:
        yield
        return

    def check(module, args):
        if cancel.is_set():
            raise Cancelled("evaluation cancelled during a forward pass")
    handles = [layer.register_forward_pre_hook(check) for layer in find_decoder_layers(model)[1]]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
