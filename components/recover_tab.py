"""The Recover tab: a finished run's pruned model fine-tuned in memory with its zeros held (engine/recover/pipeline.py),
the train and held-out loss drawn live, the perplexity before and after beside dense and magnitude. Stop ends after the
current step and keeps those weights; the run's record gets the recovery, so Compare and Past runs show it."""
from __future__ import annotations

import gradio as gr

from engine import run as engine_run
from engine.errors import UserError

from . import policy
from .jobs import Job
from .recover_view import DEFAULT_LR, loss_curve_figure, progressive_figure, recover_spec_from_form, recovery_html
from .registry import FINETUNE_DEFAULTS
from .results_tab import LIGHT
from .runner import MODELS, engine_event, for_visitor, refuse, stopped_before_start, stopped_in_queue, stream
from .session import Session

MODES = ["full", "LoRA"]
NOT_IN_MEMORY = ("the model in memory no longer holds this run's pruned weights (another run or recovery came "
                 "after it, or the server restarted): run it again, then press Recover")


class RecoverWidgets:
    """The Recover tab's widgets (page.recover), made by render: what its listeners and the other tabs read."""
    __slots__ = ("run", "steps", "lr", "mode", "rank", "button", "stop_btn", "loss_plot", "note", "progressive_plot")


def render(page) -> None:
    w = page.recover = RecoverWidgets()
    with gr.Tab("Recover", id="recover"):
        gr.Markdown("Fine-tune a finished run's pruned model with every pruned weight held at exactly 0: the loss "
                    "curve draws as it trains; Stop keeps the weights of the last finished step.",
                    elem_classes="note")
        with gr.Row(equal_height=True):
            w.run = gr.Dropdown([], label="Run to recover", interactive=True, scale=3)
            w.steps = gr.Number(FINETUNE_DEFAULTS.steps, precision=0, label="Steps",
                                min_width=90, scale=1)
            w.lr = gr.Number(FINETUNE_DEFAULTS.lr, label="Learning rate", min_width=110, scale=1)
            w.mode = gr.Radio(MODES, value=MODES[0], label="Fine-tune", min_width=140, scale=1)
            w.rank = gr.Number(8, precision=0, label="LoRA rank", min_width=90, scale=1,
                               visible=False)
        with gr.Row():
            w.button = gr.Button("Recover", variant="primary", scale=3, elem_id="recover-button")
            w.stop_btn = gr.Button("Stop", variant="stop", scale=1)
        w.loss_plot = gr.Plot(loss_curve_figure(None), show_label=False, elem_id="loss-curve")
        w.note = gr.HTML(recovery_html(None), elem_id="recover-note")
        w.progressive_plot = gr.Plot(progressive_figure(None), show_label=False, visible=False,
                                     elem_id="progressive-plot")


def show(page, record) -> dict:
    w = page.recover
    entries = (record or {}).get("progressive")
    return {w.note: recovery_html(record),
            w.loss_plot: loss_curve_figure(((record or {}).get("recovery") or {}).get("curve")),
            w.progressive_plot: gr.Plot(progressive_figure(entries), visible=bool(entries))}


def recover_run(page, s: Session, run_id: str, spec, progress, cancel) -> dict:
    """The engine's recovery of a run whose pruned weights the cached model still holds; the stored record gets
    the recovery block. Runs on the engine's turn (a Job)."""
    if MODELS.holds_run != run_id:
        raise UserError(NOT_IN_MEMORY)
    try:
        record = page.store.load(run_id)  # the whole record, also where the page shows it redacted
    except (OSError, ValueError):
        raise UserError("this run's record is no longer in the run store; run it again") from None
    record = engine_run.recover_run(record, spec, MODELS, progress=progress, cancel=cancel)
    warning = page.store.save_final(record)
    shown = policy.redact(record) if page.settings.public else record
    if warning:
        shown = dict(shown, store_warning=warning)
    s.add(shown)
    return shown


def recovery_summary(records: list, job: Job) -> tuple[str, str, str]:
    block = records[-1].get("recovery") or {}
    before, after = block.get("ppl_before"), block.get("ppl_after")
    ppl = f"; perplexity {before:.2f} → {after:.2f}" if before is not None and after is not None else ""
    line = f"{block.get('steps_done')} of {(block.get('settings') or {}).get('steps')} fine-tune steps"
    if block.get("status") == "cancelled":
        return "warn", f"Stopped after {line}: the weights of the last finished step are kept, zeros held{ppl}.", line
    return "ok", f"Recovered in {block.get('seconds') or 0:.1f} s: {line}, zeros held{ppl}.", line


def wire(page) -> None:
    w = page.recover
    def recover_clicked(s: Session, run_id, steps, lr, mode, lora_rank):
        """Fine-tune a finished run's pruned model (zeros held); streams the loss curve, then the run's figures."""
        if stopped_in_queue(page, s):
            yield from stopped_before_start(page)
            return
        try:
            record = s.get(run_id)
            if record is None:
                raise UserError("choose a finished run of this tab to recover (run one, or open one under Past runs)")
            if page.settings.public and not s.owns(run_id):  # on a local server every run is the user's own
                raise UserError("only the tab that ran this run can recover it: run it here, then press Recover")
            if record.get("status") != "completed":
                raise UserError(f"only a completed run can be recovered; this one is {record.get('status')}")
            if record.get("recovery"):
                raise UserError("this run was already fine-tuned; run it again to recover it with other settings")
            spec = recover_spec_from_form(steps, lr, mode, lora_rank, public=page.settings.public)
        except UserError as err:
            yield from refuse(page, err, "Cannot recover")
        yield {w.loss_plot: loss_curve_figure(None)}
        yield from stream(page, s, lambda progress, cancel: recover_run(page, s, run_id, spec, progress, cancel),
                          f"recovery of run #{s.number(run_id)}", recovery_summary)

    recover_inputs = [page.session, w.run, w.steps, w.lr, w.mode, w.rank]
    w.button.click(for_visitor(page, recover_clicked), recover_inputs,
                   page.JOB_OUTPUTS, api_name="recover", **engine_event(page))

    def mode_changed(mode):  # LoRA trains far fewer weights: its rank appears, and its own default learning rate
        return gr.update(visible=mode == "LoRA"), DEFAULT_LR["lora" if mode == "LoRA" else "full"]
    w.mode.change(mode_changed, w.mode, [w.rank, w.lr], queue=False,
                  show_progress="hidden")

    def pick(s: Session, run_id):
        return show(page, s.get(run_id))
    w.run.input(pick, [page.session, w.run], [w.note, w.loss_plot],
                api_visibility="private", **LIGHT)
