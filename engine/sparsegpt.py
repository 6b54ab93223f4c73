"""SparseGPT (Frantar & Alistarh, 2023): prune with the OBS update of the remaining weights.

Variables follow the paper: W [out, in], H = 2 X X^T, Hinv the upper Cholesky factor of H^-1. The column
loop is the algorithm itself (each column's error is propagated to the columns after it); the lazy batch
update touches the rest of the matrix once per block of `blocksize` columns.
"""
from __future__ import annotations

import torch

from .stats import dampened
from .three_tier import TOPK, TWO_FOUR


def sparsegpt_prune(W: torch.Tensor, H: torch.Tensor, *, sparsity: float = 0.0, prune_n: int = 0, prune_m: int = 0,
                    keep_mask: torch.Tensor | None = None, tiers: torch.Tensor | None = None, block: int = 16,
                    keep: int = 15, blocksize: int = 128, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (updated W, keep-mask). One of:
      keep_mask          a fixed mask (True = keep): only reconstruct the kept weights;
      prune_n, prune_m   prune prune_n of every prune_m columns, chosen by w^2 / [Hinv]_jj^2 (N:M);
      tiers              a three-tier grid [rows/B, cols/B] (block, keep): inside its 2:4 and top-K blocks the
                         weights are chosen as SparseGPT chooses N:M, by w^2 / [Hinv]_jj^2 of the weights as
                         updated so far: 2:4 at each group of 4 columns, top-K at the first column of each block;
      sparsity           adaptive unstructured mask, chosen per block of columns (the paper's default).
    """
    W = W.clone().float()
    rows, cols = W.shape
    H = H.to(W.device, torch.float32)
    # Dead inputs (never active on the calibration data, H_jj = 0): their weights cost nothing to prune, so every
    # choice below takes them first (saliency 0, as the paper gets by zeroing them) and their removal needs no
    # compensation. Unlike the paper's code they are not zeroed where they are kept: a weight the mask keeps
    # keeps its value, so the mask, the tier map and W == 0 agree.
    live = (H.diagonal() != 0).to(W.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(dampened(H, damp))), upper=True)
    fixed = keep_mask is not None
    prune = ~keep_mask.to(W.device) if fixed else torch.zeros_like(W, dtype=torch.bool)
    if prune_m:  # N:M groups must not straddle two blocks of columns
        blocksize = max(prune_m, blocksize - blocksize % prune_m)
    if tiers is not None:  # nor may the B columns of a tier block
        blocksize = max(block, blocksize - blocksize % block)
        row_tier = tiers.to(W.device).repeat_interleave(block, dim=0)[:rows]  # [rows, cols/B]: tier of each row

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = Hinv1.diagonal()
        live1 = live[i1:i2]
        mask1 = prune[:, i1:i2]  # a view: choices made below land in `prune`
        if not fixed and not prune_n and tiers is None:
            saliency = _saliency(W1, d, live1)
            n_prune = int(saliency.numel() * sparsity)
            if n_prune:
                chosen = torch.zeros(saliency.numel(), dtype=torch.bool, device=W.device)
                chosen[torch.topk(saliency.flatten(), n_prune, largest=False).indices] = True
                mask1 |= chosen.view_as(mask1)
        pruned1 = mask1.to(W1.dtype)
        for i in range(i2 - i1):
            if tiers is not None:
                tier = row_tier[:, (i1 + i) // block]
                if (i1 + i) % block == 0:
                    _choose_top_k(W1[:, i:i + block], d[i:i + block], live1[i:i + block], tier == TOPK, keep, block, mask1[:, i:i + block])
                    pruned1[:, i:i + block] = mask1[:, i:i + block].to(W1.dtype)
                if (i1 + i) % 4 == 0:  # 2:4 rows keep min(2, g) of a group of g <= 4 columns
                    g = min(4, i2 - i1 - i)
                    mask1[:, i:i + g] |= _drop_lowest(W1[:, i:i + g], d[i:i + g], live1[i:i + g], max(g - 2, 0)) & \
                        (tier == TWO_FOUR).unsqueeze(1)
                    pruned1[:, i:i + g] = mask1[:, i:i + g].to(W1.dtype)
            if prune_n and not fixed and i % prune_m == 0:
                g = min(prune_m, i2 - i1 - i)
                mask1[:, i:i + g] |= _drop_lowest(W1[:, i:i + g], d[i:i + g], live1[i:i + g], min(prune_n, g))
                pruned1[:, i:i + g] = mask1[:, i:i + g].to(W1.dtype)
            # error of zeroing this column's pruned weights, spread over the columns after it; the column
            # itself becomes its quantized value q = w - err * d (0 where pruned, w where kept)
            err = W1[:, i] * pruned1[:, i] * live1[i] / d[i]
            W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1.0)
            Err1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:].addmm_(Err1, Hinv[i1:i2, i2:], alpha=-1.0)
    W[prune] = 0
    return W, ~prune


def _saliency(W1: torch.Tensor, d: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """The OBS saliency w^2 / [Hinv]_jj^2 of columns W1 [rows, g] with d [g] their Hinv diagonal; 0 on dead
    inputs (live [g] 0 where H_jj = 0)."""
    return W1 ** 2 / d.unsqueeze(0) ** 2 * live.unsqueeze(0)


def _drop_lowest(W1: torch.Tensor, d: torch.Tensor, live: torch.Tensor, n_drop: int) -> torch.Tensor:
    """Bool [rows, g]: the `n_drop` weights of lowest OBS saliency in each row of the columns W1 [rows, g]."""
    sal = _saliency(W1, d, live)
    return torch.zeros_like(sal, dtype=torch.bool).scatter_(1, torch.topk(sal, n_drop, dim=1, largest=False).indices, True)


def _choose_top_k(W1: torch.Tensor, d: torch.Tensor, live: torch.Tensor, rows_top: torch.Tensor, keep: int,
                  block: int, prune: torch.Tensor) -> None:
    """In the B columns W1 [rows, <=B] of one block column, mark for pruning all but the `keep` weights of
    highest OBS saliency w^2/d^2 in every B x B block whose rows are top-K (rows_top [rows] bool)."""
    rows, width = W1.shape
    if not rows_top.any():
        return
    sal = _saliency(W1, d, live)
    pad_rows = -rows % block
    sal = torch.nn.functional.pad(sal, (0, block - width, 0, pad_rows), value=-1.0)  # padding never wins
    flat = sal.reshape(-1, block * block)  # one row per block (rows of B consecutive matrix rows x B columns)
    kept = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, flat.topk(min(keep, block * block), dim=1).indices, True)
    drop = (~kept).reshape(-1, block)[:rows, :width]
    prune |= drop & rows_top.unsqueeze(1)
