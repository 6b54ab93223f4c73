"""Run, Run sweep and Stop: a job on the engine's one queue (components/jobs.py), streamed to every tab.

A job's handler is a generator: it shows the job's place in the queue, then its progress, the heatmap filling in
layer by layer and the loss curve of a fine-tune, then how it ended. Stop sets the job's cancel flag, wherever the
job is (running, waiting in the engine's line, or still in Gradio's own queue).
"""
from __future__ import annotations

import inspect
import threading
import time
from dataclasses import replace

import gradio as gr

from engine.errors import UserError
from engine.run import ModelCache, run
from engine.spec import RECIPE_PATTERN

from . import policy, recover_view, tables
from .jobs import Job, Progress, progress_html
from .layout import banner
from .results_tab import LIGHT, heatmap_for
from .session import Session, parse_splits, request_from_form, size_guard

MODELS = ModelCache()  # one model in memory per process; restored to dense weights before every run
SUBMIT = threading.Lock()  # a tab's two clicks arrive on two threads: only one of them may start a job
STOP_GRACE_S = 3.0  # after Stop the page waits this long for the run to end, then frees the Run button


# ---- the engine calls ------------------------------------------------------------------------------------------

def request(page, form: dict, **changes):
    """The form -> a RunRequest under this server's policy (UserError naming every problem)."""
    settings = page.settings
    policy.check_request(form, settings.public, settings.limits)
    finetune = recover_view.finetune_from_form(form.pop("finetune_steps", 0), form.pop("finetune_lr", None),
                                          form.pop("lora_rank", 0), public=settings.public)
    req = request_from_form(form, trust_remote_code=settings.trust_remote_code, safetensors_only=settings.public,
                            store=page.store, **changes)
    return replace(req, finetune=finetune)


def prune(page, s: Session, req, progress, cancel) -> dict:
    """One engine run on the worker thread; the record joins the tab's runs as soon as it exists."""
    cap = page.settings.limits.max_params if page.settings.limits else None
    record = run(req, progress=size_guard(req, progress, cap, MODELS), cancel=cancel, models=MODELS)
    s.ran.add(record["run_id"])
    s.add(record)
    return record


# ---- streaming a job to the page -------------------------------------------------------------------------------

def stream(page, s: Session, target, label: str, summary, spec: dict | None = None):
    """Queue `target(progress, cancel)` for the engine and stream its place in the queue, progress, the heatmap
    filling in (for a pruning run of `spec`), the loss curve and how it ended:
    `summary(records, job)` -> (banner kind, text, progress line) of a job that ended well."""
    with SUBMIT:
        if s.busy():
            raise gr.Error("This tab already has a run waiting or running; press Stop first.",
                           print_exception=False, title="Already running")
        job = Job(target, name=label, visitor=s.visitor)
        try:
            job.start(page.settings.max_waiting, page.settings.per_visitor, page.settings.engine_quota_s)
        except UserError as err:
            raise gr.Error(str(err), print_exception=False, title="Server busy") from None
        s.job = job
    p = Progress()
    curve = {"train": [], "heldout": []}
    live = None
    if spec is not None:  # the run as far as it got, drawn as its layers finish
        live = p.record
        live["spec"] = spec
        s.shown = live
    drawn = False
    running = banner("info", f"Running {label}…")
    yield {page.status: running, page.progress: progress_html(p, 0.0)}
    finished = []
    try:
        for events in job.watch():
            # the banner on every update: after Stop then Run, the stopped job's last word may land in between
            out = {page.status: running}
            for event in events:
                if event.get("stage") == "sweep_point":  # a sweep finished one split
                    finished.append(event["record"])
                    out.update(page.show_session(s))
                    p.matrices.clear()
                p.update(event)
                if recover_view.curve_from_events(curve, event):
                    out[page.recover.loss_plot] = recover_view.loss_curve_figure(curve)
            out[page.progress] = progress_html(p, time.monotonic() - job.started)
            if live is not None and p.new_layers:
                first, drawn = not drawn, True
                out[page.results.heatmap] = heatmap_for(live, s.view)
                if first:
                    out.update(page.show_record(s, live, view=s.view))
                    out.pop(page.export.matrices_df)
                p.new_layers = 0
            yield out
            if job.stopping and time.monotonic() - job.stop_requested > STOP_GRACE_S:
                break  # a long layer or a model load: let it end unseen, free the Run button now
    finally:
        if job.running:  # the page went away or the event was cancelled: stop the engine at the next layer
            job.stop()
    yield from ending(page, s, job, p, finished, summary)


def ending(page, s: Session, job: Job, p: Progress, finished: list, summary):
    """The last update of a job: how it ended, its figures, the session's runs and the run store."""
    out = {**page.show_session(s), **page.show_history()}
    if job.running:
        p.stage, p.message = "cancelled", "still finishing its current step; it will appear under Past runs"
        yield {**out, page.status: banner("warn", "Stopping… the run ends after its current step."),
               page.progress: progress_html(p)}
        return
    if not job.started_work:
        p.stage, p.message = "cancelled", "stopped while waiting in the queue"
        yield {**out, page.status: banner("warn", "Stopped before it started."), page.progress: progress_html(p)}
        return
    if job.error:
        p.stage, p.message = "failed", job.error
        out.update({page.status: banner("err", job.error), page.progress: progress_html(p)})
        if finished:
            out.update(page.show_record(s, finished[-1], view=s.view))
        yield out
        raise gr.Error(job.error, print_exception=False, title="Run failed" if job.user_error else "Internal error")
    records = finished if job.result is None else [job.result]
    last = records[-1] if records else None
    cancelled = any(r.get("status") == "cancelled" for r in records) or job.cancel.is_set()
    p.stage = "cancelled" if cancelled else "done"
    kind, text, p.message = summary(records, job)
    warnings = [r["store_warning"] for r in records if r.get("store_warning")]
    if warnings:
        text, kind = f"{text} Warning: {warnings[-1]}.", "warn"
    out.update({page.status: banner(kind, text), page.progress: progress_html(p, time.monotonic() - job.started)})
    if last:
        out.update(page.show_record(s, last, s.shown_layer, s.shown_module, view=s.view))
    yield out


def run_summary(records: list, job: Job) -> tuple[str, str, str]:
    last = records[-1]
    progress_line = f"{last.get('layers_done')} of {last.get('n_layers')} decoder layers pruned"
    if last.get("status") == "cancelled" or job.cancel.is_set():
        return "warn", f"Stopped: {(last.get('message') or 'stopped').rstrip('.')}.", progress_line
    text = (f"Done in {tables.total_seconds(last):.1f} s: realised sparsity {last['sparsity']:.2%}"
            + (f", perplexity {last['ppl']['pruned']:.3f}" if last["ppl"].get("pruned") else "") + ".")
    errors = last.get("errors")
    if errors:  # masks, tier maps and weights disagree: never a silent number
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return "warn", f"{text} The weights disagree with the masks: {errors[0]}{more}.", progress_line
    return "ok", text, progress_line


def sweep_summary(records: list, job: Job) -> tuple[str, str, str]:
    progress_line = f"{len(records)} split(s) finished"
    if any(r.get("status") == "cancelled" for r in records) or job.cancel.is_set():
        message = ((records[-1] if records else {}).get("message") or "stopped").rstrip(".")
        return "warn", f"Sweep stopped after {len(records)} split(s). {message}.", progress_line
    return "ok", f"Done: {len(records)} split(s) in {time.monotonic() - job.started:.0f} s.", progress_line


def refuse(page, err: UserError, title: str):
    yield {page.status: banner("err", str(err)),
           page.progress: progress_html(Progress(stage="failed", message=str(err)))}
    raise gr.Error(str(err), print_exception=False, title=title)


def stopped_in_queue(page, s: Session):
    """Whether this event was stopped while it waited in Gradio's queue (Stop counted it there)."""
    if s.stop_queued <= 0:
        return False
    s.stop_queued -= 1
    return True


def stopped_before_start(page):
    p = Progress(stage="cancelled", message="stopped while waiting in the queue")
    yield {page.status: banner("warn", "Stopped before it started."), page.progress: progress_html(p)}


# ---- the handlers ----------------------------------------------------------------------------------------------

def run_pruning(page, *values):
    """Prune once with the set-up on the left; streams progress and returns the run's figures."""
    s: Session = values[-1]
    if stopped_in_queue(page, s):
        yield from stopped_before_start(page)
        return
    try:
        req = request(page, dict(zip(page.form, values[:-1])))
    except UserError as err:
        yield from refuse(page, err, "Cannot run")
    label = req.spec.label()
    yield from stream(page, s, lambda progress, cancel: prune(page, s, req, progress, cancel), label, run_summary,
                      spec=req.spec.to_dict())


def run_sweep(page, *values):
    """Prune once per tier split in `splits` (one job); the ternary plot fills in as splits finish."""
    s: Session = values[-1]
    if stopped_in_queue(page, s):
        yield from stopped_before_start(page)
        return
    try:
        splits = parse_splits(values[0])
        policy.check_sweep(len(splits), page.settings.public, page.settings.limits)
        base = request(page, dict(zip(page.form, values[1:-1]), pattern=RECIPE_PATTERN))
        requests = [replace(base, spec=base.spec.replace(ratios=r), save_dir=None, finetune=None) for r in splits]
    except UserError as err:
        yield from refuse(page, err, "Cannot sweep")

    def target(progress, cancel):
        for i, req in enumerate(requests):
            def tagged(event, i=i):
                progress({**event, "sweep": (i, len(requests))})
            record = prune(page, s, req, tagged, cancel)
            progress({"stage": "sweep_point", "record": record, "sweep": (i, len(requests))})
            if record.get("status") != "completed" or cancel.is_set():
                break

    yield from stream(page, s, target, f"sweep of {len(requests)} splits", sweep_summary,
                      spec=requests[0].spec.to_dict())


def stop(page, s: Session, request: gr.Request = None, explore=None):
    """Stop this tab's job, wherever it is: running, in the engine's line, or still in Gradio's own queue; and the
    tab's Explore job (a calibration, a re-plan and estimate, an exact reference) with it."""
    queued = queued_runs(page, request.session_hash) if request is not None else 0
    s.stop_queued = max(s.stop_queued, queued)  # each of those ends at once when its turn comes (a second
    # press counts the same waiting runs again, so it takes the larger count rather than adding)
    exploring = explore is not None and explore.stop()  # out of the engine's line, else it ends between windows
    if s.job is not None and s.job.running:
        s.job.stop()
        return banner("warn", "Stopping after the current step…")
    if exploring:
        return banner("warn", "Stopped the Explore tab's job.")
    if queued:
        return banner("warn", "Stopped while waiting in the queue.")
    return gr.skip()


def queued_runs(page, session_hash) -> int:
    """Engine jobs of one tab still waiting in Gradio's queue, where the engine's line cannot see them."""
    queue = getattr(page.demo, "_queue", None)
    waiting = getattr(queue, "event_queue_per_concurrency_id", {}).get("engine")
    return sum(1 for event in list(getattr(waiting, "queue", []))
               if event.session_hash == session_hash) if session_hash else 0


REQUEST = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request)


def for_visitor(page, fn, params: list[inspect.Parameter] | None = None, pass_request: bool = False):
    """`fn(*values)` as a Gradio handler whose signature is `params` (None: fn's own) then the event's gr.Request
    (which Gradio then passes last, and leaves out of the API). Before `fn` runs, the visitor who sent the event is
    set on the tab's state among the values (a Session or an ExploreState: whatever has a `visitor` field), so the
    jobs it starts take that visitor's share of the engine's line, whichever route the event came by."""
    if params is None:
        params = list(inspect.signature(fn).parameters.values())
    width = len(params)

    def handler(*values, request: gr.Request = None):
        # Gradio passes the request in the slot after fn's own parameters; a direct call may leave it out
        values, request = values[:width], (values[width] if len(values) > width else request)
        who = policy.visitor_of(request, page.settings.behind_proxy)
        for value in values:
            if hasattr(value, "visitor"):
                value.visitor = who
        yield from (fn(*values, request=request) if pass_request else fn(*values))
    handler.__signature__ = inspect.Signature([*params, REQUEST])
    handler.__annotations__ = {"request": gr.Request}
    handler.__doc__ = fn.__doc__
    return handler


def positional(n: int) -> list[inspect.Parameter]:
    """n unnamed handler parameters (a private listener's inputs)."""
    return [inspect.Parameter(f"value_{i}", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for i in range(n)]


def with_signature(fn, page, fields: dict):
    """`fn(page, *values)` as a Gradio handler. Gradio names API parameters (and their defaults) after the handler's
    signature: this one lists the form's fields, with the widgets' initial values as defaults, then the Session
    (and the event's request, for the visitor: `for_visitor`)."""
    params = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=c.value)
              for name, c in fields.items()]
    params.append(inspect.Parameter("s", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None))

    def call(*values):
        yield from fn(page, *values)
    call.__doc__ = fn.__doc__
    return for_visitor(page, call, params)


def engine_event(page) -> dict:
    """Listener options of a job. Its event starts at once (the handler waits in the engine's own line, showing its
    place there), so one tab's second click finds its first job and is refused; beyond max_waiting Gradio's queue
    holds them. trigger_mode "multiple": Run right after Stop starts the next run instead of being dropped."""
    return dict(concurrency_id="engine", concurrency_limit=page.settings.max_waiting + 1, show_progress="minimal",
                show_progress_on=[page.progress], trigger_mode="multiple")


def wire(page) -> None:
    form, session = page.form, page.session
    page.setup.run_btn.click(with_signature(run_pruning, page, form), [*form.values(), session], page.JOB_OUTPUTS,
                             api_name="run", **engine_event(page))
    page.sweep.button.click(with_signature(run_sweep, page, {"splits": page.sweep.splits, **form}),
                            [page.sweep.splits, *form.values(), session], page.JOB_OUTPUTS, api_name="sweep",
                            **engine_event(page))

    def stop_job(s: Session, xs, request: gr.Request = None):
        """Stop this tab's job: a run, a sweep, a recovery or an exploration."""
        return stop(page, s, request, xs)
    page.setup.stop_btn.click(stop_job, [session, page.explore.state], page.status, api_name="stop", **LIGHT)
    page.recover.stop_btn.click(stop_job, [session, page.explore.state], page.status, api_visibility="private",
                                **LIGHT)
