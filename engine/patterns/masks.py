"""Pure mask builders: scores [out, in] -> boolean keep-mask [out, in] (True = the weight stays).

All vectorized (reshape + topk): no Python loops over rows, columns or blocks. Ties are broken by
`torch.topk`, so every group keeps exactly its quota, never more.
"""
from __future__ import annotations

import math

import torch


def unstructured_mask(scores: torch.Tensor, sparsity: float, group: str = "row") -> torch.Tensor:
    """Drop the lowest-scoring `sparsity` share: per output row (Wanda) or over the whole matrix (magnitude).

    Exactly int(n * sparsity) weights go per group. The k-th smallest score is found with kthvalue (2-5x faster
    than topk here); weights tied with it are dropped in index order until the count is exact."""
    if group == "row":
        return ~_lowest(scores.float(), int(scores.shape[1] * sparsity))
    flat = scores.float().reshape(1, -1)
    return ~_lowest(flat, int(flat.shape[1] * sparsity)).view(scores.shape)


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool [rows, n]: exactly the k lowest entries of each row."""
    if k == 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    threshold = torch.kthvalue(scores, k, dim=1, keepdim=True).values
    low = scores < threshold
    tied = scores == threshold
    missing = k - low.sum(dim=1, keepdim=True)  # >= 1: the threshold itself is among the k
    return low | (tied & (tied.cumsum(dim=1) <= missing))


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In each row, every group of m consecutive input columns keeps its n highest scores.

    A trailing partial group (in % m != 0) of g columns keeps min(n, g): the padding scores -inf, so it
    is never chosen over a real weight.
    """
    out_f, in_f = scores.shape
    pad = (-in_f) % m
    s = torch.nn.functional.pad(scores.float(), (0, pad), value=-math.inf).view(out_f, -1, m)
    return keep_top_k(s, n).view(out_f, -1)[:, :in_f]


def topk_block_mask(scores: torch.Tensor, block: int, k: int) -> torch.Tensor:
    """Cut [out, in] into block x block tiles; each keeps exactly its k highest scores (min(k, size) at edges)."""
    blocks = to_blocks(scores.float(), block, fill=-math.inf)  # [R, C, B*B]
    return from_blocks(keep_top_k(blocks, k), block, scores.shape)


def keep_top_k(values: torch.Tensor, k: int) -> torch.Tensor:
    """Bool like `values`: True at the k highest entries along the last dimension, exactly k (ties as torch.topk
    breaks them). Every top-k choice of the masks (N:M groups, 2:4 groups and top-K tiles of blocks) is this one."""
    keep = torch.zeros_like(values, dtype=torch.bool)
    if k:
        keep.scatter_(-1, values.topk(k, dim=-1).indices, True)
    return keep


def to_blocks(x: torch.Tensor, block: int, fill: float = 0.0) -> torch.Tensor:
    """[out, in] -> [ceil(out/B), ceil(in/B), B*B], edge tiles padded with `fill`."""
    out_f, in_f = x.shape
    x = torch.nn.functional.pad(x, (0, (-in_f) % block, 0, (-out_f) % block), value=fill)
    r, c = x.shape[0] // block, x.shape[1] // block
    return x.view(r, block, c, block).permute(0, 2, 1, 3).reshape(r, c, block * block)


def from_blocks(x: torch.Tensor, block: int, shape) -> torch.Tensor:
    """Inverse of `to_blocks`, cropped back to `shape`."""
    r, c, _ = x.shape
    full = x.view(r, c, block, block).permute(0, 2, 1, 3).reshape(r * block, c * block)
    return full[: shape[0], : shape[1]]
