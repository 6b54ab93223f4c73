"""The progressive three-tier schedule: demotion only, exact on hand-made grids, tier maps saved and reloaded
across processes (resume), bad schedules refused with one line."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from engine.errors import UserError
from engine.io import text as textdata
from engine.patterns.three_tier import DENSE, TOPK, TWO_FOUR
from engine.recover.masked_finetune import FinetuneSpec
from engine.recover.progressive import (
    assign_tiers_demoting,
    check_schedule,
    finished_iterations,
    load_tier_maps,
    parse_schedule,
    run_progressive,
)
from engine.spec import PruneSpec


def test_demoting_keeps_the_counts_and_never_promotes():
    importance = torch.tensor([[9.0, 1.0, 8.0], [7.0, 6.0, 5.0]])
    previous = torch.tensor([[TOPK, DENSE, TWO_FOUR], [DENSE, DENSE, TWO_FOUR]], dtype=torch.int8)
    tiers = assign_tiers_demoting(importance, (2, 2, 2), previous)
    # dense: the two most important of the previously dense (7, 6); 2:4: the best of the rest that were <= 2:4
    # (8, 5); block 9 was top-K and stays top-K however important it is now
    assert tiers.tolist() == [[TOPK, TOPK, TWO_FOUR], [DENSE, DENSE, TWO_FOUR]]
    assert bool((tiers >= previous).all())


def test_demoting_on_random_grids_is_monotone_and_exact():
    g = torch.Generator().manual_seed(0)
    previous = torch.randint(0, 3, (8, 8), generator=g).to(torch.int8)
    counts = (int((previous == DENSE).sum()) - 3, 20, 0)
    counts = (counts[0], min(counts[1], 64 - counts[0]), 64 - counts[0] - min(counts[1], 64 - counts[0]))
    tiers = assign_tiers_demoting(torch.rand(8, 8, generator=g), counts, previous)
    assert bool((tiers >= previous).all())
    assert int((tiers == DENSE).sum()) == counts[0]


def test_schedules_plain_and_fork_csv(tmp_path):
    assert parse_schedule("0.9/0.1/0, 0.35/0.45/0.2") == [(0.9, 0.1, 0.0), (0.35, 0.45, 0.2)]
    csv = tmp_path / "progressive_config.csv"
    csv.write_text("iteration,dense,mid_2_4,topk,dense_to_2_4,mid_2_4_to_topk,epochs\n"
                   "1,0.90,0.10,0.00,0.10,0.00,2\n2,0.80,0.10,0.10,0.10,0.10,2\n5,0.35,0.45,0.20,0.15,0.00,3\n")
    assert parse_schedule(str(csv)) == [(0.9, 0.1, 0.0), (0.8, 0.1, 0.1), (0.35, 0.45, 0.2)]


@pytest.mark.parametrize("text, message", [
    ("0.35/0.45/0.2,0.5/0.3/0.2", "schedule iteration 2 (0.5/0.3/0.2) would promote blocks back"),
    ("0.5/0.5/0.5", "schedule iteration 1: ratios (0.5, 0.5, 0.5) must be three numbers >= 0 summing to 1"),
    ("dense", "write iterations as dense/2:4/top-K"),
    ("missing.csv", "schedule file missing.csv does not exist"),
])
def test_bad_schedules_are_one_line(text, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_schedule(text)
    with pytest.raises(UserError):
        check_schedule([])


@pytest.mark.slow
def test_progressive_demotes_only_and_resumes_from_its_maps(tmp_path, tiny_llama_dir, tiny_tokenizer):
    spec = PruneSpec(method="wanda", pattern="three_tier", ratios=(0.35, 0.45, 0.2), nsamples=2, seqlen=32)
    src = textdata.resolve_text("pydoc", "calibration")
    ft = FinetuneSpec(steps=2, lr=1e-3, batch_size=2, seqlen=16, heldout_windows=2, eval_every=2)
    state = tmp_path / "state"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    first = run_progressive(model, tiny_tokenizer, spec, [(0.8, 0.2, 0.0), (0.6, 0.3, 0.1)], state, src,
                            finetune=ft)
    assert [e["iteration"] for e in first] == [1, 2] and finished_iterations(state) == [1, 2]
    assert first[0]["sparsity"] < first[1]["sparsity"]
    assert all(e["recovery"]["zeros_held"] for e in first)
    maps1 = load_tier_maps(state / "iteration-1/tier_maps.json")
    maps2 = load_tier_maps(state / "iteration-2/tier_maps.json")
    assert maps1.keys() == maps2.keys() and all(bool((maps2[k] >= maps1[k]).all()) for k in maps1)
    assert any(bool((maps2[k] > maps1[k]).any()) for k in maps1)
    zeros2 = {n: p == 0 for n, p in model.named_parameters() if "layers" in n and p.dim() == 2}

    # another process: a fresh dense model, the same folder, one more iteration in the schedule
    fresh = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    events = []
    again = run_progressive(fresh, tiny_tokenizer, spec, [(0.8, 0.2, 0.0), (0.6, 0.3, 0.1), (0.35, 0.45, 0.2)],
                            state, src, progress=events.append)
    assert "resuming after iteration 2" in events[0]["message"]
    assert [e["iteration"] for e in again] == [1, 2, 3] and again[:2] == first
    maps3 = load_tier_maps(state / "iteration-3/tier_maps.json")
    assert all(bool((maps3[k] >= maps2[k]).all()) for k in maps2)
    params = dict(fresh.named_parameters())
    assert all(bool((params[n][z] == 0).all()) for n, z in zeros2.items())  # started from iteration 2's weights
    assert again[2]["tiers"]["topk"] > again[1]["tiers"]["topk"]


@pytest.mark.slow
def test_cli_runs_the_schedule_and_refuses_a_bad_one(tmp_path, tiny_llama_dir, capsys):
    import json

    from engine.cli.progressive_cli import main

    base = ["--model", str(tiny_llama_dir), "--state_dir", str(tmp_path / "state"), "--calib_dataset", "pydoc",
            "--eval_dataset", "pydoc", "--eval_windows", "2", "--nsamples", "2", "--seqlen", "32"]
    assert main([*base, "--schedule", "0.35/0.45/0.2,0.6/0.2/0.2"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: schedule iteration 2 (0.6/0.2/0.2) would promote")
    assert main([*base, "--schedule", "0.6/0.4/0", "--prune_method", "wanda", "--finetune_steps", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: fine-tune steps must be a whole number >= 1, got 0"
    assert main([*base, "--schedule", "0.6/0.4/0,0.35/0.45/0.2", "--save", str(tmp_path / "out"),
                 "--runs_dir", str(tmp_path / "runs")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("iteration")]
    assert len(lines) == 2 and "ratios 0.35/0.45/0.2" in lines[1] and "ppl_pruned" in lines[1]
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [e["iteration"] for e in record["progressive"]] == [1, 2]
    assert record["actual_sparsity"] == record["progressive"][1]["sparsity"] > record["progressive"][0]["sparsity"]


@pytest.mark.slow
def test_a_progressive_run_joins_the_run_store_and_the_dashboard_charts_it(tmp_path, tiny_llama_dir, capsys):
    from components import recover_view
    from engine.cli.progressive_cli import main
    from engine.io.run_store import RunStore, record_problem

    assert main(["--model", str(tiny_llama_dir), "--state_dir", str(tmp_path / "state"), "--calib_dataset", "pydoc",
                 "--eval_dataset", "pydoc", "--eval_windows", "2", "--nsamples", "2", "--seqlen", "32",
                 "--schedule", "0.6/0.4/0,0.35/0.45/0.2", "--runs_dir", str(tmp_path / "runs")]) == 0
    [summary] = RunStore(tmp_path / "runs").list()
    record = RunStore(tmp_path / "runs").load(summary["run_id"])
    assert record_problem(record) is None and record["status"] == "completed"
    entries = record["progressive"]
    assert record["schedule"] == [[0.6, 0.4, 0.0], [0.35, 0.45, 0.2]] and record["sparsity"] == entries[1]["sparsity"]
    fig = recover_view.progressive_figure(entries)
    ppl, sparsity = fig.data[0], fig.data[-1]
    assert list(ppl.x) == [1, 2] and list(ppl.y) == [e["ppl_pruned"] for e in entries]
    assert list(sparsity.y) == [e["sparsity"] for e in entries]
    assert list(ppl.customdata) == ["0.6/0.4/0", "0.35/0.45/0.2"]
    assert "Not a progressive run" in str(recover_view.progressive_figure(None).layout.annotations[0].text)
