"""The surfaces attacked as a stranger would (Explore, Recover, --sweep, finetune.py, the run store): each section
names the failure it guards against; each test failed on the code before the fix (commit 754ddd5)."""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import re
import threading
import time
import weakref

import gradio as gr
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import tiny_config
from engine.cli.prune_cli import main as cli_main
from engine.errors import UserError
from engine.explore import calibrate, replan, sweep
from engine.spec import PruneSpec

QUICK = ["--calib_dataset", "pydoc", "--eval_dataset", "pydoc", "--nsamples", "2", "--seqlen", "32", "--quiet",
         "--device", "cpu"]


def _model(layers=1, seed=0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config("llama", layers=layers)).eval()


def _windows(n=2, seqlen=32, seed=1):
    return torch.randint(0, 384, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _one_line(rc, err, fragment):
    assert rc == 2 and err.startswith("error: ") and fragment in err, (rc, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


# -- 1. a block or N:M group wider than the matrices, in every path that builds masks ------------------------------
# (the tiny LLaMA's narrowest matrices, k_proj and v_proj, are [32, 64])

@pytest.mark.parametrize("change, message", [
    (dict(pattern="three_tier", block=64), "block size 64 is larger than matrix"),
    (dict(pattern="block", block=2048, sparsity=0.5), "block size 2048 is larger than matrix"),
    (dict(pattern="nm", n=1, m=128), "M=128 is wider than matrix"),
])
def test_a_replan_and_a_sweep_refuse_what_the_exact_walk_refuses(change, message):
    model = _model()
    cal = calibrate(model, PruneSpec(method="wanda", nsamples=2, seqlen=32), _windows())
    spec = PruneSpec(method="wanda", nsamples=2, seqlen=32, **change)
    with pytest.raises(UserError, match=message):
        replan(cal, spec)
    with pytest.raises(UserError, match=message):
        sweep(model, cal, [spec], _windows(n=1, seqlen=200), 32, windows=1)


def test_a_sweep_of_a_block_wider_than_the_matrices_is_one_line(tiny_llama_dir, capsys):
    rc = cli_main(["--model", str(tiny_llama_dir), "--sparsity_type", "three_tier", "--block_size", "256",
                   "--sweep", "0.35 0.45 0.2", *QUICK])
    _one_line(rc, capsys.readouterr().err, "block size 256 is larger than matrix")


# -- 3. any failure in a stage that touches the cached model leaves it dense and unwrapped -------------------------

def model_state(model) -> str:
    """A full hash of the model as a run finds it: every parameter's name, trainability and bytes, and every
    module's name and class (an adapter left around a layer changes the second)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(f"{name}|{p.requires_grad}|{p.grad is None}|".encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for name, m in model.named_modules():
        h.update(f"{name}:{type(m).__name__}|".encode())
    h.update(str(sorted(k for k in vars(model) if not k.startswith("_"))).encode())  # e.g. an adapter's config
    return h.hexdigest()


class Injected(RuntimeError):
    pass


def _fail(monkeypatch, owner, name, when=lambda *a, **k: True, after=False):
    """Make owner.name raise Injected (before its work, or after it with after=True) when `when(*args)` holds."""
    real = getattr(owner, name)

    def failing(*args, **kwargs):
        if not when(*args, **kwargs):
            return real(*args, **kwargs)
        if after:
            real(*args, **kwargs)
        raise Injected(f"injected failure in {name}")
    monkeypatch.setattr(owner, name, failing)


def _stage(name):
    """The injection of one stage: (what to patch, when, after its work?)."""
    import peft

    import engine.recover.masked_finetune as finetune
    import engine.recover.pipeline as recover_mod
    import engine.run as run_mod
    import engine.walk.layer_walk as pruner
    steps = {"n": 0}

    def second_call(*a, **k):
        steps["n"] += 1
        return steps["n"] == 2
    return {
        "magnitude baseline": (run_mod, "_ppl", lambda m, i, s, w, what, *a: what == "magnitude", False),
        "layer walk": (pruner, "_prune_layer", lambda index, *a: index == 1, False),
        "pruned perplexity": (run_mod, "_ppl", lambda m, i, s, w, what, *a: what == "pruned", False),
        "LoRA wrapping": (finetune, "_with_lora", lambda *a: True, True),
        "training step": (finetune, "apply_masks", second_call, False),
        "LoRA merge": (peft.tuners.lora.LoraModel, "merge_and_unload", lambda *a, **k: True, False),
        "recovered perplexity": (recover_mod, "_ppl", lambda m, i, s, w, what, *a: what == "recovered", False),
        "save": (run_mod, "save_pretrained_atomic", lambda *a, **k: True, False),
    }[name]


RUN_STAGES = ["magnitude baseline", "layer walk", "pruned perplexity", "LoRA wrapping", "training step",
              "LoRA merge", "recovered perplexity", "save"]


def _request(model_dir, tmp_path, lora=True, **changes):
    from engine.recover.masked_finetune import FinetuneSpec
    from engine.run import RunRequest
    ft = FinetuneSpec(steps=2, batch_size=1, seqlen=16, heldout_windows=1, eval_every=1, lr=1e-3,
                      lora_rank=2 if lora else None)
    return RunRequest(**{**dict(model=str(model_dir), spec=PruneSpec(method="wanda", nsamples=2, seqlen=32),
                                calib="pydoc", eval="pydoc", eval_windows=1, device="cpu", finetune=ft,
                                baseline_cache_dir=str(tmp_path / "baselines")), **changes})


def _dense_check(models, request):
    from engine.eval.perplexity import perplexity
    from engine.io import text as textdata
    lm = models.get(request)
    ids = textdata.evaluation_ids(lm.tokenizer, textdata.resolve_text("pydoc", "evaluation"))
    return model_state(lm.model), perplexity(lm.model, ids, 32, max_windows=1).ppl


@pytest.fixture(scope="module")
def cached(tiny_llama_dir, tmp_path_factory):
    """One ModelCache for the module, and the dense model's full hash and perplexity."""
    from engine.run import ModelCache
    models = ModelCache()
    request = _request(tiny_llama_dir, tmp_path_factory.mktemp("dense"))
    return models, request, _dense_check(models, request)


@pytest.mark.slow
@pytest.mark.parametrize("stage", RUN_STAGES)
def test_a_failure_in_any_stage_of_a_run_leaves_the_cached_model_dense(cached, stage, tmp_path, monkeypatch):
    from engine.run import run
    models, _, dense = cached
    owner, name, when, after = _stage(stage)
    _fail(monkeypatch, owner, name, when, after)
    request = _request(cached[1].model, tmp_path, save_dir=str(tmp_path / "out") if stage == "save" else None,
                       baselines=stage == "magnitude baseline")
    with pytest.raises(Injected):
        run(request, models=models)
    monkeypatch.undo()
    assert _dense_check(models, request) == dense
    result = run(_request(cached[1].model, tmp_path, finetune=None, eval=None, baselines=False), models=models)
    assert result["status"] == "completed" and len(result["matrices"]) == 14  # 2 layers x 7, no lora_A / lora_B


@pytest.mark.parametrize("stage, lora", [("LoRA wrapping", True), ("training step", True), ("LoRA merge", True),
                                         ("recovered perplexity", True), ("training step", False)])
@pytest.mark.slow
def test_a_failure_in_a_later_recovery_leaves_the_cached_model_dense(cached, stage, lora, tmp_path, monkeypatch):
    from engine.run import recover_run, run
    models, _, dense = cached
    request = _request(cached[1].model, tmp_path, finetune=None, baselines=False)
    record = run(request, models=models)
    assert models.holds_run == record["run_id"]
    owner, name, when, after = _stage(stage)
    _fail(monkeypatch, owner, name, when, after)
    with pytest.raises(Injected):
        recover_run(record, _request(cached[1].model, tmp_path, lora=lora).finetune, models)
    monkeypatch.undo()
    assert models.holds_run is None
    assert _dense_check(models, request) == dense


# -- 4. a FIFO, a huge or a deeply nested file in the run store -------------------------------------------------------

def _in_time(fn, seconds=20.0):
    """fn() in a thread; fails (instead of hanging the suite) when it has not returned in `seconds`."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("value", fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn} blocked for {seconds} s"
    return out["value"]


def test_a_fifo_in_the_run_store_never_blocks_a_listing_a_budget_or_past_runs(tmp_path):
    from components.history import History
    from engine.io.record import new_run_id
    from engine.io.run_store import RunStore, StoreBudget
    from tests.test_hostile import valid_record
    store = RunStore(tmp_path, budget=StoreBudget(max_records=5))
    good = valid_record()
    store.save(good)
    fifo = tmp_path / f"{new_run_id()}.json"
    os.mkfifo(fifo)
    try:
        assert [r["run_id"] for r in _in_time(store.list)] == [good["run_id"]]
        assert [s["run_id"] for s in _in_time(History(store).summaries)] == [good["run_id"]]
        assert [s["run_id"] for s in _in_time(History(store, public=True).summaries)] == [good["run_id"]]
        _in_time(lambda: store.enforce_budget(keep=good["run_id"]))
        assert _in_time(lambda: store.save(valid_record()))  # a public Run's first write enforces the budget
    finally:
        with contextlib.suppress(OSError):  # let a reader blocked by the old code go
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        fifo.unlink()


def test_deep_and_huge_json_in_the_run_store_are_skipped(tmp_path):
    from engine.io.record import new_run_id, read_json
    from engine.io.run_store import RunStore
    from tests.test_hostile import valid_record
    store = RunStore(tmp_path)
    good = valid_record()
    store.save(good)
    (tmp_path / f"{new_run_id()}.json").write_text("[" * 200_000 + "]" * 200_000)
    nested = 1
    for _ in range(100):
        nested = [nested]
    (tmp_path / f"{new_run_id()}.json").write_text(json.dumps(valid_record(matrices=nested)))
    assert [r["run_id"] for r in store.list()] == [good["run_id"]]
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"x": "y" * 5000}))
    with pytest.raises(ValueError, match="more than"):
        read_json(str(big), max_bytes=1000)
    deep = tmp_path / "deep.json"
    deep.write_text("[[[[[1]]]]]")
    with pytest.raises(ValueError, match="nested more than 4"):
        read_json(str(deep), max_depth=4)


# -- 5. Recover on a public server; 6. a stranger's Recover of another visitor's run ---------------------------------

@pytest.fixture(scope="module")
def public_page(tmp_path_factory):
    from components.page import Page
    from components.server import Settings
    return Page(Settings(public=True, runs_dir=str(tmp_path_factory.mktemp("public-runs"))))


@pytest.mark.slow
def test_a_public_recover_ends_with_its_summary_and_the_shown_and_exported_record_keep_the_recovery(
        public_page, tiny_llama_dir, tmp_path):
    from components import policy, recover_tab, runner
    from components.jobs import Job
    from components.session import Session
    from engine.recover.masked_finetune import FinetuneSpec
    from engine.run import run
    s = Session()
    record = run(_request(tiny_llama_dir, tmp_path, finetune=None, baselines=False, store=public_page.store),
                 models=runner.MODELS)
    spec = FinetuneSpec(steps=1, batch_size=1, seqlen=16, heldout_windows=1, eval_every=1, lr=1e-3)
    shown = recover_tab.recover_run(public_page, s, record["run_id"], spec, lambda e: None, threading.Event())
    kind, text, _ = recover_tab.recovery_summary([shown], Job(lambda p, c: None))
    assert kind == "ok" and "1 of 1 fine-tune steps" in text
    block = shown["recovery"]
    assert block["steps_done"] == 1 and block["zeros_held"] and block["curve"]["train"]
    assert "adapter" not in block  # where a separate adapter was written stays on the server
    assert policy.redact(public_page.store.load(record["run_id"]))["recovery"]["ppl_after"] == block["ppl_after"]


def test_a_stranger_cannot_recover_a_run_opened_from_past_runs(public_page, tiny_llama_dir, tmp_path):
    from components import policy, runner
    from components.session import Session
    from engine.run import run
    record = run(_request(tiny_llama_dir, tmp_path, finetune=None, baselines=False, store=public_page.store),
                 models=runner.MODELS)
    assert runner.MODELS.holds_run == record["run_id"]  # the owner could recover it now
    stranger = Session()
    # what Past runs gives any visitor of a shareable run (this one ran on a local folder, which is not listed)
    stranger.add(policy.redact(public_page.store.load(record["run_id"])))
    handler = next(f.fn for f in public_page.demo.fns.values() if f.api_name == "recover")
    with pytest.raises(gr.Error, match="only the tab that ran this run can recover it"):
        for _ in handler(stranger, record["run_id"], 1, None, "full", None):
            pass
    assert public_page.store.load(record["run_id"])["recovery"] is None  # the owner's record is untouched
    assert runner.MODELS.holds_run == record["run_id"]


# -- 2. Explore memory bounded per server; 7. the public cap on tokens per window; 8. Stop ends Explore's job -------

EXPLORE_FORM = dict(calib="pydoc", eval_source="pydoc", nsamples=2, seqlen=32, eval_windows=2, baselines=False,
                    method="wanda", reconstruct=False, within_block="score", tier_scope="layer",
                    assignment="importance")


@pytest.fixture(scope="module")
def capped_page(tmp_path_factory):
    """A local page with a cap of 64 tokens per window (a public server's Limits, smaller)."""
    from components.page import Page
    from components.policy import Limits
    from components.server import Settings
    return Page(Settings(runs_dir=str(tmp_path_factory.mktemp("runs")), limits=Limits(seqlen=64)))


def _explore(page, model_dir, seed=0, windows=None, xs=None):
    from components import explore_tab
    from components.explore_session import ExploreState
    xs = xs or ExploreState()
    values = {name: c.value for name, c in page.form.items()}
    values.update(model_path=str(model_dir), seed=seed, **EXPLORE_FORM)
    outs = list(explore_tab.calibrate(page, *[values[n] for n in page.form], xs, windows, 32, "sparsity"))
    return xs, outs


def _replan(block=16, keep=15, scope="layer", assignment="importance") -> list:
    from components import explore_session
    values = dict(tier_scope=scope, assignment=assignment, block=block, keep=keep)
    return [values[n] for n in explore_session.replan_params()]


def _move(page, xs, windows=1, tokens=32, dense=0.3, two_four=0.4):
    from components import explore_tab
    return list(explore_tab.move(page, xs, dense, two_four, 0.5, *_replan(), windows, tokens, "sparsity"))


def _status(page, outs) -> str:
    return next((o[page.explore.status] for o in reversed(outs) if page.explore.status in o), "")


@pytest.mark.slow
def test_tabs_share_the_server_calibrations_and_never_keep_a_dropped_one_alive(capped_page, tiny_llama_dir):
    from components import explore_session
    first, _ = _explore(capped_page, tiny_llama_dir, seed=1)
    dropped = weakref.ref(first.setup.calibration)
    _explore(capped_page, tiny_llama_dir, seed=2)
    _explore(capped_page, tiny_llama_dir, seed=3)  # the cache keeps 2: the first tab's calibration goes
    gc.collect()
    assert dropped() is None
    assert len(explore_session.CALIBRATIONS._entries) == explore_session.CALIBRATIONS.size
    assert "dropped to make room for newer ones" in _status(capped_page, _move(capped_page, first))


@pytest.mark.slow
def test_the_oldest_exploration_is_closed_beyond_the_cap_and_told(capped_page, tiny_llama_dir, monkeypatch):
    from components import explore_session
    monkeypatch.setattr(explore_session, "EXPLORATIONS", explore_session.Explorations(size=2))
    tabs = [_explore(capped_page, tiny_llama_dir, seed=4)[0] for _ in range(3)]
    assert tabs[0].setup is None and tabs[0].plan is None and tabs[1].setup is not None
    assert "closed to make room for newer ones" in _status(capped_page, _move(capped_page, tabs[0]))
    assert len(explore_session.EXPLORATIONS) == 2
    trimmed = []
    monkeypatch.setattr(explore_session, "release_memory", lambda: trimmed.append(True))
    explore_session.EXPLORATIONS.end(f"tab-{id(tabs[2])}")  # the tab went away (demo.unload)
    assert tabs[2].setup is None and len(explore_session.EXPLORATIONS) == 1
    assert trimmed == [True]  # the freed heap goes back to the system at once (an idle server's RSS falls)
    explore_session.EXPLORATIONS.end(f"tab-{id(tabs[2])}")  # a second unload of the same tab: nothing to free
    assert trimmed == [True]


def test_an_estimated_split_keeps_its_maps_not_its_masks(capped_page, tiny_llama_dir):
    xs, _ = _explore(capped_page, tiny_llama_dir, seed=5)
    _move(capped_page, xs)
    assert xs.points and xs.plan is not None and xs.record["matrices"]
    assert all(m.made is None for m in xs.plan.matrices.values())


def test_explore_tokens_per_window_obey_the_server_cap(capped_page, tiny_llama_dir):
    xs, _ = _explore(capped_page, tiny_llama_dir, seed=5)
    n = len(xs.points)
    assert "tokens per window must be between 8 and 64, got 128" in _status(capped_page, _move(capped_page, xs,
                                                                                                  tokens=128))
    assert len(xs.points) == n  # nothing was estimated
    _move(capped_page, xs, tokens=64)
    assert len(xs.points) == n + 1


def test_stop_ends_an_explore_estimate_waiting_for_the_engine(capped_page, tiny_llama_dir):
    from components import explore_tab, runner
    from components.jobs import Job
    from components.session import Session
    xs, _ = _explore(capped_page, tiny_llama_dir, seed=5)
    n = len(xs.points)
    hold = threading.Event()
    blocker = Job(lambda progress, cancel: hold.wait(30), name="blocker").start()
    try:
        stream = explore_tab.move(capped_page, xs, 0.2, 0.5, 0.5, *_replan(), 2, 32, "sparsity")
        next(stream), next(stream)  # the top-K note, then the job is in the engine's line
        job = xs.job
        assert job is not None and not job.started_work
        runner.stop(capped_page, Session(), None, xs)
    finally:
        hold.set()
    list(stream)
    deadline = time.monotonic() + 20
    while job.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.cancel.is_set() and not job.started_work and len(xs.points) == n
    blocker.cancel.set()


# -- 9. upper bounds on fine-tune steps, batch, learning rate (every face: the spec, the CLI flags, the form) ------

@pytest.mark.parametrize("change, message", [
    (dict(steps=10**9), "fine-tune steps must be at most 1,000,000, got 1,000,000,000"),
    (dict(batch_size=10**9), "fine-tune batch size must be at most 4,096"),
    (dict(steps=100_000, batch_size=4096), "reads 52,428,800,000 tokens, more than 134,217,728"),
    (dict(lr=1e308), "learning rate must be at most 1 (every optimizer diverges above), got 1e+308"),
    (dict(lr=float("inf")), "learning rate must be at most 1"),
    (dict(weight_decay=float("inf")), "weight decay must be a number in [0, 1]"),
])
def test_a_fine_tune_beyond_its_bounds_is_one_line_before_any_work(change, message):
    from engine.recover.masked_finetune import FinetuneSpec
    with pytest.raises(UserError, match=re.escape(message)):
        FinetuneSpec(**change).validate()


@pytest.mark.parametrize("argv, message", [
    (["--finetune_steps", "1000000000"], "fine-tune steps must be at most 1,000,000"),
    (["--finetune_steps", "2", "--finetune_batch_size", "1000000000"], "fine-tune batch size must be at most"),
    (["--finetune_steps", "2", "--lr", "1e308"], "learning rate must be at most 1"),
])
def test_finetune_py_flags_beyond_the_bounds_are_refused(argv, message):
    from engine.cli.finetune_cli import build_parser, finetune_spec_from_args
    with pytest.raises(UserError, match=re.escape(message)):
        finetune_spec_from_args(build_parser().parse_args(["--model", "m", "--save", "s", *argv]))


# -- the smaller ones ---------------------------------------------------------------------------------------------

def test_resuming_from_a_folder_that_is_no_checkpoint_is_one_line(tmp_path, tiny_llama_dir, capsys):
    from engine.cli.finetune_cli import main as finetune_main
    not_a_checkpoint = tmp_path / "ckpt"
    not_a_checkpoint.mkdir()
    (not_a_checkpoint / "notes.txt").write_text("hello")
    rc = finetune_main(["--model", str(tiny_llama_dir), "--save", str(tmp_path / "out"), "--finetune_steps", "1",
                        "--calib_dataset", "pydoc", "--eval_dataset", "none", "--device", "cpu",
                        "--resume_from_checkpoint", str(not_a_checkpoint)])
    _one_line(rc, capsys.readouterr().err, "is not a fine-tune checkpoint (no trainer_state.json)")


def test_the_wanda_log_is_written_whole_or_said_in_one_line(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "log_magnitude.txt").symlink_to("/dev/full")  # every write there fails with ENOSPC
    argv = ["--model", str(tiny_llama_dir), "--prune_method", "magnitude", "--save", str(out), "--overwrite",
            "--eval_windows", "1", *QUICK]
    assert cli_main(argv) == 0
    assert (out / "log_magnitude.txt").read_text().startswith("method\t")  # replaced whole, never half-written
    import engine.io.record
    monkeypatch.setattr(engine.io.record, "write_text_atomic",
                        lambda path, text: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    capsys.readouterr()
    _one_line(cli_main(argv), capsys.readouterr().err, "No space left on device")


@pytest.mark.parametrize("text", ["1e309|q_proj|1", "inf|q_proj", "nan|q_proj", "9" * 400 + "|q_proj", "-1|x",
                                  "1.5|q_proj", "|", "", None])
def test_a_hostile_heatmap_click_or_layer_is_ignored(text):
    from components.results_tab import selection_for, tiermap_for
    record = {"n_layers": 2, "spec": {"block": 16},
              "matrices": [{"layer": 0, "module": "q_proj", "shape": [64, 64], "tier_map": None}]}
    layer = str(text).split("|")[0] if text is not None else None
    fig, _ = tiermap_for(record, layer, "q_proj")  # a click's layer, or the layer dropdown's raw value
    assert fig is not None
    assert selection_for(record, layer, "q_proj")[1] == 0  # an unreadable layer falls back to the first


def test_layer_indices_a_client_may_send():
    from components.results_tab import layer_index
    assert [layer_index(v) for v in ("3", "3.0", 2, " 4 ", 3.0)] == [3, 3, 2, 4, 3]
    assert [layer_index(v) for v in ("1e309", "inf", float("inf"), "-1", True, 10**7, "1.5", [1])] == [None] * 8


@pytest.mark.parametrize("dense, two_four", [("", 0.4), (None, 0.4), (0.3, "nan"), (0.3, float("inf"))])
def test_a_released_slider_with_an_empty_or_odd_value_is_one_line(capped_page, tiny_llama_dir, dense, two_four):
    xs, _ = _explore(capped_page, tiny_llama_dir, seed=5)
    outs = _move(capped_page, xs, dense=dense, two_four=two_four)
    assert "must be a number between 0 and 1" in _status(capped_page, outs)


def test_the_remote_code_hint_survives_a_message_of_several_lines(monkeypatch):
    import transformers

    from engine.errors import ModelLoadError
    from engine.io.models import _check_causal

    def refuse(*a, **k):
        raise ValueError("The repository for owner/model contains custom code which must be executed to correctly "
                         "load the model.\nYou can inspect the repository content at https://hf.co/owner/model.\n"
                         "Please pass the argument `trust_remote_code=True` to allow custom code to be run.")
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)
    with pytest.raises(ModelLoadError, match="needs custom code from its repository.*--trust_remote_code"):
        _check_causal("owner/model", {})


def test_a_local_file_name_is_shown_literally_in_the_calibration_note():
    from types import SimpleNamespace

    from components.explore_session import calibration_text
    cal = SimpleNamespace(seconds=1.0, matrices={}, nbytes=0, hessians=None, hessians_note="", windows=4)
    setup = SimpleNamespace(calibration=cal, cached=False, seconds=1.0, spec=PruneSpec(), windows=None,
                            calib_name="local:[x](javascript:alert(1)).txt", eval_name="<b>*e*</b>")
    text = calibration_text(setup)
    assert "[x](javascript" not in text and "\\[x\\]\\(javascript:alert\\(1\\)\\)" in text
    assert "<b>" not in text and "\\*e\\*" in text
