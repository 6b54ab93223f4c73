"""Per-matrix statistics of the layer inputs, accumulated over calibration tokens."""
from __future__ import annotations

import torch


class LinearStats:
    """Running statistics of the inputs X [tokens, in] of one weight matrix.

    sumsq  per input channel sum of x^2 (Wanda's ||X_j||^2)       always
    H      2/n * X^T X, the Hessian of the layer-wise loss (SparseGPT)  when `hessian` is set
    """

    def __init__(self, in_features: int, device, hessian: bool):
        self.tokens = 0
        self.sumsq = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.XtX = torch.zeros(in_features, in_features, dtype=torch.float32, device=device) if hessian else None
        self._hinv_diag = None

    def add(self, x: torch.Tensor) -> None:
        """x [..., in] in any dtype; accumulated in float32 on the stats' device."""
        x = x.reshape(-1, x.shape[-1]).to(self.sumsq.device, torch.float32)
        self.tokens += x.shape[0]
        self.sumsq += (x * x).sum(dim=0)
        if self.XtX is not None:
            self.XtX.addmm_(x.T, x)

    def input_norm(self) -> torch.Tensor:
        return (self.sumsq / max(self.tokens, 1)).sqrt()

    def hessian(self) -> torch.Tensor:
        return self.XtX * (2.0 / max(self.tokens, 1))

    def hinv_diag(self, damp: float = 0.01) -> torch.Tensor:
        """diag of (H + damp * mean(diag H) * I)^-1, dead channels (never active) get 1."""
        if self._hinv_diag is None or self._hinv_diag[0] != damp:
            H = dampened(self.hessian(), damp)
            self._hinv_diag = (damp, torch.cholesky_inverse(torch.linalg.cholesky(H)).diagonal().clone())
        return self._hinv_diag[1]


def dampened(H: torch.Tensor, damp: float) -> torch.Tensor:
    """SparseGPT's conditioning: dead channels get H_jj = 1, then add damp * mean(diag) to the diagonal."""
    H = H.clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    H.diagonal().add_(damp * H.diagonal().mean())
    return H
