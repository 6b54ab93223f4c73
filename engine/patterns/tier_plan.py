"""The planning stage: where blocks compete for tiers, decided before masks are built.

A pattern's `scope(spec)` says where its blocks compete: each matrix alone (every pattern but three-tier, and
three-tier's tier_scope "matrix"), the matrices of one decoder layer, or the whole model. The planner turns the
rankings of the matrices that compete (block importances, or what each tier would cost) into one `MatrixPlan` per
matrix; the mask builder of the pattern (engine/patterns/registry.py) reads it. A pure function of the rankings, so
it can be re-run on kept rankings whenever ratios, K or scope change.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.methods.registry import METHODS
from engine.patterns.three_tier import (
    assign_jointly_by_cost,
    assign_tiers,
    assign_tiers_by_cost,
    assign_tiers_jointly,
    block_importance,
    tier_census,
    tier_costs,
    tier_counts,
)


@dataclass(frozen=True)
class MatrixPlan:
    """What one matrix must keep, decided with other matrices: a tier grid [rows/B, cols/B], or only the block
    count of each tier (dense, 2:4, top-K) that its blocks won, to be placed by its own scores when it is pruned.
    Neither: the pattern decides from the matrix alone."""
    tiers: torch.Tensor | None = None
    budget: tuple[int, int, int] | None = None


NO_PLAN = MatrixPlan()


def ranking_input(scores: torch.Tensor, spec) -> torch.Tensor:
    """What a matrix's blocks are ranked by: their summed score, or (assignment "cost") what each tier would lose."""
    if spec.assignment == "cost":
        return tier_costs(scores, spec.block, spec.keep)
    return block_importance(scores, spec.block)


def place_tiers(plan: MatrixPlan, importance: torch.Tensor, ranking: torch.Tensor, spec) -> torch.Tensor:
    """One matrix's tier grid: the plan's, or its budget (else the ratios' counts for this matrix alone) placed on
    its blocks by importance or, with assignment "cost", by `ranking` (its tier costs, from ranking_input)."""
    if plan.tiers is not None:
        return plan.tiers
    budget = plan.budget or tier_counts(importance.numel(), spec.ratios)
    return assign_tiers_by_cost(ranking, budget) if spec.assignment == "cost" else assign_tiers(importance, budget)


def plan_jointly(rankings: dict, spec) -> dict:
    """{key: MatrixPlan with a tier grid} for matrices whose blocks compete together, from {key: ranking_input}.
    Scores in the model's loss units compare as they are; per-matrix units are normalised per matrix first."""
    assign = assign_jointly_by_cost if spec.assignment == "cost" else assign_tiers_jointly
    grids = assign(list(rankings.values()), spec.ratios, normalise=not METHODS[spec.method].loss_units)
    return {key: MatrixPlan(tiers=grid) for key, grid in zip(rankings, grids)}


def plan_model_wide(rankings: dict, spec) -> dict:
    """Tier scope "model", ranked on the dense model before the walk: every block of the model competes.

    Scores in loss units keep the grids they won. Scores in per-matrix units (magnitude, Wanda, OBS) keep only
    the block counts each matrix won: the walk places them inside the matrix on its scores after the layers
    upstream are pruned, which the dense ranking could not see."""
    plans = plan_jointly(rankings, spec)
    if METHODS[spec.method].loss_units:
        return plans
    return {key: MatrixPlan(budget=tuple(tier_census(p.tiers).values())) for key, p in plans.items()}


def plan_scope(rankings: dict, spec, scope: str) -> dict:
    """{key: MatrixPlan} for the matrices that compete in `scope` (the pattern's scope(spec)), from {key:
    ranking_input}: one decoder layer's matrices ("layer") or every matrix of the model ("model")."""
    return plan_model_wide(rankings, spec) if scope == "model" else plan_jointly(rankings, spec)
