"""The Explore tab's state and its calls into engine/explore/: calibrate once for the form's model, method and
data; then every split is a re-plan (no forward pass) and a quick masks-only perplexity estimate, each a job on the
engine's one line (components/jobs.py), so it never touches the model while a run prunes it.

Nothing here computes masks or scores: CalibrationCache, replan, estimate, storage_estimate and matrix_entries do.
"""
from __future__ import annotations

import re
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

from engine.errors import UserError
from engine.explore import (
    FIRST_WINDOWS,
    Calibration,
    CalibrationCache,
    Replan,
    calibrate_progressively,
    estimate,
    evaluate_windows,
    held_masks,
    matrix_entries,
    replan,
    replan_kept,
    storage_estimate,
)
from engine.explore.split_search import (
    evaluation_key,
    list_studies,
    open_storage,
    open_study,
    search,
    search_space,
    study_identity,
    trial_records,
)
from engine.io import text as textdata
from engine.io.baselines import model_fingerprint
from engine.methods.registry import METHODS
from engine.patterns.registry import PATTERNS, pattern_params
from engine.spec import PruneSpec
from engine.walk.layer_walk import prune_model

from .jobs import Job, release_memory

CALIBRATIONS = CalibrationCache(size=2)  # one per process, like the model cache (runner.MODELS) it refers to
MAX_EXPLORATIONS = 8                     # live explorations per server (tabs that calibrated); the oldest is closed
REPLANS = threading.Lock()               # a re-plan fills its calibration's per-block store: one at a time
ESTIMATE_WINDOWS = 4                     # ~1-2 s a window of 256 tokens for SmolLM2 on 2 CPU cores
ESTIMATE_TOKENS = 256
MAPS_FIRST_S = 1.0                       # an estimate waits this long at most for its plan's maps to reach the page
# a Pareto point's kind: a split estimated masks only, a reference re-planned the same way, a reference pruned for real,
# a trial of a split search (estimated as a split is)
SPLIT, REFERENCE, EXACT_REFERENCE, SEARCH = "split", "reference", "exact reference", "search trial"


@dataclass
class Setup:
    """What a calibration was made for: the base spec (the form's), its model, text and windows."""
    spec: PruneSpec
    request: object                      # the RunRequest of the form at calibration (model, device, dtype ...)
    key: dict                            # the calibration's key: CALIBRATIONS holds it, shared by every tab
    eval_ids: object                     # LongTensor [1, T]: the evaluation text, tokenized once
    windows: object                      # LongTensor [nsamples, seqlen]: the calibration windows (None: magnitude)
    eval_name: str
    calib_name: str | None
    seconds: float                       # what this press took (a cache hit: milliseconds)
    cached: bool
    first: Calibration | None = None     # the first maps' calibration (a few windows), held only until the full lands

    @property
    def calibration(self) -> Calibration:
        """The shared calibration, while the server still keeps it (a tab never holds one alive on its own)."""
        cal = self.first or CALIBRATIONS.find(self.key)
        if cal is None:
            raise UserError(f"this calibration was dropped to make room for newer ones (the server keeps "
                            f"{CALIBRATIONS.size}): press Calibrate again")
        return cal


@dataclass
class ExploreState:
    """One browser tab's exploration: the calibration it explores, the split shown, every split estimated."""
    setup: Setup | None = None
    plan: Replan | None = None
    record: dict | None = None           # the plan as a run record lists matrices (what the figures draw)
    points: list[dict] = field(default_factory=list)
    job: Job | None = None               # the re-plan + estimate running now (a new split stops it)
    calibrating: Job | None = None       # the calibration running now: a new split never stops it
    first_stop: threading.Event | None = None  # stops the first maps' estimate inside the calibration (a new split)
    asked: tuple[list[PruneSpec], str] | None = None  # the specs (and point kind) asked for while it calibrated
    shown_layer: int | None = None
    shown_module: str | None = None
    closed: str | None = None            # why the server closed this exploration (the page is told)
    visitor: str | None = None           # who sent the tab's latest event (its jobs take that visitor's turns)
    search_ended: str | None = None      # how the tab's last search ended: "finished" (its budget), "stopped", None

    def supersede(self, job: Job | None = None) -> None:
        """Stop the running estimate at once (between windows), and the first maps' estimate if the calibration is
        still running it (the calibration goes on), and make `job` the current one."""
        if self.job is not None:
            self.job.stop()
        if self.first_stop is not None:
            self.first_stop.set()
        self.job = job

    @property
    def calibration_running(self) -> bool:
        return self.calibrating is not None and self.calibrating.running

    def stop(self) -> bool:
        """Stop its job and its calibration (Stop, a closed tab): True when either was running."""
        running = [j for j in (self.job, self.calibrating) if j is not None and j.running]
        self.supersede(None)
        if self.calibrating is not None:
            self.calibrating.stop()
        return bool(running)

    def close(self, why: str) -> None:
        """Stop its jobs and let go of everything big it refers to (its setup, plan and maps); the points stay."""
        self.stop()
        self.setup, self.plan, self.record, self.closed = None, None, None, why

    def not_ready(self) -> str:
        """What the page says when a split is asked for before (or after) there is a calibration to plan from."""
        return self.closed or "Press Calibrate first: the splits are planned from its statistics."


class Explorations:
    """The server's live explorations, one per browser tab that calibrated, oldest first. Beyond `size` the
    oldest is closed (its page is told why when it next asks for a split); a tab that goes away is closed at
    once. Only weak references are kept: a tab Gradio forgot is never kept alive here."""

    def __init__(self, size: int = MAX_EXPLORATIONS):
        self.size = size
        self._live: OrderedDict[str, weakref.ref] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, session: str, state: ExploreState) -> None:
        with self._lock:
            self._live.pop(session, None)
            self._live[session] = weakref.ref(state)
            dropped = []
            while len(self._live) > self.size:
                dropped.append(self._live.popitem(last=False)[1]())
        for old in dropped:
            if old is not None and old is not state:
                old.close(f"this exploration was closed to make room for newer ones (this server explores "
                          f"{self.size} at once): press Calibrate again")

    def end(self, session: str) -> None:
        """The tab `session` went away: close its exploration now, not when Gradio forgets its state."""
        with self._lock:
            ref = self._live.pop(session, None)
        state = ref() if ref is not None else None
        if state is not None:
            state.close("this page was closed")
            release_memory()  # its plan and masks are freed: give the heap's pages back now, not at the next job

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for ref in self._live.values() if ref() is not None)


EXPLORATIONS = Explorations()


# ---- calibration -------------------------------------------------------------------------------------------------

def calibrate(req, models, progress, cancel, first: tuple[int, int] | None = None) -> Setup:
    """Load (or reuse) the request's model, dense, and calibrate it for the request's spec; served from
    CALIBRATIONS when nothing it depends on changed. Runs on an engine job (it has the model to itself).
    first: (estimate windows, tokens): when the calibration is not served from the cache, first calibrate on a few
    windows and stream the form's split from them ({"stage": "first", "setup", "stop"}, then ExploreJob's events;
    "stop": an Event that ends that estimate, not the calibration) before the full calibration, which is returned."""
    spec = req.spec
    t0 = time.perf_counter()
    eval_src = textdata.resolve_text(req.eval, "evaluation") if req.eval else None
    if eval_src is None:
        raise UserError("the estimate needs an evaluation text: choose one under Evaluation")
    calib_src = textdata.resolve_text(req.calib, "calibration") if spec.uses_calibration else None
    lm = models.get(req, progress)  # the same model comes back restored to its dense weights
    seqlen = textdata.default_seqlen(lm.model.config, spec.seqlen)
    context = textdata.model_context(lm.model.config)
    if context is not None and seqlen > context:
        raise UserError(f"seqlen {seqlen} is longer than the model's context of {context} tokens")
    windows = None
    if calib_src is not None:
        progress({"stage": "calibration", "message": f"sampling {spec.nsamples} windows of {seqlen} tokens"})
        windows = textdata.calibration_windows(lm.tokenizer, calib_src, spec.nsamples, seqlen, spec.seed)
    eval_ids = textdata.evaluation_ids(lm.tokenizer, eval_src)
    data = calib_src.name if calib_src else None
    if first is not None and context is not None and first[1] > context:
        first = None  # the estimate's windows do not fit the model: the split's own estimate says so afterwards
    hit = CALIBRATIONS.peek(lm.model, spec, windows, data=data, hessians=True)

    def setup_of(cal) -> Setup:
        partial = windows is not None and cal.windows < len(windows)  # not in the cache: held by this setup alone
        return Setup(spec.replace(seqlen=seqlen), req, cal.key, eval_ids, windows, eval_src.name, data,
                     time.perf_counter() - t0, hit is not None, cal if partial else None)
    if hit is not None:
        return setup_of(hit)
    for cal in calibrate_progressively(lm.model, spec, windows, data=data, progress=progress, cancel=cancel,
                                       hessians=True, cache=CALIBRATIONS, first=FIRST_WINDOWS if first else 0):
        if windows is not None and cal.windows < len(windows):  # the first maps, from a few windows
            first_stop = threading.Event()  # a newer split of the tab stops this estimate, not the calibration
            progress({"stage": "first", "setup": setup_of(cal), "stop": first_stop})
            ExploreJob(setup_of(cal), [spec.replace(seqlen=seqlen)], models, *first)(
                progress, EitherSet(cancel, first_stop))
            progress({"stage": "calibration", "message": f"the other {len(windows) - cal.windows} of "
                                                         f"{len(windows)} calibration windows"})
    return setup_of(cal)


class EitherSet:
    """A cancel that reads as set when either of two events is (the engine's loops only ask is_set)."""

    def __init__(self, a: threading.Event, b: threading.Event):
        self.a, self.b = a, b

    def is_set(self) -> bool:
        return self.a.is_set() or self.b.is_set()


def asked_plan(xs: ExploreState) -> Replan | None:
    """The split the tab asked for while its calibration ran, when its maps could not be drawn ahead (the first
    windows' block choices were still being made) and now can: planned from those windows (replan_kept). None when
    it is shown already or still needs the model."""
    if xs.asked is None or xs.setup is None or (xs.plan is not None and xs.plan.requested == xs.asked[0][0]):
        return None
    try:
        return replan_kept(xs.setup.calibration, xs.asked[0][0])
    except UserError:  # the split's own job says why
        return None


def calibration_text(setup: Setup) -> str:
    cal = setup.calibration
    how = (f"served from the cache in {setup.seconds:.2f} s (calibrated in {cal.seconds:.1f} s)" if setup.cached
           else f"calibrated in {cal.seconds:.1f} s ({setup.seconds:.1f} s with loading and data)")
    data = f" on {markdown_text(setup.calib_name)}" if setup.calib_name else ""
    hessians = (f", {cal.hessian_nbytes / 2**20:,.0f} MiB of Hessians for the estimate with the update"
                if cal.hessians is not None else f" ({cal.hessians_note})" if cal.hessians_note else "")
    rests = (f" · **first maps from {cal.windows} of {len(setup.windows)} calibration windows**; the rest are "
             "calibrating, the maps are re-planned when they land" if setup.windows is not None
             and cal.windows < len(setup.windows) else "")
    return (f"**{setup.spec.method}**{data}: {how}; {len(cal.matrices)} matrices, "
            f"{cal.nbytes / 2**20:.1f} MiB of statistics{hessians}. "
            f"Evaluation text: {markdown_text(setup.eval_name)}.{rests}")


def markdown_text(text) -> str:
    """Text shown literally inside Markdown (a file's name may read `[x](javascript:...)`): every character
    Markdown or HTML gives a meaning is escaped."""
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~&-])", r"\\\1", str(text))


# ---- one split ---------------------------------------------------------------------------------------------------

def replan_params() -> dict:
    """The pattern parameters a re-plan may move without calibrating again (K, B, scope, assignment ...)."""
    return {name: p for name, p in pattern_params().items() if p.replan}


def split_spec(base: PruneSpec, dense: float, two_four: float, sparsity: float, replan: dict) -> PruneSpec:
    """The base spec with the tab's controls: a point on its pattern's sweep axis (three numbers: the tier ratios,
    dense and 2:4 given, top-K the rest; one: a sparsity, N:M snapped to the nearest N of its M) and the re-plan
    parameters its pattern reads. Raises UserError (SpecError) with the spec's words."""
    pattern = PATTERNS[base.pattern]
    params = replan_params()
    try:
        changes = {name: params[name].type(value) for name, value in replan.items()
                   if name in pattern.fields and value is not None}
        spec = base.replace(**changes)
        if len(pattern.axis) == 3:
            dense, two_four = round(float(dense), 4), round(float(two_four), 4)
            return pattern.at(spec, (dense, two_four, round(1 - dense - two_four, 4)), True)
        return pattern.at(spec, (float(sparsity),), True) if pattern.axis else spec
    except (TypeError, ValueError) as err:
        raise UserError(str(err)) from None


def ensure_dense(setup: Setup, models) -> bool:
    """Make the calibration's model hold its dense weights again (a run may have pruned it since): True when it
    had to restore them."""
    cal = setup.calibration
    loaded = models.loaded
    if loaded is None or loaded.model is not cal.model:
        raise UserError("another model was loaded since this calibration: press Calibrate again")
    if model_fingerprint(cal.model) == cal.key["fingerprint"]:
        return False
    models.restore()
    return True


class ExploreJob:
    """A job target: for each spec, re-plan ({"stage": "planned", "plan"}), then estimate on `windows` windows of
    `tokens` tokens (streamed; {"stage": "estimated", "plan", "estimate"} at the end; windows None: maps only);
    when the recipe updates weights and the calibration kept its Hessians, a second estimate with the update follows
    (its events' "kind" says which). The model is left exactly dense; a set cancel stops at once.

    `ahead` (Job's, before the job's turn): the first spec re-planned from the calibration alone when it can be
    (replan_kept: a three-tier split whose ratios or scope moved), so a new split's maps do not wait for the previous
    split's estimate to stop and put the dense weights back.

    maps_shown: set by the page once it has sent a plan's maps; the estimate waits for it (at most MAPS_FIRST_S)
    so that drawing the maps does not share the cores with the estimate's forward passes."""

    def __init__(self, setup: Setup, specs: list[PruneSpec], models, windows: int | None, tokens: int,
                 on_restore=None, maps_shown: threading.Event | None = None):
        self.setup, self.specs, self.models, self.windows, self.tokens = setup, specs, models, windows, tokens
        self.on_restore, self.maps_shown = on_restore, maps_shown
        self.planned: Replan | None = None  # the first spec's plan, made ahead

    def ahead(self, progress, cancel) -> None:
        self.planned = replan_kept(self.setup.calibration, self.specs[0])
        if self.planned is not None:
            progress({"stage": "planned", "plan": self.planned, "storage": storage_estimate(self.planned)})

    def __call__(self, progress, cancel) -> None:
        setup = self.setup
        if ensure_dense(setup, self.models) and self.on_restore is not None:
            self.on_restore()
        for i, spec in enumerate(self.specs):
            if cancel.is_set():
                return
            plan = self.planned if i == 0 else None
            if plan is None:
                with REPLANS:
                    plan = replan(setup.calibration, spec)
                progress({"stage": "planned", "plan": plan, "storage": storage_estimate(plan)})
            if self.windows:
                self.estimate(plan, progress, cancel)

    def estimate(self, plan: Replan, progress, cancel) -> None:
        if self.maps_shown is not None:
            self.maps_shown.wait(MAPS_FIRST_S)
            self.maps_shown.clear()
            if cancel.is_set():
                return
        cal, setup = self.setup.calibration, self.setup
        est = estimate(cal.model, plan, setup.eval_ids, self.tokens, windows=self.windows, progress=progress,
                       cancel=cancel)
        progress({"stage": "estimated", "plan": plan, "estimate": est})
        if est.status == "completed" and plan.requested.updates_weights and cal.hessians is not None:
            est = estimate(cal.model, plan, setup.eval_ids, self.tokens, windows=self.windows, progress=progress,
                           cancel=cancel, update_from=cal)
            progress({"stage": "estimated", "plan": plan, "estimate": est})


def keep_maps_only(plan: Replan) -> None:
    """Let go of a shown plan's keep-masks (a bool per weight: 106 MB for SmolLM2) once they are estimated: a tab
    keeps a plan's maps, counts and spec; opening it again re-plans it."""
    for m in plan.matrices.values():
        m.made, m.build = None, _released


def _released():
    raise UserError("this split's masks were released after its estimate: open it again to re-plan it")


def plan_record(plan: Replan, n_layers: int) -> dict:
    """A run-record-like dict of a plan, which components/figures.py draws as it draws a run."""
    return {"spec": plan.spec.to_dict(), "n_layers": n_layers, "matrices": matrix_entries(plan),
            "sparsity": plan.sparsity}


def summary_text(plan: Replan, storage: dict) -> str:
    census = plan.tier_census()
    blocks = sum(census.values())
    tiers = (" · blocks " + ", ".join(f"{name} {n:,} ({n / blocks:.0%})" for name, n in census.items())
             if blocks else "")
    notes = "; ".join(plan.notes) if plan.notes else "the masks are those the exact walk would choose from these " \
                                                      "statistics"
    if plan.requested.updates_weights:
        notes += "; then with the update, each matrix pruned as the exact walk prunes it from the dense inputs' " \
                 "Hessian, when the calibration kept them"
    return (f"**{plan.spec.label()}** — sparsity **{plan.sparsity:.2%}**{tiers} · storage "
            f"**{storage['bytes'] / 2**20:,.1f} MiB** of {storage['dense_bytes'] / 2**20:,.1f} MiB dense "
            f"({storage['bits_per_weight']:.2f} bits per weight) · re-planned in {plan.seconds:.2f} s.  \n"
            f"Estimate recipe: {plan.spec.label()}, masks only ({notes}).")


def estimate_html(event: dict | None, note: str = "") -> str:
    """The running estimate: perplexity +- the spread over windows, and how many windows so far."""
    if not event or event.get("ppl") is None:
        return f"<div class='estimate'><span class='num'>–</span> <span class='note'>{note}</span></div>"
    spread = (event["ppl_high"] - event["ppl_low"]) / 2
    return (f"<div class='estimate'><span class='num'>{event['ppl']:,.2f} ± {spread:,.2f}</span> "
            f"<span class='note'>estimated perplexity, {event['done']} of {event['total']} windows"
            f"{' · ' + note if note else ''}</span></div>")


def add_point(state: ExploreState, plan: Replan, est, storage: dict, kind: str = SPLIT) -> dict:
    """Keep an estimated split (or an exact reference: `plan` then holds the pruned model's masks) as a point of
    the Pareto view; the same spec and kind again replaces its point."""
    return put_point(state, {"label": plan.spec.label(), "kind": kind, "sparsity": plan.sparsity,
                             "storage": storage["bytes"], "ppl": est.ppl, "ppl_low": est.ppl_low,
                             "ppl_high": est.ppl_high, "windows": est.windows,
                             "estimate": est.kind if kind != EXACT_REFERENCE else "exact", "spec": plan.spec.to_dict(),
                             "requested": plan.requested.to_dict(), "exact": None})


def put_point(state: ExploreState, point: dict) -> dict:
    """Number a new point, or replace the point of the same label and kind (keeping its number and exact run)."""
    label, kind = point["label"], point["kind"]
    old = next((i for i, p in enumerate(state.points) if p["label"] == label and p["kind"] == kind), None)
    if old is None:
        point["n"] = len(state.points) + 1
        state.points = [*state.points, point]
    else:
        point["n"], point["exact"] = state.points[old]["n"], state.points[old]["exact"]
        if point.get("estimate") == "with update":  # it follows the masks-only number of the same split
            point["masks_only"] = state.points[old]["ppl"]
        state.points = [*state.points[:old], point, *state.points[old + 1:]]
    return point


def reference_specs(base: PruneSpec) -> list[PruneSpec]:
    """2:4 and unstructured 50% with the calibrated method, re-planned from the same calibration (masks only)."""
    return [base.replace(pattern="nm", n=2, m=4), base.replace(pattern="unstructured", sparsity=0.5)]


def strongest_specs(base: PruneSpec) -> list[PruneSpec]:
    """2:4 and unstructured 50% by the engine's strongest recipe for each: the method that chooses its mask during
    the OBS update (SparseGPT; bench/HYBRID.md and bench/RESULTS.md measure it below Wanda + update at both), on
    the calibration's data, nsamples, seqlen and seed."""
    method = next(m.name for m in METHODS.values() if m.chooses_while_updating)
    keep = dict(nsamples=base.nsamples, seqlen=base.seqlen, seed=base.seed, damp=base.damp,
                prune_router=base.prune_router)
    return [PruneSpec(method=method, pattern="nm", n=2, m=4, **keep),
            PruneSpec(method=method, pattern="unstructured", sparsity=0.5, **keep)]


def reference_job(setup: Setup, specs: list[PruneSpec], models, windows: int, tokens: int, on_restore=None):
    """A job target: prune the dense model by each spec for real (the sequential walk, engine/walk/layer_walk.py),
    evaluate it on the estimate's windows ({"stage": "estimated", "plan": its held masks, "estimate"}), put the dense
    weights back. Cancel stops the walk or the evaluation; the model is dense again whenever it returns."""
    def target(progress, cancel):
        if ensure_dense(setup, models) and on_restore is not None:
            on_restore()
        model = setup.calibration.model
        for spec in specs:
            if cancel.is_set():
                return
            progress({"stage": "exact", "message": f"pruning by {spec.label()}"})

            def walked(event, label=spec.label()):
                if event.get("stage") == "prune":
                    progress({"stage": "exact", "message": f"{label}: layer {event['layer'] + 1} of "
                                                           f"{event['n_layers']} pruned"})
            try:
                t0 = time.perf_counter()
                result = prune_model(model, spec, setup.windows, progress=walked, cancel=cancel)
                if result.status != "completed":
                    return
                plan = held_masks(model, spec, time.perf_counter() - t0)
                est = evaluate_windows(model, setup.eval_ids, tokens, windows=windows, progress=progress,
                                       cancel=cancel)
            finally:
                models.restore()
                if on_restore is not None:
                    on_restore()
            if est.status == "completed":
                progress({"stage": "estimated", "plan": plan, "estimate": est})
    return target


# ---- the split search (engine/explore/split_search.py) --------------------------------------------------------------

def search_job(setup: Setup, settings, storage_url: str, study_name: str | None, tokens: int, models,
               on_restore=None):
    """A job target: open (or resume) the study of this calibration, then add trials, each streamed as
    {"stage": "search", "record"}; {"stage": "study", "name", "records"} first, with the trials it already holds.
    Cancel stops it between estimate windows; every finished trial is in the study."""
    def target(progress, cancel):
        if ensure_dense(setup, models) and on_restore is not None:
            on_restore()
        cal = setup.calibration
        space = search_space(setup.spec, cal.model, band=settings.band)
        identity = study_identity(cal.key, space, settings, evaluation_key(setup.eval_ids, tokens, settings.windows,
                                                                           estimate, setup.spec.updates_weights))
        study = open_study(open_storage(storage_url), study_name, identity, settings,
                           model=setup.request.model or "embedded")
        progress({"stage": "study", "name": study.study_name, "records": trial_records(study),
                  "fields": space.fields})
        with REPLANS:
            return search(study, cal, space, settings, setup.eval_ids, tokens, progress=progress, cancel=cancel)
    return target


def search_point(state: ExploreState, record: dict, calibration: dict | None) -> dict | None:
    """A finished trial as a Pareto point (kind SEARCH); `calibration` is its study's calibration key, which a click
    must match to open the trial's maps. Trials outside the band or cap have no estimate and no point."""
    if record.get("ppl") is None:
        return None
    return put_point(state, {"label": record["label"], "kind": SEARCH, "sparsity": record["sparsity"],
                             "storage": record["storage_bytes"], "ppl": record["ppl"], "ppl_low": record["ppl_low"],
                             "ppl_high": record["ppl_high"], "windows": record["windows"], "spec": record["spec"],
                             "requested": record.get("requested", record["spec"]), "exact": None,
                             "trial": record["number"],
                             "calibration": calibration})


def past_searches(storage_url: str) -> list[dict]:
    """The studies in the storage (engine/search.list_studies); [] when it cannot be read."""
    try:
        return list_studies(open_storage(storage_url))
    except UserError:
        return []


def load_search(storage_url: str, name: str) -> tuple[list[dict], dict]:
    """A past study's finished trials and its identity (calibration key, settings)."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage_url))
    except KeyError:
        raise UserError(f"no search named {name!r} in the study storage") from None
    return trial_records(study), study.user_attrs.get("identity") or {}


def pareto_front(x: list[float], y: list[float], more_x_is_better: bool = True) -> list[int]:
    """Indices of the points no other point beats: as good or better on both axes and strictly on one (lower y;
    higher x when more_x_is_better, else lower x), sorted along x."""
    sign = 1 if more_x_is_better else -1
    front = [i for i in range(len(x))
             if not any(sign * x[j] >= sign * x[i] and y[j] <= y[i] and (sign * x[j] > sign * x[i] or y[j] < y[i])
                        for j in range(len(x)))]
    return sorted(front, key=lambda i: x[i])


POINT_COLUMNS = ["#", "split", "kind", "sparsity", "storage MiB", "estimate", "± spread", "exact", "front"]


def points_table(points: list[dict], axis: str = "sparsity") -> list[list]:
    """One row per explored point (the Pareto view's table); `front` marks the Pareto front of the estimates."""
    done = [p for p in points if p.get("ppl")]
    x = [p["storage"] if axis == "storage" else p["sparsity"] for p in done]
    front = {done[i]["n"] for i in pareto_front(x, [p["ppl"] for p in done], more_x_is_better=axis != "storage")}
    return [[p["n"], p["label"], point_kind(p), f"{p['sparsity']:.2%}", round(p["storage"] / 2**20, 2),
             round(p["ppl"], 2) if p.get("ppl") else None,
             round((p["ppl_high"] - p["ppl_low"]) / 2, 2) if p.get("ppl") else None,
             round(p["exact"], 2) if p.get("exact") else None, "✓" if p["n"] in front else ""] for p in points]


def point_kind(point: dict) -> str:
    """A point's kind and what its estimate is: a split or reference "masks only" or "with update"."""
    how = point.get("estimate", "masks only")
    return point["kind"] if how == "exact" else f"{point['kind']}, {how}"


def point_choices(points: list[dict]) -> list[tuple[str, int]]:
    return [(f"#{p['n']} {p['label']}", p["n"]) for p in points]
