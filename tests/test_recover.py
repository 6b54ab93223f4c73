"""Masked fine-tuning: pruned weights stay exactly zero (full and LoRA, every pattern, Conv1D and fused experts),
Stop leaves a loadable model, a checkpoint resumes the curve, bad settings are one line."""
from __future__ import annotations

import json
import threading

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import save_tiny_model
from engine.errors import UserError
from engine.io.save import save_pretrained_atomic
from engine.recover.masked_finetune import FinetuneSpec, finetune, pruned_masks, zeros_held
from engine.spec import PruneSpec
from engine.walk.layer_walk import prune_model

PATTERNS = {"unstructured": dict(pattern="unstructured", sparsity=0.5),
            "2:4": dict(pattern="nm", n=2, m=4),
            "three_tier": dict(pattern="three_tier", ratios=(0.35, 0.45, 0.20), block=16, keep=15)}
FAST = dict(steps=3, lr=1e-2, batch_size=2, seqlen=16, heldout_windows=2, eval_every=2)


def _pruned(path, pattern="2:4"):
    model = AutoModelForCausalLM.from_pretrained(path)
    prune_model(model, PruneSpec(method="magnitude", **PATTERNS[pattern]), None)
    return model


def _windows(tokenizer, n=6, seqlen=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, len(tokenizer), (n, seqlen), generator=g)


def _snapshot(model, masks):
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in masks}


def _assert_zeros_identical(model, masks, before):
    params = dict(model.named_parameters())
    changed = 0
    for n, m in masks.items():
        W = params[n].detach()
        assert torch.equal(W == 0, before[n] == 0), f"{n}: the set of zeros changed"
        assert torch.equal(W[~m], torch.zeros_like(W[~m])), n
        changed += int((W != before[n]).sum())
    assert changed > 0, "nothing trained"


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "gpt2", "mixtral"])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_full_finetune_keeps_zeros_bit_for_bit(tmp_path, tiny_tokenizer, family, pattern):
    path = save_tiny_model(tmp_path / family, tiny_tokenizer, family)
    model = _pruned(path, pattern)
    masks = pruned_masks(model)
    if family == "mixtral":  # the fused experts are trained under their mask like any matrix
        assert any(m.dim() == 3 for m in masks.values())
    before = _snapshot(model, masks)
    res = finetune(model, tiny_tokenizer, FinetuneSpec(**FAST), _windows(tiny_tokenizer), _windows(tiny_tokenizer, 2),
                   str(tmp_path / "ckpt"))
    assert res.status == "completed" and res.steps_done == 3
    assert [s for s, _ in res.train_curve] == [1, 2, 3] and [s for s, _ in res.heldout_curve] == [2, 3]
    _assert_zeros_identical(model, masks, before)
    assert zeros_held(model, masks)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lora_merged_under_the_mask_keeps_zeros(tmp_path, tiny_tokenizer, family):
    path = save_tiny_model(tmp_path / family, tiny_tokenizer, family)
    model = _pruned(path, "three_tier")
    masks = pruned_masks(model)
    before = _snapshot(model, masks)
    res = finetune(model, tiny_tokenizer, FinetuneSpec(**FAST, lora_rank=4), _windows(tiny_tokenizer),
                   _windows(tiny_tokenizer, 2), str(tmp_path / "ckpt"))
    assert res.adapter is None and "Peft" not in type(model).__name__
    assert not any("lora" in n for n, _ in model.named_parameters())  # merged and unloaded
    _assert_zeros_identical(model, masks, before)
    assert all(p.requires_grad for p in model.parameters())  # LoRA's freezing is undone


@pytest.mark.slow
def test_lora_kept_separate_leaves_the_base_weights(tmp_path, tiny_tokenizer, tiny_llama_dir):
    model = _pruned(tiny_llama_dir)
    masks = pruned_masks(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = finetune(model, tiny_tokenizer, FinetuneSpec(**FAST, lora_rank=2, merge=False), _windows(tiny_tokenizer),
                   _windows(tiny_tokenizer, 2), str(tmp_path / "ckpt"))
    res.adapter.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert zeros_held(res.adapter, masks)
    base = {n.replace("base_model.model.", "").replace(".base_layer.", "."): p
            for n, p in res.adapter.named_parameters() if "lora_" not in n}
    assert all(torch.equal(base[n], w) for n, w in before.items())


def test_lora_rank_larger_than_a_matrix_is_refused(tmp_path, tiny_tokenizer, tiny_llama_dir):
    model = _pruned(tiny_llama_dir)
    with pytest.raises(UserError, match="LoRA rank 1000 is larger than the smallest pruned matrix side"):
        finetune(model, tiny_tokenizer, FinetuneSpec(**{**FAST, "lora_rank": 1000}), _windows(tiny_tokenizer),
                 _windows(tiny_tokenizer, 2), str(tmp_path / "ckpt"))


@pytest.mark.slow
def test_stop_mid_training_leaves_a_loadable_model_with_its_zeros(tmp_path, tiny_tokenizer, tiny_llama_dir):
    model = _pruned(tiny_llama_dir)
    masks = pruned_masks(model)
    cancel = threading.Event()

    def progress(event):
        if event.get("step") == 2:
            cancel.set()
    res = finetune(model, tiny_tokenizer, FinetuneSpec(**{**FAST, "steps": 50}), _windows(tiny_tokenizer, 200),
                   _windows(tiny_tokenizer, 2), str(tmp_path / "ckpt"), progress=progress, cancel=cancel)
    assert res.status == "cancelled" and res.steps_done in (2, 3)  # Stop ends after the step in progress
    assert res.train_curve[-1][0] == res.heldout_curve[-1][0] == res.steps_done  # held-out loss of the weights kept
    save_pretrained_atomic(model, tiny_tokenizer, tmp_path / "saved")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert zeros_held(again, masks)
    ids = _windows(tiny_tokenizer, 1)
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, model(ids).logits, atol=1e-5)


@pytest.mark.slow
def test_resume_from_a_checkpoint_continues_the_curve(tmp_path, tiny_tokenizer, tiny_llama_dir):
    spec = FinetuneSpec(**{**FAST, "steps": 4, "save_every": 2})
    train, heldout = _windows(tiny_tokenizer, 8), _windows(tiny_tokenizer, 2)
    whole = _pruned(tiny_llama_dir)
    masks = pruned_masks(whole)
    full = finetune(whole, tiny_tokenizer, spec, train, heldout, str(tmp_path / "a"))
    assert (tmp_path / "a" / "checkpoint-2").is_dir()
    resumed_model = _pruned(tiny_llama_dir)
    resumed = finetune(resumed_model, tiny_tokenizer, spec, train, heldout, str(tmp_path / "b"),
                       resume_from=str(tmp_path / "a" / "checkpoint-2"))
    assert [s for s, _ in resumed.train_curve] == [3, 4]
    assert torch.allclose(torch.tensor([loss for _, loss in resumed.train_curve]),
                          torch.tensor([loss for _, loss in full.train_curve[2:]]), rtol=1e-4)
    assert zeros_held(resumed_model, masks)
    for (n, p), (_, q) in zip(whole.named_parameters(), resumed_model.named_parameters()):
        assert torch.allclose(p, q, atol=1e-5), n


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "fine-tune steps must be a whole number >= 1, got 0"),
    ("lr", -1e-4, "learning rate must be a number > 0, got -0.0001"),
    ("lr", float("nan"), "learning rate must be a number > 0"),
    ("lora_rank", 0, "LoRA rank must be a whole number >= 1, got 0"),
    ("batch_size", 0, "fine-tune batch size must be a whole number >= 1"),
])
def test_bad_settings_are_refused_by_the_spec(field, value, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        FinetuneSpec(**{field: value}).validate()


@pytest.mark.parametrize("argv, message", [
    (["--finetune_steps", "0"], "error: fine-tune steps must be a whole number >= 1, got 0"),
    (["--finetune_steps", "3", "--lr", "-1"], "error: learning rate must be a number > 0, got -1.0"),
    (["--lora_rank", "4"], "error: --lora_rank and --lr need --finetune_steps N"),
])
def test_cli_bad_settings_are_one_line(tiny_llama_dir, capsys, argv, message):
    from engine.cli.prune_cli import main

    assert main(["--model", str(tiny_llama_dir), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err == message


def test_main_py_prunes_then_recovers_and_records_it(tmp_path, tiny_llama_dir, capsys):
    from engine.cli.prune_cli import main

    out = tmp_path / "out"
    rc = main(["--model", str(tiny_llama_dir), "--sparsity_type", "2:4", "--calib_dataset", "pydoc",
               "--eval_dataset", "pydoc", "--nsamples", "2", "--seqlen", "32", "--eval_windows", "2",
               "--finetune_steps", "3", "--lr", "1e-3", "--finetune_seqlen", "16", "--finetune_batch_size", "2",
               "--eval_every", "2", "--quiet", "--save", str(out), "--runs_dir", str(tmp_path / "runs")])
    assert rc == 0
    record = json.loads((out / "results.json").read_text())
    block = record["recovery"]
    assert block["status"] == "completed" and block["steps_done"] == 3 and block["zeros_held"]
    assert block["zeros_before"] == block["zeros_after"] > 0
    assert block["ppl_before"] == record["ppl_test"] and block["ppl_after"] is not None
    assert [s for s, _ in block["curve"]["train"]] == [1, 2, 3]
    assert block["settings"]["lr"] == 1e-3 and block["data"]["train"].startswith("pydoc")
    assert "ppl_recovered" in capsys.readouterr().out
    saved = AutoModelForCausalLM.from_pretrained(out)
    assert sum(int((p == 0).sum()) for n, p in saved.named_parameters() if "layers" in n) >= block["zeros_after"]


@pytest.mark.slow
def test_finetune_py_recovers_a_saved_folder(tmp_path, tiny_tokenizer, tiny_llama_dir, capsys):
    from engine.cli.finetune_cli import main

    model = _pruned(tiny_llama_dir)
    masks = pruned_masks(model)
    save_pretrained_atomic(model, tiny_tokenizer, tmp_path / "pruned")
    (tmp_path / "pruned" / "results.json").write_text(json.dumps({"run_id": "x", "ppl_test": 1.0}))
    base = ["--model", str(tmp_path / "pruned"), "--calib_dataset", "pydoc", "--eval_dataset", "pydoc",
            "--eval_windows", "2", "--seqlen", "32", "--finetune_steps", "2", "--finetune_seqlen", "16",
            "--finetune_batch_size", "2"]
    assert main([*base, "--lora_rank", "1000", "--save", str(tmp_path / "bad")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "error: LoRA rank 1000 is larger than the smallest pruned matrix side (32); choose a rank <= 32"
    assert main([*base, "--lora_rank", "2", "--save", str(tmp_path / "rec")]) == 0
    record = json.loads((tmp_path / "rec" / "results.json").read_text())
    assert (record["run_id"] == "x" and record["recovery"]["zeros_held"]
            and record["recovery"]["settings"]["lora_rank"] == 2)
    assert zeros_held(AutoModelForCausalLM.from_pretrained(tmp_path / "rec"), masks)
    assert main([*base, "--lora_rank", "2", "--keep_adapter", "--save", str(tmp_path / "sep")]) == 0
    assert (tmp_path / "sep" / "adapter" / "adapter_config.json").exists()
    assert not (tmp_path / "sep" / "config.json").exists()


def test_dashboard_recover_fields_and_figures():
    from components.recover_view import PUBLIC_MAX_STEPS, curve_from_events, finetune_from_form, loss_curve_figure
    from components.tables import runs_table

    assert finetune_from_form(0, 1e-4, 0) is None
    spec = finetune_from_form(20, 1e-4, 0)
    assert spec.steps == 20 and spec.lora_rank is None and spec.lr == 1e-4
    assert finetune_from_form(20, 1e-4, 8).lora_rank == 8
    with pytest.raises(UserError, match=f"at most {PUBLIC_MAX_STEPS} fine-tune steps on this server"):
        finetune_from_form(PUBLIC_MAX_STEPS + 1, 1e-4, 0, public=True)
    curve = {}
    assert not curve_from_events(curve, {"stage": "eval", "done": 1, "total": 2})
    assert curve_from_events(curve, {"stage": "finetune", "step": 1, "total": 2, "loss": 3.0})
    assert curve_from_events(curve, {"stage": "finetune", "step": 2, "total": 2, "heldout_loss": 2.5})
    assert curve == {"train": [[1, 3.0]], "heldout": [[2, 2.5]]}
    fig = loss_curve_figure(curve)
    assert [t.name for t in fig.data] == ["train", "held-out"] and list(fig.data[1].y) == [2.5]
    table = runs_table([{"status": "completed", "spec": {"method": "wanda", "pattern": "nm", "n": 2, "m": 4},
                         "ppl": {"pruned": 40.0}, "recovery": {"ppl_after": 31.25}}])
    assert table.loc[0, "ppl"] == 40.0 and table.loc[0, "ppl recovered"] == 31.25
