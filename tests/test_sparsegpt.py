"""SparseGPT: the OBS update reduces the layer-output error of a mask, and keeps the mask it chose or received."""
import pytest
import torch

from engine.methods.sparsegpt import adaptive, n_of_m, sparsegpt_prune


def _problem(seed=0, rows=32, cols=96, tokens=2000):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, cols, generator=g) @ torch.randn(cols, cols, generator=g)  # correlated inputs
    W = torch.randn(rows, cols, generator=g)
    return X, W, 2 * X.T @ X / tokens


def _err(X, W, W2):
    return float(((X @ W2.T - X @ W.T) ** 2).mean())


@pytest.mark.parametrize("kw", [dict(choose=adaptive(0.5)), dict(choose=n_of_m(2, 4)), dict(choose=n_of_m(4, 8))])
def test_update_beats_plain_masking(kw):
    X, W, H = _problem()
    W2, keep = sparsegpt_prune(W, H, blocksize=32, **kw)
    assert (W2[~keep] == 0).all()
    assert _err(X, W, W2) < 0.8 * _err(X, W, W * keep)


def test_nm_pattern_exact_counts():
    X, W, H = _problem()
    _, keep = sparsegpt_prune(W, H, choose=n_of_m(2, 4), blocksize=30)  # blocksize not a multiple of 4
    assert (keep.view(32, -1, 4).sum(-1) == 2).all()


def test_unstructured_exact_count():
    X, W, H = _problem()
    _, keep = sparsegpt_prune(W, H, choose=adaptive(0.5), blocksize=32)
    assert int((~keep).sum()) == W.numel() // 2


def test_fixed_mask_is_kept_exactly_and_reconstructed():
    X, W, H = _problem()
    mask = torch.rand(W.shape, generator=torch.Generator().manual_seed(1)) > 0.6
    W2, keep = sparsegpt_prune(W, H, keep_mask=mask, blocksize=32)
    assert torch.equal(keep, mask)
    assert (W2[~mask] == 0).all()
    assert _err(X, W, W2) < 0.95 * _err(X, W, W * mask)  # sequential OBS: ~8% here (optimum ~40%)


def test_dead_input_channels_are_zeroed_not_nan():
    X, W, H = _problem()
    H[:, 5] = 0
    H[5, :] = 0
    W2, _ = sparsegpt_prune(W, H, choose=adaptive(0.5), blocksize=32)
    assert torch.isfinite(W2).all()
    assert (W2[:, 5] == 0).all()


# -- three-tier chosen during the update (within_block="obs") -----------------------------------------------------

def _tiers(rows, cols, B=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (-(-rows // B), -(-cols // B)), generator=g, dtype=torch.int8)


def test_three_tier_with_identity_hessian_is_the_plain_mask_of_w():
    """No correlations: the OBS saliency is w^2 (up to a constant) and no update flows, so the adaptive choice is
    exactly the three-tier mask of |W|, partial edge blocks included (40 x 56 is not a multiple of 16)."""
    from engine.patterns.three_tier import three_tier_chooser, three_tier_mask
    W = torch.randn(40, 56, generator=torch.Generator().manual_seed(3))
    tiers = _tiers(40, 56)
    W2, keep = sparsegpt_prune(W, 2 * torch.eye(56), choose=three_tier_chooser(tiers, 16, 15), blocksize=20)
    expected = three_tier_mask(W.abs(), tiers, 16, 15)
    assert torch.equal(keep, expected) and torch.equal(W2, W * expected)


def test_three_tier_during_update_keeps_exact_structure_and_beats_a_fixed_mask():
    from engine.patterns.three_tier import DENSE, TOPK, TWO_FOUR, three_tier_chooser, three_tier_mask
    X, W, H = _problem(rows=48, cols=96)
    tiers = _tiers(48, 96, seed=1)
    W2, keep = sparsegpt_prune(W, H, choose=three_tier_chooser(tiers, 16, 15), blocksize=40)
    assert (W2[~keep] == 0).all()
    blocks = keep.view(3, 16, 6, 16).permute(0, 2, 1, 3).reshape(3, 6, 256)
    kept = blocks.sum(-1)
    assert (kept[tiers == DENSE] == 256).all() and (kept[tiers == TOPK] == 15).all()
    assert (blocks[tiers == TWO_FOUR].view(-1, 16, 4, 4).sum(-1) == 2).all()
    # the same tiers with the mask fixed beforehand by the OBS saliency of the dense weights, then reconstructed
    obs = W.abs() / torch.linalg.inv(H + 0.01 * H.diagonal().mean() * torch.eye(96)).diagonal().sqrt()
    W3, _ = sparsegpt_prune(W, H, keep_mask=three_tier_mask(obs, tiers, 16, 15), blocksize=40)
    assert _err(X, W, W2) < _err(X, W, W3)
