"""The Wanda hybrid fork's block rules (github.com/Jiajun-Ji/wanda, lib/prune.py), mask for mask.

Each `fork_*` function below is a deliberately simple re-implementation of the fork's per-block loop (one block
at a time, one group of 4 at a time), written from its code, not from the engine. The engine's vectorized
patterns must give the same masks bit for bit on the same scores, including edge blocks of matrices whose
sides are not multiples of 16 and ties (small integer weights: many equal |W|; integer scores: block means that
are exact, so the loop's sums and the engine's agree to the bit).
"""
import math

import pytest
import torch

from conftest import requires_smollm2
from engine.errors import SpecError
from engine.patterns.block_rules import int_tier_counts, normalise_ratios
from engine.patterns.three_tier import tier_counts
from engine.spec import ORIGINAL_RECIPE, PruneSpec
from engine.walk.prune_matrix import prune_matrix

SHAPES = [(32, 48), (40, 56), (37, 45), (64, 20)]


# --- the fork's loops, one block at a time ---------------------------------------------------------------

def fork_block_scores(metric, B):
    """compute_block_scores: mean of each block zero-padded to B x B."""
    M, N = metric.shape
    R, C = math.ceil(M / B), math.ceil(N / B)
    scores = torch.zeros(R, C)
    for i in range(R):
        for j in range(C):
            scores[i, j] = metric[i * B:(i + 1) * B, j * B:(j + 1) * B].sum() / (B * B)
    return scores


def fork_two_four(block):
    """apply_2_4_sparsity_to_block: the block flattened, groups of 4 keep their 2 largest |w|. True = pruned."""
    flat = block.flatten().abs()
    prune = torch.ones(flat.numel(), dtype=torch.bool)
    for g in range(0, flat.numel(), 4):
        group = flat[g:g + 4]
        prune[g + torch.topk(group, min(2, group.numel())).indices] = False
    return prune.view(block.shape)


def fork_blocks(M, N, B):
    for i in range(math.ceil(M / B)):
        for j in range(math.ceil(N / B)):
            yield i, j, slice(i * B, min((i + 1) * B, M)), slice(j * B, min((j + 1) * B, N))


def fork_three_tier(W, metric, B, d, m, t, K):
    """apply_three_tier_block_pruning. -> keep-mask."""
    total = d + m + t
    if abs(total - 1.0) > 1e-6:
        d, m, t = d / total, m / total, t / total
    scores = fork_block_scores(metric, B)
    n = scores.numel()
    n_dense, n_24 = int(n * d), int(n * m)
    order = torch.argsort(scores.flatten(), descending=True)
    dense, mid = set(order[:n_dense].tolist()), set(order[n_dense:n_dense + n_24].tolist())
    prune = torch.zeros_like(W, dtype=torch.bool)
    C = scores.shape[1]
    for i, j, rows, cols in fork_blocks(*W.shape, B):
        block = W[rows, cols]
        if i * C + j in dense:
            continue
        if i * C + j in mid:
            prune[rows, cols] = fork_two_four(block)
        elif block.numel() > K:
            threshold = torch.topk(block.flatten().abs(), K).values[-1]
            prune[rows, cols] = block.abs() < threshold
    return ~prune


def fork_block(W, metric, B, ratio, K=None):
    """apply_block_pruning (K None) and apply_block_pruning_with_topk. -> keep-mask."""
    scores = fork_block_scores(metric, B)
    n = scores.numel()
    k = int(n * ratio)
    threshold = torch.topk(scores.flatten(), k, largest=False).values[-1] if 0 < k < n else \
        (math.inf if k >= n else -math.inf)
    prune = torch.zeros_like(W, dtype=torch.bool)
    for i, j, rows, cols in fork_blocks(*W.shape, B):
        if scores[i, j] <= threshold:
            block = W[rows, cols]
            if K is None:
                prune[rows, cols] = True
            elif block.numel() > K:
                mask = torch.ones(block.numel(), dtype=torch.bool)
                mask[torch.topk(block.flatten().abs(), K).indices] = False
                prune[rows, cols] = mask.view(block.shape)
    return ~prune


def fork_threshold_hybrid(W, metric, B, K, top_ratio, score_threshold):
    """apply_hybrid_block_pruning_with_2_4. -> keep-mask."""
    M, N = W.shape
    scores = fork_block_scores(metric, B)
    n = scores.numel()
    n_top = int(n * top_ratio)
    threshold = torch.topk(scores.flatten(), n_top).values[-1] if 0 < n_top < n else -math.inf
    padded_W = torch.zeros(math.ceil(M / B) * B, math.ceil(N / B) * B)
    padded_W[:M, :N] = W
    padded_metric = torch.zeros_like(padded_W)
    padded_metric[:M, :N] = metric
    prune = torch.zeros_like(W, dtype=torch.bool)
    for i, j, rows, cols in fork_blocks(M, N, B):
        block = W[rows, cols]
        if scores[i, j] >= threshold:
            full = (slice(i * B, (i + 1) * B), slice(j * B, (j + 1) * B))
            mask = fork_two_four(padded_W[full])
            if (padded_metric[full] * ~mask).sum() >= score_threshold * padded_metric[full].sum():
                prune[rows, cols] = mask[:block.shape[0], :block.shape[1]]
        elif block.numel() > K:
            mask = torch.ones(block.numel(), dtype=torch.bool)
            mask[torch.topk(block.flatten().abs(), K).indices] = False
            prune[rows, cols] = mask.view(block.shape)
    return ~prune


# --- fixtures: small integer weights (ties everywhere), integer scores (exact block means) -----------------

def weights_and_scores(shape, seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.randint(-4, 5, shape, generator=g).float()
    norms = torch.randint(1, 4, (1, shape[1]), generator=g).float()  # a Wanda-like per-input-column factor
    return W, W.abs() * norms


def engine_keep(W, metric, **spec):
    return prune_matrix(W, None, PruneSpec(**{"method": "wanda", **spec}), scores=metric).keep


# --- bit for bit against the loops --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_original_three_tier_matches_the_fork(shape, seed):
    W, metric = weights_and_scores(shape, seed)
    spec = dict(ORIGINAL_RECIPE, pattern="three_tier")
    keep = engine_keep(W, metric, **spec)
    assert torch.equal(keep, fork_three_tier(W, metric, 16, 0.4, 0.4, 0.2, 10))


@pytest.mark.parametrize("ratios,keep_k", [((0.35, 0.45, 0.2), 15), ((0.7, 0.7, 0.6), 10), ((0.1, 0.2, 0.7), 1)])
def test_original_three_tier_other_ratios_and_k(ratios, keep_k):
    W, metric = weights_and_scores((37, 45), 3)
    spec = dict(ORIGINAL_RECIPE, pattern="three_tier", ratios=normalise_ratios(ratios), keep=keep_k)
    assert torch.equal(engine_keep(W, metric, **spec), fork_three_tier(W, metric, 16, *ratios, keep_k))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 1.0])
def test_block_matches_the_fork(shape, ratio):
    W, metric = weights_and_scores(shape, 4)
    keep = engine_keep(W, metric, pattern="block", sparsity=ratio, within_block="magnitude")
    assert torch.equal(keep, fork_block(W, metric, 16, ratio))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ratio,k", [(0.5, 10), (0.3, 0), (0.7, 200)])
def test_block_topk_matches_the_fork(shape, ratio, k):
    W, metric = weights_and_scores(shape, 5)
    keep = engine_keep(W, metric, pattern="block_topk", sparsity=ratio, keep=k, within_block="magnitude")
    assert torch.equal(keep, fork_block(W, metric, 16, ratio, K=k))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("top,threshold", [(0.9, 0.75), (0.6, 0.8), (0.5, 0.7), (0.0, 0.75)])
def test_threshold_hybrid_matches_the_fork(shape, top, threshold):
    W, metric = weights_and_scores(shape, 6)
    keep = engine_keep(W, metric, pattern="threshold_hybrid", top_blocks_ratio=top, score_threshold=threshold,
                       keep=10, within_block="magnitude")
    assert torch.equal(keep, fork_threshold_hybrid(W, metric, 16, 10, top, threshold))


def test_hybrid_tiers_mix_dense_and_two_four():
    """The comparison above means something only if both outcomes of the threshold occur."""
    W, metric = weights_and_scores((64, 64), 6)
    res = prune_matrix(W, None, PruneSpec(method="wanda", pattern="threshold_hybrid", top_blocks_ratio=0.9,
                                          score_threshold=0.75, keep=10), scores=metric)
    assert set(torch.unique(res.tiers).tolist()) == {0, 1, 2}


# --- exact masks on hand-made tensors ---------------------------------------------------------------------

def test_top_k_keeps_every_weight_tied_with_the_kth():
    W = torch.tensor([[5., 3., 3., 3.], [1., 0., 0., 0.], [0., 0., 0., 0.], [0., 0., 0., 0.]])
    spec = dict(ORIGINAL_RECIPE, pattern="three_tier", block=4, keep=2, ratios=(0.0, 0.0, 1.0))
    keep = engine_keep(W, W.abs(), **spec)
    assert keep.int().tolist() == [[1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    exact = engine_keep(W, W.abs(), **dict(spec, block_rule="exact"))
    assert exact.sum() == 2  # the exact rule keeps K


def test_edge_block_is_flattened_row_by_row_into_groups_of_four():
    # 4 x 6 with B = 4: the right edge block is 4 x 2 and its groups of 4 span two rows each
    W = torch.tensor([[0., 0., 0., 0., 9., 1.],
                      [0., 0., 0., 0., 8., 2.],
                      [0., 0., 0., 0., 1., 1.],
                      [0., 0., 0., 0., 3., 7.]])
    scores = torch.ones_like(W)
    spec = dict(ORIGINAL_RECIPE, pattern="three_tier", block=4, ratios=(0.0, 1.0, 0.0))
    keep = engine_keep(W, scores, **spec)
    # group (9, 1, 8, 2) keeps 9 and 8; group (1, 1, 3, 7) keeps 3 and 7
    assert keep[:, 4:].int().tolist() == [[1, 0], [1, 0], [0, 0], [1, 1]]
    padded = engine_keep(W, scores, **dict(spec, block_rule="exact"))  # groups by column: two kept per row
    assert padded[:, 4:].all()


def test_block_prune_removes_blocks_tied_with_the_threshold():
    # four 4x4 blocks with means 1, 1, 2, 3: pruning int(4 * 0.25) = 1 block removes both blocks tied at 1
    scores = torch.ones(8, 8)
    scores[4:, :4], scores[4:, 4:] = 2, 3
    keep = engine_keep(scores.clone(), scores, pattern="block", sparsity=0.25, block=4)
    assert keep[:4].sum() == 0 and keep[4:].all()


# --- counts, ratios, validation ---------------------------------------------------------------------------

def test_top_k_of_zero_keeps_nothing():
    """K = 0 (the fork's loop fails on it: topk of 0 has no last value): a top-K block keeps nothing."""
    W, metric = weights_and_scores((32, 32), 7)
    keep = engine_keep(W, metric, **dict(ORIGINAL_RECIPE, pattern="three_tier", ratios=(0.0, 0.0, 1.0), keep=0))
    assert not keep.any()


def test_int_counts_differ_from_the_exact_rule_where_floats_round_down():
    assert int_tier_counts(180, (0.35, 0.45, 0.2))[0] == 62  # 180 * 0.35 = 62.99999999999999
    assert tier_counts(180, (0.35, 0.45, 0.2))[0] == 63


def test_ratios_are_normalised_as_the_fork_does():
    assert normalise_ratios((0.7, 0.7, 0.6)) == (0.35, 0.35, 0.3)
    assert normalise_ratios((0.35, 0.45, 0.2)) == (0.35, 0.45, 0.2)


def test_original_rule_refuses_what_the_fork_cannot_do():
    with pytest.raises(SpecError, match="original block rule"):
        PruneSpec(**dict(ORIGINAL_RECIPE, pattern="three_tier", tier_scope="model"))
    with pytest.raises(SpecError, match="block_topk keeps weights"):
        PruneSpec(pattern="block_topk", within_block="obs", reconstruct=True)


@requires_smollm2
def test_original_three_tier_on_real_quantized_weights(smollm2):
    """The embedded model's 4-bit weights hold many exactly equal |W|: the fork's tie rules decide real masks."""
    from engine.walk.discovery import find_decoder_layers, find_targets
    _, layers = find_decoder_layers(smollm2.loaded.model)
    W = next(t for t in find_targets(layers[0]) if t.name == "self_attn.k_proj").weight().detach().float()
    assert W.abs().unique().numel() < W.numel() / 5  # ties everywhere: ~8 weights per distinct |W|
    keep = engine_keep(W, W.abs(), **dict(ORIGINAL_RECIPE, pattern="three_tier", ratios=(0.35, 0.45, 0.2), keep=15))
    assert torch.equal(keep, fork_three_tier(W, W.abs(), 16, 0.35, 0.45, 0.2, 15))
