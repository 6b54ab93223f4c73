"""The Explore tab: calibrate once for the form's model, method and data, then move a split and see its maps at once
and a quick masks-only perplexity estimate seconds later; Run exact prunes the split for real (the Results tab),
every estimated split lands on a Pareto view. The work is components/explore_session.py's calls into
engine/explore/."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import gradio as gr

from engine.errors import UserError, excerpt
from engine.explore.split_search import OBJECTIVES, SearchSettings, default_storage_url, pareto_front
from engine.io import text as textdata
from engine.patterns.registry import PATTERNS
from engine.spec import PruneSpec

from . import explore_session, figures, policy, runner
from .explore_session import ESTIMATE_TOKENS, ESTIMATE_WINDOWS, ExploreState
from .jobs import Job
from .layout import banner
from .registry import FORM_SPEC, block_pattern, spec_form_values
from .results_tab import LIGHT, layer_index, selection_for, tiermap_for
from .setup_form import param_widget

STORAGE_FORMULA = ("**Storage estimate** (v = 16 bits a value): "  # each pattern's formula, from its entry
                   + "; ".join(dict.fromkeys(p.storage_note for p in PATTERNS.values())) + ".")
MAX_WINDOWS = 64
WAITING_FOR_CALIBRATION = ("The calibration's other windows are running: this split is planned again from all of "
                           "them, and estimated, when they land.")
WAITING_NOTE = "estimated when the other calibration windows land"
STILL_CALIBRATING = ("The calibration is still running (the maps shown rest on its first windows): {} when it has "
                     "landed.")


class ExploreWidgets:
    """The Explore tab's widgets (page.explore), made by render: what its listeners and the other tabs read."""
    __slots__ = ("state", "status", "calibrate_btn", "calib_note", "ratio_box", "dense", "two_four", "topk_note",
                 "sparsity", "replan", "windows", "tokens", "exact_btn", "estimate", "summary", "heatmap", "shares",
                 "layer", "module", "tiermap", "tiernote", "axis", "refs_btn", "strong_btn", "pareto", "points",
                 "open", "pareto_click", "search")


def render(page) -> None:
    w = page.explore = ExploreWidgets()
    spec = FORM_SPEC
    with gr.Tab("Explore", id="explore"):
        w.state = gr.State(lambda: ExploreState(), delete_callback=lambda xs: xs.close("this page was closed"))
        gr.Markdown("Calibrate once for the model, method and calibration data on the left; then every split is "
                    "re-planned from those statistics without a forward pass: the maps follow a slider as soon as "
                    "it is released, then a quick perplexity estimate streams in. The estimate applies the "
                    "**masks only** (no OBS update of the kept weights) on a few evaluation windows; **Run exact** "
                    "prunes the split layer by layer as Run does.", elem_classes="note")
        with gr.Row():
            w.calibrate_btn = gr.Button("Calibrate", variant="primary", scale=1, elem_id="xs-calibrate")
            w.calib_note = gr.Markdown("Not calibrated yet.", elem_id="xs-calib-note")
        w.status = gr.HTML("", elem_id="xs-status")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=260):
                axis = PATTERNS[spec.pattern].axis
                with gr.Column(visible=len(axis) == 3) as w.ratio_box:
                    w.dense = gr.Slider(0, 1, value=spec.ratios[0], step=0.01, label="dense blocks",
                                        elem_id="xs-dense")
                    w.two_four = gr.Slider(0, 1, value=spec.ratios[1], step=0.01, label="2:4 blocks",
                                           elem_id="xs-24")
                    w.topk_note = gr.Markdown(topk_text(spec.ratios[0], spec.ratios[1]))
                w.sparsity = gr.Slider(0, 0.95, value=spec.sparsity, step=0.01, label="Sparsity",
                                       info="N:M: rounded to a multiple of 1/M",
                                       visible=len(axis) == 1)
                reads = PATTERNS[spec.pattern].fields
                w.replan = {name: param_widget(p, getattr(spec, name), name in reads)
                            for name, p in explore_session.replan_params().items()}
                with gr.Row():
                    w.windows = gr.Number(ESTIMATE_WINDOWS, precision=0, minimum=1, maximum=MAX_WINDOWS,
                                          label="Estimate windows")
                    w.tokens = gr.Number(ESTIMATE_TOKENS, precision=0, minimum=8, label="Tokens per window")
                w.exact_btn = gr.Button("Run exact", variant="secondary", elem_id="xs-exact")
                gr.Markdown("Run exact: the full layer-by-layer walk of this split with the form's recipe (the OBS "
                            "update too, if chosen) and its Evaluation windows; it shows in Results and beside "
                            "the estimate below.", elem_classes="note")
            with gr.Column(scale=2):
                w.estimate = gr.HTML(explore_session.estimate_html(None), elem_id="xs-estimate")
                w.summary = gr.Markdown("", elem_id="xs-summary")
                w.heatmap = gr.Plot(figures.layer_heatmap(None), show_label=False, elem_id="xs-heatmap")
        w.shares = gr.Plot(figures.tier_share_heatmaps(None), show_label=False, elem_id="xs-shares")
        with gr.Row():
            w.layer = gr.Dropdown([], label="Decoder layer", interactive=True)
            w.module = gr.Dropdown([], label="Module", interactive=True)
        w.tiermap = gr.Plot(figures.tier_map_figure(None)[0], show_label=False, elem_id="xs-tiermap")
        w.tiernote = gr.Markdown("", elem_classes="note")
        gr.Markdown(STORAGE_FORMULA, elem_classes="note")
        with gr.Row():
            w.axis = gr.Radio([("sparsity", "sparsity"), ("estimated storage", "storage")], value="sparsity",
                              label="x axis", scale=2)
            w.refs_btn = gr.Button("Add references (2:4, unstructured 50%)", scale=1)
            w.strong_btn = gr.Button("Add SparseGPT references (exact walks, minutes)", scale=1,
                                     elem_id="xs-strong")
        gr.Markdown("References: **Add references** re-plans 2:4 and unstructured 50% with the calibrated method "
                    "(masks only, seconds). **Add SparseGPT references** prunes 2:4 and unstructured 50% for real "
                    "with the engine's strongest recipe of each (SparseGPT: the mask chosen during the OBS update) "
                    "and evaluates them on the estimate's windows: the bar a split has to beat.", elem_classes="note")
        w.pareto = gr.Plot(figures.pareto_figure([]), show_label=False, elem_id="xs-pareto")
        w.points = gr.Dataframe(headers=explore_session.POINT_COLUMNS, value=[], interactive=False,
                                elem_id="xs-points", wrap=True)
        w.open = gr.Dropdown([], value=None, label="Open a point's maps (or click it above)", interactive=True)
        w.pareto_click = gr.Textbox(visible="hidden", elem_id="pareto-click")
        w.search = render_search(page)


@dataclass
class SearchPanel:
    """The split search's widgets (engine/explore/split_search.py through components/explore_session.search_job),
    kept together."""
    objective: gr.Radio
    low: gr.Number
    high: gr.Number
    max_bits: gr.Number
    trials: gr.Number
    minutes: gr.Number
    storage: gr.Textbox
    study: gr.Textbox
    start: gr.Button
    stop: gr.Button
    status: gr.HTML
    past: gr.Dropdown
    exact: gr.Button
    exact_after: gr.Checkbox


def render_search(page) -> SearchPanel:
    public = page.settings.public
    with gr.Accordion("Search the split", open=True, elem_id="xs-search"):
        gr.Markdown("Optuna proposes splits of the calibrated pattern (three-tier: ratios, K, B, scope, assignment, "
                    "choice inside blocks), each re-planned and estimated on the windows above; the front is the "
                    "best estimated perplexity for each sparsity (or storage). Splits outside the band or above the "
                    "cap are not estimated. Every finished trial is kept in a study (SQLite beside the run store, "
                    "or a storage URL several machines share); Stop keeps them all.", elem_classes="note")
        with gr.Row():
            objective = gr.Radio([(o.title, name) for name, o in OBJECTIVES.items()], value="sparsity",
                                 label="Objective", scale=2)
            low = gr.Number(0.0, minimum=0, maximum=1, label="sparsity at least", elem_id="xs-search-low")
            high = gr.Number(1.0, minimum=0, maximum=1, label="sparsity at most", elem_id="xs-search-high")
            max_bits = gr.Number(0, minimum=0, label="bits per weight at most (0: no cap)")
        with gr.Row():
            trials = gr.Number(20 if not public else min(20, page.settings.limits.search_trials), precision=0,
                               minimum=1, label="trials", elem_id="xs-search-trials")
            minutes = gr.Number(0 if not public else page.settings.limits.search_minutes, minimum=0,
                                label="minutes (0: no limit)")
            storage = gr.Textbox("", label="study storage URL (empty: SQLite beside the run store)", visible=not public)
            study = gr.Textbox("", label="study name (empty: named after the calibration and settings)",
                               visible=not public)
        with gr.Row():
            start = gr.Button("Start search", variant="primary", elem_id="xs-search-start")
            stop = gr.Button("Stop search", elem_id="xs-search-stop")
            exact = gr.Button(f"Run exact on the front's best {EXACT_BEST}", elem_id="xs-search-exact")
            exact_after = gr.Checkbox(False, label=f"then Run exact on the front's best {EXACT_BEST} when the "
                                                   "search has used its budget", elem_id="xs-search-exact-after")
        status = gr.HTML("", elem_id="xs-search-status")
        past = gr.Dropdown(past_choices(page, ""), value=None, label="Past searches (open one: its trials and front)",
                           interactive=True, elem_id="xs-search-past")
    return SearchPanel(objective, low, high, max_bits, trials, minutes, storage, study, start, stop, status, past,
                       exact, exact_after)


EXACT_BEST = 3


def storage_url(page, typed: str | None) -> str:
    """The study storage: the typed URL (local servers only), else the SQLite file beside the page's run store."""
    if typed and str(typed).strip() and not page.settings.public:
        return str(typed).strip()
    return default_storage_url(page.store.directory)


def past_choices(page, typed: str | None) -> list[tuple[str, str]]:
    return [(f"{s['study']} · {s['trials']} trials · {s['method']} {s['pattern']} · {s['objective']}", s["study"])
            for s in explore_session.past_searches(storage_url(page, typed))]


def search_settings(page, objective, low, high, max_bits, trials, minutes, windows) -> SearchSettings:
    def number(value, cast):
        if value is None or str(value).strip() == "":
            return None
        try:
            return cast(value)
        except (TypeError, ValueError):
            raise UserError(f"{value!r} is not a number") from None
    lo, hi = number(low, float), number(high, float)
    band = None if (lo or 0.0) <= 0.0 and (1.0 if hi is None else hi) >= 1.0 else (lo or 0.0, 1.0 if hi is None else hi)
    n, m, cap = number(trials, int), number(minutes, float) or None, number(max_bits, float) or None  # 0: none
    policy.check_search(n, m, page.settings.public, page.settings.limits)
    return SearchSettings(objective=objective, band=band, max_bits=cap, trials=n, minutes=m,
                          windows=_count(windows, "estimate windows", 1, MAX_WINDOWS))


def topk_text(dense, two_four) -> str:
    try:
        rest = 1 - float(dense or 0) - float(two_four or 0)
    except (TypeError, ValueError):
        rest = 0.0
    return f"top-K blocks: **{max(rest, 0):.2f}** (the rest)"


# ---- what the tab shows -------------------------------------------------------------------------------------------

def outputs(page) -> list:
    w = page.explore
    return [w.status, w.estimate, w.summary, w.topk_note, w.heatmap, w.shares,
            w.layer, w.module, w.tiermap, w.tiernote, w.pareto, w.points,
            w.open]


def control_outputs(page) -> list:
    w = page.explore
    return [w.ratio_box, w.sparsity, *w.replan.values(), w.dense, w.two_four, w.calib_note]


def show_plan(page, xs: ExploreState, plan, storage) -> dict:
    """The maps, tier map and summary of a fresh plan (the tier map stays on the matrix chosen before)."""
    w = page.explore
    xs.plan = plan
    xs.record = explore_session.plan_record(plan, 1 + max(k[0] for k in plan.matrices))
    layers, layer, modules, module = selection_for(xs.record, xs.shown_layer, xs.shown_module)
    xs.shown_layer, xs.shown_module = layer, module
    fig, note = tiermap_for(xs.record, layer, module)
    blocks = block_pattern(plan.spec.pattern)
    return {w.summary: explore_session.summary_text(plan, storage),
            w.heatmap: figures.layer_heatmap(xs.record, title=f"Sparsity per matrix · {plan.spec.label()}"),
            w.shares: gr.Plot(figures.tier_share_heatmaps(xs.record) if blocks else None, visible=blocks),
            w.layer: gr.Dropdown(choices=layers, value=layer),
            w.module: gr.Dropdown(choices=modules, value=module), w.tiermap: fig,
            w.tiernote: note}


def show_points(page, xs: ExploreState, axis: str) -> dict:
    w = page.explore
    return {w.pareto: figures.pareto_figure(xs.points, axis),
            w.points: explore_session.points_table(xs.points, axis),
            w.open: gr.Dropdown(choices=explore_session.point_choices(xs.points))}


def controls_for(page, spec: PruneSpec) -> dict:
    """The split controls of a calibrated spec: the ones its pattern reads, shown, set to its values."""
    w = page.explore
    pattern = PATTERNS[spec.pattern]
    point = pattern.point(spec)
    out = {w.ratio_box: gr.Column(visible=len(point) == 3),
           w.sparsity: gr.Slider(visible=len(point) == 1, value=point[0] if len(point) == 1 else None),
           **{widget: gr.update(visible=name in pattern.fields, value=getattr(spec, name))
              for name, widget in w.replan.items()}}
    if len(point) == 3:
        out.update({w.dense: gr.Slider(value=point[0]), w.two_four: gr.Slider(value=point[1])})
    return out


def _share(value, name: str) -> float:
    """A slider's value as a raw event may send it (empty, text, NaN): a number in [0, 1] or one line."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number between 0 and 1, got {excerpt(value)}") from None
    if not 0.0 <= x <= 1.0:
        raise UserError(f"{name} must be a number between 0 and 1, got {excerpt(value)}")
    return x


def _count(value, name: str, low: int, high: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a whole number, got {value!r}") from None
    if not low <= n <= high:
        raise UserError(f"{name} must be between {low} and {high}, got {n}")
    return n


# ---- the engine calls, streamed -----------------------------------------------------------------------------------

def explore_specs(page, xs: ExploreState, specs: list[PruneSpec], windows, tokens, axis,
                  kind: str = explore_session.SPLIT):
    """Re-plan and estimate `specs` on the engine's line, streaming maps, then the running estimate; a newer
    call (the next slider release) stops this one between windows and this stream ends without a word. Asked while
    the calibration still runs, the maps come from its first windows and the specs are planned again when it lands."""
    if xs.calibration_running:
        xs.asked = (specs, kind)
    shown = threading.Event()  # the maps were sent: the estimate may take the cores
    yield from stream(page, xs, lambda n, seqlen, restored: explore_session.ExploreJob(
        xs.setup, specs, runner.MODELS, n, seqlen, restored, maps_shown=shown), windows, tokens, axis, kind,
        maps_shown=shown)


def stream(page, xs: ExploreState, make_target, windows, tokens, axis, kind: str,
           maps_shown: threading.Event | None = None):
    """Check the estimate's windows, start make_target(windows, tokens, on_restore) as the tab's job (with the
    target's `ahead`, when it has one: Job) and stream its events: maps of a plan, the running estimate, a finished
    point, the walk of an exact reference. maps_shown is set once a plan's maps were sent to the page (Gradio
    resumes the stream after sending what it yielded)."""
    w = page.explore
    if xs.setup is None:
        yield {w.status: banner("warn", xs.not_ready())}
        return
    try:
        n = None if windows is None else _count(windows, "estimate windows", 1, MAX_WINDOWS)
        most = textdata.model_context(xs.setup.calibration.model.config) or 2048
        limits = page.settings.limits
        if limits is not None:  # a public server's cap on tokens per window holds for estimates as for runs
            most = min(most, limits.seqlen)
        seqlen = None if n is None else _count(tokens, "tokens per window", 8, most)
    except UserError as err:
        yield {w.status: banner("err", str(err))}
        return

    def forget_run():  # the model held a run's pruned weights; they are back to dense now
        runner.MODELS.holds_run = None
    target = make_target(n, seqlen, forget_run)
    job = Job(target, name="explore", visitor=xs.visitor, ahead=getattr(target, "ahead", None))
    xs.supersede(job)
    try:
        job.start(page.settings.max_waiting, page.settings.per_visitor, page.settings.engine_quota_s)
    except UserError as err:
        yield {w.status: banner("err", str(err))}
        return
    exact = kind == explore_session.EXACT_REFERENCE
    yield {w.status: banner("info", "Pruning for real…" if exact else "Re-planning…")}
    note = "exact walk, with the OBS update" if exact else "masks only"
    try:
        for events in job.watch(interval=0.1):
            if xs.job is not job:
                return  # a newer split took over; it draws from now on
            out, finished = {}, False  # finished: this update shows a point's result, which the status keeps
            for event in events:
                stage = event.get("stage")
                if stage == "wait":
                    out[w.status] = banner("info", WAITING_FOR_CALIBRATION if xs.calibration_running
                                           else f"Waiting for the engine: {event['message']}.")
                elif stage == "exact" and not finished:
                    out[w.status] = banner("info", event["message"])
                elif stage == "planned":
                    plan = event["plan"]
                    out.update(show_plan(page, xs, plan, event["storage"]))
                    if not n:
                        explore_session.keep_maps_only(plan)  # maps only: no estimate needs its masks
                    out[w.estimate] = explore_session.estimate_html(None, "estimating…" if n else "")
                    out[w.status] = banner("info", f"Re-planned in {plan.seconds:.2f} s"
                                           + ("; estimating perplexity…" if n else "."))
                elif stage == "estimate":
                    out[w.estimate] = explore_session.estimate_html(event, event.get("kind", note))
                elif stage == "estimated" and event["estimate"].status == "completed":
                    plan, est = event["plan"], event["estimate"]
                    explore_session.add_point(xs, plan, est, explore_session.storage_estimate(plan), kind)
                    explore_session.keep_maps_only(plan)
                    out.update(show_points(page, xs, axis))
                    finished = True
                    out[w.status] = banner("ok", f"{plan.spec.label()}: perplexity {'' if exact else '≈ '}"
                                                 f"{est.ppl:,.2f} on {est.windows} windows of {seqlen} tokens in "
                                                 f"{est.seconds:.1f} s ({note if exact else est.kind}"
                                                 f"{'; ' + est.note if est.note else ''}).")
            if out:
                yield out
                if maps_shown is not None and w.heatmap in out:
                    maps_shown.set()
    finally:
        if job.running and xs.job is job:
            job.stop()  # the page went away: free the engine
    if xs.job is job and job.error:
        yield {w.status: banner("err", job.error)}


def calibrate(page, *values, request: gr.Request | None = None):
    """Calibrate for the form's set-up (served from the cache when nothing changed), then explore its split.
    `request`: the tab's, which the server's live explorations (explore_session.EXPLORATIONS) know it by."""
    w = page.explore
    *form_values, xs, windows, tokens, axis = values
    xs.stop()
    xs.asked = None
    try:
        req = runner.request(page, dict(zip(page.form, form_values)))
        first = None if not windows else (_count(windows, "estimate windows", 1, MAX_WINDOWS),
                                          _count(tokens, "tokens per window", 8, 1 << 20))
    except UserError as err:
        yield {w.status: banner("err", str(err))}
        raise gr.Error(str(err), print_exception=False, title="Cannot calibrate") from None

    def target(progress, cancel):
        setup = explore_session.calibrate(req, runner.MODELS, progress, cancel, first=first)
        runner.MODELS.holds_run = None  # the model was restored to dense to calibrate it
        return setup
    job = Job(target, name="calibrate", visitor=xs.visitor)
    xs.calibrating = job
    try:
        job.start(page.settings.max_waiting, page.settings.per_visitor, page.settings.engine_quota_s)
    except UserError as err:
        yield {w.status: banner("err", str(err))}
        return
    yield {w.status: banner("info", "Calibrating…")}
    try:
        for events in job.watch():
            out = {}
            for event in events:
                out.update(first_maps(page, xs, event))
            messages = [e.get("message") for e in events if e.get("message")]
            if messages:
                out[w.status] = banner("info", f"Calibrating: {messages[-1]}")
            if out:
                yield out
    finally:
        if job.running:
            job.stop()
    if job.error:
        yield {w.status: banner("err", job.error)}
        raise gr.Error(job.error, print_exception=False, title="Cannot calibrate")
    if xs.calibrating is not job or job.result is None:
        return
    xs.setup, xs.closed, xs.first_stop = job.result, None, None
    explore_session.EXPLORATIONS.admit(getattr(request, "session_hash", None) or f"tab-{id(xs)}", xs)
    spec, (asked, xs.asked) = xs.setup.spec, (xs.asked, None)
    if asked is not None:  # the tab moved on from the first maps meanwhile: what it shows now, on the full statistics
        specs, kind = asked
        yield {w.calib_note: explore_session.calibration_text(xs.setup)}
        yield from explore_specs(page, xs, specs, windows, tokens, axis, kind)
        return
    yield {**controls_for(page, spec), w.calib_note: explore_session.calibration_text(xs.setup),
           w.topk_note: topk_text(*spec.ratios[:2])}
    yield from explore_specs(page, xs, [spec], windows, tokens, axis)


def first_maps(page, xs: ExploreState, event: dict) -> dict:
    """What the calibration job streams before the full calibration lands: the form's split re-planned and
    estimated (masks only) from the first few calibration windows, labelled with how many, until the tab asks for
    another split (which stops that estimate; the calibration goes on, and that split is re-planned when it lands)."""
    w, stage = page.explore, event.get("stage")
    if stage == "first":
        xs.setup, xs.first_stop = event["setup"], event["stop"]
        return {**controls_for(page, xs.setup.spec), w.calib_note: explore_session.calibration_text(xs.setup)}
    if xs.first_stop is not None and xs.first_stop.is_set():  # the tab asked for another split since: its maps
        plan = explore_session.asked_plan(xs) if stage == "planned" else None  # (now that they can be drawn)
        return {} if plan is None else {**show_plan(page, xs, plan, explore_session.storage_estimate(plan)),
                                        page.explore.estimate: explore_session.estimate_html(None, WAITING_NOTE)}
    rests = f"from {xs.setup.calibration.windows} calibration windows" if xs.setup is not None else ""
    if stage == "planned":
        return {**show_plan(page, xs, event["plan"], event["storage"]),
                w.estimate: explore_session.estimate_html(None, "estimating…")}
    if stage == "estimate":
        return {w.estimate: explore_session.estimate_html(event, f"{event.get('kind', 'masks only')}, {rests}")}
    return {}


def move(page, xs: ExploreState, dense, two_four, sparsity, *values):
    """A released slider (or a changed re-plan parameter: K, B, scope, assignment ...): re-plan that split and
    estimate it. values: the re-plan parameters' (explore_session.replan_params order), then windows, tokens, axis."""
    w = page.explore
    *replan, windows, tokens, axis = values
    if xs.setup is None:
        yield {w.status: banner("warn", xs.not_ready()), w.topk_note: topk_text(dense, two_four)}
        return
    try:
        dense, two_four = _share(dense, "dense blocks"), _share(two_four, "2:4 blocks")
    except UserError as err:
        yield {w.status: banner("err", str(err))}
        return
    if len(PATTERNS[xs.setup.spec.pattern].axis) == 3 and float(dense) + float(two_four) > 1:
        two_four = round(1 - float(dense), 2)  # top-K cannot go below 0: 2:4 takes what dense leaves
        yield {w.two_four: gr.Slider(value=two_four)}
    yield {w.topk_note: topk_text(dense, two_four)}
    try:
        spec = explore_session.split_spec(xs.setup.spec, dense, two_four, sparsity, dict(zip(w.replan, replan)))
    except UserError as err:
        xs.supersede(None)
        yield {w.status: banner("err", str(err))}
        return
    yield from explore_specs(page, xs, [spec], windows, tokens, axis)


def open_point(page, xs: ExploreState, number, axis):
    """Re-open an explored point: its maps again (re-planned from the calibration, no estimate)."""
    w = page.explore
    point = next((p for p in xs.points if p["n"] == number), None)
    if point is None:
        return
    if point["kind"] == explore_session.EXACT_REFERENCE:
        yield {w.status: banner("info", f"#{number} {point['label']} was pruned for real, not planned from "
                                f"this calibration: it has no maps here.")}
        return
    if point.get("calibration") is not None and xs.setup is not None and \
            point["calibration"] != xs.setup.calibration.key:
        yield {w.status: banner("info", f"#{number} is a trial of a search on another calibration: calibrate with "
                                        "its model, method and data to open its maps.")}
        return
    spec = PruneSpec.from_dict(point["requested"])
    yield from explore_specs(page, xs, [spec], None, None, axis)
    yield {w.estimate: explore_session.estimate_html({"ppl": point["ppl"], "ppl_low": point["ppl_low"],
                                              "ppl_high": point["ppl_high"], "done": point["windows"],
                                              "total": point["windows"]}, f"point #{number}")}


def start_search(page, xs: ExploreState, objective, low, high, max_bits, trials, minutes, typed_url, study,
                 windows, tokens, axis):
    """Add trials to this calibration's study, streaming each finished trial into the Pareto view and the points
    table; Stop (or a new split) ends it between estimate windows, every finished trial kept."""
    panel = page.explore.search
    xs.search_ended = None
    if xs.calibration_running:
        yield {panel.status: banner("warn", STILL_CALIBRATING.format("start the search"))}
        return
    if xs.setup is None:
        yield {panel.status: banner("warn", "Press Calibrate first: the search plans every trial from its "
                                            "statistics.")}
        return
    try:
        settings = search_settings(page, objective, low, high, max_bits, trials, minutes, windows)
        context = textdata.model_context(xs.setup.calibration.model.config) or 2048
        seqlen = _count(tokens, "tokens per window", 8, context)
    except UserError as err:
        yield {panel.status: banner("err", str(err))}
        return
    url = storage_url(page, typed_url)

    def forget_run():
        runner.MODELS.holds_run = None
    job = Job(explore_session.search_job(xs.setup, settings, url, (study or "").strip() or None, seqlen,
                                         runner.MODELS, forget_run), name="search", visitor=xs.visitor)
    xs.supersede(job)
    try:
        job.start(page.settings.max_waiting, page.settings.per_visitor, page.settings.engine_quota_s)
    except UserError as err:
        yield {panel.status: banner("err", str(err))}
        return
    yield {panel.status: banner("info", "Opening the study…")}
    name, added, calibration = None, 0, xs.setup.calibration.key
    try:
        for events in job.watch(interval=0.2):
            if xs.job is not job:
                return
            out = {}
            for event in events:
                stage = event.get("stage")
                if stage == "study":
                    name = event["name"]
                    for r in event["records"]:
                        explore_session.search_point(xs, r, calibration)
                    out.update(show_points(page, xs, axis))
                    out[panel.status] = banner("info", f"Search {name}: {len(event['records'])} trials so far; "
                                                       f"searching {', '.join(event['fields'])}…")
                elif stage == "estimate":
                    out[page.explore.estimate] = explore_session.estimate_html(event, "search trial, masks only")
                elif stage == "search":
                    r = event["record"]
                    added += 1
                    explore_session.search_point(xs, r, calibration)
                    out.update(show_points(page, xs, axis))
                    ppl = "outside the band / cap" if r["ppl"] is None else f"≈ {r['ppl']:,.2f}"
                    out[panel.status] = banner("info", f"Search {name}: trial {r['number']} ({added} of "
                                                       f"{settings.trials or '∞'}) {r['label']}: {ppl} at "
                                                       f"{r['sparsity']:.2%}.")
            if out:
                yield out
    finally:
        if job.running and xs.job is job:
            job.stop()
    if job.error:
        yield {panel.status: banner("err", job.error)}
        return
    how = xs.search_ended = "stopped" if job.cancel.is_set() else "finished"
    yield {panel.status: banner("ok", f"Search {name} {how}: {added} trials added, all kept in the study."),
           panel.past: gr.Dropdown(choices=past_choices(page, typed_url))}


def open_search(page, xs: ExploreState, name, typed_url, axis):
    """A past search's trials and front, as they were stored (maps open for its calibration only)."""
    panel = page.explore.search
    if not name:
        return
    try:
        records, identity = explore_session.load_search(storage_url(page, typed_url), name)
    except UserError as err:
        yield {panel.status: banner("err", str(err))}
        return
    for r in records:
        explore_session.search_point(xs, r, identity.get("calibration"))
    objective = (identity.get("settings") or {}).get("objective", "sparsity")
    front = pareto_front(records, objective)
    best = f"; best {front[0]['label']} ≈ {front[0]['ppl']:,.2f}" if front else ""
    yield {**show_points(page, xs, axis),
           panel.status: banner("ok", f"Search {name}: {len(records)} trials, {len(front)} on the front{best}.")}


def references(page, xs: ExploreState, windows, tokens, axis):
    """2:4 and unstructured 50% with the same method, masks only, on the same windows: the Pareto view's yardsticks."""
    if xs.setup is None:
        yield {page.explore.status: banner("warn", xs.not_ready())}
        return
    yield from explore_specs(page, xs, explore_session.reference_specs(xs.setup.spec), windows, tokens, axis,
                             explore_session.REFERENCE)


def strongest_references(page, xs: ExploreState, windows, tokens, axis):
    """SparseGPT 2:4 and unstructured 50%, pruned for real on the calibration's windows and evaluated on the
    estimate's: the strongest yardsticks the engine has (minutes: each is a full walk with the OBS update)."""
    if xs.setup is None or xs.calibration_running:
        yield {page.explore.status: banner("warn", STILL_CALIBRATING.format("add them") if xs.setup is not None
                                           else xs.not_ready())}
        return
    specs = explore_session.strongest_specs(xs.setup.spec)
    yield from stream(page, xs, lambda n, seqlen, restored: explore_session.reference_job(
        xs.setup, specs, runner.MODELS, n, seqlen, restored), windows, tokens, axis, explore_session.EXACT_REFERENCE)


def run_exact(page, *values):
    """The split shown, pruned for real with the form's recipe through Run's own path; the exact perplexity then
    joins the split's point."""
    *form_values, xs, s = values
    if xs.setup is None or xs.plan is None:
        raise gr.Error("Calibrate and explore a split first.", print_exception=False, title="Nothing to run")
    yield from exact_run(page, dict(zip(page.form, form_values)), xs, s, xs.plan.requested, xs.plan.spec.label())


def run_exact_front(page, *values):
    """Run exact on the best few (by estimated perplexity) of the search trials' front, one after another."""
    *form_values, xs, s, axis = values
    trials = [p for p in xs.points if p["kind"] == explore_session.SEARCH and p.get("ppl")]
    if xs.setup is None or not trials:
        raise gr.Error("Calibrate and run a search first.", print_exception=False, title="Nothing to run")
    x = [p["storage"] if axis == "storage" else p["sparsity"] for p in trials]
    front = sorted((trials[i] for i in explore_session.pareto_front(x, [p["ppl"] for p in trials],
                                                            more_x_is_better=axis != "storage")),
                   key=lambda p: p["ppl"])[:EXACT_BEST]
    for p in front:
        yield from exact_run(page, dict(zip(page.form, form_values)), xs, s, PruneSpec.from_dict(p["requested"]),
                             p["label"])


def exact_after_search(page, *values):
    """When asked: Run exact on the front's best once the search the tab just ran has used its budget (a stopped or
    failed search runs nothing)."""
    *form_values, xs, s, axis, asked = values
    if asked and xs.search_ended == "finished":
        yield from run_exact_front(page, *form_values, xs, s, axis)


def exact_run(page, form: dict, xs: ExploreState, s, spec: PruneSpec, label: str):
    """`spec`'s split pruned for real with the form's recipe through Run's own path; the exact perplexity then
    joins the point labelled `label`."""
    form.update(spec_form_values(spec))
    yield from runner.run_pruning(page, *form.values(), s)
    record = s.runs[-1] if s.runs else None
    ppl = ((record or {}).get("ppl") or {}).get("pruned")
    if record is None or record.get("status") != "completed" or not ppl:
        return
    for p in xs.points:
        if p["label"] == label:
            p["exact"] = ppl
    yield {**show_points(page, xs, "sparsity"),
           page.explore.status: banner("ok", f"Exact run of {label}: perplexity {ppl:,.3f} at sparsity "
                                        f"{record['sparsity']:.2%} (Results tab).")}


# ---- listeners ----------------------------------------------------------------------------------------------------

def wire(page) -> None:
    w = page.explore
    xs, form = w.state, page.form
    est = [w.windows, w.tokens, w.axis]
    shown = outputs(page)
    explore_event = dict(trigger_mode="multiple", api_visibility="private", show_progress="hidden", **LIGHT)

    def visited(fn, inputs: list, pass_request: bool = False):  # the event's visitor on the tab's states
        return runner.for_visitor(page, fn, runner.positional(len(inputs)), pass_request)

    def calibrate_press(*values, request=None):
        yield from calibrate(page, *values, request=request)
    calibrate_inputs = [*form.values(), xs, *est]
    w.calibrate_btn.click(visited(calibrate_press, calibrate_inputs, True), calibrate_inputs,
                          shown + control_outputs(page),
                          api_visibility="private", show_progress="minimal", **LIGHT)

    def released(*values):
        yield from move(page, *values)
    controls = [w.dense, w.two_four, w.sparsity, *w.replan.values()]
    triggers = [w.dense.release, w.two_four.release, w.sparsity.release,
                *(c.submit if isinstance(c, gr.Number) else c.input for c in w.replan.values()), w.windows.submit,
                w.tokens.submit]
    gr.on(triggers, visited(released, [xs, *controls, *est]), [xs, *controls, *est], shown + [w.two_four],
          **explore_event)
    for slider in (w.dense, w.two_four):  # the top-K share follows while dragging; the plan on release
        slider.input(topk_text, [w.dense, w.two_four], w.topk_note, queue=False, show_progress="hidden")

    def add_references(*values):
        yield from references(page, *values)
    w.refs_btn.click(visited(add_references, [xs, *est]), [xs, *est], shown, **explore_event)

    def add_strongest(*values):
        yield from strongest_references(page, *values)
    w.strong_btn.click(visited(add_strongest, [xs, *est]), [xs, *est], shown, **explore_event)

    def reopen(*values):
        yield from open_point(page, *values)
    w.open.input(visited(reopen, [xs, w.open, w.axis]), [xs, w.open, w.axis], shown, **explore_event)

    def clicked(x: ExploreState, text, axis):
        """'n|time' from the Pareto click relay (components/layout.py) -> that point's maps."""
        number = layer_index(str(text)[:100].split("|")[0])  # a point's number reads as a layer index does
        if number is None:
            return
        yield from open_point(page, x, number, axis)
    w.pareto_click.change(visited(clicked, [xs, w.pareto_click, w.axis]), [xs, w.pareto_click, w.axis], shown,
                          **explore_event)
    w.axis.input(lambda x, axis: show_points(page, x, axis), [xs, w.axis],
                 [w.pareto, w.points, w.open], api_visibility="private", **LIGHT)

    def tier(x: ExploreState, layer, module):
        x.shown_layer, x.shown_module = layer_index(layer), module if isinstance(module, str) else None
        return tiermap_for(x.record, layer, module)
    gr.on([w.layer.input, w.module.input], tier, [xs, w.layer, w.module],
          [w.tiermap, w.tiernote], api_visibility="private", **LIGHT)

    def tab_closed(request: gr.Request):  # release its exploration now, not an hour later with Gradio's state
        explore_session.EXPLORATIONS.end(request.session_hash)
    page.demo.unload(tab_closed)

    panel = w.search

    def search_start(*values):
        yield from start_search(page, *values)
    search_inputs = [xs, panel.objective, panel.low, panel.high, panel.max_bits, panel.trials, panel.minutes,
                     panel.storage, panel.study, *est]
    searched = panel.start.click(visited(search_start, search_inputs), search_inputs,
                                 shown + [panel.status, panel.past], **explore_event)

    def exact_after(*values):
        yield from exact_after_search(page, *values)
    exact_after_inputs = [*form.values(), xs, page.session, w.axis, panel.exact_after]
    searched.then(visited(exact_after, exact_after_inputs), exact_after_inputs,
                  page.JOB_OUTPUTS + [w.status, w.pareto, w.points, w.open],
                  api_visibility="private", **runner.engine_event(page))

    def search_stop(x: ExploreState):
        if x.job is not None:
            x.job.stop()  # the stream ends by itself and says so; the finished trials are in the study
    panel.stop.click(search_stop, [xs], None, queue=False, api_visibility="private")

    def search_open(*values):
        yield from open_search(page, *values)
    panel.past.input(search_open, [xs, panel.past, panel.storage, w.axis], shown + [panel.status],
                     **explore_event)
    panel.storage.submit(lambda typed: gr.Dropdown(choices=past_choices(page, typed)), [panel.storage], [panel.past],
                         api_visibility="private", **LIGHT)

    def exact_front(*values):
        yield from run_exact_front(page, *values)
    exact_front_inputs = [*form.values(), xs, page.session, w.axis]
    panel.exact.click(visited(exact_front, exact_front_inputs), exact_front_inputs,
                      page.JOB_OUTPUTS + [w.status, w.pareto, w.points, w.open],
                      api_visibility="private", **runner.engine_event(page))

    def exact(*values):
        yield from run_exact(page, *values)
    exact_inputs = [*form.values(), xs, page.session]
    w.exact_btn.click(visited(exact, exact_inputs), exact_inputs,
                      page.JOB_OUTPUTS + [w.status, w.pareto, w.points, w.open],
                      api_visibility="private", **runner.engine_event(page))
