"""Zero-shot accuracy through lm-evaluation-harness, on the model already in memory (no save and reload).

    tasks = resolve_tasks(["boolq", "rte"])             # checks names and data sources before any work
    scores = evaluate_zero_shot(model, tokenizer, tasks)  # {"boolq": {"acc": .., "acc_stderr": .., "n": ..}, ...}

The default tasks are the seven of the Wanda paper. lm_eval is an optional extra (requirements-eval.txt): it is
imported only here, only when zero-shot evaluation is asked for. A task whose data is a local file (lm-eval's
`dataset_path: json` + `dataset_kwargs: {data_files: ...}`, from a folder given as `include_path`) runs offline;
a task that reads the Hugging Face hub fails at once, with its name, when the hub cannot be reached.
"""
from __future__ import annotations

import copy
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import UserError

PAPER_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
METRICS = ("acc", "acc_norm")
DEFAULT_BATCH_SIZE = 8
BOOTSTRAP_ITERS = 1000  # acc / acc_norm have a closed-form stderr; this only caps a user task's bootstrapped metrics


@dataclass
class ZeroShotTasks:
    """Task names checked by `resolve_tasks`, with the lm-eval TaskManager that knows them (indexing the harness's
    thousands of task YAMLs takes seconds: done once per run, not once per evaluation)."""
    names: list[str]
    manager: Any
    include_path: str | None = None


def resolve_tasks(tasks: list[str] | tuple[str, ...] | None = None, include_path: str | None = None) -> ZeroShotTasks:
    """Check, before any model work, that lm_eval is installed, every task name is known, and every task's data
    is local or the hub is reachable. None or [] = the paper's seven tasks. Raises UserError otherwise."""
    _require_lm_eval()
    names = list(dict.fromkeys(tasks or PAPER_TASKS))
    if include_path is not None and not Path(include_path).expanduser().is_dir():
        raise UserError(f"zero-shot task folder {include_path} is not a directory")
    include = str(Path(include_path).expanduser()) if include_path else None
    manager = _task_manager(names, include)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        where = f" nor in {include_path}" if include_path else ""
        raise UserError(f"unknown zero-shot task {', '.join(map(repr, unknown))}: not an lm-eval task{where}; "
                        "`lm-eval ls tasks` lists the names, --zero_shot_include DIR adds your own task YAMLs")
    hub = {}
    for name in names:
        for cfg in _leaf_configs(manager, name):
            dataset = _hub_dataset(name, cfg)
            if dataset:
                hub.setdefault(name, dataset)
    from engine.io.text import hub_reachable  # here, not at the top: the CLI imports this module before torch

    if hub and not hub_reachable():
        listed = ", ".join(f"{n} ({d})" for n, d in hub.items())
        raise UserError(f"zero-shot task(s) {listed} read their data from the Hugging Face hub, which cannot be "
                        "reached; connect (or pre-download the datasets into the HF cache), or evaluate a local "
                        "task with --zero_shot_include DIR")
    return ZeroShotTasks(names, manager, include)


def evaluate_zero_shot(model, tokenizer, tasks: ZeroShotTasks | list[str] | None = None, limit: int | None = None,
                       batch_size: int = DEFAULT_BATCH_SIZE, include_path: str | None = None, progress=None,
                       what: str = "pruned") -> dict:
    """Accuracy of an in-memory causal LM on lm-eval multiple-choice tasks, zero-shot.

    Returns {task: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr" (where the task has it), "n"}}, one entry
    per task the harness scored (a group or tag expands to its tasks). `limit` = at most that many items per task.
    """
    plan = tasks if isinstance(tasks, ZeroShotTasks) else resolve_tasks(tasks, include_path)
    progress = progress or (lambda event: None)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    # lm-eval sets a pad token on the tokenizer it is given; a copy keeps the run's (and the saved) tokenizer as is.
    # Its two warnings about being handed a model object rather than a name describe exactly what we mean to do.
    hf_log = logging.getLogger("lm_eval.models.huggingface")
    level = hf_log.level
    hf_log.setLevel(logging.ERROR)
    try:
        lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size)
    finally:
        hf_log.setLevel(level)
    out: dict = {}
    for i, name in enumerate(plan.names):
        progress({"stage": "zero_shot", "message": f"zero-shot {name} on the {what} model ({i + 1}/{len(plan.names)})"})
        res = simple_evaluate(model=lm, tasks=[name], task_manager=plan.manager, limit=limit, log_samples=False,
                              bootstrap_iters=BOOTSTRAP_ITERS)
        out.update(accuracies(res))
    return out


def accuracies(results: dict) -> dict:
    """lm-eval's results dict -> {task: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n"}} (what exists)."""
    out = {}
    for task, metrics in results.get("results", {}).items():
        entry = {}
        for metric in METRICS:
            for key, name in ((f"{metric},none", metric), (f"{metric}_stderr,none", f"{metric}_stderr")):
                value = metrics.get(key)
                if isinstance(value, (int, float)):
                    entry[name] = float(value)
        if "acc" not in entry:
            continue  # a group's summary or a task without accuracy
        n = (results.get("n-samples") or {}).get(task) or {}
        entry["n"] = n.get("effective", n.get("original"))  # items scored (after --zero_shot_limit)
        out[task] = entry
    return out


def _require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError("zero-shot evaluation needs lm-evaluation-harness: pip install -r requirements-eval.txt "
                        "(or pip install lm_eval)") from None
    # lm-eval logs every step at INFO; its warnings (e.g. about --limit) still show
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    logging.getLogger("lm-eval").setLevel(logging.WARNING)


def _task_manager(names: list[str], include_path: str | None):
    stamp = _folder_stamp(include_path)
    if include_path:  # every name in the user's folder: skip indexing the harness's own task YAMLs
        local = _indexed(include_path, False, stamp)
        if all(n in local.all_tasks for n in names):
            return local
    return _indexed(include_path, True, stamp)


@functools.lru_cache(maxsize=4)
def _indexed(include_path: str | None, include_defaults: bool, stamp: tuple):
    """A TaskManager, kept for the process: indexing lm-eval's own ~10k task YAMLs takes several seconds, which a
    dashboard would otherwise pay on every run. `stamp` (the folder's YAML names and mtimes) keys out edited tasks."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def _folder_stamp(include_path: str | None) -> tuple:
    if not include_path:
        return ()
    return tuple(sorted((str(p), p.stat().st_mtime_ns) for p in Path(include_path).rglob("*.y*ml")))


def _leaf_configs(manager, name: str, depth: int = 0) -> list[dict | None]:
    """The task configs a name stands for: itself, a group's members, or a tag's tasks (None = not knowable)."""
    from lm_eval.tasks._index import Kind

    entry = manager.task_index.get(name)
    if entry is None or depth > 8:
        return [None]
    if entry.kind == Kind.TASK:
        return [entry.cfg]
    if entry.kind == Kind.TAG:
        return [e.cfg for e in manager.task_index.values() if name in e.tags and e.kind == Kind.TASK]
    if entry.kind == Kind.GROUP:
        members = (entry.cfg or {}).get("task") or []
        out = []
        for m in members if isinstance(members, list) else [members]:
            out += _leaf_configs(manager, m, depth + 1) if isinstance(m, str) else [m]
        return out
    return [None]  # a Python-defined task: its data source is not in a config


def _hub_dataset(task: str, cfg: dict | None) -> str | None:
    """The hub dataset a task config needs, or None when its data is local (a missing local file is a UserError)."""
    if not isinstance(cfg, dict):
        return None
    path = cfg.get("dataset_path")
    if not path:
        return None  # a custom dataset function: nothing to check here
    if path in _packaged_builders():
        for f in _data_files((cfg.get("dataset_kwargs") or {}).get("data_files")):
            if "://" not in f and not any(c in f for c in "*?[") and not Path(f).expanduser().exists():
                raise UserError(f"zero-shot task {task!r}: data file {f} not found (lm-eval reads relative "
                                f"data_files from the working directory, here {Path.cwd()})")
        return None
    if Path(path).expanduser().exists() or _in_hf_cache(path):
        return None
    return path


def _data_files(spec) -> list[str]:
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, dict):
        return [f for v in spec.values() for f in _data_files(v)]
    if isinstance(spec, (list, tuple)):
        return [f for v in spec for f in _data_files(v)]
    return []


def _packaged_builders() -> set[str]:
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    return set(_PACKAGED_DATASETS_MODULES)


def _in_hf_cache(repo_id: str) -> bool:
    """Has this hub dataset been downloaded before (datasets can then load it offline)?"""
    import datasets
    from huggingface_hub import constants

    hub_dir = Path(constants.HF_HUB_CACHE) / ("datasets--" + repo_id.replace("/", "--"))
    arrow_dir = Path(datasets.config.HF_DATASETS_CACHE) / repo_id.replace("/", "___")
    return hub_dir.is_dir() or arrow_dir.is_dir()
