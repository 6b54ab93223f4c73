"""Wanda's variant (`--use_variant`): prune, in each row, the lowest scores whose running sum stays under
alpha x the row's total score, with alpha found by bisection so the matrix reaches the target sparsity.

A row whose importance is spread evenly loses many weights; a row dominated by a few large scores loses only
its long tail. Same rule as locuslab/wanda lib/prune.py (`return_given_alpha` and the loop around it).
"""
from __future__ import annotations

import torch

ALPHA_START, ALPHA_LOW, ALPHA_HIGH = 0.4, 0.0, 0.8  # Wanda's starting point and bracket
WANDA_MAX_STEPS = 10  # Wanda stops once its bracket (0.8 wide, halved each step) is under 0.001: 10 halvings


def wanda_variant_mask(scores: torch.Tensor, sparsity: float, tol: float = 0.001,
                       max_steps: int = WANDA_MAX_STEPS) -> tuple[torch.Tensor, float]:
    """scores [out, in] -> (keep mask [out, in] bool, alpha).

    In each row the scores are sorted ascending and summed; a weight is pruned when its score is at most the
    last sorted score whose running sum is <= alpha * row sum (ties with that score go too, as in Wanda).
    alpha bisects [0, 0.8] from 0.4 until |realised sparsity - `sparsity`| <= `tol`, or after `max_steps`
    halvings: the default of 10 is exactly where Wanda's own loop stops, so masks match Wanda's bit for bit.
    """
    if sparsity <= 0:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device), 0.0
    s = scores.float()
    sorted_s = torch.sort(s, dim=1, stable=True).values
    cumsum = sorted_s.cumsum(dim=1)
    row_sum = s.sum(dim=1, keepdim=True)

    def prune_given(alpha: float) -> tuple[torch.Tensor, float]:
        n_under = (cumsum <= alpha * row_sum).sum(dim=1, keepdim=True)  # [out, 1]
        # Wanda gathers at n_under - 1, which fails for a row where not even the smallest score fits; prune none there.
        thres = sorted_s.gather(1, (n_under - 1).clamp(min=0))
        prune = (s <= thres) & (n_under > 0)
        return prune, prune.sum().item() / prune.numel()

    alpha, low, high = ALPHA_START, ALPHA_LOW, ALPHA_HIGH
    prune, realised = prune_given(alpha)
    for _ in range(max_steps):
        if abs(realised - sparsity) <= tol:
            break
        if realised > sparsity:
            alpha, high = (alpha + low) / 2, alpha
        else:
            alpha, low = (alpha + high) / 2, alpha
        prune, realised = prune_given(alpha)
    return ~prune, alpha
