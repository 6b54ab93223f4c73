"""SparseGPT (Frantar & Alistarh, 2023): prune with the OBS update of the remaining weights.

Variables follow the paper: W [out, in], H = 2 X X^T, Hinv the upper Cholesky factor of H^-1. The column
loop is the algorithm itself (each column's error is propagated to the columns after it); the lazy batch
update touches the rest of the matrix once per block of `blocksize` columns.
"""
from __future__ import annotations

from typing import Callable

import torch

from engine.walk.input_stats import dampened

# choose(W1, d, live, i, col) -> bool [rows, w] or None: called at every column i (col = i1 + i in the matrix) of
# the column block W1 [rows, b] as updated so far, with d [b] its Hinv diagonal and live [b] (0 on dead inputs);
# returns the weights to prune in columns i .. i+w of the block (None: no choice at this column). A chooser whose
# choices span `align` columns (N:M groups, tier blocks) sets choose.align, so that no column block splits them.
Choose = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, int], "torch.Tensor | None"]


def sparsegpt_prune(W: torch.Tensor, H: torch.Tensor, *, choose: Choose | None = None,
                    keep_mask: torch.Tensor | None = None, blocksize: int = 128,
                    damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (updated W, keep-mask): the mask is fixed (`keep_mask`, True = keep: only the kept weights are
    reconstructed) or chosen column by column by `choose` on the weights as updated so far (`adaptive(sparsity)`,
    `n_of_m(n, m)` here; the three-tier chooser in engine/patterns/three_tier.py)."""
    W = W.clone().float()
    rows, cols = W.shape
    H = H.to(W.device, torch.float32)
    # Dead inputs (never active on the calibration data, H_jj = 0): their weights cost nothing to prune, so every
    # choice takes them first (saliency 0, as the paper gets by zeroing them) and their removal needs no
    # compensation. Unlike the paper's code they are not zeroed where they are kept: a weight the mask keeps
    # keeps its value, so the mask, the tier map and W == 0 agree.
    live = (H.diagonal() != 0).to(W.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(dampened(H, damp))), upper=True)
    prune = ~keep_mask.to(W.device) if keep_mask is not None else torch.zeros_like(W, dtype=torch.bool)
    align = getattr(choose, "align", 1)
    blocksize = max(align, blocksize - blocksize % align)

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = Hinv1.diagonal()
        live1 = live[i1:i2]
        mask1 = prune[:, i1:i2]  # a view: choices made below land in `prune`
        pruned1 = mask1.to(W1.dtype)
        for i in range(i2 - i1):
            if choose is not None and (chosen := choose(W1, d, live1, i, i1 + i)) is not None:
                w = chosen.shape[1]
                mask1[:, i:i + w] |= chosen
                pruned1[:, i:i + w] = mask1[:, i:i + w].to(W1.dtype)
            # error of zeroing this column's pruned weights, spread over the columns after it; the column
            # itself becomes its quantized value q = w - err * d (0 where pruned, w where kept)
            err = W1[:, i] * pruned1[:, i] * live1[i] / d[i]
            W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1.0)
            Err1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:].addmm_(Err1, Hinv[i1:i2, i2:], alpha=-1.0)
    W[prune] = 0
    return W, ~prune


def adaptive(sparsity: float) -> Choose:
    """The paper's unstructured mask: at the start of each column block, the `sparsity` share of its weights of
    lowest OBS saliency."""
    def choose(W1, d, live, i, col):
        if i:
            return None
        saliency = obs_saliency(W1, d, live)
        chosen = torch.zeros(saliency.numel(), dtype=torch.bool, device=W1.device)
        n_prune = int(saliency.numel() * sparsity)
        if n_prune:
            chosen[torch.topk(saliency.flatten(), n_prune, largest=False).indices] = True
        return chosen.view_as(saliency)
    return choose


def n_of_m(n: int, m: int) -> Choose:
    """N:M (the paper's semi-structured mask): in each group of m columns, each row prunes its m - n weights of
    lowest OBS saliency, chosen when the loop reaches the group."""
    def choose(W1, d, live, i, col):
        if i % m:
            return None
        g = min(m, W1.shape[1] - i)
        return drop_lowest(W1[:, i:i + g], d[i:i + g], live[i:i + g], min(m - n, g))
    choose.align = m
    return choose


def obs_saliency(W1: torch.Tensor, d: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """The OBS saliency w^2 / [Hinv]_jj^2 of columns W1 [rows, g] with d [g] their Hinv diagonal; 0 on dead
    inputs (live [g] 0 where H_jj = 0)."""
    return W1 ** 2 / d.unsqueeze(0) ** 2 * live.unsqueeze(0)


def drop_lowest(W1: torch.Tensor, d: torch.Tensor, live: torch.Tensor, n_drop: int) -> torch.Tensor:
    """Bool [rows, g]: the `n_drop` weights of lowest OBS saliency in each row of the columns W1 [rows, g]."""
    sal = obs_saliency(W1, d, live)
    return torch.zeros_like(sal, dtype=torch.bool).scatter_(
        1, torch.topk(sal, n_drop, dim=1, largest=False).indices, True)
