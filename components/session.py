"""Per-browser-session state and the translation of the set-up form into engine arguments.

Validation is the engine's (PruneSpec checks itself) and, on a public server, components/policy.py's; this module
only turns widget values into the types the engine expects and says in one line what is wrong when it cannot.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch

from engine.errors import UserError, excerpt
from engine.io.models import available_devices
from engine.patterns.registry import PATTERNS, Param, pattern_params
from engine.run import ModelCache, RunRequest
from engine.spec import RECIPE_PATTERN, THREE_TIER_RATIOS, PruneSpec, spec_label

from . import policy
from .jobs import Job
from .registry import form_fields

EMBEDDED = "embedded"
MODEL_PRESETS = [
    ("SmolLM2-135M-Instruct · embedded, offline", EMBEDDED),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    ("HuggingFaceTB/SmolLM2-360M", "HuggingFaceTB/SmolLM2-360M"),
    ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B"),
    ("facebook/opt-125m", "facebook/opt-125m"),
    ("EleutherAI/pythia-160m", "EleutherAI/pythia-160m"),
    ("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf"),
    ("mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-v0.1"),
]
PUBLIC_PRESETS = MODEL_PRESETS[:-2]  # a public server takes models up to 2B parameters (components/policy.py)
NAMED_SOURCES = [("auto (paper: C4 calibration, WikiText-2 evaluation; offline: Python docs)", "auto"),
                 ("WikiText-2", "wikitext2"), ("C4", "c4"), ("Python docs (offline)", "pydoc")]
LOCAL_SOURCE = ("local file / folder ↓", "path")
SKIP_EVAL = ("skip evaluation", "none")
SOURCE_CHOICES = NAMED_SOURCES + [LOCAL_SOURCE]
EVAL_CHOICES = NAMED_SOURCES + [LOCAL_SOURCE, SKIP_EVAL]
DEVICE_CHOICES = available_devices()  # what the engine accepts on this machine
DTYPE_CHOICES = ["auto", "float32", "bfloat16", "float16"]


MAX_SESSION_RUNS = 100  # a tab keeps its newest runs in memory; every run stays in the run store (Past runs)


@dataclass
class Session:
    """What one browser tab owns: its runs, its running job, the record the Results tab shows."""
    runs: list[dict] = field(default_factory=list)
    job: Job | None = None
    shown: dict | None = None          # the record the Results tab shows (a growing one while a run streams)
    shown_layer: int | None = None     # the tier map chosen there
    shown_module: str | None = None
    view: str = "realised sparsity"    # what colours the layer map
    stop_queued: int = 0               # runs stopped while they waited in Gradio's queue, still to be ended there
    ran: set = field(default_factory=set)  # run ids this tab started itself (a run opened from Past runs is not one)
    visitor: str | None = None         # who sent the tab's latest event (its jobs take that visitor's turns)

    def add(self, record: dict) -> None:
        """A finished (or reopened) run becomes this tab's latest; the same run id is never listed twice."""
        runs = [r for r in self.runs if r.get("run_id") != record.get("run_id")] + [record]
        self.runs = runs[-MAX_SESSION_RUNS:]  # rebinding, not mutating: a page may be reading the old list

    def owns(self, run_id) -> bool:
        """Whether this tab started run `run_id` (only its owner may change a run's stored record)."""
        return run_id in self.ran

    def run_choices(self) -> list[tuple[str, str]]:
        return [(f"#{i} {spec_label(r.get('spec'))} · {r.get('status')}", r.get("run_id"))
                for i, r in enumerate(self.runs, 1)]

    def number(self, run_id) -> int | None:
        """The run's place in this tab's list, counting from 1."""
        return next((i for i, r in enumerate(self.runs, 1) if r.get("run_id") == run_id), None)

    def get(self, run_id) -> dict | None:
        return next((r for r in self.runs if r.get("run_id") == run_id), None) if run_id else None

    def busy(self) -> bool:
        """A job of this tab is waiting or running and nobody asked it to stop."""
        return self.job is not None and self.job.running and not self.job.cancel.is_set()


def rebalance(changed: int, values) -> tuple[float, float, float]:
    """Set ratio `changed` to its new value and rescale the other two in proportion, so the three sum to 1.

    Values are kept on a 0.01 grid; if the other two are both zero they share the rest equally.
    """
    v = [min(max(float(x or 0), 0.0), 1.0) for x in values]
    rest = round(1 - v[changed], 2)
    others = [i for i in range(3) if i != changed]
    a, b = v[others[0]], v[others[1]]
    first = round(rest * a / (a + b), 2) if a + b > 0 else round(rest / 2, 2)
    v[others[0]], v[others[1]] = first, round(rest - first, 2)
    v[changed] = round(v[changed], 2)
    return tuple(v)


# Bounds of the form's free fields, checked here once, before anything is loaded. The spec and the request check
# their own meaning (N < M, ratios sum to 1, ...); these only keep a value a client can type within reason.
MAX_TEXT = 4096             # a path or an id (PATH_MAX); a public server takes hub ids of at most 96 characters
MAX_COUNT = 1_000_000       # samples, tokens, windows, block sides, N and M
MAX_SWEEP_CHARS = 100_000   # the sweep box
MAX_SWEEP_LINES = 1000


def _int(value, name: str, allow_none: bool = False, low: int = 0, high: int = MAX_COUNT) -> int | None:
    if value is None or value == "":
        if allow_none:
            return None
        raise UserError(f"{name} is empty; enter a whole number")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a whole number, got {excerpt(value)}") from None
    if not f == f or f in (float("inf"), float("-inf")) or f != int(f):
        raise UserError(f"{name} must be a whole number, got {excerpt(value)}")
    if not low <= f <= high:
        raise UserError(f"{name} must lie in [{low}, {high}], got {excerpt(value)}")
    return int(f)


def _float(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {excerpt(value)}") from None


def _text(value, name: str) -> str:
    """A free text field: a string without NUL bytes, at most MAX_TEXT characters, stripped."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserError(f"{name} must be text, got {type(value).__name__}")
    if len(value) > MAX_TEXT or "\x00" in value:
        raise UserError(f"{name} {excerpt(value)} is not a path or an id (at most {MAX_TEXT} characters, no NUL)")
    return value.strip()


def param_value(param: Param, form: dict):
    """One pattern parameter from the form's widget values, typed (UserError naming it); its default where the
    form has no widget for it."""
    fields = form_fields(param)
    if not param.form or not all(f in form for f in fields):
        return param.default
    if param.type is tuple:
        return tuple(_float(form[f], param.called) for f in fields)
    value = form[param.name]
    if param.type is int:
        return _int(value, param.called)
    if param.type is float:
        return _float(value, param.called)
    return bool(value) if param.type is bool else value


def pattern_values(form: dict) -> dict:
    """The pattern parameters of the form (every pattern's: the spec keeps those its pattern reads)."""
    return {name: param_value(param, form) for name, param in pattern_params().items()}


def spec_from_form(form: dict) -> PruneSpec:
    """Widget values -> a validated PruneSpec (raises SpecError with the engine's message)."""
    seqlen = _int(form["seqlen"], "sequence length", allow_none=True)
    return PruneSpec(method=form["method"], pattern=form["pattern"], **pattern_values(form),
                     nsamples=_int(form["nsamples"], "calibration samples"), seqlen=seqlen or None,
                     reconstruct=bool(form["reconstruct"]), seed=_int(form["seed"], "seed", high=2**32 - 1))


def source_from_form(choice: str, path: str, what: str) -> str | None:
    if choice == "none":
        return None
    if choice == "path":
        path = _text(path, f"{what} path")
        if not path:
            raise UserError(f"{what}: choose a source or enter the path of a .txt, .jsonl or .parquet file "
                            "or a WikiText folder")
        return path
    return choice


def model_from_form(preset: str, custom: str) -> str | None:
    """The free field wins over the preset; the embedded model is None for the engine."""
    custom = _text(custom, "model")
    if custom:
        return custom
    return None if preset in (EMBEDDED, None, "") else preset


def request_from_form(form: dict, **server) -> RunRequest:
    """The set-up form (field name -> widget value) -> a RunRequest, checked as far as can be without loading
    anything. `server`: RunRequest fields only the server decides (trust_remote_code, safetensors_only, store)."""
    spec = spec_from_form(form)
    windows = _int(form["eval_windows"], "evaluation windows", allow_none=True) or None
    request = RunRequest(
        model=model_from_form(form["model"], form["model_path"]), spec=spec,
        calib=source_from_form(form["calib"], form["calib_path"], "calibration") if spec.uses_calibration else "auto",
        eval=source_from_form(form["eval_source"], form["eval_path"], "evaluation"), eval_windows=windows,
        baselines=bool(form["baselines"]), device=form["device"] or "auto", dtype=form["dtype"] or "auto",
        save_dir=_text(form["save_dir"], "save folder") or None, save_format=form.get("save_format") or "dense",
        overwrite=bool(form["overwrite"]), **server)
    request.validate()
    return request


def config_param_count(name: str | None, trust_remote_code: bool = False) -> int | None:
    """Parameters of model `name`, counted from its config on the meta device: no weights are read or allocated.
    None when the config cannot be read here (offline, a GGUF file, the embedded model): the engine then says why,
    or the loaded model is measured instead (size_guard)."""
    if name is None or name.lower().endswith(".gguf"):
        return None
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(os.path.expanduser(name), trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:
        return None
    return sum(p.numel() for p in model.parameters())


def size_guard(request: RunRequest, progress, max_params: int | None, models: ModelCache):
    """Refuse a model above `max_params`: by its config before any weights are downloaded, and by the loaded
    weights (unloading them) at the first event after loading, for models whose config could not be counted."""
    if max_params is None:
        return progress
    n = config_param_count(request.model, request.trust_remote_code)
    if n is not None:
        policy.check_model_size(n, max_params, request.model)
    checked = False

    def guarded(event: dict) -> None:
        nonlocal checked
        if not checked and event.get("stage") != "load" and models.loaded is not None:
            checked = True
            n = sum(p.numel() for p in models.loaded.model.parameters())
            if n > max_params:
                models.drop()
                policy.check_model_size(n, max_params, request.model or "the embedded model")
        progress(event)
    return guarded


NOMINAL_INPUTS = ("method", "pattern", "reconstruct")  # with every pattern parameter's form fields


def nominal_text(form: dict) -> str:
    """The sparsity a set-up aims at (form field -> value), as one line of Markdown (or the spec's complaint)."""
    try:
        spec = PruneSpec(method=form.get("method", "wanda"), pattern=form["pattern"],
                         reconstruct=bool(form.get("reconstruct")), **pattern_values(form))
    except (UserError, TypeError, ValueError) as err:
        return f"<span class='bad'>⚠ {err}</span>"
    return PATTERNS[spec.pattern].explain(spec)


NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"  # 0.35, .35, 1, 1. -- nothing else (no signs, exponents, "1.2.3")
SPLIT_LINE = re.compile(rf"^\s*{NUMBER}\s*[/,;\s]\s*{NUMBER}\s*[/,;\s]\s*{NUMBER}\s*$", re.ASCII)


def parse_splits(text: str) -> list[tuple[float, float, float]]:
    """'0.35/0.45/0.20' per line (commas or spaces work too) -> list of (dense, 2:4, top-K)."""
    if text is not None and not isinstance(text, str):
        raise UserError(f"the sweep list must be text, got {type(text).__name__}")
    text = text or ""
    if len(text) > MAX_SWEEP_CHARS or text.count("\n") >= MAX_SWEEP_LINES:
        raise UserError(f"the sweep list is too long: at most {MAX_SWEEP_LINES} lines, {MAX_SWEEP_CHARS} characters")
    splits = []
    for i, line in enumerate(text.splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        match = SPLIT_LINE.match(line)
        if not match:
            raise UserError(f"sweep line {i}: {excerpt(line)} is not three numbers like 0.35/0.45/0.20")
        r = tuple(float(x) for x in match.groups())
        if abs(sum(r) - 1) > 1e-6:
            raise UserError(f"sweep line {i}: {excerpt(line)} sums to {sum(r):g}, not 1")
        splits.append(r)
    if not splits:
        raise UserError("the sweep list is empty: one split per line, e.g. 0.35/0.45/0.20")
    return splits


def grid_splits(step: float) -> str:
    """Every split on a grid of the triangle, one per line (the text the sweep box takes)."""
    k = round(1 / step)
    lines = []
    for i in range(k + 1):
        for j in range(k + 1 - i):
            lines.append(f"{i / k:.2f}/{j / k:.2f}/{(k - i - j) / k:.2f}")
    return "\n".join(lines)


def recipe_values(recipe: dict) -> tuple:
    """Form values (method, tier scope, assignment, within-block, reconstruct, 3 ratios, K, block rule) of a named
    recipe, with the three-tier pattern."""
    return (recipe["method"], recipe["tier_scope"], recipe["assignment"], recipe["within_block"], recipe["reconstruct"],
            *recipe.get("ratios", THREE_TIER_RATIOS), recipe["keep"], recipe["block_rule"], RECIPE_PATTERN)
