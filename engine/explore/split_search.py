"""Search the split: one calibration of the dense model (engine/explore/), then Optuna trials over the chosen
pattern's parameters, each trial a re-plan and a quick perplexity estimate; the Pareto front of estimated perplexity
against the masks' sparsity, or against their storage in bits per weight (storage_estimate).

    space = search_space(base, model)                the dimensions, derived from the pattern's registry entry
    study = open_study(open_storage(url), name, study_identity(calibration_key, space, settings, evaluation), ...)
    records = search(study, calibration, space, settings, eval_ids, seqlen)   -> one record per finished trial
    pareto_front(records, objective)                 the non-dominated feasible trials

A study is an Optuna study in any storage Optuna accepts (default: an SQLite file beside the run store). The
calibration's key and the search's settings are the study's user attributes: a study of another calibration, another
evaluation or other settings is refused, never mixed. Several processes pointed at one storage URL and study name
share its trials through Optuna's own storage (sampler state is per process; TPE's constant liar keeps workers apart).

A trial whose masks fall outside the sparsity band or above the storage cap is not estimated: the re-plan alone
says so, and its Optuna constraints (Trial.set_constraint) mark it infeasible (its perplexity is stored as +inf).
A trial that repeats a split already estimated in the study takes that estimate instead of running it again.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from engine.errors import SpecError, UserError, excerpt
from engine.explore.calibration import DEFAULT_ESTIMATE_WINDOWS, NO_UPDATE_NOTE, Calibration, masks_only
from engine.explore.estimates import Estimate, estimate
from engine.explore.replanning import check_fresh, replan
from engine.explore.storage import storage_estimate
from engine.patterns.registry import PATTERNS, pattern_params
from engine.spec import PruneSpec
from engine.walk.discovery import find_decoder_layers, find_targets

SEARCH_VERSION = 2       # bump when what a trial stores or how it is measured changes
MAX_TRIALS = 100_000     # trials one process adds, at most
MAX_MINUTES = 7 * 24 * 60
RATIO_STEP = 0.05        # the ratio simplex is searched on this grid
STORAGE_FILE = "searches.sqlite3"
HEARTBEAT_S = 20         # a worker's running trial says it is alive this often (Optuna's RDB heartbeat) ...
GRACE_S = 120            # ... and one silent this long (its worker was killed) is failed by the next worker's ask
Progress = Callable[[dict], None]
EstimateFn = Callable[..., Estimate]  # estimate(model, plan, eval_ids, seqlen, *, windows, progress, cancel,
                                      #          update_from)


# --- objectives and samplers ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Objective:
    name: str
    title: str
    direction: str                   # of the second objective; the first is always perplexity, minimised
    value: Callable[[dict], float]   # a trial record -> the second objective


OBJECTIVES = {o.name: o for o in (
    Objective("sparsity", "estimated perplexity against sparsity", "maximize", lambda r: r["sparsity"]),
    Objective("storage", "estimated perplexity against bits per weight", "minimize", lambda r: r["bits"]),
)}


def _tpe(seed):
    import optuna
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def _nsga2(seed):
    import optuna
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)


def _random(seed):
    import optuna
    return optuna.samplers.RandomSampler(seed=seed)


SAMPLERS = {"tpe": (_tpe, "multi-objective TPE (default: the best at tens of trials)"),
            "nsga2": (_nsga2, "NSGA-II, population 16"),
            "random": (_random, "random search (the baseline)")}


@dataclass(frozen=True)
class SearchSettings:
    """What a search optimises and for how long; checked once, here. band: (lowest, highest) sparsity of the masks
    kept; max_bits: storage cap in bits per weight; trials / minutes: what this process adds (either or both)."""
    objective: str = "sparsity"
    band: tuple[float, float] | None = None
    max_bits: float | None = None
    trials: int | None = 20
    minutes: float | None = None
    sampler: str = "tpe"
    seed: int | None = None
    windows: int = DEFAULT_ESTIMATE_WINDOWS

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown search objective {excerpt(self.objective, 40)}; choose one of "
                            f"{', '.join(OBJECTIVES)}")
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {excerpt(self.sampler, 40)}; choose one of {', '.join(SAMPLERS)}")
        if self.trials is None and self.minutes is None:
            raise UserError("a search needs a budget: a number of trials, minutes, or both")
        if self.trials is not None and not (isinstance(self.trials, int) and 1 <= self.trials <= MAX_TRIALS):
            raise UserError(f"search trials must be a whole number in [1, {MAX_TRIALS}], got {str(self.trials)[:24]}")
        if self.minutes is not None and not (_finite(self.minutes) and 0 < self.minutes <= MAX_MINUTES):
            raise UserError(f"search minutes must lie in (0, {MAX_MINUTES}], got {str(self.minutes)[:24]}")
        if self.band is not None:
            lo, hi = self.band
            if not (_finite(lo) and _finite(hi) and 0.0 <= lo <= hi <= 1.0):
                raise UserError(f"sparsity band must be two numbers 0 <= low <= high <= 1, got {lo} {hi}")
            object.__setattr__(self, "band", (float(lo), float(hi)))
        if self.max_bits is not None and not (_finite(self.max_bits) and self.max_bits > 0):
            raise UserError(f"storage cap must be a positive number of bits per weight, got {self.max_bits}")
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed < 2**31):
            raise UserError(f"search seed must be a whole number in [0, 2^31), got {str(self.seed)[:24]}")
        if not (isinstance(self.windows, int) and self.windows >= 1):
            raise UserError(f"eval windows must be a whole number >= 1, got {str(self.windows)[:24]}")

    def identity(self) -> dict:
        """What a study's trials depend on (the budget and the sampler do not)."""
        return {"objective": self.objective, "band": list(self.band) if self.band else None,
                "max_bits": self.max_bits, "windows": self.windows}

    def violation(self, sparsity: float, bits: float) -> dict[str, float]:
        """Optuna's constraints (Trial.set_constraint): each <= 0 when the trial is feasible."""
        v = {"none": 0.0}
        if self.band is not None:
            v.update(below_band=self.band[0] - sparsity, above_band=sparsity - self.band[1])
        if self.max_bits is not None:
            v["above_cap"] = bits - self.max_bits
        return v


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


# --- the search space: derived from the pattern's fields -----------------------------------------------------------

# How each PruneSpec field a pattern may read is searched (its registry entry declares them:
# engine/patterns/registry.py, Param). A field with choices is categorical over the choices that give a valid spec with
# the base and that a masks-only plan keeps as they are (within_block "obs" is planned as "score": not a new point); the
# numbers have
# the ranges below. NOT_SEARCHED stay at the base spec's value: the fork's block arithmetic is a reproduction, not a
# candidate, and the Wanda variant is another method rather than a split.
NOT_SEARCHED = ("block_rule", "use_variant")
CHOICES = {name: p.choices for name, p in pattern_params().items()
           if p.choices and p.type is str and name not in NOT_SEARCHED}
BLOCK_SIDES = (8, 16, 32)    # searched block sides B (at most the narrowest matrix)
GROUP_WIDTHS = (4, 8)        # searched N:M widths M


def _suggest_block(trial, base, ctx):
    sides = [b for b in BLOCK_SIDES if b <= ctx["min_side"]] or [base.block]
    block = trial.suggest_categorical("block", sides)
    return {"block": block, "keep": min(base.keep, block * block)}  # K is suggested next, in B's range


def _suggest_keep(trial, base, ctx):
    return {"keep": trial.suggest_int("keep", 1, base.block * base.block - 1, log=True)}


def _suggest_ratios(trial, base, ctx):
    """The simplex (dense, 2:4, top-K). Without a band: on a RATIO_STEP grid, the dense share, then 2:4's share of
    the rest. With a band: only splits whose nominal sparsity lies in it (band_ratios), so no trial is spent on a
    split the band refuses; both parameters keep one fixed range, as Optuna's samplers need."""
    if ctx.get("band") is not None:
        return {"ratios": band_ratios(base, ctx["band"], trial.suggest_float("in_band", 0.0, 1.0),
                                      trial.suggest_float("top_k_side", 0.0, 1.0))}
    dense = round(trial.suggest_float("dense", 0.0, 1.0, step=RATIO_STEP), 6)
    two_four = round((1 - dense) * trial.suggest_float("two_four_of_rest", 0.0, 1.0, step=RATIO_STEP), 6)
    return {"ratios": (dense, two_four, round(1 - dense - two_four, 6))}


def band_ratios(base: PruneSpec, band: tuple[float, float], in_band: float, top_k_side: float,
                digits: int = 3) -> tuple[float, float, float]:
    """The split of `base`'s tiers (its B and K fixed) at nominal sparsity low + in_band * (high - low) of the band,
    `top_k_side` of the way along the line of splits with that sparsity (0: the fewest top-K blocks, 1: the most).
    Nominal sparsity is linear in the ratios (each tier's own sparsity times its share), so the splits of one sparsity
    are a segment across the simplex. A band this B and K cannot reach gives the reachable split nearest to it."""
    tiers = [base.replace(ratios=tuple(float(i == j) for j in range(3))).nominal_sparsity() for i in range(3)]
    low, high = max(band[0], min(tiers)), min(band[1], max(tiers))
    target = min(max(band[0], min(tiers)), max(tiers)) if low > high else low + in_band * (high - low)
    ends = []
    for i, j in ((0, 1), (1, 2), (0, 2)):
        if tiers[i] == tiers[j]:
            ends += [tuple(float(k == v) for k in range(3)) for v in (i, j)] if tiers[i] == target else []
            continue
        lam = (target - tiers[j]) / (tiers[i] - tiers[j])
        if -1e-12 <= lam <= 1 + 1e-12:
            lam = min(max(lam, 0.0), 1.0)
            ends.append(tuple(lam if k == i else 1 - lam if k == j else 0.0 for k in range(3)))
    first, last = min(ends, key=lambda r: (r[2], r[1])), max(ends, key=lambda r: (r[2], r[1]))
    point = [a + top_k_side * (b - a) for a, b in zip(first, last)]
    top_k = round(point[2], digits)
    two_four = min(round(point[1], digits), round(1 - top_k, digits))
    return (max(round(1 - two_four - top_k, digits), 0.0) + 0.0, two_four + 0.0, top_k + 0.0)


def _suggest_m(trial, base, ctx):
    widths = [m for m in GROUP_WIDTHS if m <= ctx["min_width"]] or [base.m]
    m = trial.suggest_categorical("m", widths)
    return {"m": m, "n": min(base.n, m - 1)}  # N is suggested next, in M's range


def _suggest_n(trial, base, ctx):
    return {"n": trial.suggest_int("n", 1, base.m - 1)}


def _suggest_share(name, low=0.0, high=1.0, step=0.01):
    return lambda trial, base, ctx: {name: trial.suggest_float(name, low, high, step=step)}


def _suggest_sparsity(trial, base, ctx):
    """A pattern's own sparsity, in the band when there is one (a range fixed for the whole study)."""
    if ctx.get("band") is None:
        return {"sparsity": trial.suggest_float("sparsity", 0.05, 0.95, step=0.01)}
    return {"sparsity": trial.suggest_float("sparsity", *ctx["band"])}


def _suggest_choice(name):
    return lambda trial, base, ctx: {name: trial.suggest_categorical(name, ctx["choices"][name])}


# In the order they are suggested: a range that depends on another field (K on B, N on M) comes after it.
DIMENSIONS: dict[str, Callable] = {
    "block": _suggest_block, "keep": _suggest_keep, "ratios": _suggest_ratios, "m": _suggest_m, "n": _suggest_n,
    "sparsity": _suggest_sparsity, "top_blocks_ratio": _suggest_share("top_blocks_ratio"),
    "score_threshold": _suggest_share("score_threshold"), **{name: _suggest_choice(name) for name in CHOICES},
}


@dataclass
class SearchSpace:
    """The dimensions of one search: `base` fixes every field not searched; `fixed` lists the pattern's fields left
    at the base's value; `given` holds a field's explicit choices (a small space), else its default range."""
    base: PruneSpec
    fields: list[str]
    ctx: dict
    given: dict = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)

    def suggest(self, trial) -> PruneSpec:
        spec = self.base
        for name in self.fields:
            if name in self.given:
                value = trial.suggest_categorical(name, [_encode(v) for v in self.given[name]])
                spec = spec.replace(**{name: _decode(name, value)})
            else:
                spec = spec.replace(**DIMENSIONS[name](trial, spec, self.ctx))
        return spec

    def describe(self) -> dict:
        return {"pattern": self.base.pattern, "fields": self.fields, "fixed": self.fixed,
                "given": {k: [_encode(v) for v in vs] for k, vs in self.given.items()},
                "choices": self.ctx["choices"], "min_side": self.ctx["min_side"], "band": self.ctx.get("band")}


def _encode(value):
    return "/".join(f"{x:g}" for x in value) if isinstance(value, (tuple, list)) else value


def _decode(name: str, value):
    return tuple(float(x) for x in value.split("/")) if name == "ratios" else value


def search_space(base: PruneSpec, model: torch.nn.Module, given: dict | None = None,
                 fields: list[str] | None = None, band: tuple[float, float] | None = None) -> SearchSpace:
    """The space of `base`'s pattern: every field its registry entry declares that DIMENSIONS knows how to search
    (or only `fields`), each over its default range or the explicit choices in `given` {field: [values]}. With a
    sparsity `band` (SearchSettings.band), the ratios and a pattern's sparsity are drawn inside it."""
    declared = PATTERNS[base.pattern].fields
    given = {k: list(v) for k, v in (given or {}).items()}
    wanted = list(fields) if fields is not None else [f for f in DIMENSIONS if f in declared]
    for name in list(given) + wanted:
        if name not in declared:
            raise UserError(f"{base.pattern} has no parameter {excerpt(name, 40)} to search; it reads "
                            f"{', '.join(declared)}")
    for name, values in given.items():
        if not values:
            raise UserError(f"search choices for {name} are empty")
        for v in values:
            try:
                base.replace(**{name: _decode(name, _encode(v))})
            except (SpecError, TypeError, ValueError) as e:
                raise UserError(f"search choice {name}={_encode(v)}: {e}") from None
    _, layers = find_decoder_layers(model)
    shapes = [tuple(t.weight().shape) for layer in layers for t in find_targets(layer, base.prune_router)]
    ctx = {"min_side": min(min(s) for s in shapes), "min_width": min(s[1] for s in shapes), "choices": {},
           "band": tuple(band) if band is not None else None}
    for name in CHOICES:
        if name in declared:
            ctx["choices"][name] = [c for c in CHOICES[name] if _valid_unchanged(base, name, c)]
    order = [f for f in DIMENSIONS if f in wanted or f in given] + [f for f in given if f not in DIMENSIONS]
    # a categorical field with one valid choice is not a dimension
    searched = [f for f in order if f in given or f not in CHOICES or len(ctx["choices"][f]) > 1]
    fixed = [f for f in declared if f not in searched]
    return SearchSpace(base, searched, ctx, given, fixed)


def _valid_unchanged(base: PruneSpec, name: str, value) -> bool:
    try:
        spec = base.replace(**{name: value})
    except SpecError:
        return False
    return getattr(masks_only(spec)[0], name) == value


# --- studies -------------------------------------------------------------------------------------------------------

def default_storage_url(store_dir: str | os.PathLike | None = None) -> str:
    """An SQLite file beside the run store's records (engine/io/run_store.py): nothing to install."""
    from engine.io.run_store import default_store_dir
    directory = Path(store_dir).expanduser() if store_dir is not None else default_store_dir()
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / STORAGE_FILE}"


def shown_url(url: str) -> str:
    """The storage URL without its password, for messages and records."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: say so without echoing much of it
        return excerpt(url, 60)


def open_storage(url: str, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S):
    """An Optuna storage for `url` (sqlite:///file, postgresql://user@host/db, ... any SQLAlchemy URL Optuna
    accepts), connected once now so that a wrong or unreachable URL is one line, before any work. Running trials
    beat every `heartbeat_s` (see `beating`); a trial silent for `grace_s` is failed by the next worker to ask."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5: used deliberately here
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_s,
                                                     grace_period=grace_s)
            storage.get_all_studies()
            return storage
        except SQLAlchemyError as e:
            # workers starting together on an empty database race to create Optuna's tables: the loser retries
            if attempt < 2 and any(w in str(e) for w in ("already exists", "duplicate key", "UNIQUE constraint")):
                time.sleep(0.5 + attempt)
                continue
            problem = e
        except (ValueError, ImportError, OSError) as e:
            problem = e
        break
    first = str(problem).strip().splitlines()[0] if str(problem).strip() else type(problem).__name__
    raise UserError(f"cannot open the study storage {shown_url(url)}: {excerpt(first, 160)}") from None


def evaluation_key(eval_ids: torch.Tensor, seqlen: int, windows: int, estimate_fn: EstimateFn,
                   update: bool = False) -> dict:
    """What an estimate depends on besides the masks: the evaluated tokens, which estimate it is, and whether it
    applies the recipe's weight update (`PruneSpec.updates_weights` of the search's base spec: every trial's
    estimate does then, from the calibration's Hessians; see run_trial)."""
    ids = eval_ids.reshape(-1)[:windows * seqlen].contiguous().cpu()
    return {"tokens": hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:16], "seqlen": seqlen,
            "windows": windows, "estimate": estimate_name(estimate_fn), "update": bool(update)}


def estimate_name(fn: EstimateFn) -> str:
    if isinstance(fn, partial):
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(fn.keywords.items()))
        return f"{estimate_name(fn.func)}({args})"
    return getattr(fn, "__name__", type(fn).__name__)


def default_study_name(identity: dict) -> str:
    """The same calibration, evaluation and settings give the same name: running a command again resumes it."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    return f"{identity['space']['pattern']}-{identity['calibration']['spec']['method']}-{digest}"


def study_identity(calibration_key: dict, space: SearchSpace, settings: SearchSettings, evaluation: dict) -> dict:
    """What a study's trials depend on: the calibration's key (engine/explore.calibration_key), the evaluation,
    the settings that shape the objective and the space. A study holding another identity is refused."""
    return {"version": SEARCH_VERSION, "calibration": calibration_key, "evaluation": evaluation,
            "settings": settings.identity(), "space": space.describe(), "base": space.base.canonical()}


def open_study(storage, name: str | None, identity: dict, settings: SearchSettings, model: str | None = None):
    """Create the study, or load it and refuse it (one line) when its calibration, evaluation or settings differ."""
    import optuna

    name = name or default_study_name(identity)
    if not (0 < len(name) <= 200) or any(ord(c) < 32 for c in name):
        raise UserError(f"study name must be 1 to 200 printable characters, got {excerpt(name, 40)}")
    directions = ["minimize", OBJECTIVES[settings.objective].direction]
    sampler = SAMPLERS[settings.sampler][0](None)
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    except KeyError:
        study = optuna.create_study(storage=storage, study_name=name, directions=directions, sampler=sampler,
                                    load_if_exists=True)
    have = study.user_attrs.get("identity")
    if have is None:
        study.set_user_attr("identity", identity)
        study.set_user_attr("model", model)
        study.set_user_attr("created", time.time())
    else:
        _refuse_other(name, have, identity)
    if settings.seed is not None:  # each resumption (and each worker arriving later) samples a new stream
        study.sampler = SAMPLERS[settings.sampler][0](settings.seed + len(study.trials))
    return study


def _refuse_other(name: str, have: dict, want: dict) -> None:
    if have.get("calibration") != want["calibration"]:
        differ = _differ(have.get("calibration") or {}, want["calibration"])
        raise UserError(f"study {excerpt(name, 60)} belongs to another calibration (differs in {differ}): its trials "
                        "are not mixed with these; give another study name or calibrate as it did")
    for part, what in (("evaluation", "evaluation windows or estimate"), ("settings", "objective, band or cap"),
                       ("space", "search space"), ("base", "fixed settings"), ("version", "format")):
        if have.get(part) != want[part]:
            differ = _differ(have.get(part), want[part])
            raise UserError(f"study {excerpt(name, 60)} was made with another {what} (differs in {differ}): give "
                            "another study name")


def _differ(a, b) -> str:
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return "its value"
    return ", ".join(sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))) or "nothing"


def list_studies(storage) -> list[dict]:
    """Every study in the storage: name, model, finished trials, pattern, method, objective, when it started."""
    import optuna
    from optuna.trial import TrialState

    out = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        ident = s.user_attrs.get("identity") or {}
        finished = storage.get_n_trials(storage.get_study_id_from_name(s.study_name), TrialState.COMPLETE)
        out.append({"study": s.study_name, "model": s.user_attrs.get("model"), "trials": finished,
                    "pattern": (ident.get("space") or {}).get("pattern"),
                    "method": ((ident.get("calibration") or {}).get("spec") or {}).get("method"),
                    "objective": (ident.get("settings") or {}).get("objective"),
                    "started": s.datetime_start.isoformat(timespec="seconds") if s.datetime_start else None})
    return out


# --- trials --------------------------------------------------------------------------------------------------------

def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def trial_records(study) -> list[dict]:
    """The study's finished trials as records (those of every worker), in trial order."""
    from optuna.trial import TrialState

    return [dict(t.user_attrs["record"], number=t.number) for t in study.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE and "record" in t.user_attrs]


def pareto_front(records: list[dict], objective: str) -> list[dict]:
    """The feasible estimated trials no other dominates (lower perplexity and a better second objective), best
    perplexity first; of equal points the earliest trial."""
    o = OBJECTIVES[objective]
    sign = -1.0 if o.direction == "maximize" else 1.0
    points = sorted((r for r in records if r["feasible"] and r["ppl"] is not None and math.isfinite(r["ppl"])),
                    key=lambda r: (sign * o.value(r), r["ppl"], r["number"]))
    front, best_ppl = [], math.inf
    for r in points:  # by the second objective, best first: a point joins when its perplexity beats all before it
        if r["ppl"] < best_ppl:
            front.append(r)
            best_ppl = r["ppl"]
    return sorted(front, key=lambda r: (r["ppl"], r["number"]))


def run_trial(calibration: Calibration, spec: PruneSpec, settings: SearchSettings, eval_ids: torch.Tensor,
              seqlen: int, *, estimate_fn: EstimateFn = estimate, known: dict | None = None,
              progress: Progress | None = None, cancel: threading.Event | None = None) -> dict:
    """One trial: re-plan, then (inside the band and cap, and not estimated before) the estimate -> its record."""
    t0 = time.perf_counter()
    plan = replan(calibration, spec)
    storage = storage_estimate(plan)
    key = json.dumps(plan.spec.canonical(), sort_keys=True)
    violation = settings.violation(plan.sparsity, storage["bits_per_weight"])
    record = {"spec": plan.spec.to_dict(), "requested": spec.to_dict(), "label": plan.spec.label(),
              "sparsity": plan.sparsity,
              "bits": storage["bits_per_weight"], "storage_bytes": storage["bytes"], "tiers": plan.tier_census(),
              "feasible": max(violation.values()) <= 0, "violation": violation, "notes": plan.notes,
              "worker": worker_id(),
              "ppl": None, "ppl_low": None, "ppl_high": None, "windows": 0, "status": "outside",
              "replan_s": plan.seconds, "estimate_s": 0.0}
    if record["feasible"]:
        seen = (known or {}).get(key)
        if seen is not None:
            record.update({k: seen[k] for k in ("ppl", "ppl_low", "ppl_high", "windows")}, status="repeat",
                          repeat_of=seen["number"])
        else:
            # with the recipe's update where it updates weights and the calibration kept its Hessians
            est = estimate_fn(calibration.model, plan, eval_ids, seqlen, windows=settings.windows,
                              progress=progress, cancel=cancel, update_from=calibration)
            record.update(ppl=est.ppl, ppl_low=est.ppl_low, ppl_high=est.ppl_high, windows=est.windows,
                          estimate_s=est.seconds, status="estimated" if est.status == "completed" else est.status,
                          estimate_kind=est.kind, estimate_note=est.note)
            if est.kind == "with update":  # the plan's maps are masks only; this trial's perplexity is not
                record["notes"] = [n for n in plan.notes if n != NO_UPDATE_NOTE]
    record["seconds"] = time.perf_counter() - t0
    return record


def beating(study, trial):
    """A context in which `trial`'s heartbeat goes to the study's storage every heartbeat interval from a thread of
    its own (an estimate window can outlast the grace period on a big model): Optuna's own heartbeat thread, the one
    Study.optimize runs around each trial (a no-op where the storage has no heartbeat)."""
    from optuna.storages._heartbeat import get_heartbeat_thread
    return get_heartbeat_thread(trial._trial_id, study._storage)


def fail_stale_trials(study) -> None:
    """Trials left RUNNING by a worker that died (no heartbeat for the grace period) become FAIL: the study's
    listings and samplers no longer count them as in progress."""
    import optuna
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def search(study, calibration: Calibration, space: SearchSpace, settings: SearchSettings, eval_ids: torch.Tensor,
           seqlen: int, *, estimate_fn: EstimateFn = estimate, progress: Progress | None = None,
           cancel: threading.Event | None = None) -> list[dict]:
    """Add trials to the study until the budget (settings.trials, settings.minutes: checked between trials) is
    spent or `cancel` is set; returns the records of the trials this call finished. Each finished trial is stored
    at once and streamed as {"stage": "search", "record", "done", "total"}; a trial stopped mid-estimate is stored
    as failed (status "stopped"), never as a result. estimate_fn is the one place the estimate is called."""
    from optuna.trial import TrialState

    progress = progress or (lambda event: None)
    check_fresh(calibration, space.base)
    o = OBJECTIVES[settings.objective]
    deadline = None if settings.minutes is None else time.monotonic() + settings.minutes * 60
    known = {json.dumps(PruneSpec.from_dict(r["spec"]).canonical(), sort_keys=True): r
             for r in trial_records(study) if r["status"] == "estimated"}
    done: list[dict] = []
    asked = 0  # trials asked for: a combination of explicit choices that is no valid spec spends one too
    while (settings.trials is None or asked < settings.trials) and \
            (deadline is None or time.monotonic() < deadline) and not (cancel is not None and cancel.is_set()):
        fail_stale_trials(study)
        with warnings.catch_warnings():  # Optuna's note that heartbeats are meant for Study.optimize: this loop
            warnings.filterwarnings("ignore", "Heartbeat of storage")  # beats itself (`beating`), as optimize does
            trial = study.ask()
        asked += 1
        try:
            spec = space.suggest(trial)
        except SpecError as e:
            trial.set_user_attr("error", str(e))
            study.tell(trial, state=TrialState.FAIL)
            continue
        try:
            with beating(study, trial):
                record = run_trial(calibration, spec, settings, eval_ids, seqlen, estimate_fn=estimate_fn,
                                   known=known, progress=progress, cancel=cancel)
        except BaseException as e:
            trial.set_user_attr("error", excerpt(str(e), 400))
            study.tell(trial, state=TrialState.FAIL)
            raise
        if record["status"] not in ("estimated", "repeat", "outside"):
            trial.set_user_attr("record", record)
            study.tell(trial, state=TrialState.FAIL)
            break
        record["number"] = trial.number
        trial.set_user_attr("record", record)
        for name, value in record["violation"].items():
            trial.set_constraint(name, value)
        ppl = record["ppl"] if record["ppl"] is not None else math.inf
        study.tell(trial, [ppl, o.value(record)])
        if record["status"] == "estimated":
            known[json.dumps(PruneSpec.from_dict(record["spec"]).canonical(), sort_keys=True)] = record
        done.append(record)
        progress({"stage": "search", "record": record, "done": len(done), "total": settings.trials})
    return done


# --- export --------------------------------------------------------------------------------------------------------

TABLE_COLUMNS = ("number", "status", "feasible", "front", "label", "sparsity", "bits", "ppl", "ppl_low", "ppl_high",
                 "windows", "replan_s", "estimate_s", "seconds", "worker")


def trials_table(records: list[dict], objective: str) -> list[dict]:
    """One flat row per trial (TABLE_COLUMNS), `front` marking the Pareto front."""
    front = {r["number"] for r in pareto_front(records, objective)}
    return [{c: (r["number"] in front) if c == "front" else r.get(c) for c in TABLE_COLUMNS} for r in records]


def export_study(study, path: str | os.PathLike, objective: str | None = None) -> int:
    """Write the study's finished trials to `path`: .csv (the flat table) or .json (every record, with the study's
    identity); returns the number of trials written."""
    from engine.io.record import write_json_atomic

    ident = study.user_attrs.get("identity") or {}
    objective = objective or (ident.get("settings") or {}).get("objective", "sparsity")
    records = trial_records(study)
    path = Path(path).expanduser()
    if path.suffix.lower() == ".csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
            w.writeheader()
            w.writerows(trials_table(records, objective))
    elif path.suffix.lower() == ".json":
        write_json_atomic(str(path), {"study": study.study_name, "identity": ident, "trials": records,
                                      "front": [r["number"] for r in pareto_front(records, objective)]})
    else:
        raise UserError(f"export to .csv or .json, not {excerpt(path.name, 40)}")
    return len(records)
