"""Zero-shot accuracy through lm-evaluation-harness: the harness really runs, end to end, on a local 40-item task
(tests/data/zero_shot, registered through lm-eval's own include_path), on a tiny model, on SmolLM2, through run()
and the command line; bad task names, an unreachable hub and a missing lm_eval are one-line errors."""
import importlib.util
import json
import sys

import pytest

from conftest import REPO, requires_smollm2
from engine.cli.prune_cli import build_parser, main, zero_shot_tasks
from engine.errors import UserError
from engine.eval import zeroshot
from engine.eval.zeroshot import PAPER_TASKS, accuracies, evaluate_zero_shot, resolve_tasks
from engine.io import text as textdata
from engine.run import RunRequest

pytestmark = pytest.mark.slow  # end to end: a CLI run or a model load per test

requires_lm_eval = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None,
    reason="lm-evaluation-harness not installed: pip install -r requirements-eval.txt")

TASK_DIR = REPO / "tests" / "data" / "zero_shot"
TASK = "tiny_facts"  # 40 four-way questions; chance is 0.25


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # lm-eval reads a task's relative data_files from the working directory


@pytest.fixture
def tiny_lm(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval(), AutoTokenizer.from_pretrained(tiny_llama_dir)


# -- pure parts ----------------------------------------------------------------------------------------------------

def test_accuracies_read_lm_evals_results_dict():
    results = {"results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.1,
                                        "acc_norm,none": 0.75, "acc_norm_stderr,none": 0.09},
                           "boolq": {"alias": "boolq", "acc,none": 0.625, "acc_stderr,none": "N/A"},
                           "some_group": {"alias": "some_group", "f1,none": 0.3}},
               "n-samples": {"arc_easy": {"original": 2376, "effective": 20},
                             "boolq": {"original": 3270, "effective": 3270}}}
    assert accuracies(results) == {
        "arc_easy": {"acc": 0.5, "acc_stderr": 0.1, "acc_norm": 0.75, "acc_norm_stderr": 0.09, "n": 20},
        "boolq": {"acc": 0.625, "n": 3270}}  # no acc_norm in boolq; a stderr lm-eval could not compute is left out


def test_cli_task_list():
    args = build_parser().parse_args(["--eval_zero_shot"])
    assert zero_shot_tasks(args.eval_zero_shot) == list(PAPER_TASKS)
    assert len(PAPER_TASKS) == 7 and "arc_challenge" in PAPER_TASKS
    args = build_parser().parse_args(["--eval_zero_shot", "boolq,rte", "hellaswag", "--zero_shot_limit", "5"])
    assert zero_shot_tasks(args.eval_zero_shot) == ["boolq", "rte", "hellaswag"] and args.zero_shot_limit == 5
    assert zero_shot_tasks(build_parser().parse_args([]).eval_zero_shot) is None


# -- errors, before any model work -----------------------------------------------------------------------------

@requires_lm_eval
def test_hub_tasks_fail_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # hub_reachable() answers False at once
    monkeypatch.setattr(zeroshot, "_in_hf_cache", lambda repo_id: False)
    with pytest.raises(UserError, match=r"boolq \(aps/super_glue\).*hub.*cannot be reached") as err:
        resolve_tasks(None, str(TASK_DIR))  # the same index as the next tests: built once (seconds) per session
    assert all(t in str(err.value) for t in PAPER_TASKS) and "\n" not in str(err.value)


@requires_lm_eval
def test_local_task_needs_no_hub(monkeypatch, in_repo):
    monkeypatch.setattr(textdata, "hub_reachable", lambda: pytest.fail("a local task must not probe the hub"))
    plan = resolve_tasks([TASK], str(TASK_DIR))
    assert plan.names == [TASK]


@requires_lm_eval
def test_unknown_task_and_bad_folder(in_repo):
    with pytest.raises(UserError, match=r"unknown zero-shot task 'no_such_task'.*lm-eval ls tasks"):
        resolve_tasks(["no_such_task", TASK], str(TASK_DIR))
    with pytest.raises(UserError, match="not a directory"):
        resolve_tasks([TASK], str(TASK_DIR / "nope"))


@requires_lm_eval
def test_missing_local_data_file(tmp_path):
    text = (TASK_DIR / f"{TASK}.yaml").read_text().replace("task: tiny_facts", "task: lost_facts")
    (tmp_path / "lost.yaml").write_text(text.replace("tests/data/zero_shot/tiny_facts.jsonl", "no/such/file.jsonl"))
    with pytest.raises(UserError, match=r"'lost_facts': data file no/such/file.jsonl not found"):
        resolve_tasks(["lost_facts"], str(tmp_path))


def test_lm_eval_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    with pytest.raises(UserError, match="pip install -r requirements-eval.txt"):
        resolve_tasks([TASK], str(TASK_DIR))


@requires_lm_eval
def test_cli_errors_are_one_line(tiny_llama_dir, monkeypatch, capsys, in_repo):
    monkeypatch.setattr(zeroshot, "_in_hf_cache", lambda repo_id: False)
    rc = main(["--model", str(tiny_llama_dir), "--eval_zero_shot", "--zero_shot_include", str(TASK_DIR),
               "--eval_dataset", "none", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: zero-shot task(s) boolq") and len(err.splitlines()) == 1
    rc = main(["--model", str(tiny_llama_dir), "--eval_zero_shot", TASK, "--zero_shot_limit", "0", "--quiet"])
    assert rc == 2 and "zero-shot limit must be a whole number >= 1" in capsys.readouterr().err


# -- the harness, end to end -------------------------------------------------------------------------------------

@requires_lm_eval
def test_tiny_model_through_the_harness(tiny_lm, in_repo):
    model, tok = tiny_lm
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))  # the model in memory is the one evaluated
    events = []
    try:
        scores = evaluate_zero_shot(model, tok, [TASK], limit=8, include_path=str(TASK_DIR), progress=events.append)
    finally:
        hook.remove()
    assert set(scores) == {TASK}
    s = scores[TASK]
    assert s["n"] == 8 and set(s) >= {"acc", "acc_norm", "acc_stderr"}
    assert all(s[m] * 8 == pytest.approx(round(s[m] * 8)) for m in ("acc", "acc_norm"))  # k of 8 items right
    assert calls and events[0]["stage"] == "zero_shot" and TASK in events[0]["message"]
    assert tok.pad_token is None  # the harness set its pad token on a copy, not on the run's tokenizer


@requires_lm_eval
def test_cli_records_pruned_and_dense_zero_shot(tiny_llama_dir, tmp_path, capsys, in_repo):
    out = tmp_path / "out"
    rc = main(["--model", str(tiny_llama_dir), "--sparsity_ratio", "0.5", "--use_variant", "--calib_dataset", "pydoc",
               "--eval_dataset", "pydoc", "--nsamples", "2", "--seqlen", "32", "--eval_windows", "2", "--baselines",
               "--eval_zero_shot", TASK, "--zero_shot_include", "tests/data/zero_shot", "--zero_shot_limit", "6",
               "--save", str(out), "--no_save_model", "--quiet"])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    res = json.loads((out / "results.json").read_text())
    assert set(res["zero_shot"]) == {TASK} and set(res["zero_shot_dense"]) == {TASK}
    assert res["zero_shot"][TASK]["n"] == 6 and 0 <= res["zero_shot"][TASK]["acc"] <= 1
    assert res["request"]["zero_shot_tasks"] == [TASK] and res["request"]["zero_shot_limit"] == 6
    assert res["spec"]["use_variant"] is True and "(variant)" in line
    assert f"{TASK} acc {res['zero_shot'][TASK]['acc']:.4f}" in line
    assert res["timings"]["zero_shot_s"] > 0 and res["timings"]["zero_shot_dense_s"] > 0


@requires_lm_eval
@requires_smollm2
def test_smollm2_through_the_harness_beats_chance(smollm2, in_repo):
    lm = smollm2.get(RunRequest(model=None, device="cpu"))  # the session's SmolLM2, dense weights restored
    scores = evaluate_zero_shot(lm.model, lm.tokenizer, [TASK], limit=20, include_path=str(TASK_DIR))
    assert scores[TASK]["n"] == 20
    assert scores[TASK]["acc"] >= 0.6  # 4-way questions a 135M model knows (0.75 on all 40): far above chance 0.25


# -- the dashboard's figure ----------------------------------------------------------------------------------------

def test_zero_shot_figure_bars_dense_beside_the_run():
    from components.zero_shot import zero_shot_figure

    run_scores = {"tiny_facts": {"acc": 0.5, "n": 20}, "rte": {"acc": 0.25, "acc_stderr": 0.1, "n": 20},
                  "boolq": {"acc": 0.75, "acc_norm": 0.7, "n": 20}}
    dense_scores = {"boolq": {"acc": 1.0}, "rte": {"acc": 0.5}, "tiny_facts": {"acc": 0.75}}
    record = {"spec": {"method": "wanda"}, "zero_shot": run_scores, "zero_shot_dense": dense_scores}
    dense, pruned = zero_shot_figure(record).data
    assert dense.name == "dense" and pruned.name == "this run (wanda)"
    assert list(pruned.x) == ["boolq", "rte", "tiny_facts", "mean"]  # the paper's order, then other tasks
    assert list(pruned.y) == [0.75, 0.25, 0.5, 0.5] and list(dense.y) == [1.0, 0.5, 0.75, 0.75]
    assert list(pruned.error_y.array) == [0, 0.1, 0, 0] and "acc_norm 0.7000" in pruned.hovertext[0]
    # a dense run's record given beside it wins over the run's own baseline; a partial set gets no mean
    (dense2, _) = zero_shot_figure(record, {"zero_shot": {"rte": {"acc": 0.625}}}).data
    assert list(dense2.x) == ["rte"] and list(dense2.y) == [0.625]
    (only,) = zero_shot_figure({"zero_shot": {"rte": {"acc": 0.5}}}).data
    assert only.name == "this run (pruned)" and list(only.x) == ["rte"]
    empty = zero_shot_figure({"zero_shot": None})
    assert not empty.data and "Zero-shot accuracy appears here" in empty.layout.annotations[0].text
