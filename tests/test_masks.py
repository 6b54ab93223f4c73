"""Exact masks on hand-made tensors, and invariants on random ones, for every pattern."""
import math

import pytest
import torch

from engine.patterns.masks import nm_mask, topk_block_mask, unstructured_mask
from engine.patterns.three_tier import (
    DENSE,
    TOPK,
    TWO_FOUR,
    assign_tiers,
    assign_tiers_jointly,
    block_importance,
    three_tier_mask,
    tier_counts,
)
from engine.spec import PruneSpec


def test_two_four_exact():
    scores = torch.tensor([[1., 2., 3., 4., 8., 7., 6., 5.]])
    W = torch.arange(1., 9.).unsqueeze(0)
    assert (W * nm_mask(scores, 2, 4)).tolist() == [[0, 0, 3, 4, 5, 6, 0, 0]]


def test_four_eight_exact():
    scores = torch.tensor([[5., 1., 7., 2., 8., 3., 6., 4.]])
    assert nm_mask(scores, 4, 8).int().tolist() == [[1, 0, 1, 0, 1, 0, 1, 0]]


def test_nm_trailing_partial_group_keeps_min_n_g():
    scores = torch.tensor([[4., 3., 2., 1., 9., 8., 7., 1., 5.]])  # groups: 4 | 4 | 1
    assert nm_mask(scores, 2, 4).int().tolist() == [[1, 1, 0, 0, 1, 1, 0, 0, 1]]


def test_unstructured_per_row_exact():
    scores = torch.tensor([[4., 1., 3., 2.], [1., 2., 3., 4.]])
    assert unstructured_mask(scores, 0.5, "row").int().tolist() == [[1, 0, 1, 0], [0, 0, 1, 1]]


def test_unstructured_per_matrix_exact():
    scores = torch.tensor([[4., 1., 3., 2.], [5., 6., 7., 8.]])
    # the 4 lowest of the matrix go, wherever they are: the whole first row except 4
    assert unstructured_mask(scores, 0.5, "matrix").int().tolist() == [[0, 0, 0, 0], [1, 1, 1, 1]]


def test_topk_block_exact():
    scores = torch.tensor([[1., 9., 2., 8.],
                           [3., 4., 7., 6.]])
    # 2x2 blocks, keep 2 per block: block (0,0) {1,9,3,4} keeps 9,4; block (0,1) {2,8,7,6} keeps 8,7
    assert topk_block_mask(scores, 2, 2).int().tolist() == [[0, 1, 0, 1], [0, 1, 1, 0]]


def test_topk_block_ties_keep_exactly_k():
    mask = topk_block_mask(torch.ones(16, 16), 16, 15)
    assert int(mask.sum()) == 15


def test_topk_partial_edge_blocks_keep_min_k_size():
    mask = topk_block_mask(torch.rand(5, 5), 4, 3)  # blocks 4x4, 4x1, 1x4, 1x1
    per_block = [mask[:4, :4].sum(), mask[:4, 4:].sum(), mask[4:, :4].sum(), mask[4:, 4:].sum()]
    assert [int(x) for x in per_block] == [3, 3, 3, 1]


def test_block_importance_and_tier_assignment_exact():
    scores = torch.tensor([[1., 1., 5., 5., 2., 2.],
                           [1., 1., 5., 5., 2., 2.]])
    imp = block_importance(scores, 2)
    assert imp.tolist() == [[4., 20., 8.]]
    assert assign_tiers(imp, (1, 1, 1)).tolist() == [[TOPK, DENSE, TWO_FOUR]]


def test_three_tier_mask_exact():
    # one row of blocks (B=4): dense | 2:4 | top-K with K=3
    scores = torch.tensor([[9., 9., 9., 9., 1., 2., 3., 4., 5., 1., 1., 1.]] * 4)
    scores[:, 8:] = torch.arange(16.).view(4, 4)  # top-K block: keep 13, 14, 15
    tiers = torch.tensor([[DENSE, TWO_FOUR, TOPK]], dtype=torch.int8)
    mask = three_tier_mask(scores, tiers, 4, 3).int()
    assert mask[:, :4].tolist() == [[1] * 4] * 4
    assert mask[:, 4:8].tolist() == [[0, 0, 1, 1]] * 4
    assert mask[:, 8:].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 1]]


@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (37, 53)])
def test_nm_invariants_random(shape):
    mask = nm_mask(torch.rand(shape), 2, 4)
    full = mask[:, : shape[1] // 4 * 4].reshape(shape[0], -1, 4).sum(-1)
    assert (full == 2).all()


@pytest.mark.parametrize("ratios,keep", [((0.35, 0.45, 0.20), 15), ((0.0, 0.0, 1.0), 0), ((1.0, 0.0, 0.0), 15),
                                         ((0.2, 0.3, 0.5), 64)])
def test_three_tier_invariants_and_count_based_sparsity(ratios, keep):
    torch.manual_seed(0)
    scores = torch.rand(96, 160)
    B = 16
    imp = block_importance(scores, B)
    counts = tier_counts(imp.numel(), ratios)
    tiers = assign_tiers(imp, counts)
    assert torch.bincount(tiers.flatten().long(), minlength=3).tolist() == list(counts)
    mask = three_tier_mask(scores, tiers, B, keep)
    blocks = mask.view(6, B, 10, B).permute(0, 2, 1, 3).reshape(6, 10, B * B)
    kept = blocks.sum(-1)
    assert (kept[tiers == DENSE] == B * B).all()
    assert (kept[tiers == TWO_FOUR] == B * B // 2).all()
    assert (kept[tiers == TOPK] == keep).all()
    n_dense, n_24, n_top = counts
    expected_zeros = n_24 * (B * B // 2) + n_top * (B * B - keep)
    assert int((~mask).sum()) == expected_zeros
    # every 2:4 block keeps exactly 2 of each 4 consecutive columns in each row
    in_24 = blocks[tiers == TWO_FOUR].view(-1, B, B // 4, 4).sum(-1)
    assert (in_24 == 2).all()


def test_three_tier_ranks_most_important_blocks_dense():
    scores = torch.ones(32, 32)
    scores[:16, :16] = 100.0  # one block far more important than the other three
    tiers = assign_tiers(block_importance(scores, 16), tier_counts(4, (0.25, 0.5, 0.25)))
    assert tiers[0, 0] == DENSE
    assert (tiers == TWO_FOUR).sum() == 2 and (tiers == TOPK).sum() == 1


def test_joint_assignment_normalises_scale_and_keeps_global_counts():
    torch.manual_seed(0)
    a = torch.rand(4, 4) * 1000  # a matrix with 1000x larger activations must not take every dense slot
    b = torch.rand(4, 4)
    ga, gb = assign_tiers_jointly([a, b], (0.25, 0.5, 0.25))
    both = torch.cat([ga.flatten(), gb.flatten()])
    assert torch.bincount(both.long(), minlength=3).tolist() == [8, 16, 8]
    assert 0 < int((ga == DENSE).sum()) < 8


def test_nominal_sparsity_formula():
    spec = PruneSpec(pattern="three_tier", ratios=(0.35, 0.45, 0.20), keep=15)
    assert math.isclose(spec.nominal_sparsity(), 0.45 / 2 + 0.20 * (1 - 15 / 256))
    assert abs(spec.nominal_sparsity() - 0.41328) < 1e-5



def test_builders_accept_transposed_views():
    """Regression: a Conv1D weight seen as W.T is non-contiguous; the per-matrix mask once failed on it."""
    scores = torch.rand(8, 12).T
    for mask in (unstructured_mask(scores, 0.5, "matrix"), unstructured_mask(scores, 0.5, "row"),
                 nm_mask(scores, 2, 4), topk_block_mask(scores, 4, 3)):
        assert mask.shape == (12, 8)
    assert int((~unstructured_mask(scores, 0.5, "matrix")).sum()) == 48


def test_tier_costs_exact():
    from engine.patterns.three_tier import tier_costs
    # one 4x4 block; squared scores per row [16, 9, 4, 1] -> 2:4 keeps 16+9 per row, top-2 keeps two 16s overall
    scores = torch.tensor([[4., 3., 2., 1.]] * 4)
    costs = tier_costs(scores, 4, 2)
    assert costs[:, 0, 0].tolist() == [0.0, 4 * (4 + 1), 4 * 30 - 32]


def test_cost_assignment_gives_top_k_to_blocks_whose_mass_is_concentrated():
    from engine.patterns.three_tier import assign_tiers_by_cost, tier_costs
    B = 4
    flat = torch.ones(B, B)            # mass spread evenly: top-K would lose most of it
    peaked = torch.full((B, B), 0.01)  # all mass in two weights: top-2 loses almost nothing
    peaked[0, 0] = peaked[3, 3] = 10.0
    strong = torch.full((B, B), 5.0)   # the most important block: 2:4 would cost the most
    scores = torch.cat([flat, peaked, strong], dim=1)
    tiers = assign_tiers_by_cost(tier_costs(scores, B, 2), (1, 1, 1))
    assert tiers.tolist() == [[TWO_FOUR, TOPK, DENSE]]
    # ranking by summed importance instead sends the least total mass (here the peaked block, 20.14 vs 16) ...
    by_importance = assign_tiers(block_importance(scores, B), (1, 1, 1))
    assert by_importance.tolist() == [[TOPK, TWO_FOUR, DENSE]]  # ... to 2:4, and the flat block loses 14/16 to top-K


def _cost_assignment_by_masked_sorts(costs, counts):
    """The cost assignment as four sorts, each over every block with the taken ones pushed to +inf (the earlier
    rule, kept here as the reference for finite costs)."""
    c24, ctop = costs[1].flatten(), costs[2].flatten()
    candidates = []
    for dense_first in (True, False):
        tiers, free = torch.full_like(c24, TWO_FOUR, dtype=torch.int8), torch.ones_like(c24, dtype=torch.bool)
        for tier in ((DENSE, TOPK) if dense_first else (TOPK, DENSE)):
            key = -c24 if tier == DENSE else ctop - c24
            order = torch.argsort(torch.where(free, key, torch.full_like(key, math.inf)), stable=True)
            order = order[:counts[0] if tier == DENSE else counts[2]]
            tiers[order], free[order] = tier, False
        candidates.append((float(c24[tiers == TWO_FOUR].sum() + ctop[tiers == TOPK].sum()), tiers))
    return min(candidates, key=lambda c: c[0])[1].view(costs.shape[1:])


@pytest.mark.parametrize("seed", range(4))
def test_cost_assignment_sorts_each_preference_once_and_keeps_the_counts_whatever_the_costs(seed):
    from engine.patterns.three_tier import assign_tiers_by_cost, tier_counts
    g = torch.Generator().manual_seed(seed)
    costs = torch.randint(0, 6, (3, 9, 31), generator=g).float()  # few values: many ties, broken by block index
    costs[0] = 0
    for ratios in [(0.2, 0.3, 0.5), (0.0, 0.5, 0.5), (0.5, 0.0, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.0, 0.0, 1.0)]:
        counts = tier_counts(costs[0].numel(), ratios)
        tiers = assign_tiers_by_cost(costs, counts)
        assert torch.equal(tiers, _cost_assignment_by_masked_sorts(costs, counts)), ratios
    # an infinite or NaN cost (an overflowed score) once let the second tier take blocks the first had taken
    costs[2, 0, :12] = math.inf
    costs[1, 1, :5] = math.nan
    counts = tier_counts(costs[0].numel(), (0.2, 0.0, 0.8))  # more top-K blocks than finite costs left free
    tiers = assign_tiers_by_cost(costs, counts)
    assert torch.bincount(tiers.flatten().long(), minlength=3).tolist() == list(counts)

def test_unstructured_ties_are_cut_to_the_exact_count():
    scores = torch.tensor([[1., 1., 1., 1., 0., 2.], [3., 3., 3., 3., 3., 3.]])
    mask = unstructured_mask(scores, 0.5, "row")
    assert mask.int().tolist() == [[0, 0, 1, 1, 0, 1], [0, 0, 0, 1, 1, 1]]
    flat = unstructured_mask(torch.zeros(4, 4), 0.25, "matrix")
    assert int((~flat).sum()) == 4


@pytest.mark.parametrize("group", ["row", "matrix"])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9])
def test_unstructured_exact_counts_random_with_ties(group, sparsity):
    torch.manual_seed(0)
    scores = torch.randint(0, 5, (7, 40)).float()  # many ties
    keep = unstructured_mask(scores, sparsity, group)
    if group == "row":
        assert ((~keep).sum(1) == int(40 * sparsity)).all()
    else:
        assert int((~keep).sum()) == int(280 * sparsity)
    # nothing kept scores lower than anything dropped in its group
    if sparsity:
        if group == "row":
            assert (scores.masked_fill(~keep, float("inf")).min(1).values
                    >= scores.masked_fill(keep, -1).max(1).values).all()
        else:
            assert scores[keep].min() >= scores[~keep].max()
