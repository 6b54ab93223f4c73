"""The Wanda-compatible command line, end to end: results.json, saved models that reload, clear errors."""
import json
import os
import runpy
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import REPO, requires_smollm2, requires_wikitext
from engine.cli.prune_cli import main

pytestmark = pytest.mark.slow  # end to end: a CLI run or a model load per test

QUICK = ["--calib_dataset", "pydoc", "--eval_dataset", "pydoc", "--nsamples", "4", "--seqlen", "64",
         "--eval_windows", "3", "--quiet"]


def _zeros_share(model):
    layers = model.model.layers
    z = n = 0
    for layer in layers:
        for name, p in layer.named_parameters():
            if p.dim() == 2:
                z += int((p == 0).sum())
                n += p.numel()
    return z / n


def test_wanda_run_writes_results_and_a_reloadable_model(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "out" / "wanda"
    rc = main(["--model", str(tiny_llama_dir), "--prune_method", "wanda", "--sparsity_ratio", "0.5",
               "--sparsity_type", "unstructured", "--save", str(out), "--baselines", *QUICK])
    assert rc == 0
    out_text = capsys.readouterr().out
    line = out_text.strip().splitlines()[-1]
    assert "actual_sparsity 0.5000" in line and "ppl_test" in line
    res = json.loads((out / "results.json").read_text())
    for key in ("actual_sparsity", "ppl_test", "ppl_dense", "ppl_magnitude", "spec", "data", "versions", "timings",
                "matrices"):
        assert key in res, key
    assert res["actual_sparsity"] == 0.5 and res["status"] == "completed"
    assert res["spec"]["method"] == "wanda" and res["spec"]["sparsity_type"] == "unstructured"
    assert res["data"]["calibration"].startswith("pydoc") and res["data"]["evaluation"].startswith("pydoc")
    assert all(isinstance(res[k], float) for k in ("ppl_test", "ppl_dense", "ppl_magnitude"))
    assert len(res["matrices"]) == 14 and all(m["sparsity"] == 0.5 for m in res["matrices"])
    assert (out / "log_wanda.txt").read_text().splitlines() == \
        ["method\tactual_sparsity\tppl_test", f"wanda\t0.5000\t{res['ppl_test']:.4f}"]  # Wanda's log format
    assert "layer 0 sparsity 0.500000" in out_text and "sparsity sanity check 0.5000" in out_text
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert _zeros_share(reloaded) == pytest.approx(0.5, abs=1e-3)


def test_save_model_elsewhere_and_no_model(tiny_llama_dir, tmp_path):
    rc = main(["--model", str(tiny_llama_dir), "--save", str(tmp_path / "r"), "--save_model", str(tmp_path / "m"),
               "--sparsity_type", "2:4", *QUICK])
    assert rc == 0
    assert (tmp_path / "m" / "config.json").exists() and not (tmp_path / "r" / "config.json").exists()
    assert json.loads((tmp_path / "r" / "results.json").read_text())["saved_model"] == str((tmp_path / "m").resolve())
    rc = main(["--model", str(tiny_llama_dir), "--save", str(tmp_path / "n"), "--no_save_model", *QUICK])
    assert rc == 0 and sorted(os.listdir(tmp_path / "n")) == ["log_wanda.txt", "results.json"]


def test_three_tier_script_takes_the_forks_flags_and_writes_a_model_card(tiny_llama_dir, tmp_path):
    out = tmp_path / "tt"
    proc = subprocess.run([sys.executable, str(REPO / "main_block_three_tier.py"), "--model", str(tiny_llama_dir),
                           "--top_dense_ratio", "0.4", "--mid_2_4_ratio", "0.4", "--bottom_topk_ratio", "0.2",
                           "--save", str(out), *QUICK], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    spec = res["spec"]
    assert (spec["pattern"], spec["ratios"], spec["block_rule"], spec["within_block"], spec["keep"]) == \
        ("three_tier", [0.4, 0.4, 0.2], "original", "magnitude", 10)  # the fork's rule and defaults
    assert all(m["tier_map"] is not None for m in res["matrices"])
    card = (out / "README.md").read_text()
    assert "base_model" not in card  # a local folder is no hub id
    for text in ("## Base model", str(tiny_llama_dir), "| block_rule | `original` |", "| keep | `10` |",
                 "github.com/Jiajun-Ji/wanda", f"| pruned | {res['ppl_test']:.3f} |", "3 windows x 64 tokens",
                 "- torch: ", "| 2:4 (2 of every 4 kept) |"):
        assert text in card, text
    tiers = {k: sum(m["tier_weights"][k]["zeros"] for m in res["matrices"]) /
             sum(m["tier_weights"][k]["numel"] for m in res["matrices"]) for k in ("dense", "2:4", "topk")}
    assert tiers["dense"] == 0 and tiers["2:4"] == 0.5 and tiers["topk"] == 1 - 10 / 256  # no ties in random floats
    assert "| 2:4 (2 of every 4 kept) |" in card and "| 0.5000 |" in card


def run_script(script: str, argv: list[str], monkeypatch) -> int:
    """Run one of the repository's entry scripts in this process, as `python script argv` would."""
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(REPO / script), run_name="__main__")
    return stop.value.code


@pytest.mark.parametrize("ratios,expected", [(["0.35", "0.45", "0.2"], [0.35, 0.45, 0.2]),
                                             (["0.7", "0.7", "0.6"], [0.35, 0.35, 0.3])])
def test_three_tier_script_documented_form_and_normalised_ratios(tiny_llama_dir, tmp_path, monkeypatch, capsys,
                                                                 ratios, expected):
    out = tmp_path / "tt"
    rc = run_script("main_block_three_tier.py", ["--model", str(tiny_llama_dir), "--sparsity_ratios", *ratios,
                                                 "--save", str(out), "--no_save_model", *QUICK], monkeypatch)
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["spec"]["ratios"] == expected
    assert ("Normalizing" in capsys.readouterr().err) == (ratios[0] == "0.7")
    from engine.patterns.block_rules import int_tier_counts
    for m in res["matrices"]:  # the fork's int() counts per matrix
        assert tuple(m["tiers"].values()) == int_tier_counts(sum(m["tiers"].values()), expected)


@pytest.mark.parametrize("script,argv,pattern", [
    ("main_block.py", ["--sparsity_ratio", "0.5"], "block"),
    ("main_block_topk.py", ["--sparsity_ratio", "0.5", "--topk_per_block", "10"], "block_topk"),
    ("main_block_hybrid_2_4.py", ["--top_blocks_ratio", "0.9", "--score_threshold", "0.8"], "threshold_hybrid"),
])
def test_the_forks_block_scripts(tiny_llama_dir, tmp_path, monkeypatch, script, argv, pattern):
    out = tmp_path / "b"
    rc = run_script(script, ["--model", str(tiny_llama_dir), *argv, "--save", str(out), "--no_save_model", *QUICK],
                    monkeypatch)
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["spec"]["pattern"] == pattern and res["spec"]["within_block"] == "magnitude"
    blocks = [sum(m["tiers"].values()) for m in res["matrices"]]
    removed = [m["tiers"]["topk"] for m in res["matrices"]]
    if pattern == "threshold_hybrid":
        assert all(r == n - int(n * 0.9) for r, n in zip(removed, blocks))  # random floats: no tied block scores
    else:
        assert all(r == int(n * 0.5) for r, n in zip(removed, blocks))
        kept_per_block = 0 if pattern == "block" else 10
        assert res["actual_sparsity"] == pytest.approx(0.5 * (1 - kept_per_block / 256))


def _bad_inputs(tiny_dir, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("keep me")
    bert = tmp_path / "bert"
    if not bert.exists():
        from transformers import BertConfig
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=64).save_pretrained(bert)
    m = ["--model", str(tiny_dir)]
    return [
        (["--model", str(tmp_path / "nope")], "neither an existing local path nor a valid hub id"),
        (["--model", "someone/not-a-model-xyz"], "hub is unreachable"),
        (["--model", str(bert)], "is a 'bert' model, not a causal"),
        (m + ["--sparsity_type", "three_tier", "--sparsity_ratios", "0.5", "0.5", "0.5"], "must sum to 1"),
        (m + ["--sparsity_type", "4:4"], "N:M needs N < M"),
        (m + ["--sparsity_type", "three_tier", "--topk_per_block", "300"], "must lie in [0, 256]"),
        (m + ["--nsamples", "0"], "nsamples must be a whole number >= 1"),
        (m + ["--save", str(full)], "exists and is not empty"),
        (m + ["--calib_dataset", str(tmp_path / "missing.txt")], "missing.txt"),
        (m + ["--calib_dataset", "wikitext2"], "unreachable"),
    ]


def test_bad_inputs_give_one_clear_line(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for argv, message in _bad_inputs(tiny_llama_dir, tmp_path):
        rc = main(argv + ["--quiet", "--eval_dataset", "none", "--seqlen", "32", "--nsamples",
                          argv[argv.index("--nsamples") + 1] if "--nsamples" in argv else "2"])
        err = capsys.readouterr().err.strip()
        assert rc == 2, (argv, err)
        assert err.startswith("error: ") and message in err, (argv, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1, err


def test_no_traceback_from_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "--model", str(tmp_path / "nothing-here")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in proc.stderr


@requires_smollm2
@requires_wikitext
def test_three_tier_on_smollm2_saves_and_reloads(tmp_path):
    out = tmp_path / "smol"
    rc = main(["--prune_method", "magnitude", "--sparsity_type", "three_tier", "--sparsity_ratios", "0.35", "0.45",
               "0.2", "--topk_per_block", "15", "--save", str(out), "--eval_dataset", "none", "--seqlen", "128",
               "--device", "cpu", "--quiet"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert round(res["mask_sparsity"], 5) == 0.41357
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    # the quantized original already holds a few exact zeros (0.01%) kept in dense blocks: the record counts them
    assert res["actual_sparsity"] == pytest.approx(_zeros_share(reloaded), abs=1e-12)
    assert res["mask_sparsity"] < res["actual_sparsity"] < res["mask_sparsity"] + 0.001


def test_best_three_tier_recipe_from_the_command_line(tiny_llama_dir, tmp_path):
    """The README's best-recipe flags: the spec is recorded as given, tier counts hold model-wide, the pruned model
    reloads with exactly the zeros the record reports."""
    out = tmp_path / "best"
    rc = main(["--model", str(tiny_llama_dir), "--sparsity_type", "three_tier", "--prune_method", "fisher_wanda",
               "--tier_scope", "model", "--tier_assignment", "cost", "--reconstruct", "--within_block", "obs",
               "--save", str(out), *QUICK])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    spec = res["spec"]
    assert (spec["method"], spec["tier_scope"], spec["assignment"], spec["within_block"], spec["reconstruct"]) == \
        ("fisher_wanda", "model", "cost", "obs", True)
    total = sum(m["tier_map"]["shape"][0] * m["tier_map"]["shape"][1] for m in res["matrices"])
    got = tuple(sum(m["tiers"][k] for m in res["matrices"]) for k in ("dense", "2:4", "topk"))
    from engine.patterns.three_tier import tier_counts
    assert got == tier_counts(total, (0.35, 0.45, 0.20))
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    zeros = sum(int((p == 0).sum()) for layer in reloaded.model.layers for p in layer.parameters() if p.dim() == 2)
    assert zeros == sum(m["zeros"] for m in res["matrices"])


def test_within_block_obs_without_update_is_a_one_line_error(tiny_llama_dir, capsys):
    rc = main(["--model", str(tiny_llama_dir), "--sparsity_type", "three_tier", "--within_block", "obs", *QUICK])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "reconstruct" in err[0]
