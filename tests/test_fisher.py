"""The fisher method: loss sensitivity from gradients (engine/walk/fisher.py), and tiers ranked across the model."""
import threading

import pytest
import torch

from conftest import tiny_model, token_windows
from engine.methods.scores import fisher_scores
from engine.patterns.three_tier import (
    DENSE,
    TOPK,
    TWO_FOUR,
    assign_jointly_by_cost,
    assign_tiers_jointly,
    tier_costs,
    tier_counts,
)
from engine.spec import PruneSpec
from engine.walk.discovery import find_decoder_layers, find_targets
from engine.walk.fisher import fisher_diagonal
from engine.walk.layer_walk import prune_model

_model = tiny_model


def _windows(n=3, seqlen=24):
    return token_windows(n, seqlen, seed=1)


def _targets(model):
    _, layers = find_decoder_layers(model)
    return {(i, t.name): t for i, layer in enumerate(layers) for t in find_targets(layer)}


@pytest.mark.parametrize("family", ["llama", "gpt2", "mixtral"])
def test_fisher_is_the_mean_squared_gradient_of_each_window(family):
    """Linear, GPT-2's transposed Conv1D and fused experts: F [out, in] = mean over windows of (dL/dW)^2."""
    model, windows = _model(family), _windows()
    targets = _targets(model)
    got = fisher_diagonal(model, targets, windows)
    key = next(k for k in targets if k[0] == 1 and ("expert" in k[1] or "c_attn" in k[1] or "v_proj" in k[1]))
    t = targets[key]
    want = torch.zeros(t.shape)
    for w in range(len(windows)):
        model.zero_grad()
        with torch.enable_grad():
            model(input_ids=windows[w:w + 1], labels=windows[w:w + 1]).loss.backward()
        want += t.matrix_of(t.parameter.grad).float() ** 2
    model.zero_grad(set_to_none=True)
    assert got[key].shape == t.shape
    torch.testing.assert_close(got[key], want / len(windows), rtol=1e-4, atol=1e-12)
    assert (got[key] > 0).any()


def test_fisher_pass_leaves_the_model_as_it_found_it():
    model = _model()
    model.lm_head.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fisher_diagonal(model, _targets(model), _windows())
    for n, p in model.named_parameters():
        assert p.requires_grad == flags[n] and p.grad is None and torch.equal(p, before[n])


def test_fisher_scores_exact():
    W = torch.tensor([[2.0, -3.0], [0.5, 0.0]])
    F = torch.tensor([[4.0, 1.0], [16.0, 9.0]])
    assert fisher_scores(W, F).tolist() == [[4.0, 3.0], [2.0, 0.0]]


def test_joint_assignment_without_normalisation_compares_costs_as_they_are():
    """Loss-unit costs: a matrix whose blocks all cost 100x less takes every top-K slot; normalised per matrix
    (Wanda's units), the same costs would split the top-K slots evenly."""
    cheap = torch.ones(2, 2) * 0.01
    dear = torch.ones(2, 2)
    costs = [torch.stack([torch.zeros(2, 2), c, 3 * c]) for c in (cheap, dear)]
    raw = assign_jointly_by_cost(costs, (0.25, 0.25, 0.5), normalise=False)
    assert (raw[0] == TOPK).all() and not (raw[1] == TOPK).any()
    assert torch.bincount(torch.cat([g.flatten() for g in raw]).long(), minlength=3).tolist() == [2, 2, 4]
    normed = assign_jointly_by_cost(costs, (0.25, 0.25, 0.5))
    assert int((normed[0] == TOPK).sum()) == int((normed[1] == TOPK).sum())
    # importance assignment: the same rule
    imp = assign_tiers_jointly([cheap, dear], (0.5, 0.0, 0.5), normalise=False)
    assert (imp[0] == TOPK).all() and (imp[1] == DENSE).all()


def test_model_scope_fisher_tiers_are_the_global_cost_ranking_of_the_dense_gradients():
    model, windows = _model(), _windows()
    spec = PruneSpec(method="fisher", pattern="three_tier", tier_scope="model", assignment="cost", nsamples=3)
    targets = _targets(model)
    fisher = fisher_diagonal(model, targets, windows)
    keys = list(targets)
    costs = [tier_costs(fisher_scores(targets[k].weight().detach(), fisher[k]), spec.block, spec.keep) for k in keys]
    expected = dict(zip(keys, assign_jointly_by_cost(costs, spec.ratios, normalise=False)))
    dense = {k: t.weight().detach().clone() for k, t in targets.items()}

    result = prune_model(model, spec, windows)
    assert result.status == "completed"
    total = sum(g.numel() for g in expected.values())
    got = [sum(e["tiers"][n] for e in result.matrices) for n in ("dense", "2:4", "topk")]
    assert tuple(got) == tier_counts(total, spec.ratios)
    for e in result.matrices:
        key = (e["layer"], e["module"])
        grid = expected[key]
        assert e["tiers"] == {"dense": int((grid == DENSE).sum()), "2:4": int((grid == TWO_FOUR).sum()),
                              "topk": int((grid == TOPK).sum())}
        W, B = targets[key].weight(), spec.block
        kept = (W != 0).view(W.shape[0] // B, B, W.shape[1] // B, B).sum(dim=(1, 3))
        assert (kept[grid == DENSE] == B * B).all()  # random weights: no zeros of their own
        assert (kept[grid == TWO_FOUR] == B * B // 2).all() and (kept[grid == TOPK] == spec.keep).all()
        # masks only: every kept weight is the dense weight, unchanged
        nz = W != 0
        assert torch.equal(W[nz], dense[key][nz])
    n_dense, n_24, n_top = tier_counts(total, spec.ratios)
    assert result.zeros == n_24 * B * B // 2 + n_top * (B * B - spec.keep)


def test_fisher_without_reconstruction_needs_no_layer_statistics(monkeypatch):
    import engine.walk.layer_walk as pruner

    def refuse(*a, **k):
        raise AssertionError("the layer walk captured inputs it does not need")
    monkeypatch.setattr(pruner, "capture_layer_inputs", refuse)
    result = prune_model(_model(), PruneSpec(method="fisher", nsamples=2), _windows(2))
    assert result.status == "completed" and abs(result.sparsity - 0.5) < 1e-9


def test_fisher_with_reconstruction_updates_kept_weights():
    model = _model()
    q = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    prune_model(model, PruneSpec(method="fisher", pattern="nm", reconstruct=True, nsamples=3), _windows())
    W = model.model.layers[0].self_attn.q_proj.weight
    kept = W != 0
    assert int((~kept).sum()) == W.numel() // 2
    assert not torch.allclose(W[kept], q[kept])


def test_stop_during_the_gradient_pass_prunes_nothing():
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cancel = threading.Event()

    def progress(event):
        if "gradient pass 2/" in event.get("message", ""):
            cancel.set()
    result = prune_model(model, PruneSpec(method="fisher", nsamples=3), _windows(), progress=progress, cancel=cancel)
    assert result.status == "cancelled" and result.layers_done == 0 and "gradient pass" in result.message
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.grad is None


@pytest.mark.slow
@pytest.mark.parametrize("within_block", ["score", "obs"])
@pytest.mark.parametrize("family", ["llama", "gpt2", "mixtral"])
def test_best_recipe_end_to_end_exact_counts(family, within_block):
    """The dashboard's default (BEST_THREE_TIER): fisher tiers ranked model-wide by cost, the mask fixed and the
    kept weights updated, and the same with the weights inside blocks chosen by the OBS saliency while they are
    updated. Global tier counts exact, block structure exact."""
    from engine.spec import BEST_THREE_TIER
    model = _model(family)
    spec = PruneSpec(pattern="three_tier", nsamples=3, **{**BEST_THREE_TIER, "within_block": within_block})
    result = prune_model(model, spec, _windows())
    assert result.status == "completed"
    total = sum(e["tier_map"]["shape"][0] * e["tier_map"]["shape"][1] for e in result.matrices)
    got = tuple(sum(e["tiers"][n] for e in result.matrices) for n in ("dense", "2:4", "topk"))
    assert got == tier_counts(total, spec.ratios)
    B = spec.block
    _, n_24, n_top = got
    assert result.zeros == n_24 * B * B // 2 + n_top * (B * B - spec.keep)  # 64-wide tiny matrices: no edge blocks
    with torch.no_grad():
        assert torch.isfinite(model(_windows(1, 16)).logits).all()


def test_obs_choice_inside_blocks_needs_the_update():
    from engine.errors import SpecError
    with pytest.raises(SpecError, match="reconstruct"):
        PruneSpec(method="wanda", pattern="three_tier", within_block="obs")
    PruneSpec(method="sparsegpt", pattern="three_tier", within_block="obs")
    PruneSpec(method="wanda", pattern="three_tier", within_block="obs", reconstruct=True)


# -- fisher_wanda: Wanda inside each row, loss units across rows ----------------------------------------------------

def test_fisher_wanda_scores_exact():
    from engine.methods.scores import fisher_wanda_scores
    from engine.walk.input_stats import LinearStats
    stats = LinearStats(2, "cpu", hessian=False)
    stats.add(torch.tensor([[1.0, 2.0], [1.0, 2.0]]))       # ||X|| = (1, 2), sum of squares 5
    W = torch.tensor([[1.0, -1.0], [2.0, 0.5]])
    rows = torch.tensor([20.0, 0.0])                         # G = (4, 0): the second row is ignored by the loss
    got = fisher_wanda_scores(W, stats, rows)
    assert got[0].tolist() == [2.0, 4.0]                     # 2 * (|w| * ||x||)
    assert got[1, 0] > got[1, 1] > 0                         # still Wanda's order inside the ignored row


def test_row_sums_mode_is_the_row_sum_of_the_full_fisher():
    model, windows = _model(), _windows()
    targets = _targets(model)
    full = fisher_diagonal(model, targets, windows)
    rows = fisher_diagonal(model, targets, windows, rows_only=True)
    for k in targets:
        torch.testing.assert_close(rows[k], full[k].sum(dim=1), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("pattern", [dict(pattern="unstructured"), dict(pattern="nm", n=2, m=4)])
def test_fisher_wanda_per_row_patterns_are_wanda_exactly(pattern):
    """One positive factor per row never changes a per-row comparison: unstructured (per row) and N:M masks
    equal Wanda's to the weight."""
    masks = []
    for method in ("wanda", "fisher_wanda"):
        model = _model()
        prune_model(model, PruneSpec(method=method, nsamples=3, **pattern), _windows())
        masks.append([t.weight() != 0 for t in _targets(model).values()])
    assert all(torch.equal(a, b) for a, b in zip(*masks))


def test_fisher_wanda_model_scope_ranks_in_loss_units_and_keeps_global_counts():
    model = _model()
    spec = PruneSpec(method="fisher_wanda", pattern="three_tier", tier_scope="model", assignment="cost", nsamples=3)
    result = prune_model(model, spec, _windows())
    total = sum(e["tier_map"]["shape"][0] * e["tier_map"]["shape"][1] for e in result.matrices)
    got = tuple(sum(e["tiers"][n] for e in result.matrices) for n in ("dense", "2:4", "topk"))
    assert got == tier_counts(total, spec.ratios)
    assert len({tuple(e["tiers"].values()) for e in result.matrices}) > 1


@pytest.mark.slow
def test_best_recipe_run_with_baselines(tiny_llama_dir, tmp_path):
    """Regression: the magnitude baseline of a run whose weights are kept by OBS saliency once failed (|W| cannot
    choose 'obs' without an update); it now prunes the same pattern by |W|, masks only."""
    from engine.run import RunRequest, run
    from engine.spec import BEST_THREE_TIER
    spec = PruneSpec(pattern="three_tier", nsamples=2, seqlen=32, **{**BEST_THREE_TIER, "within_block": "obs"})
    rec = run(RunRequest(model=str(tiny_llama_dir), device="cpu", spec=spec, calib="pydoc", eval="pydoc",
                         eval_windows=2, baselines=True, baseline_cache_dir=str(tmp_path)))
    assert rec["status"] == "completed"
    assert all(rec["ppl"][k] > 0 for k in ("dense", "magnitude", "pruned"))
