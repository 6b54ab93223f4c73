"""The importance methods: one entry per method. Spec validation, the calibration stage, the CLI's choices, the
dashboard's form, figure colours and labels all read this table; a method is its score function plus one entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from engine.methods.scores import (
    fisher_scores,
    fisher_wanda_scores,
    magnitude_scores,
    obs_scores,
    ria_scores,
    wanda_scores,
)
from engine.walk.input_stats import LinearStats

# What a method can ask the calibration stage for (one pass over the calibration windows for each kind):
#   activations    per input channel ||X_j|| of every matrix, layer by layer (the walk's forward pass)
#   hessian        X X^T of every matrix, layer by layer (for the OBS saliency)
#   gradients      the empirical Fisher diagonal F_ij of every weight (one backward pass per window, model-wide)
#   gradient_rows  its row sums sum_j F_ij only (vectors: no float32 copy of the weights)
NEEDS = ("activations", "hessian", "gradients", "gradient_rows")


@dataclass(frozen=True)
class ScoreInputs:
    """What the calibration stage measured for one matrix; a method reads the parts its `needs` name."""
    stats: LinearStats | None = None           # activations / hessian
    gradient: torch.Tensor | None = None       # gradients: F [out, in]; gradient_rows: sum_j F_ij [out]
    damp: float = 0.01                         # Hessian dampening of the OBS saliency


@dataclass(frozen=True)
class Method:
    name: str
    label: str                                  # how the dashboard names it (with its formula)
    score: Callable[[torch.Tensor, ScoreInputs], torch.Tensor]  # W [out, in], inputs -> importance [out, in] float32
    colour: str                                 # its colour in every figure (Okabe-Ito: colour-blind safe)
    needs: frozenset = frozenset()              # subset of NEEDS
    chooses_while_updating: bool = False        # picks its own unstructured / N:M mask during the OBS update
    loss_units: bool = False                    # scores in units of the model's loss: compare across matrices as
                                                # they are (else normalised per matrix before a joint ranking)
    unstructured_group: str = "row"             # the paper's comparison group for unstructured sparsity
    summary: str = ""                           # one line for CLI help and the page

    @property
    def uses_calibration(self) -> bool:
        return bool(self.needs)

    @property
    def updates_weights(self) -> bool:
        """The method itself updates the kept weights (others may ask for the update with `reconstruct`)."""
        return self.chooses_while_updating


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("magnitude", "Magnitude |W|", lambda W, x: magnitude_scores(W), "#D55E00",
           unstructured_group="matrix", summary="|W|, no calibration data"),
    Method("wanda", "Wanda |W|·‖X‖", lambda W, x: wanda_scores(W, x.stats), "#0072B2",
           needs=frozenset({"activations"}), summary="|W| times the input channel's norm (Sun et al., 2023)"),
    Method("sparsegpt", "SparseGPT (OBS update)", lambda W, x: obs_scores(W, x.stats, x.damp), "#009E73",
           needs=frozenset({"activations", "hessian"}), chooses_while_updating=True,
           summary="OBS saliency, mask chosen while the kept weights are updated (Frantar & Alistarh, 2023)"),
    Method("fisher", "Fisher |W|·√F (loss gradients)", lambda W, x: fisher_scores(W, x.gradient), "#56B4E9",
           needs=frozenset({"gradients"}), loss_units=True,
           summary="|W| times sqrt of the empirical Fisher diagonal (one backward pass per window)"),
    Method("fisher_wanda", "Fisher-weighted Wanda |W|·‖X‖·√G_row (loss gradients)",
           lambda W, x: fisher_wanda_scores(W, x.stats, x.gradient), "#000000",
           needs=frozenset({"activations", "gradient_rows"}), loss_units=True,
           summary="Wanda with each output row weighted by its loss sensitivity"),
    Method("ria", "RIA (|W|/Σcol + |W|/Σrow)·‖X‖^½", lambda W, x: ria_scores(W, x.stats), "#999933",
           needs=frozenset({"activations"}), unstructured_group="matrix",
           summary="relative importance (|W| over its row's and its column's sums) times ||X||^0.5 "
                   "(Zhang et al., 2024)"),
)}
