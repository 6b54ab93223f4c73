"""How important each weight is: pure functions of the weight [out, in] and its layer-input statistics."""
from __future__ import annotations

import torch

from .stats import LinearStats


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
    (engine/sensitivity.py). In loss units, so it compares across matrices and layers as it is."""
    return W.abs().float() * fisher.to(W.device).float().sqrt()


SCORES = {"magnitude": magnitude_scores, "wanda": wanda_scores, "sparsegpt": obs_scores}
