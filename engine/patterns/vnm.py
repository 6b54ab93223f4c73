"""V:N:M sparsity (Zhao et al., "Beyond 2:4: exploring V:N:M sparsity for efficient Transformer inference on GPUs",
2024): a weight matrix [out, in] is cut into V x M blocks; every block keeps the same 4 of its M columns in all of
its V rows (the 4 of largest summed score), and each row keeps N of those 4, so the block runs on 2:4 Sparse Tensor
Cores once its 4 columns are gathered. Density N/M (V:2:8 is 75% sparse), at any V."""
from __future__ import annotations

import torch

KEPT_COLUMNS = 4  # the 2:4 hardware's group: the columns each V x M block keeps


def vnm_mask(scores: torch.Tensor, v: int, n: int, m: int) -> torch.Tensor:
    """Keep-mask [out, in] of V:N:M for scores [out, in] (N <= 4 <= M). Edge blocks are padded: missing columns
    are never kept while a block has 4 real ones, missing rows add nothing to a column's score."""
    out_f, in_f = scores.shape
    s = torch.nn.functional.pad(scores.float(), (0, (-in_f) % m), value=float("-inf"))
    s = torch.nn.functional.pad(s, (0, 0, 0, (-out_f) % v), value=0.0)
    R, C = s.shape[0] // v, s.shape[1] // m
    blocks = s.view(R, v, C, m).permute(0, 2, 1, 3)                                   # [R, C, V, M]
    columns = blocks.sum(dim=2).topk(KEPT_COLUMNS, dim=-1).indices                   # [R, C, 4]
    columns = columns.unsqueeze(2).expand(R, C, v, KEPT_COLUMNS)                     # [R, C, V, 4]
    kept = columns.gather(-1, blocks.gather(-1, columns).topk(n, dim=-1).indices)    # [R, C, V, N]
    mask = torch.zeros_like(blocks, dtype=torch.bool).scatter_(-1, kept, True)
    return mask.permute(0, 2, 1, 3).reshape(R * v, C * m)[:out_f, :in_f]
