"""How important each weight is: pure functions of the weight [out, in] and its layer-input statistics."""
from __future__ import annotations

import torch

from engine.walk.input_stats import LinearStats


def magnitude_scores(W: torch.Tensor, stats: LinearStats | None = None) -> torch.Tensor:
    return W.abs().float()


def wanda_scores(W: torch.Tensor, stats: LinearStats) -> torch.Tensor:
    """|W_ij| * ||X_j||_2, with ||X_j|| the RMS of input channel j over the calibration tokens (Wanda)."""
    return W.abs().float() * stats.input_norm().to(W.device).unsqueeze(0)


def obs_scores(W: torch.Tensor, stats: LinearStats, damp: float = 0.01) -> torch.Tensor:
    """|W_ij| / sqrt([H^-1]_jj): the square root of the OBS saliency w^2 / [H^-1]_jj (SparseGPT's measure,
    here for a whole matrix at once). Same units as Wanda's score, so block sums compare alike."""
    return W.abs().float() / stats.hinv_diag(damp).to(W.device).sqrt().unsqueeze(0)


def fisher_scores(W: torch.Tensor, fisher: torch.Tensor) -> torch.Tensor:
    """|W_ij| * sqrt(F_ij): the square root of the Optimal Brain Damage saliency F w^2 with the empirical Fisher F
    (engine/walk/fisher.py). In loss units, so it compares across matrices and layers as it is."""
    return W.abs().float() * fisher.to(W.device).float().sqrt()


def fisher_wanda_scores(W: torch.Tensor, stats: LinearStats, fisher_rows: torch.Tensor) -> torch.Tensor:
    """Wanda's |W_ij| * ||X_j||, each output row i weighted by sqrt(G_i), G_i = sum_j F_ij / sum_j ||X_j||^2.

    F_ij ~ G_i ||X_j||^2 when output gradients and inputs are independent, so G_i is how much the model's loss
    cares about output i (squared-gradient scale) and G_i (|W_ij| ||X_j||)^2 is the loss cost of dropping W_ij.
    Inside a row this is Wanda exactly (one factor per row); across rows, matrices and layers it is in loss units."""
    energy = stats.input_norm().square().sum().clamp_min(1e-30)
    g = (fisher_rows.to(W.device).float() / energy.to(W.device)).clamp_min(1e-30)  # a row the loss ignores keeps
    return wanda_scores(W, stats) * g.sqrt().unsqueeze(1)                         # Wanda's order inside it


def ria_scores(W: torch.Tensor, stats: LinearStats, a: float = 0.5) -> torch.Tensor:
    """Relative Importance and Activations (RIA, Zhang et al., ICLR 2024):
    (|W_ij| / sum_i |W_ij| + |W_ij| / sum_j |W_ij|) * ||X_j||^a, a = 0.5: each weight relative to the other weights of
    its input channel (column) and of its output row, times a damped activation norm. An all-zero row or column
    scores 0 (its sum is clamped to the smallest normal float instead of dividing 0 by 0)."""
    A = W.abs().float()
    tiny = torch.finfo(torch.float32).tiny
    relative = A / A.sum(dim=0, keepdim=True).clamp_min(tiny) + A / A.sum(dim=1, keepdim=True).clamp_min(tiny)
    return relative * stats.input_norm().to(W.device).pow(a).unsqueeze(0)
