"""What a public dashboard (a Space, `--public`, SPARSITY_PUBLIC=1) lets a visitor ask for. Pure functions.

A public server runs strangers' requests on its own disk, memory and network, so it takes only hub models (by
id, never a path), named text sources, no saving, and bounded work. `validate_request` lists every problem of a
filled-in form at once; the dashboard refuses the run with all of them in one line. Local use has no policy
beyond the engine's own validation.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from engine.errors import UserError, excerpt

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+", re.ASCII)  # owner/name, whole string (fullmatch)
HUB_ID_MAX = 96                                          # the Hub's own limit on a repository id
NAMED_SOURCES = ("auto", "wikitext2", "c4", "pydoc")   # text the server fetches itself
EMBEDDED = "embedded"                                    # the preset for the model shipped with the app
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Limits:
    max_params: int = 2_000_000_000   # refuse bigger models (config-derived before loading, numel after)
    nsamples: int = 128               # calibration windows (the paper's 128)
    seqlen: int = 2048                # tokens per window
    eval_windows: int = 64            # perplexity windows
    sweep_splits: int = 16            # tier splits in one sweep
    search_trials: int = 60           # trials of one split search
    search_minutes: float = 30.0      # minutes of one split search


PUBLIC_LIMITS = Limits()


def env_switch(env, name: str) -> bool | None:
    """An on/off environment variable: None when unset or blank, else True / False. Any other value refuses to
    start the server (UserError): a typo must never pick a mode, least of all the private one on a Space."""
    raw = env.get(name, "")
    value = raw.strip().lower()
    if not value:
        return None
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise UserError(f"{name}={excerpt(raw, 20)} is not a switch; set it to one of {', '.join(TRUE)} "
                    f"or {', '.join(FALSE)}")


def public_from_env(env) -> bool:
    """SPARSITY_PUBLIC=1, or a Hugging Face Space (SPACE_ID set) unless SPARSITY_PUBLIC says off explicitly
    (0, false, no, off). Any other value raises UserError."""
    flag = env_switch(env, "SPARSITY_PUBLIC")
    return flag if flag is not None else bool(env.get("SPACE_ID"))


def behind_proxy_from_env(env) -> bool:
    """Whether the server sits behind a proxy that appends the address it saw to X-Forwarded-For: a Hugging Face
    Space (SPACE_ID set) unless SPARSITY_BEHIND_PROXY says off, or SPARSITY_BEHIND_PROXY=1."""
    flag = env_switch(env, "SPARSITY_BEHIND_PROXY")
    return flag if flag is not None else bool(env.get("SPACE_ID"))


VISITOR_MAX = 64  # characters of a visitor's address kept (an IPv6 address is at most 45)


def visitor_of(request, behind_proxy: bool) -> str | None:
    """Who sent an event, as the engine's fair share counts visitors: the client's address, or behind a proxy the
    last X-Forwarded-For entry (the one the proxy appended; earlier entries are whatever the client claimed).
    None without a request or an address."""
    if request is None:
        return None
    if behind_proxy:
        headers = getattr(request, "headers", None) or {}
        forwarded = [part.strip() for part in str(headers.get("x-forwarded-for", "")).split(",")]
        if forwarded[-1]:
            return forwarded[-1][:VISITOR_MAX]
    client = getattr(request, "client", None)
    host = getattr(client, "host", None)
    return str(host)[:VISITOR_MAX] if host else None


def trust_remote_code_from_env(env) -> bool:
    """Only the person running the server can allow a model repository's own code (SPARSITY_TRUST_REMOTE_CODE=1)."""
    return bool(env_switch(env, "SPARSITY_TRUST_REMOTE_CODE"))


def analytics_from_env(env) -> bool:
    """Gradio's usage analytics report to a third party: off unless the server's owner sets
    GRADIO_ANALYTICS_ENABLED to an on value."""
    return bool(env_switch(env, "GRADIO_ANALYTICS_ENABLED"))


def hub_id_problem(text: str) -> str | None:
    """Why `text` is not a plain hub id (None when it is one)."""
    if len(text) > HUB_ID_MAX:
        return f"{excerpt(text)} is not a hub id: those are at most {HUB_ID_MAX} characters"
    if text.startswith(("/", "~", ".")) or ".." in text or "\\" in text:
        return f"{excerpt(text)} looks like a path; this server loads hub models only, by id (owner/name)"
    if not HUB_ID.fullmatch(text):
        return f"{excerpt(text)} is not a hub id of the form owner/name"
    if text.lower().endswith(".gguf"):
        return f"{excerpt(text)} names a .gguf file; this server loads hub models only, by id (owner/name)"
    return None


def _number(value):
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None  # not a number: the engine says so in its own words


def validate_request(values: dict, public: bool, limits: Limits = PUBLIC_LIMITS, exists=os.path.lexists) -> list[str]:
    """Problems of the set-up form `values` (the dashboard's FORM names) under the public policy; [] = allowed.

    `exists` is the one look at the disk: the engine loads a local folder before the hub, so an id that is also a
    path relative to the server's working directory is refused (pass `lambda p: False` to stay pure)."""
    if not public:
        return []
    problems = []
    custom = str(values.get("model_path") or "").strip()
    preset = str(values.get("model") or EMBEDDED).strip()
    model = custom or preset
    if model != EMBEDDED:
        why = hub_id_problem(model)
        if why is None and exists(model):
            why = f"{excerpt(model)} is not a hub id"  # it names a local path, which the engine would load instead
        if why:
            problems.append(why)
    for choice, path, what in ((values.get("calib"), values.get("calib_path"), "calibration"),
                               (values.get("eval_source"), values.get("eval_path"), "evaluation")):
        allowed = NAMED_SOURCES + (("none",) if what == "evaluation" else ())
        if choice not in allowed or str(path or "").strip():
            problems.append(f"{what} text: only {', '.join(allowed)} on this server, no local files")
    if str(values.get("save_dir") or "").strip():
        problems.append("saving the pruned model is off on this server (run locally to keep it)")
    nsamples, seqlen, windows = (_number(values.get(k)) for k in ("nsamples", "seqlen", "eval_windows"))
    # "not x <= cap" rather than "x > cap": NaN is refused too
    if nsamples is not None and not nsamples <= limits.nsamples:
        problems.append(f"calibration samples: at most {limits.nsamples} on this server, got {nsamples:g}")
    if seqlen is not None and not seqlen <= limits.seqlen:
        problems.append(f"tokens per sample: at most {limits.seqlen} on this server, got {seqlen:g}")
    if values.get("eval_source") != "none":
        if windows is None and values.get("eval_windows") in (None, ""):
            problems.append(f"evaluation windows: give at most {limits.eval_windows} (blank means every window)")
        elif windows is not None and not windows <= limits.eval_windows:
            problems.append(f"evaluation windows: at most {limits.eval_windows} on this server, got {windows:g}")
    return problems


def check_request(values: dict, public: bool, limits: Limits = PUBLIC_LIMITS, exists=os.path.lexists) -> None:
    """validate_request, raising one UserError that names every problem."""
    problems = validate_request(values, public, limits, exists)
    if problems:
        raise UserError("; ".join(problems))


def check_search(trials: int | None, minutes: float | None, public: bool, limits: Limits = PUBLIC_LIMITS) -> None:
    """A public server's search has both budgets, each within its limit."""
    if not public:
        return
    if trials is None or trials > limits.search_trials:
        raise UserError(f"a search on this server adds at most {limits.search_trials} trials; give a number of trials")
    if minutes is None or minutes > limits.search_minutes:
        raise UserError(f"a search on this server runs at most {limits.search_minutes:g} minutes; give minutes")


def check_sweep(n_splits: int, public: bool, limits: Limits = PUBLIC_LIMITS) -> None:
    if public and n_splits > limits.sweep_splits:
        raise UserError(f"a sweep of {n_splits} splits is too long for this server: at most {limits.sweep_splits}")


def check_model_size(n_params: int, max_params: int | None, name: str = "the model") -> None:
    if max_params is not None and n_params > max_params:
        raise UserError(f"{name} has {n_params / 1e9:.2f}B parameters; this server takes models up to "
                        f"{max_params / 1e9:.1f}B")


def shareable(record: dict) -> bool:
    """A stored run a public page may list and reopen: one that ran (not a request that failed: those stay with
    the visitor who sent them), on a hub (or the embedded) model and named texts only, so a run started locally with
    paths in it never shows up there."""
    if record.get("status") == "failed":
        return False
    model = (record.get("model") or {}).get("name")
    if model is not None and not str(model).startswith(EMBEDDED) and hub_id_problem(str(model)):
        return False
    req = record.get("request") or {}
    data = record.get("data") or {}
    return (req.get("calib", "auto") in NAMED_SOURCES and req.get("eval", "auto") in NAMED_SOURCES + (None,)
            and not any(str(v).startswith("local:") for v in data.values() if v)
            and not record.get("saved_model"))


# What a public page shows or exports of a record: an allow-list, so a field added to the record later stays on the
# server until someone decides it may be shared. Left out on purpose: the owner (host name, pid), where the model
# was read from (model.source: a path for the embedded model), the saved model's path, the server's versions.
SHARED_FIELDS = ("record_version", "run_id", "status", "message", "spec", "data", "timings", "layers_done",
                 "n_layers", "sparsity", "nominal_sparsity", "ppl", "eval", "zero_shot", "zero_shot_dense",
                 "matrices", "actual_sparsity", "ppl_test", "ppl_dense", "ppl_magnitude")
SHARED_PARTS = {"model": ("name", "model_type", "n_layers", "dtype", "device", "compute_device", "n_params_pruned"),
                "request": ("calib", "eval", "eval_windows", "baselines", "device", "dtype"),
                "versions": ("engine",),
                # the masked fine-tune (engine/recover/pipeline.py), less where an adapter or a saved folder was written
                "recovery": ("settings", "status", "steps_done", "data", "curve", "ppl_before", "ppl_after",
                             "zeros_before", "zeros_after", "zeros_held", "seconds")}


def redact(record: dict) -> dict:
    """The record as a public page shows or exports it: the allowed fields only (SHARED_FIELDS, SHARED_PARTS)."""
    out = {k: record[k] for k in SHARED_FIELDS if k in record}
    for part, keys in SHARED_PARTS.items():
        if isinstance(record.get(part), dict):
            out[part] = {k: record[part][k] for k in keys if k in record[part]}
    return out
