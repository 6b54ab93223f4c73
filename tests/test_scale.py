"""Numbers that stay right at any model size: dense weights always restorable, cache keys derived from the whole
spec, sparsity counted from the weights, Wanda's check_sparsity, and the device list the engine accepts."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import REPO, requires_smollm2
from engine.cli.prune_cli import main
from engine.errors import UserError
from engine.eval.sparsity_check import check_sparsity, sparsity_report
from engine.io import snapshot
from engine.io.baselines import baseline_key
from engine.io.models import available_devices
from engine.io.snapshot import DenseWeights
from engine.methods.sparsegpt import sparsegpt_prune
from engine.patterns.three_tier import three_tier_chooser, three_tier_mask, tier_violations
from engine.run import ModelCache, RunRequest, magnitude_baseline_spec, run
from engine.spec import PruneSpec
from engine.walk.layer_walk import prune_model

pytestmark = pytest.mark.slow  # end to end: a CLI run or a model load per test

QUICK = dict(calib="pydoc", eval="pydoc", eval_windows=2)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- dense weights kept aside ---------------------------------------------------------------------------------

@pytest.mark.parametrize("max_bytes", [1 << 40, 0], ids=["memory", "file"])
def test_dense_weights_restore_in_place_bit_for_bit(tiny_llama_dir, max_bytes, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSITY_SNAPSHOT_DIR", str(tmp_path))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    before, objects = _params(model), dict(model.named_parameters())
    dense = DenseWeights(model, max_bytes)
    assert dense.in_memory == (max_bytes > 0)
    assert list(tmp_path.iterdir()) == ([] if max_bytes else [dense._file])
    assert dense.params.keys() == dict(model.named_parameters()).keys()  # a recovery fine-tune writes them all
    prune_model(model, PruneSpec(method="magnitude", sparsity=0.7), None)
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(1.0)
    assert not _same(before, _params(model))
    dense.restore()
    assert _same(before, _params(model))
    assert all(p is objects[n] for n, p in model.named_parameters())  # the same objects: holders stay valid
    dense.close()
    assert list(tmp_path.iterdir()) == []


def test_file_snapshot_of_a_bfloat16_model_is_exact(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSITY_SNAPSHOT_DIR", str(tmp_path))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16)
    before = _params(model)
    dense = DenseWeights(model, 0)
    prune_model(model, PruneSpec(method="magnitude", pattern="nm"), None)
    dense.restore()
    assert _same(before, _params(model))


def test_no_room_for_the_dense_copy_refuses_before_pruning(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSITY_SNAPSHOT_DIR", str(tmp_path))
    monkeypatch.setattr(snapshot.shutil, "disk_usage", lambda p: type("U", (), {"free": 10})())
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with pytest.raises(UserError, match="cannot keep the dense weights .* not enough free space"):
        DenseWeights(model, 0)
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_weights_offloaded_to_meta_are_refused_with_a_way_out(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model.model.layers[1].mlp.down_proj.to("meta")
    with pytest.raises(UserError, match="offloaded by accelerate.*--device offload"):
        DenseWeights(model, 1 << 40)


@pytest.mark.parametrize("text,expected", [("0", 0), ("0.5", 1 << 29), ("", 8 << 30)])
def test_snapshot_budget_from_the_environment(monkeypatch, text, expected):
    monkeypatch.setenv("SPARSITY_SNAPSHOT_MAX_GB", text)
    assert snapshot.snapshot_budget_bytes() == expected
    assert snapshot.snapshot_budget_bytes(1.0) == 1 << 30  # the request's own value wins


@pytest.mark.parametrize("text", ["lots", "-1", "nan"])
def test_bad_snapshot_budget_is_one_clear_line(monkeypatch, text):
    monkeypatch.setenv("SPARSITY_SNAPSHOT_MAX_GB", text)
    with pytest.raises(UserError, match="SPARSITY_SNAPSHOT_MAX_GB|gigabytes"):
        snapshot.snapshot_budget_bytes()


def _three_runs(model, models, cache_dir, save_root, snapshot_max_gb):
    """Three runs in a row on one cached model, baselines on (magnitude baseline not cached at first)."""
    specs = [PruneSpec(method="wanda", sparsity=0.5, nsamples=2, seqlen=32),
             PruneSpec(method="wanda", pattern="three_tier", nsamples=2, seqlen=32, assignment="cost",
                       block=8, keep=20),
             PruneSpec(method="sparsegpt", pattern="nm", nsamples=2, seqlen=32)]
    records = []
    for i, spec in enumerate(specs):
        rec = run(RunRequest(model=model, spec=spec, device="cpu", baselines=True, baseline_cache_dir=cache_dir,
                             save_dir=str(save_root / str(i)), snapshot_max_gb=snapshot_max_gb, **QUICK),
                  models=models)
        records.append(rec)
    return records


def _comparable(rec):
    return (rec["status"], rec["sparsity"], rec["mask_sparsity"], rec["ppl"], rec["errors"],
            [(m["module"], m["zeros"], m["pruned"], m["tier_map"]) for m in rec["matrices"]])


def _saved_zeros(folder, record):
    model = AutoModelForCausalLM.from_pretrained(folder)
    layers = dict(model.named_modules())
    path = "model.layers"
    return sum(int((layers[f"{path}.{m['layer']}.{m['module']}"].weight == 0).sum()) for m in record["matrices"])


def test_snapshot_limit_zero_gives_the_default_results_three_runs_in_a_row(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSITY_SNAPSHOT_DIR", str(tmp_path / "snapshots"))
    results = {}
    for label, env in (("default", None), ("zero", "0")):  # the dashboard's setting is the environment's
        if env is None:
            monkeypatch.delenv("SPARSITY_SNAPSHOT_MAX_GB", raising=False)
        else:
            monkeypatch.setenv("SPARSITY_SNAPSHOT_MAX_GB", env)
        models = ModelCache()  # one cache for all runs, as the dashboard keeps
        results[label] = _three_runs(str(tiny_llama_dir), models, str(tmp_path / f"cache-{label}"),
                                     tmp_path / label, None)
        assert models._dense.in_memory == (env is None)
        models.drop()
    for a, b in zip(results["default"], results["zero"]):
        assert _comparable(a) == _comparable(b)
        assert a["status"] == "completed" and a["errors"] == []
        assert a["ppl"]["magnitude"] is not None and a["ppl"]["pruned"] is not None
    for label, records in results.items():
        for i, rec in enumerate(records):
            assert _saved_zeros(tmp_path / label / str(i), rec) == sum(m["zeros"] for m in rec["matrices"])
        for i in range(3):
            wa = AutoModelForCausalLM.from_pretrained(tmp_path / "default" / str(i)).state_dict()
            wb = AutoModelForCausalLM.from_pretrained(tmp_path / "zero" / str(i)).state_dict()
            assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cli_snapshot_limit_zero_matches_default(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPARSITY_SNAPSHOT_DIR", str(tmp_path / "snapshots"))
    common = ["--model", str(tiny_llama_dir), "--sparsity_type", "three_tier", "--block_size", "8",
              "--tier_assignment", "cost", "--baselines", "--calib_dataset", "pydoc", "--eval_dataset", "pydoc",
              "--nsamples", "2", "--seqlen", "32", "--eval_windows", "2", "--quiet"]
    out = {}
    for label, extra in (("default", []), ("zero", ["--snapshot_max_gb", "0"])):
        monkeypatch.setenv("SPARSITY_CACHE", str(tmp_path / f"cache-{label}"))
        assert main(common + ["--save", str(tmp_path / label)] + extra) == 0
        out[label] = json.loads((tmp_path / label / "results.json").read_text())
        line = capsys.readouterr().out
        assert f"actual_sparsity {out[label]['sparsity']:.4f}" in line and "mask_sparsity" in line
    assert _comparable(out["default"]) == _comparable(out["zero"])
    assert _saved_zeros(tmp_path / "zero", out["zero"]) == sum(m["zeros"] for m in out["zero"]["matrices"])


@requires_smollm2
def test_smollm2_snapshot_limit_zero_two_runs_identical_to_default(smollm2, tmp_path, monkeypatch):
    """The real model, on the dashboard's one shared cache: two runs with the copy in memory, then two with it in a
    file (the budget change is taken on the cached model), baselines on and not cached at first."""
    monkeypatch.setenv("SPARSITY_SNAPSHOT_DIR", str(tmp_path / "snapshots"))
    spec = PruneSpec(method="wanda", sparsity=0.5, nsamples=2, seqlen=64)
    results = {}
    for label, limit in (("default", None), ("zero", 0.0)):
        results[label] = [run(RunRequest(model=None, spec=spec, device="cpu", calib="pydoc", eval="pydoc",
                                          eval_windows=1, baselines=True, snapshot_max_gb=limit,
                                          baseline_cache_dir=str(tmp_path / f"cache-{label}"),
                                          save_dir=str(tmp_path / label) if (label, i) == ("zero", 1) else None),
                              models=smollm2) for i in range(2)]
        assert smollm2._dense.in_memory == (limit is None)
    smollm2.get(RunRequest(model=None, device="cpu"))  # back to the in-memory copy for the other tests
    assert [_comparable(r) for r in results["default"]] == [_comparable(r) for r in results["zero"]]
    assert _comparable(results["zero"][0]) == _comparable(results["zero"][1])
    rec = results["zero"][1]
    # the real model's 4-bit weights hold exact zeros: the record counts them, beside what the masks pruned
    assert rec["sparsity"] >= rec["mask_sparsity"] == 0.5 and rec["errors"] == []
    assert _saved_zeros(tmp_path / "zero", rec) == sum(m["zeros"] for m in rec["matrices"])


# --- one key, derived from the whole spec -------------------------------------------------------------------

# another valid value for every field of PruneSpec: a field added later fails here until it has one
FLIPS = dict(method="wanda", pattern="nm", sparsity=0.3, n=1, m=4, ratios=(0.2, 0.5, 0.3), block=8, keep=5,
             tier_scope="layer", within_block="magnitude", assignment="cost", group="matrix", reconstruct=True,
             nsamples=3, seqlen=48, seed=7, damp=0.1, obs_blocksize=16, prune_router=True, use_variant=True,
             top_blocks_ratio=0.3, score_threshold=0.5, block_rule="original", v=16)
BASES = [PruneSpec(method="magnitude", sparsity=0.5, nsamples=2, seqlen=32),
         PruneSpec(method="magnitude", pattern="three_tier", block=8, keep=20, nsamples=2, seqlen=32),
         PruneSpec(method="magnitude", pattern="nm", nsamples=2, seqlen=32),
         PruneSpec(method="magnitude", pattern="block_topk", block=8, keep=20, nsamples=2, seqlen=32),
         PruneSpec(method="magnitude", pattern="threshold_hybrid", block=8, keep=20, nsamples=2, seqlen=32)]


def test_every_spec_field_has_a_flip():
    assert set(FLIPS) == {f.name for f in dataclasses.fields(PruneSpec)}


def _baseline_result(model, spec, windows):
    dense = _params(model)
    try:
        prune_model(model, spec, windows)
        return {n: (p == 0) for n, p in model.named_parameters() if p.dim() == 2}
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(dense[n])


def _key(spec):
    return baseline_key("m", "f", "src", 32, 2, "magnitude", magnitude_baseline_spec(spec).canonical())


@pytest.mark.parametrize("base", BASES, ids=lambda s: s.pattern)
def test_baseline_key_changes_wherever_the_baseline_would(tiny_llama_dir, tiny_tokenizer, base):
    """Flip each field: whenever the magnitude baseline's masks change, its cache key changes."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    windows = torch.randint(0, len(tiny_tokenizer), (3, 48), generator=torch.Generator().manual_seed(0))
    reference = _baseline_result(model, magnitude_baseline_spec(base), windows)
    changed_keys = 0
    for name, value in FLIPS.items():
        try:
            flipped = base.replace(**{name: value})
        except Exception:  # not valid for this pattern (e.g. use_variant with N:M): nothing to cache
            continue
        result = _baseline_result(model, magnitude_baseline_spec(flipped), windows)
        same_result = all(torch.equal(result[k], reference[k]) for k in result)
        if not same_result:
            assert _key(flipped) != _key(base), f"{name} changes the baseline but not its cache key"
        changed_keys += _key(flipped) != _key(base)
    assert changed_keys >= 2


def test_cost_assignment_has_its_own_magnitude_baseline():
    """A cost-assigned three-tier run was served the importance-assigned run's magnitude baseline."""
    base = PruneSpec(method="wanda", pattern="three_tier")
    assert _key(base) != _key(base.replace(assignment="cost"))
    # fields a magnitude mask never reads leave the key alone: the baseline stays shared
    assert _key(base) == _key(base.replace(nsamples=7, seed=3, method="fisher_wanda", damp=0.2))


# --- sparsity counted from the weights ---------------------------------------------------------------------

def test_dense_zeros_are_counted_and_the_tier_map_still_holds(tiny_llama_dir, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".layers." in n and p.dim() == 2:
                p[:, ::5] = 0  # a fifth of every matrix already zero, as in a quantized checkpoint
    windows = torch.randint(0, len(tiny_tokenizer), (2, 32), generator=torch.Generator().manual_seed(0))
    spec = PruneSpec(method="wanda", pattern="three_tier", block=8, keep=20, nsamples=2, seqlen=32)
    res = prune_model(model, spec, windows)
    zeros = sum(int((p == 0).sum()) for n, p in model.named_parameters() if ".layers." in n and p.dim() == 2)
    assert res.zeros == zeros and res.errors == []
    assert res.sparsity > res.mask_sparsity
    for m in res.matrices:
        rows, cols = m["shape"]
        assert m["dense_zeros"] == rows * len(range(0, cols, 5))
        assert m["pruned"] < m["zeros"] <= m["pruned"] + m["dense_zeros"]


def test_a_pruned_weight_left_nonzero_is_an_error_in_the_record(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    import engine.walk.layer_walk as pruner
    from engine.walk.prune_matrix import prune_matrix

    def leaky(W, stats, spec, **kw):
        res = prune_matrix(W, stats, spec, **kw)
        res.W = W.float().clone()  # forgets to apply the mask
        return res

    monkeypatch.setattr(pruner, "prune_matrix", leaky)
    rc = main(["--model", str(tiny_llama_dir), "--prune_method", "magnitude", "--eval_dataset", "none",
               "--save", str(tmp_path / "out"), "--no_save_model", "--quiet"])
    err = capsys.readouterr().err
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    assert rc == 1 and record["errors"] and "pruned weights are not zero" in err
    assert record["sparsity"] < record["mask_sparsity"]  # the weights, not the masks, are what the record says


def test_the_update_keeps_kept_weights_on_dead_inputs():
    """SparseGPT's code zeroes every weight on an input never active in calibration, also where the mask keeps
    it: the tier map then called blocks dense that held zeroed columns. Kept weights now keep their values."""
    torch.manual_seed(0)
    X = torch.randn(64, 16)
    X[:, 5] = 0  # a dead input
    H = 2 * X.T @ X
    W = torch.randn(8, 16)
    keep = torch.ones_like(W, dtype=torch.bool)
    keep[:, ::2] = False
    W_new, kept = sparsegpt_prune(W, H, keep_mask=keep)
    assert torch.equal(kept, keep) and torch.equal(W_new[:, 5], W[:, 5])  # column 5 kept, untouched
    # dense tier everywhere but one 2:4 block: the dense blocks keep the dead column, the 2:4 block drops it first
    tiers = torch.tensor([[0, 1]], dtype=torch.int8)
    W_t, keep_t = sparsegpt_prune(W, H, choose=three_tier_chooser(tiers, 8, 10))
    assert torch.equal(W_t[:, 5], W[:, 5]) and keep_t[:, :8].all()
    X2 = X.clone()
    X2[:, 13] = 0
    W_t, keep_t = sparsegpt_prune(W, 2 * X2.T @ X2, choose=three_tier_chooser(tiers, 8, 10))
    assert not keep_t[:, 13].any()  # in a 2:4 group the dead weight goes first (saliency 0)
    assert tier_violations(W_t, tiers, 8, 10) == 0 and (keep_t[:, 8:].view(8, 2, 4).sum(-1) == 2).all()


def test_tier_violations_counts_groups_and_blocks_from_the_weights():
    tiers = torch.tensor([[1, 2]], dtype=torch.int8)
    W = torch.ones(4, 8)
    assert tier_violations(W, tiers, 4, 3) == 4 + 1  # every 2:4 row group holds 4, the top-K block 16 > 3
    keep = three_tier_mask(torch.arange(32.0).view(4, 8), tiers, 4, 3)
    assert tier_violations(W * keep, tiers, 4, 3) == 0


# --- Wanda's sanity check ------------------------------------------------------------------------------------

@pytest.fixture
def pruned_dir(tiny_llama_dir, tmp_path):
    out = tmp_path / "out" / "test"
    assert main(["--model", str(tiny_llama_dir), "--prune_method", "magnitude", "--sparsity_type", "2:4",
                 "--eval_dataset", "none", "--save", str(out), "--quiet"]) == 0
    return out


def test_check_sparsity_prints_layers_and_returns_the_overall(pruned_dir, capsys):
    record = json.loads((pruned_dir / "results.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(pruned_dir)
    overall = check_sparsity(model)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"layer {i} sparsity 0.500000" for i in range(2)]
    assert isinstance(overall, float) and overall == record["sparsity"] == 0.5
    assert sparsity_report(model).zeros == sum(m["zeros"] for m in record["matrices"])


def test_check_flag_reads_a_saved_folder(pruned_dir, capsys):
    assert main(["--check", str(pruned_dir)]) == 0
    out = capsys.readouterr().out
    assert "layer 1 sparsity 0.500000" in out and "sparsity sanity check 0.5000" in out and "agrees" in out


def test_check_flag_reports_a_record_that_disagrees(pruned_dir, capsys):
    record = json.loads((pruned_dir / "results.json").read_text())
    record["sparsity"] = 0.4
    (pruned_dir / "results.json").write_text(json.dumps(record))
    assert main(["--check", str(pruned_dir)]) == 1
    assert "DISAGREES" in capsys.readouterr().out


def test_check_flag_on_a_folder_without_a_model_is_one_line(tmp_path, capsys):
    assert main(["--check", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {tmp_path} is not a saved model folder "
                                                            "(no config.json)"]


def test_the_forks_documented_snippet_runs_from_the_repository_root(pruned_dir):
    snippet = ("from transformers import AutoModelForCausalLM; from lib.prune import check_sparsity; "
               f"print('overall', check_sparsity(AutoModelForCausalLM.from_pretrained({str(pruned_dir)!r})))")
    out = subprocess.run([sys.executable, "-c", snippet], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines() == ["layer 0 sparsity 0.500000", "layer 1 sparsity 0.500000",
                                               "overall 0.5"]


# --- devices ---------------------------------------------------------------------------------------------

def test_device_list_is_what_the_engine_accepts(monkeypatch):
    from components.session import DEVICE_CHOICES
    from engine.io.models import resolve_device

    assert "mps" not in DEVICE_CHOICES
    if not torch.cuda.is_available():
        assert available_devices() == ["auto", "cpu"] == DEVICE_CHOICES
    for device in available_devices():
        resolve_device(device)  # every offered device is accepted
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert available_devices() == ["auto", "cpu", "cuda", "cuda:0", "cuda:1", "offload"]
    for device in available_devices():
        resolve_device(device)


def test_gpu_check_smoke_runs_every_stage_on_the_cpu(tmp_path):
    """bench/speed/gpu_check.py's exact checks with the CPU standing in for the GPU (offload walk, accelerate's
    hooks)."""
    from bench.speed.gpu_check import STAGES
    from bench.speed.gpu_check import main as gpu_check

    out = tmp_path / "gpu_check.json"
    assert gpu_check(["--smoke", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [r["stage"] for r in record["stages"]] == list(STAGES)
    assert all(r["ok"] and r["problems"] == [] for r in record["stages"])
    capped = next(r for r in record["stages"] if r["stage"] == "device-map")
    assert "offloaded by accelerate" in capped["capped_message"]


def test_best_recipe_on_a_model_with_dead_inputs_keeps_dense_blocks_whole(tiny_llama_dir, tiny_tokenizer):
    """Inputs never active in calibration (here: a zeroed norm channel) made the update zero whole columns of blocks
    the tier map called dense or 2:4. Now the weights obey the map, with no zeros the pattern did not make."""
    from engine.io.record import decode_tier_map
    from engine.spec import BEST_THREE_TIER

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[[3, 17]] = 0  # q/k/v never see channels 3 and 17
    windows = torch.randint(0, len(tiny_tokenizer), (4, 32), generator=torch.Generator().manual_seed(0))
    spec = PruneSpec(pattern="three_tier", nsamples=4, seqlen=32,
                     **{**BEST_THREE_TIER, "within_block": "obs", "block": 8, "keep": 20})
    res = prune_model(model, spec, windows)
    assert res.status == "completed" and res.errors == []
    dense_on_dead = 0
    for m in res.matrices:
        W = model.model.layers[m["layer"]].get_submodule(m["module"]).weight
        tiers = torch.from_numpy(decode_tier_map(m["tier_map"]))
        assert tier_violations(W, tiers, 8, 20) == 0
        dense_cells = tiers.repeat_interleave(8, 0).repeat_interleave(8, 1)[: W.shape[0], : W.shape[1]] == 0
        assert (W[dense_cells] != 0).all(), m["module"]  # random weights: a dense block holds no zero
        assert m["zeros"] == m["pruned"]
        if m["module"].split(".")[-1] in ("q_proj", "k_proj", "v_proj"):
            dense_on_dead += int(dense_cells[:, [3, 17]].sum())
    assert dense_on_dead > 0  # dense blocks did cover the dead inputs: their weights stayed


def test_use_slow_tokenizer_asks_for_the_slow_tokenizer(tiny_llama_dir, tmp_path, monkeypatch):
    """The Wanda hybrid fork loads tokenizers with use_fast=False; --use_slow_tokenizer does the same."""
    import transformers

    asked = []
    real = transformers.AutoTokenizer.from_pretrained

    def spy(*args, **kwargs):
        asked.append(kwargs.get("use_fast", True))
        return real(*args, **{k: v for k, v in kwargs.items() if k != "use_fast"})  # the tiny model has no slow one

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy)
    common = ["--model", str(tiny_llama_dir), "--prune_method", "magnitude", "--eval_dataset", "none", "--quiet"]
    assert main(common + ["--use_slow_tokenizer"]) == 0
    assert main(common) == 0
    assert asked == [False, True]
