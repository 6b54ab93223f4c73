"""Calibrate once, re-plan many (engine/explore/): re-planned masks equal the engine's own, the cache never serves
stale statistics, an estimate leaves the model dense bit for bit, the storage formula, the --sweep command."""
import json
import threading

import pytest
import torch

from conftest import tiny_model, token_windows
from engine.cli.prune_cli import main
from engine.errors import UserError
from engine.eval.perplexity import perplexity
from engine.explore import (
    CalibrationCache,
    Replan,
    apply_masks,
    apply_update,
    block_choices,
    calibrate,
    calibrate_progressively,
    calibration_key,
    estimate,
    evaluate_windows,
    held_masks,
    keep_from_choices,
    masks_only,
    matrix_mask,
    replan,
    replan_kept,
    storage_estimate,
    sweep,
    sweep_spec,
)
from engine.io.record import encode_tier_map
from engine.methods.scores import obs_scores
from engine.patterns.masks import nm_mask, unstructured_mask
from engine.patterns.registry import PATTERNS
from engine.patterns.three_tier import three_tier_mask
from engine.spec import PruneSpec
from engine.walk.capture import StatsHooks, capture_layer_inputs, run_layer
from engine.walk.discovery import find_decoder_layers, find_targets
from engine.walk.layer_walk import prune_model

QUICK = ["--calib_dataset", "pydoc", "--eval_dataset", "pydoc", "--nsamples", "4", "--seqlen", "64", "--quiet"]


def _model(layers=1, seed=0):
    return tiny_model("llama", seed, layers=layers)


def _windows(n=4, seqlen=32, seed=1):
    return token_windows(n, seqlen, seed)


def _targets(model):
    _, layers = find_decoder_layers(model)
    return {(i, t.name): t for i, layer in enumerate(layers) for t in find_targets(layer)}


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _bit_equal(model, saved):
    """Every parameter byte for byte (tells -0.0 from 0.0)."""
    return all(torch.equal(p.detach().reshape(-1).view(torch.uint8), saved[n].reshape(-1).view(torch.uint8))
               for n, p in model.named_parameters())


def S(**kw):
    return PruneSpec(nsamples=4, **kw)


TT = dict(pattern="three_tier")
# every pattern, every tier scope and assignment, every method (on a model with one decoder layer, where the walk's
# statistics are the dense model's: the exact walk is the from-scratch plan on the same statistics)
SPECS = [
    S(method="wanda", **TT), S(method="wanda", tier_scope="layer", **TT), S(method="wanda", tier_scope="model", **TT),
    S(method="wanda", assignment="cost", **TT), S(method="wanda", tier_scope="layer", assignment="cost", **TT),
    S(method="wanda", tier_scope="model", assignment="cost", keep=3, block=8, **TT),
    S(method="wanda", within_block="magnitude", **TT), S(method="wanda", block_rule="original", keep=10, **TT),
    S(method="magnitude", tier_scope="model", **TT), S(method="ria", tier_scope="layer", **TT),
    S(method="fisher", tier_scope="model", assignment="cost", **TT), S(method="fisher", **TT),
    S(method="fisher_wanda", tier_scope="model", assignment="cost", **TT),
    S(method="fisher_wanda", tier_scope="layer", **TT),
    S(method="sparsegpt", tier_scope="model", **TT), S(method="sparsegpt", tier_scope="matrix", keep=0, **TT),
    S(method="wanda", pattern="unstructured", sparsity=0.6), S(method="magnitude", pattern="unstructured"),
    S(method="wanda", pattern="unstructured", use_variant=True), S(method="ria", pattern="unstructured"),
    S(method="wanda", pattern="nm", n=2, m=4), S(method="fisher", pattern="nm", n=1, m=4),
    S(method="wanda", pattern="block", sparsity=0.3), S(method="wanda", pattern="block_topk", sparsity=0.4),
    S(method="fisher_wanda", pattern="threshold_hybrid"),
]


@pytest.fixture(scope="module")
def one_layer():
    model, windows = _model(layers=1), _windows()
    return model, windows, _params(model)


def _walk_masks(model, spec, windows, dense):
    """The masks and tier maps of the engine's own walk (then the dense weights back)."""
    entries = []
    prune_model(model, spec, windows, progress=lambda e: entries.extend(e.get("matrices", [])))
    keep = {k: t.weight() != 0 for k, t in _targets(model).items()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(dense[n])
    return keep, {(e["layer"], e["module"]): e["tier_map"] for e in entries}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label().replace(" ", "_"))
def test_replan_equals_the_walks_masks(one_layer, spec):
    model, windows, dense = one_layer
    cal = calibrate(model, spec, windows)
    if "ratios" in spec.canonical():  # re-plan another split first: what is kept for it must not leak
        replan(cal, spec.replace(ratios=(0.1, 0.2, 0.7)))
    plan = replan(cal, spec)
    keep, tier_maps = _walk_masks(model, spec, windows, dense)
    assert plan.spec == spec and (plan.notes == []) == (not spec.updates_weights)  # sparsegpt: no update
    assert set(plan.matrices) == set(keep) and len(keep) == 7
    for k, m in plan.matrices.items():
        assert m.kept == int(keep[k].sum()), k  # counted before the mask is built
        assert torch.equal(m.keep, keep[k]), k
        assert (None if m.tiers is None else encode_tier_map(m.tiers.numpy())) == tier_maps[k], k
    assert _bit_equal(model, dense)


@pytest.mark.parametrize("spec", [S(method="wanda", reconstruct=True, within_block="obs", tier_scope="model", **TT),
                                  S(method="sparsegpt", within_block="obs", assignment="cost", **TT),
                                  S(method="magnitude", pattern="nm", reconstruct=True)], ids=str)
def test_a_spec_with_the_update_is_planned_as_its_masks_only_twin(one_layer, spec):
    model, windows, dense = one_layer
    plan = replan(calibrate(model, spec, windows), spec)
    twin, notes = masks_only(spec)
    assert plan.spec == twin and plan.requested == spec and not twin.reconstruct and twin.within_block != "obs"
    assert any("no OBS update" in n for n in plan.notes)
    assert any("chosen by the method's score" in n for n in plan.notes) == (spec.within_block == "obs")
    keep, _ = _walk_masks(model, twin, windows, dense)
    assert all(torch.equal(m.keep, keep[k]) for k, m in plan.matrices.items())


@pytest.mark.parametrize("pattern", [dict(pattern="unstructured", sparsity=0.5), dict(pattern="nm", n=2, m=4)])
def test_sparsegpt_masks_only_is_the_mask_of_its_saliency_on_the_dense_weights(one_layer, pattern):
    model, windows, _ = one_layer
    spec = S(method="sparsegpt", **pattern)
    plan = replan(calibrate(model, spec, windows), spec)
    assert any("saliency on the dense weights" in n for n in plan.notes)
    _, layers = find_decoder_layers(model)
    targets = find_targets(layers[0])
    hooks = StatsHooks(targets, hessian=True)
    run_layer(layers[0], capture_layer_inputs(model, layers, windows))
    hooks.remove()
    for t in targets:
        s = obs_scores(t.weight(), hooks.stats[t.name])
        want = unstructured_mask(s, 0.5, "row") if pattern["pattern"] == "unstructured" else nm_mask(s, 2, 4)
        assert torch.equal(plan.matrices[(0, t.name)].keep, want), t.name


@pytest.mark.parametrize("spec", [S(method="magnitude", tier_scope=scope, assignment=a, **TT)
                                  for scope in ("matrix", "layer", "model") for a in ("importance", "cost")], ids=str)
def test_magnitude_replan_equals_the_walk_on_every_layer(spec):
    """Magnitude reads no data, so every layer of a deeper model sees the same statistics in the walk."""
    model = _model(layers=2)
    dense = _params(model)
    plan = replan(calibrate(model, spec, None), spec)
    keep, _ = _walk_masks(model, spec, None, dense)
    assert len(keep) == 14 and all(torch.equal(plan.matrices[k].keep, keep[k]) for k in keep)


def test_statistics_are_the_dense_models_on_every_layer():
    """Layer 1's norms are measured on the dense layer 0's outputs."""
    model, windows = _model(layers=2), _windows()
    cal = calibrate(model, S(method="wanda"), windows)
    _, layers = find_decoder_layers(model)
    inputs = capture_layer_inputs(model, layers, windows)
    inputs.hidden = run_layer(layers[0], inputs)
    targets = find_targets(layers[1])
    hooks = StatsHooks(targets, hessian=False)
    run_layer(layers[1], inputs)
    hooks.remove()
    for t in targets:
        assert torch.equal(cal.matrices[(1, t.name)].input_norm(), hooks.stats[t.name].input_norm())


@pytest.mark.parametrize("shape", [(40, 52), (64, 64), (16, 20)])
@pytest.mark.parametrize("keep", [0, 5, 256])
def test_block_choices_give_three_tier_mask_with_ties_and_edge_blocks(shape, keep):
    scores = torch.randint(0, 4, shape).float()  # many ties
    spec = S(method="magnitude", keep=keep, **TT)
    choices = block_choices(scores, scores, spec)
    for seed in range(3):
        tiers = torch.randint(0, 3, (-(-shape[0] // 16), -(-shape[1] // 16)),
                              generator=torch.Generator().manual_seed(seed)).to(torch.int8)
        want = three_tier_mask(scores, tiers, 16, keep)
        assert torch.equal(keep_from_choices(choices, tiers, 16), want)
        # the counts a re-plan reports before building any mask: weights kept per block under its tier
        per_block = torch.nn.functional.pad(want.long(), (0, -shape[1] % 16, 0, -shape[0] % 16))
        per_block = per_block.view(per_block.shape[0] // 16, 16, per_block.shape[1] // 16, 16).sum(dim=(1, 3))
        assert torch.equal(choices.kept.gather(0, tiers.long().unsqueeze(0)).squeeze(0), per_block)


# --- the cache key: never a stale calibration -----------------------------------------------------------------

def test_cache_key_follows_weights_data_seed_and_method():
    model, windows = _model(), _windows()
    spec = S(method="wanda", **TT)
    base = calibration_key(model, spec, windows, "pydoc")
    assert calibration_key(model, spec.replace(ratios=(0.5, 0.3, 0.2), keep=3, tier_scope="model"), windows,
                           "pydoc") == base  # what a re-plan changes is not part of it
    changed = [calibration_key(model, spec, _windows(seed=2), "pydoc"),  # other data
               calibration_key(model, spec, windows, "wikitext2"),
               calibration_key(model, spec.replace(seed=1), windows, "pydoc"),
               calibration_key(model, spec.replace(nsamples=5), windows, "pydoc"),
               calibration_key(model, spec.replace(method="ria"), windows, "pydoc"),
               calibration_key(model, spec, windows[:, :16], "pydoc")]  # seqlen
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] += 1e-3
    changed.append(calibration_key(model, spec, windows, "pydoc"))
    assert all(k != base for k in changed) and len({json.dumps(k, sort_keys=True) for k in changed}) == len(changed)


def test_the_cache_serves_a_calibration_only_while_nothing_it_depends_on_changed():
    model, windows = _model(), _windows()
    spec = S(method="wanda", **TT)
    cache = CalibrationCache()
    first = cache.get(model, spec, windows, data="pydoc")
    assert cache.get(model, spec.replace(ratios=(0.2, 0.2, 0.6)), windows, data="pydoc") is first
    assert cache.get(model, spec, _windows(seed=3), data="pydoc") is not first
    assert cache.get(model, spec.replace(seed=7), windows, data="pydoc") is not first
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[0, 0] += 1e-3
    assert cache.get(model, spec, windows, data="pydoc") is not first
    with pytest.raises(UserError, match="weights changed"):
        replan(first, spec)  # the old calibration refuses the changed model


def test_replan_refuses_a_spec_the_calibration_was_not_made_for():
    model, windows = _model(), _windows()
    cal = calibrate(model, S(method="wanda", **TT), windows)
    with pytest.raises(UserError, match="method"):
        replan(cal, S(method="ria", **TT))
    with pytest.raises(UserError, match="seed"):
        replan(cal, S(method="wanda", seed=3, **TT))
    assert replan(cal, S(method="wanda", keep=3, **TT)).spec.keep == 3



@pytest.mark.parametrize("spec", [s for s in SPECS if s.pattern == "three_tier"],
                         ids=lambda s: s.label().replace(" ", "_"))
def test_a_split_whose_ratios_or_scope_moved_is_planned_without_the_model(spec):
    """replan_kept reads the per-block choices a three-tier plan kept, not the model: while an estimate holds the
    weights masked (here: zeroed) it gives replan's masks and grids on the dense weights for any ratios or scope of
    the same block, K, choice inside blocks and assignment; anything else (no plan of them yet, another K, a rule
    without kept choices) is None."""
    model, windows = _model(layers=2), _windows()
    cal = calibrate(model, spec, windows)
    if not PATTERNS["three_tier"].fixed_grid(spec):  # the original rule: scored again each time
        replan(cal, spec)
        assert replan_kept(cal, spec.replace(ratios=(0.1, 0.2, 0.7))) is None
        return
    moved = [spec.replace(ratios=(0.1, 0.2, 0.7)),
             spec.replace(tier_scope="matrix" if spec.tier_scope != "matrix" else "model", ratios=(0.4, 0.4, 0.2))]
    assert replan_kept(cal, spec) is None  # nothing planned yet: it needs the weights
    replan(cal, spec)
    want = [replan(cal, s) for s in moved]
    with torch.no_grad():
        for t in _targets(model).values():
            t.set_weight(torch.zeros_like(t.weight()))  # what an estimate's masks do to the weights, and worse
    for s, exact in zip(moved, want):
        plan = replan_kept(cal, s)
        assert plan.spec == exact.spec and plan.fingerprint == exact.fingerprint == cal.key["fingerprint"]
        assert plan.sparsity == exact.sparsity
        for k, m in plan.matrices.items():
            assert torch.equal(m.keep, exact.matrices[k].keep) and torch.equal(m.tiers, exact.matrices[k].tiers), k
    assert replan_kept(cal, spec.replace(keep=spec.keep + 1)) is None
    with pytest.raises(UserError, match="method"):
        replan_kept(cal, spec.replace(method="ria" if spec.method != "ria" else "wanda"))
    with pytest.raises(UserError, match="weights changed"):  # replan itself still refuses a model that changed
        replan(cal, moved[0])

# --- the estimate ------------------------------------------------------------------------------------------------

def test_estimate_is_the_perplexity_of_the_pruned_model_and_leaves_it_dense(one_layer):
    model, windows, dense = one_layer
    spec = S(method="wanda", tier_scope="model", **TT)
    plan = replan(calibrate(model, spec, windows), spec)
    eval_ids = _windows(n=1, seqlen=200, seed=5)
    events = []
    est = estimate(model, plan, eval_ids, 32, windows=5, progress=events.append)
    assert _bit_equal(model, dense)
    assert est.status == "completed" and est.windows == 5 and [e["done"] for e in events] == [1, 2, 3, 4, 5]
    assert est.ppl_low < est.ppl < est.ppl_high and events[-1]["ppl"] == est.ppl
    prune_model(model, spec, windows)
    want = perplexity(model, eval_ids, 32, max_windows=5).ppl
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(dense[n])
    assert est.ppl == pytest.approx(want, rel=1e-5)


def test_held_masks_of_a_pruned_model_and_the_perplexity_of_its_windows():
    """An exact run read as a plan: its masks are the model's nonzero weights (2:4 by SparseGPT: exactly half), its
    storage follows the N:M formula, and evaluate_windows is the perplexity of the model as it is."""
    model, windows = _model(layers=2), _windows()
    dense = _params(model)
    spec = S(method="sparsegpt", pattern="nm", n=2, m=4)
    prune_model(model, spec, windows)
    plan = held_masks(model, spec)
    assert plan.sparsity == 0.5 and plan.spec == spec and len(plan.matrices) == len(_targets(model))
    for key, t in _targets(model).items():
        assert torch.equal(plan.matrices[key].keep, t.weight() != 0)
    kept = sum(m.kept for m in plan.matrices.values())
    assert storage_estimate(plan)["bytes"] == kept * (16 + 2) / 8
    eval_ids = _windows(n=1, seqlen=200, seed=5)
    events = []
    got = evaluate_windows(model, eval_ids, 32, windows=4, progress=events.append)
    assert got.windows == 4 and [e["done"] for e in events] == [1, 2, 3, 4]
    assert got.ppl == pytest.approx(perplexity(model, eval_ids, 32, max_windows=4).ppl, rel=1e-5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(dense[n])
    with pytest.raises(UserError, match="fewer than one window"):
        evaluate_windows(model, eval_ids, 500)


def test_cancel_during_the_estimate_stops_it_and_the_model_is_exactly_dense():
    model, windows = _model(layers=2), _windows()
    model.model.layers[1].mlp.up_proj.weight.data[3, :7] = -0.0  # signed zeros come back as they were
    dense = _params(model)
    spec = S(method="wanda", **TT)
    plan = replan(calibrate(model, spec, windows), spec)
    cancel = threading.Event()

    def moved_a_slider(event):
        assert not _bit_equal(model, dense)  # the masks are on while it evaluates
        cancel.set()
    est = estimate(model, plan, _windows(n=1, seqlen=200), 32, windows=5, progress=moved_a_slider, cancel=cancel)
    assert est.status == "cancelled" and est.windows == 1 and est.total == 5
    assert _bit_equal(model, dense)

    def fails(event):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        estimate(model, plan, _windows(n=1, seqlen=200), 32, windows=5, progress=fails)
    assert _bit_equal(model, dense)


def test_sweep_is_one_record_per_split_on_one_calibration(one_layer):
    model, windows, dense = one_layer
    base = S(method="fisher_wanda", tier_scope="model", assignment="cost", **TT)
    cal = calibrate(model, base, windows)
    specs = [sweep_spec(base, (0.35, 0.45, 0.2)), sweep_spec(base, (0.1, 0.3, 0.6))]
    records = sweep(model, cal, specs, _windows(n=1, seqlen=200), 32, windows=2)
    assert [r["spec"]["ratios"] for r in records] == [[0.35, 0.45, 0.2], [0.1, 0.3, 0.6]]
    assert records[1]["sparsity"] > records[0]["sparsity"] and records[1]["storage"]["bytes"] < \
        records[0]["storage"]["bytes"]
    assert all(r["ppl"] > 1 and r["windows"] == 2 for r in records)
    assert _bit_equal(model, dense)


def test_sweep_points_for_each_kind_of_pattern():
    assert sweep_spec(S(pattern="unstructured"), (0.7,)).sparsity == 0.7
    assert sweep_spec(S(pattern="nm", n=2, m=4), (0.25,)).n == 3
    assert sweep_spec(S(pattern="block"), (0.3,)).sparsity == 0.3
    for base, point, message in [(S(**TT), (0.5, 0.5), r"3 numbers \(dense 2:4 top-K\)"),
                                 (S(**TT), (0.5, 0.3, 0.3), "sum to 1"),
                                 (S(pattern="nm", n=2, m=4), (0.3,), "multiple of 1/4"),
                                 (S(pattern="unstructured"), (0.1, 0.2), "one sparsity"),
                                 (S(pattern="threshold_hybrid"), (0.5,), "no sparsity to sweep")]:
        with pytest.raises(UserError, match=message):
            sweep_spec(base, point)


# --- storage -------------------------------------------------------------------------------------------------------

def _plan(spec, keep, tiers=None):
    return Replan(spec, spec, [], "", {(0, "m"): matrix_mask(keep, tiers)})


def test_storage_of_a_hand_made_three_tier_plan():
    """32 x 32, B = 16: one dense block (256 values), one 2:4 block (128 values + 2-bit positions), two top-K blocks
    (K = 15 values + 8-bit positions each), at 16 bits a value."""
    tiers = torch.tensor([[0, 1], [2, 2]], dtype=torch.int8)
    keep = three_tier_mask(torch.rand(32, 32), tiers, 16, 15)
    got = storage_estimate(_plan(S(keep=15, **TT), keep, tiers))
    bits = 256 * 16 + 128 * (16 + 2) + 2 * 15 * (16 + 8)
    assert got["bytes"] == bits / 8 == 890 and got["dense_bytes"] == 32 * 32 * 2
    assert got["bits_per_weight"] == bits / 1024


def test_storage_of_n_m_and_unstructured_plans():
    keep = torch.tensor([[1, 1, 0, 0, 0, 1, 0, 1]] * 2, dtype=torch.bool)
    assert storage_estimate(_plan(S(pattern="nm", n=2, m=4), keep))["bytes"] == 8 * (16 + 2) / 8
    # half kept: a bitmask (one bit per weight) beats CSR (a 3-bit column per kept value, 32-bit row counts)
    assert storage_estimate(_plan(S(pattern="unstructured"), keep))["bytes"] == (8 * 16 + 16) / 8
    sparse = torch.zeros(2, 64, dtype=torch.bool)
    sparse[0, 5] = True  # one kept of 128: CSR (6-bit column + two row counts) beats the 128-bit mask
    assert storage_estimate(_plan(S(pattern="unstructured"), sparse))["bytes"] == (16 + 6 + 2 * 32) / 8
    assert storage_estimate(_plan(S(pattern="nm", n=2, m=4), keep), value_bits=8)["bytes"] == 8 * 10 / 8


# --- the command line ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sweep_command_end_to_end(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    rc = main(["--model", str(tiny_llama_dir), "--sparsity_type", "three_tier", "--tier_scope", "model",
               "--sweep", "0.35 0.45 0.2", "0.5,0.3,0.2", "0.1 0.2 0.7", "--eval_windows", "2", "--save", str(out),
               *QUICK])
    assert rc == 0
    text = capsys.readouterr().out.splitlines()
    lines = [t for t in text if t.startswith("wanda three-tier")]
    assert len(lines) == 3 and all("status completed" in t and "ppl_test" in t and "estimate: 2 windows" in t
                                   for t in lines)
    assert "0.35/0.45/0.2" in lines[0] and "0.5/0.3/0.2" in lines[1]
    table = [t for t in text if t.startswith("| ")]
    assert len(table) == 4 and table[0].startswith("| split | sparsity | ppl estimate")
    saved = json.loads((out / "sweep.json").read_text())
    assert [p["spec"]["ratios"] for p in saved["points"]] == [[0.35, 0.45, 0.2], [0.5, 0.3, 0.2], [0.1, 0.2, 0.7]]
    assert saved["calibration"]["key"]["data"].startswith("pydoc") and saved["eval"]["windows"] == 2
    assert all(p["ppl"] > 1 and 0 < p["storage"]["ratio"] < 1 for p in saved["points"])


def test_sweep_command_unstructured_sparsities(tiny_llama_dir, capsys):
    rc = main(["--model", str(tiny_llama_dir), "--sweep", "0.3", "0.6", "--eval_windows", "1", *QUICK])
    assert rc == 0
    lines = [t for t in capsys.readouterr().out.splitlines() if t.startswith("wanda unstructured")]
    assert [line.split(" | ")[0] for line in lines] == ["wanda unstructured 0.3", "wanda unstructured 0.6"]


@pytest.mark.parametrize("points, message", [(["0.5 0.5"], "3 numbers (dense 2:4 top-K)"),
                                             (["0.4 0.4 0.4"], "sum to 1"), (["a b c"], "not a list of numbers"),
                                             (["0.3 0.3 nan"], "finite")])
def test_a_bad_sweep_split_is_one_line(tiny_llama_dir, capsys, points, message):
    rc = main(["--model", str(tiny_llama_dir), "--sparsity_type", "three_tier", "--sweep", "0.35 0.45 0.2",
               *points, *QUICK])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert "Traceback" not in err[0]


def test_calibration_keeps_vectors_not_scores(one_layer):
    model, windows, _ = one_layer
    n_in = sum(t.shape[1] for t in _targets(model).values())
    n_out = sum(t.shape[0] for t in _targets(model).values())
    assert calibrate(model, S(method="wanda"), windows).nbytes == 4 * n_in
    assert calibrate(model, S(method="sparsegpt"), windows).nbytes == 8 * n_in
    assert calibrate(model, S(method="fisher_wanda"), windows).nbytes == 4 * (n_in + n_out)
    assert calibrate(model, S(method="magnitude"), None).nbytes == 0


def test_matrix_entries_are_what_a_run_record_lists():
    """engine.explore.matrix_entries: per matrix the sparsity of its mask and, for block patterns, the tier map and
    census of its plan, in the record's encoding (what components/figures.py draws)."""
    from engine.explore import matrix_entries
    from engine.io.record import decode_tier_map
    model = _model(layers=2)
    cal = calibrate(model, S(method="wanda", **TT), _windows())
    for spec in (S(method="wanda", tier_scope="model", **TT), S(method="wanda", pattern="nm")):
        plan = replan(cal, spec)
        entries = matrix_entries(plan)
        assert [(e["layer"], e["module"]) for e in entries] == list(plan.matrices)
        for e, m in zip(entries, plan.matrices.values()):
            assert e["sparsity"] == pytest.approx(1 - m.keep.sum().item() / m.numel)
            if m.tiers is None:
                assert e["tier_map"] is None and e["tiers"] is None
            else:
                assert (decode_tier_map(e["tier_map"]) == m.tiers.numpy()).all()
                assert sum(e["tiers"].values()) == m.tiers.numel()


# --- the estimate with the recipe's update ------------------------------------------------------------------------

UPDATING = [S(method="sparsegpt", pattern="unstructured"), S(method="sparsegpt", pattern="nm", n=2, m=4),
            S(method="sparsegpt", within_block="obs", tier_scope="model", **TT),
            S(method="wanda", reconstruct=True, tier_scope="layer", **TT),
            S(method="fisher_wanda", reconstruct=True, within_block="obs", tier_scope="model", assignment="cost",
              **TT),
            S(method="wanda", pattern="unstructured", reconstruct=True)]


@pytest.mark.parametrize("spec", UPDATING, ids=lambda s: s.label().replace(" ", "_"))
def test_the_update_aware_estimate_is_the_exact_walk_on_one_layer(one_layer, spec):
    """On one decoder layer the dense inputs are the real ones: the update-aware estimate's weights are the exact
    walk's bit for bit, and so is its perplexity; the model is dense again after it."""
    model, windows, dense = one_layer
    cal = calibrate(model, spec, windows, hessians=True)
    plan = replan(cal, spec)
    eval_ids = _windows(n=1, seqlen=200, seed=5)
    events = []
    est = estimate(model, plan, eval_ids, 32, windows=4, progress=events.append, update_from=cal)
    assert _bit_equal(model, dense)
    assert est.kind == "with update" and est.note == "" and {e["kind"] for e in events} == {"with update"}
    undo = apply_update(model, cal, plan)
    updated = _params(model)
    undo()
    assert _bit_equal(model, dense)
    prune_model(model, spec, windows)
    assert _bit_equal(model, updated)
    exact = evaluate_windows(model, eval_ids, 32, windows=4)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(dense[n])
    assert est.ppl == exact.ppl
    masks_only_est = estimate(model, plan, eval_ids, 32, windows=4)
    assert masks_only_est.kind == "masks only" and masks_only_est.ppl != est.ppl


def test_the_update_aware_estimate_falls_back_to_masks_only_and_says_why(one_layer):
    model, windows, dense = one_layer
    spec = S(method="sparsegpt", pattern="unstructured")
    eval_ids = _windows(n=1, seqlen=200, seed=5)
    over = calibrate(model, spec, windows, hessians=True, hessian_budget=1000)
    assert over.hessians is None and "over the budget" in over.hessians_note
    plan = replan(over, spec)
    est = estimate(model, plan, eval_ids, 32, windows=2, update_from=over)
    assert est.kind == "masks only" and est.note.startswith("masks only: the Hessians of every matrix would take")
    assert est.ppl == estimate(model, plan, eval_ids, 32, windows=2).ppl
    plain = calibrate(model, spec, windows)
    assert "kept no Hessians" in estimate(model, plan, eval_ids, 32, windows=2, update_from=plain).note
    wanda = S(method="wanda", **TT)  # no update to apply: masks only, nothing to explain
    est = estimate(model, replan(calibrate(model, wanda, windows), wanda), eval_ids, 32, windows=2,
                   update_from=plain)
    assert (est.kind, est.note) == ("masks only", "")
    assert _bit_equal(model, dense)


def test_kept_hessians_are_shared_by_matrices_that_read_one_input(one_layer):
    model, windows, _ = one_layer
    cal = calibrate(model, S(method="sparsegpt", pattern="unstructured"), windows, hessians=True)
    h = {name: st.XtX for (_, name), st in cal.hessians.items()}
    assert h["self_attn.q_proj"] is h["self_attn.k_proj"] is h["self_attn.v_proj"]
    assert h["mlp.gate_proj"] is h["mlp.up_proj"] and h["self_attn.o_proj"] is not h["self_attn.q_proj"]
    assert cal.hessian_nbytes == sum(4 * x.shape[0] ** 2 for x in (h["self_attn.q_proj"], h["self_attn.o_proj"],
                                                                    h["mlp.gate_proj"], h["mlp.down_proj"]))


def test_a_cancelled_estimate_lets_go_inside_a_forward_pass():
    """Cancel set while a window's forward pass is in its first decoder layer: the second layer never runs."""
    model, windows = _model(layers=2), _windows()
    spec = S(method="wanda", **TT)
    plan = replan(calibrate(model, spec, windows), spec)
    cancel, ran = threading.Event(), []
    first = model.model.layers[0].register_forward_hook(lambda *a: cancel.set())
    second = model.model.layers[1].register_forward_hook(lambda *a: ran.append(1))
    try:
        est = estimate(model, plan, _windows(n=1, seqlen=200), 32, windows=5, cancel=cancel)
    finally:
        first.remove()
        second.remove()
    assert est.status == "cancelled" and est.windows == 0 and ran == []


def test_a_cancel_while_the_masks_are_built_stops_before_the_next_matrix_and_leaves_the_model_dense():
    """A plan builds its keep-masks when the estimate first needs them (seconds for a real model at a large K): a
    cancel set meanwhile is read before the next matrix, not after all of them and a window."""
    model, windows = _model(layers=2), _windows()
    dense = _params(model)
    spec = S(method="wanda", **TT)
    plan = replan(calibrate(model, spec, windows), spec)
    cancel, built = threading.Event(), []
    for key, m in plan.matrices.items():
        def build(original=m.build, key=key):
            built.append(key)
            if len(built) == 2:
                cancel.set()
            return original()
        m.build = build
    est = estimate(model, plan, _windows(n=1, seqlen=200), 32, windows=5, cancel=cancel)
    assert est.status == "cancelled" and est.windows == 0
    assert len(built) == 2 < len(plan.matrices)
    assert _bit_equal(model, dense)


@pytest.mark.parametrize("copy_bytes", [0, 10**12, "half"])
def test_the_masks_undo_is_bit_exact_from_copies_removed_values_or_both(copy_bytes):
    """apply_masks keeps whole copies of the matrices up to its byte budget (a fast undo) and the removed values of
    the rest: every mix restores the dense weights bit for bit, and the masked model holds the plan's zeros."""
    model, windows = _model(layers=2), _windows()
    dense = _params(model)
    spec = S(method="wanda", **TT)
    plan = replan(calibrate(model, spec, windows), spec)
    if copy_bytes == "half":
        sizes = [m.numel * 4 for m in plan.matrices.values()]
        copy_bytes = sum(sizes[:len(sizes) // 2])
    _, layers = find_decoder_layers(model)
    targets = {(i, t.name): t for i, layer in enumerate(layers) for t in find_targets(layer, False)}
    before = {k: t.weight().clone() for k, t in targets.items()}
    undo = apply_masks(model, plan, copy_bytes=copy_bytes)
    for k, t in targets.items():
        assert torch.equal(t.weight(), before[k].masked_fill(~plan.matrices[k].keep, 0))
    undo()
    assert _bit_equal(model, dense)


def test_progressive_calibration_first_rests_on_a_few_windows_then_on_all(one_layer):
    model, windows, _ = one_layer
    spec = S(method="wanda", **TT)
    cache = CalibrationCache()
    first, full = list(calibrate_progressively(model, spec, windows, first=2, cache=cache))
    assert (first.windows, full.windows) == (2, 4)
    assert first.key["windows"] == calibrate(model, spec, windows[:2]).key["windows"] != full.key["windows"]
    want = calibrate(model, spec, windows)
    assert all(torch.equal(want.matrices[k].norm, full.matrices[k].norm) for k in want.matrices)
    assert torch.equal(replan(first, spec).matrices[(0, "mlp.up_proj")].keep,
                       replan(calibrate(model, spec, windows[:2]), spec).matrices[(0, "mlp.up_proj")].keep)
    again = list(calibrate_progressively(model, spec, windows, first=2, cache=cache))
    assert again == [full]  # served from the cache: no first pass
