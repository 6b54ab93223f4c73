"""The dashboard: set up a pruning run, watch it layer by layer, read where the zeros went, compare runs.

    python app.py [--port 7860] [--host 127.0.0.1] [--share]

On a Hugging Face Space this file is the entry point (`demo` at top level). The page is a thin layout over the
engine: every callback below reads widgets, calls engine.run or a figure builder, and returns what to show.
"""
from __future__ import annotations

import argparse
import inspect
import time
from dataclasses import replace

import gradio as gr

from components import figures, tables
from components.jobs import Job, Progress, progress_html
from components.layout import CSS_PATH, HEATMAP_CLICK_JS, banner, header_html, theme
from components.session import (DEVICE_CHOICES, DTYPE_CHOICES, EMBEDDED, EVAL_CHOICES, METHOD_CHOICES,
                                MODEL_PRESETS, PATTERN_CHOICES, SCOPE_CHOICES, SOURCE_CHOICES, WITHIN_CHOICES,
                                Session, grid_splits, nominal_text, parse_splits, rebalance, request_from_form)
from engine.errors import UserError
from engine.run import ModelCache, run
from engine.spec import SEED_RATIOS

MODELS = ModelCache()  # one model in memory per process; restored to dense weights before every run
ENGINE = dict(concurrency_id="engine", concurrency_limit=1)  # one heavy job at a time; others queue
LIGHT = dict(concurrency_limit=None)                          # figure redraws never wait behind a run
VIEWS = ["realised sparsity", "tier shares"]
DEFAULT_SWEEP = "0.35/0.45/0.20\n0.60/0.20/0.20\n0.20/0.60/0.20\n0.20/0.20/0.60\n0.40/0.40/0.20\n0.30/0.30/0.40"

with gr.Blocks(title="LLM sparsity explorer") as demo:
    session = gr.State(lambda: Session())  # a fresh Session per browser tab
    gr.HTML(header_html())
    with gr.Row(equal_height=False):
        # ---- set-up ---------------------------------------------------------------------------------------------
        with gr.Column(scale=4, min_width=340, elem_id="setup"):
            gr.HTML("<div class='section-title'>Model</div>")
            model = gr.Dropdown(MODEL_PRESETS, value=EMBEDDED, label="Preset")
            model_path = gr.Textbox(label="…or a hub id, local folder or .gguf file (overrides the preset)",
                                    placeholder="e.g. Qwen/Qwen2.5-0.5B  ·  ~/models/llama  ·  model.Q4_1.gguf")
            with gr.Row():
                device = gr.Dropdown(DEVICE_CHOICES, value="auto", label="Device", min_width=100)
                dtype = gr.Dropdown(DTYPE_CHOICES, value="auto", label="dtype", min_width=100)
            gr.HTML("<div class='section-title'>Method and pattern</div>")
            method = gr.Radio(METHOD_CHOICES, value="wanda", label="Importance (method)")
            pattern = gr.Radio(PATTERN_CHOICES, value="three_tier", label="Pattern")
            with gr.Group(visible=False) as unstructured_box:
                sparsity = gr.Slider(0, 0.95, value=0.5, step=0.01, label="Sparsity")
            with gr.Row(visible=False) as nm_box:
                n = gr.Number(2, precision=0, label="N (kept)", minimum=0)
                m = gr.Number(4, precision=0, label="M (group)", minimum=1)
            with gr.Column(visible=True) as tier_box:
                gr.Markdown("Tier split of the blocks — moving one slider rescales the other two in proportion, "
                            "so the three always sum to 1.", elem_classes="note")
                ratio_dense = gr.Slider(0, 1, value=SEED_RATIOS[0], step=0.01, label="dense blocks (all kept)")
                ratio_24 = gr.Slider(0, 1, value=SEED_RATIOS[1], step=0.01, label="2:4 blocks (half kept)")
                ratio_topk = gr.Slider(0, 1, value=SEED_RATIOS[2], step=0.01, label="top-K blocks (K kept)")
                seed_btn = gr.Button("Seed preset 0.35 / 0.45 / 0.20", size="sm")
                with gr.Row():
                    block = gr.Number(16, precision=0, minimum=4, step=4, label="Block size B")
                    keep = gr.Number(15, precision=0, minimum=0, label="K per top-K block")
                tier_scope = gr.Radio(SCOPE_CHOICES, value="matrix", label="Rank blocks across")
                within_block = gr.Radio(WITHIN_CHOICES, value="score", label="Inside 2:4 / top-K blocks keep by")
            nominal = gr.Markdown(nominal_text("three_tier", 0.5, 2, 4, *SEED_RATIOS, 16, 15), elem_id="nominal")
            with gr.Accordion("Calibration data", open=False) as calib_box:
                calib = gr.Dropdown(SOURCE_CHOICES, value="auto", label="Source")
                calib_path = gr.Textbox(label="Path (.txt, .jsonl, .parquet or a WikiText folder)", visible=False)
                with gr.Row():
                    nsamples = gr.Number(32, precision=0, minimum=1, label="Samples", info="paper: 128")
                    seqlen = gr.Number(512, precision=0, minimum=2, label="Tokens per sample",
                                       info="blank: model's context, ≤ 2048")
            with gr.Accordion("Evaluation", open=False):
                eval_source = gr.Dropdown(EVAL_CHOICES, value="auto", label="Perplexity on")
                eval_path = gr.Textbox(label="Path (.txt, .jsonl, .parquet or a WikiText folder)", visible=False)
                eval_windows = gr.Number(32, precision=0, minimum=1, label="Windows", info="blank: every window (the paper)")
                baselines = gr.Checkbox(True, label="Also compute dense and magnitude baselines (cached)")
            with gr.Accordion("Advanced", open=False):
                reconstruct = gr.Checkbox(False, label="OBS weight update after choosing the mask (magnitude / Wanda)")
                seed = gr.Number(0, precision=0, label="Seed (calibration sampling)")
                trust_remote_code = gr.Checkbox(False, label="Trust remote code of hub models")
                save_dir = gr.Textbox(label="Save the pruned model to (local folder, optional)",
                                      placeholder="e.g. ./out/smollm2-three-tier")
                overwrite = gr.Checkbox(False, label="Overwrite that folder if it is not empty")
            with gr.Row(elem_id="run-buttons"):
                run_btn = gr.Button("Run", variant="primary", scale=3)
                stop_btn = gr.Button("Stop", variant="stop", scale=1)

        # ---- results --------------------------------------------------------------------------------------------
        with gr.Column(scale=9):
            status = gr.HTML("", elem_id="status")
            progress = gr.HTML(progress_html(None), elem_id="progress")
            with gr.Tabs():
                with gr.Tab("Results"):
                    shown_run = gr.Dropdown([], value=None, label="Run shown", interactive=True)
                    with gr.Row(equal_height=False):
                        with gr.Column(scale=3, min_width=320):
                            overview = gr.HTML(tables.overview_html(None), elem_id="overview")
                        with gr.Column(scale=2, min_width=280):
                            ppl_plot = gr.Plot(figures.ppl_bars(None), show_label=False)
                    heat_view = gr.Radio(VIEWS, value=VIEWS[0], label="Colour the layer map by", container=False)
                    heatmap = gr.Plot(figures.layer_heatmap(None), show_label=False, elem_id="layer-heatmap")
                    gr.Markdown("Click a cell — or choose a layer and a module — to open that matrix's block tier map.",
                                elem_classes="note")
                    with gr.Row():
                        layer_dd = gr.Dropdown([], label="Decoder layer", interactive=True)
                        module_dd = gr.Dropdown([], label="Module", interactive=True)
                    tiermap = gr.Plot(figures.tier_map_figure(None)[0], show_label=False, elem_id="tier-map")
                    tiernote = gr.Markdown("", elem_classes="note")
                    heatmap_click = gr.Textbox(visible="hidden", elem_id="heatmap-click")
                with gr.Tab("Compare"):
                    runs_df = gr.Dataframe(tables.runs_table([]), label="Runs of this session", interactive=False,
                                           wrap=True, max_height=320)
                    compare_plot = gr.Plot(figures.ppl_vs_sparsity([]), show_label=False)
                    with gr.Row():
                        run_a = gr.Dropdown([], label="Run A", interactive=True)
                        run_b = gr.Dropdown([], label="Run B", interactive=True)
                    with gr.Row():
                        heat_a = gr.Plot(figures.layer_heatmap(None, title="Run A"), show_label=False)
                        heat_b = gr.Plot(figures.layer_heatmap(None, title="Run B"), show_label=False)
                    with gr.Row():
                        cmp_layer = gr.Dropdown([], label="Decoder layer", interactive=True)
                        cmp_module = gr.Dropdown([], label="Module", interactive=True)
                    with gr.Row():
                        tier_a = gr.Plot(figures.tier_map_figure(None)[0], show_label=False)
                        tier_b = gr.Plot(figures.tier_map_figure(None)[0], show_label=False)
                with gr.Tab("Sweep"):
                    gr.Markdown("Runs the set-up on the left once per tier split, as one job (pattern: three-tier). "
                                "The model stays loaded and the baselines are computed once. Points appear on the "
                                "triangle as they finish; Stop ends the sweep after the current layer.",
                                elem_classes="note")
                    with gr.Row(equal_height=False):
                        with gr.Column(scale=1, min_width=220):
                            sweep_text = gr.Textbox(DEFAULT_SWEEP, lines=10, max_lines=30,
                                                    label="Splits dense / 2:4 / top-K, one per line")
                            with gr.Row():
                                grid_step = gr.Dropdown([0.5, 0.25, 0.2, 0.1], value=0.25, label="Grid step", min_width=110)
                                grid_btn = gr.Button("Fill grid", size="sm", min_width=90)
                            sweep_btn = gr.Button("Run sweep", variant="primary")
                        with gr.Column(scale=3):
                            ternary = gr.Plot(figures.ternary_sweep([]), show_label=False)
                with gr.Tab("Export"):
                    export_run = gr.Dropdown([], label="Run", interactive=True)
                    with gr.Row():
                        json_btn = gr.Button("Run record (JSON)")
                        csv_btn = gr.Button("Tables (CSV)")
                    files = gr.File(label="Downloads", file_count="multiple", interactive=False)
                    gr.Markdown("To keep the pruned model, give a folder under *Set-up › Advanced* before running: "
                                "the engine writes it there (with `results.json`) when the run completes. "
                                "Local use only.", elem_classes="note")
                    matrices_df = gr.Dataframe(tables.matrices_table(None), label="Matrices of the run shown",
                                               interactive=False, max_height=360)

    # The set-up form, named as the API (gradio_client keyword arguments) and request_from_form call its fields.
    FORM = dict(model=model, model_path=model_path, device=device, dtype=dtype, method=method, pattern=pattern,
                sparsity=sparsity, n=n, m=m, ratio_dense=ratio_dense, ratio_24=ratio_24, ratio_topk=ratio_topk,
                block=block, keep=keep, tier_scope=tier_scope, within_block=within_block, calib=calib,
                calib_path=calib_path, nsamples=nsamples, seqlen=seqlen, eval_source=eval_source, eval_path=eval_path,
                eval_windows=eval_windows, baselines=baselines, reconstruct=reconstruct, seed=seed,
                trust_remote_code=trust_remote_code, save_dir=save_dir, overwrite=overwrite)
    SESSION_OUTPUTS = [runs_df, compare_plot, ternary, shown_run, run_a, run_b, export_run]
    RESULT_OUTPUTS = [overview, ppl_plot, heatmap, heat_view, layer_dd, module_dd, tiermap, tiernote, matrices_df]
    JOB_OUTPUTS = [status, progress, *RESULT_OUTPUTS, *SESSION_OUTPUTS]


# ---- drawing ---------------------------------------------------------------------------------------------------

def heatmap_for(record, view):
    if view == VIEWS[1] and record and record.get("spec", {}).get("pattern") == "three_tier":
        return figures.tier_share_heatmaps(record)
    return figures.layer_heatmap(record)


def tiermap_for(record, layer, module):
    entry = figures.find_matrix(record, layer, module)
    block = (record or {}).get("spec", {}).get("block", 16)
    return figures.tier_map_figure(entry, block=block)


def selection_for(record, layer=None, module=None):
    """Layer/module choices of a record, keeping the current choice when the record has it."""
    n_layers = (record or {}).get("n_layers") or 0
    modules = figures.module_order(record or {})
    layer = layer if layer is not None and int(layer) < n_layers else (0 if n_layers else None)
    module = module if module in modules else (modules[0] if modules else None)
    return ([(f"layer {i}", i) for i in range(n_layers)], layer, modules, module)


def show_record(s: Session, record, layer=None, module=None, view=None) -> dict:
    """Everything the Results tab shows for one record."""
    s.shown = record
    layers, layer, modules, module = selection_for(record, layer, module)
    three_tier = bool(record) and record.get("spec", {}).get("pattern") == "three_tier"
    view = view if three_tier else VIEWS[0]
    fig, note = tiermap_for(record, layer, module)
    return {overview: tables.overview_html(record), ppl_plot: figures.ppl_bars(record),
            heatmap: heatmap_for(record, view), heat_view: gr.Radio(value=view, interactive=three_tier),
            layer_dd: gr.Dropdown(choices=layers, value=layer), module_dd: gr.Dropdown(choices=modules, value=module),
            tiermap: fig, tiernote: note, matrices_df: tables.matrices_table(record)}


def show_session(s: Session) -> dict:
    """The runs table, the plots over all runs, and the run pickers (Compare: the last two runs)."""
    choices = s.run_choices()
    last = len(s.runs) - 1 if s.runs else None
    prev = len(s.runs) - 2 if len(s.runs) > 1 else last
    return {runs_df: tables.runs_table(s.runs), compare_plot: figures.ppl_vs_sparsity(s.runs),
            ternary: figures.ternary_sweep(s.runs), shown_run: gr.Dropdown(choices=choices, value=last),
            run_a: gr.Dropdown(choices=choices, value=prev), run_b: gr.Dropdown(choices=choices, value=last),
            export_run: gr.Dropdown(choices=choices, value=last)}


# ---- the heavy job -----------------------------------------------------------------------------------------------

def _with_form_signature(**leading: gr.components.Component):
    """Gradio names API parameters (and their defaults) after the handler's signature. The handlers take the form
    as *values, so give them a signature that lists its fields with the widgets' initial values as defaults."""
    def wrap(fn):
        fields = [*leading.items(), *FORM.items()]
        params = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=c.value) for name, c in fields]
        params.append(inspect.Parameter("s", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None))  # the Session
        fn.__signature__ = inspect.Signature(params)
        return fn
    return wrap


def stream(s: Session, target, spec_dict: dict, label: str, sweep: bool = False):
    """Start `target` on a worker thread and stream progress, the filling heatmap and finished runs to the page."""
    if s.job is not None and s.job.running:
        raise gr.Error("This tab already has a job running; Stop it first.", print_exception=False)
    job = s.job = Job(target, name=label).start()
    p = Progress()
    live = {"spec": spec_dict, "matrices": p.matrices, "n_layers": None, "status": "running", "ppl": {}}
    s.shown = live
    yield {status: banner("info", f"Running {label}…"), progress: progress_html(p, 0.0)}
    finished = []
    try:
        for events in job.watch():
            out = {}
            for event in events:
                if event.get("stage") == "sweep_point":  # a sweep finished one split
                    finished.append(event["record"])
                    s.runs.append(event["record"])
                    out.update(show_session(s))
                    p.matrices.clear()
                p.update(event)
            out[progress] = progress_html(p, time.monotonic() - job.started)
            if p.new_layers:
                first = live["n_layers"] is None
                live["n_layers"] = p.n_layers
                out[heatmap] = heatmap_for(live, s.view)
                if first:
                    out.update(show_record(s, live, view=s.view))
                    out.pop(matrices_df)
                p.new_layers = 0
            yield out
    finally:
        if job.running:  # the page went away or the event was cancelled: stop the engine at the next layer
            job.stop()
    if job.error:
        p.stage, p.message = "failed", job.error
        out = {status: banner("err", job.error), progress: progress_html(p)}
        if finished:
            out.update(show_record(s, finished[-1], view=s.view))
        yield out
        raise gr.Error(job.error, print_exception=False, title="Run failed" if job.user_error else "Internal error")
    records = finished if sweep else [job.result]
    if not sweep:
        s.runs.append(job.result)
    last = records[-1] if records else None
    cancelled = any(r.get("status") == "cancelled" for r in records) or job.cancel.is_set()
    p.stage = "cancelled" if cancelled else "done"
    if cancelled:
        message = ((last or {}).get("message") or "stopped").rstrip(".")
        text = f"Stopped: {message}." if not sweep else f"Sweep stopped after {len(records)} split(s). {message}."
        kind = "warn"
    else:
        secs = tables.total_seconds(last) if last else None
        text = (f"Done: {len(records)} split(s) in {time.monotonic() - job.started:.0f} s." if sweep else
                f"Done in {secs:.1f} s: realised sparsity {last['sparsity']:.2%}"
                + (f", perplexity {last['ppl']['pruned']:.3f}" if last["ppl"].get("pruned") else "") + ".")
        kind = "ok"
    p.message = (f"{len(records)} split(s) finished" if sweep else
                 f"{(last or {}).get('layers_done')} of {(last or {}).get('n_layers')} decoder layers pruned")
    out = {status: banner(kind, text), progress: progress_html(p, time.monotonic() - job.started)}
    if last:
        out.update(show_record(s, last, s.shown_layer, s.shown_module, view=s.view))
    out.update(show_session(s))
    yield out


@_with_form_signature()
def run_pruning(*values):
    """Prune once with the set-up on the left; streams progress and returns the run's figures."""
    s: Session = values[-1]
    try:
        request = request_from_form(**dict(zip(FORM, values[:-1])))
    except UserError as err:
        yield {status: banner("err", str(err)), progress: progress_html(Progress(stage="failed", message=str(err)))}
        raise gr.Error(str(err), print_exception=False, title="Cannot run")
    label = figures.run_label({"spec": request.spec.to_dict()})
    yield from stream(s, lambda progress, cancel: run(request, progress=progress, cancel=cancel, models=MODELS),
                      request.spec.to_dict(), label)


@_with_form_signature(splits=sweep_text)
def run_sweep(*values):
    """Prune once per tier split in `splits` (one job); the ternary plot fills in as splits finish."""
    s: Session = values[-1]
    try:
        splits = parse_splits(values[0])
        form = dict(zip(FORM, values[1:-1]), pattern="three_tier")
        base = request_from_form(**form)
        requests = [replace(base, spec=base.spec.replace(ratios=r), save_dir=None) for r in splits]
    except UserError as err:
        yield {status: banner("err", str(err)), progress: progress_html(Progress(stage="failed", message=str(err)))}
        raise gr.Error(str(err), print_exception=False, title="Cannot sweep")

    def target(progress, cancel):
        for i, request in enumerate(requests):
            def tagged(event, i=i):
                progress({**event, "sweep": (i, len(requests))})
            record = run(request, progress=tagged, cancel=cancel, models=MODELS)
            progress({"stage": "sweep_point", "record": record, "sweep": (i, len(requests))})
            if record.get("status") != "completed" or cancel.is_set():
                break

    yield from stream(s, target, requests[0].spec.to_dict(), f"sweep of {len(requests)} splits", sweep=True)


def stop(s: Session):
    if s.job is not None and s.job.running:
        s.job.stop()
        return banner("warn", "Stopping after the current decoder layer…")
    return gr.skip()


# ---- wiring ------------------------------------------------------------------------------------------------------

def _visibility(method_, pattern_, reconstruct_):
    uses_calib = method_ != "magnitude" or bool(reconstruct_)
    return (gr.Group(visible=pattern_ == "unstructured"), gr.Row(visible=pattern_ == "nm"),
            gr.Column(visible=pattern_ == "three_tier"), gr.Accordion(visible=uses_calib))


with demo:
    for trigger in (method.change, pattern.change, reconstruct.change):
        trigger(_visibility, [method, pattern, reconstruct], [unstructured_box, nm_box, tier_box, calib_box],
                queue=False, show_progress="hidden")

    RATIOS = [ratio_dense, ratio_24, ratio_topk]
    for i, slider in enumerate(RATIOS):
        slider.input(lambda a, b, c, i=i: rebalance(i, (a, b, c)), RATIOS, RATIOS, queue=False,
                     show_progress="hidden", trigger_mode="always_last")
    seed_btn.click(lambda: SEED_RATIOS, None, RATIOS, queue=False, show_progress="hidden")
    NOMINAL_INPUTS = [pattern, sparsity, n, m, ratio_dense, ratio_24, ratio_topk, block, keep]
    gr.on([c.change for c in NOMINAL_INPUTS], nominal_text, NOMINAL_INPUTS, nominal, queue=False, show_progress="hidden")
    calib.change(lambda c: gr.Textbox(visible=c == "path"), calib, calib_path, queue=False, show_progress="hidden")
    eval_source.change(lambda c: gr.Textbox(visible=c == "path"), eval_source, eval_path, queue=False, show_progress="hidden")

    run_btn.click(run_pruning, [*FORM.values(), session], JOB_OUTPUTS, api_name="run", show_progress="minimal",
                  show_progress_on=[progress], **ENGINE)
    sweep_btn.click(run_sweep, [sweep_text, *FORM.values(), session], JOB_OUTPUTS, api_name="sweep", show_progress="minimal",
                    show_progress_on=[progress], **ENGINE)
    stop_btn.click(stop, session, status, api_name="stop", **LIGHT)
    grid_btn.click(grid_splits, grid_step, sweep_text, queue=False, api_visibility="private")

    def _pick_run(s: Session, index):
        return show_record(s, s.get(index), view=s.view)
    shown_run.input(_pick_run, [session, shown_run], RESULT_OUTPUTS, api_visibility="private", **LIGHT)

    def _view(s: Session, view):
        s.view = view
        return heatmap_for(s.shown, view)
    heat_view.input(_view, [session, heat_view], heatmap, api_visibility="private", **LIGHT)

    def _tier(s: Session, layer, module):
        s.shown_layer, s.shown_module = layer, module
        return tiermap_for(s.shown, layer, module)
    gr.on([layer_dd.input, module_dd.input], _tier, [session, layer_dd, module_dd], [tiermap, tiernote],
          api_name="tier_map", **LIGHT)

    def _click(s: Session, text):
        """'layer|module|t' from the heatmap click script -> that matrix's tier map."""
        try:
            layer, module = text.split("|")[:2]
            layer = int(float(layer))
        except (AttributeError, ValueError):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        s.shown_layer, s.shown_module = layer, module
        fig, note = tiermap_for(s.shown, layer, module)
        return gr.Dropdown(value=layer), gr.Dropdown(value=module), fig, note
    heatmap_click.change(_click, [session, heatmap_click], [layer_dd, module_dd, tiermap, tiernote],
                        api_visibility="private", **LIGHT)

    def _compare(s: Session, a, b, layer, module):
        ra, rb = s.get(a), s.get(b)
        ref = ra or rb
        layers, layer, modules, module = selection_for(ref, layer, module)
        fa, na = tiermap_for(ra, layer, module)
        fb, nb = tiermap_for(rb, layer, module)
        label = lambda i, r: f"Run #{int(i) + 1}: {figures.run_label(r)}" if r else None
        return (figures.layer_heatmap(ra, title=label(a, ra)), figures.layer_heatmap(rb, title=label(b, rb)),
                gr.Dropdown(choices=layers, value=layer), gr.Dropdown(choices=modules, value=module), fa, fb)
    gr.on([run_a.change, run_b.change, cmp_layer.input, cmp_module.input], _compare,
          [session, run_a, run_b, cmp_layer, cmp_module], [heat_a, heat_b, cmp_layer, cmp_module, tier_a, tier_b],
          api_visibility="private", **LIGHT)

    def _export_json(s: Session, index):
        record = s.get(index)
        if record is None:
            raise gr.Error("No run to export yet.", print_exception=False)
        return [tables.write_record_json(record)]
    json_btn.click(_export_json, [session, export_run], files, api_name="export_json", **LIGHT)

    def _export_csv(s: Session, index):
        if not s.runs:
            raise gr.Error("No run to export yet.", print_exception=False)
        return tables.write_tables_csv(s.runs, s.get(index))
    csv_btn.click(_export_csv, [session, export_run], files, api_name="export_csv", **LIGHT)

    demo.load(None, js=HEATMAP_CLICK_JS)

demo.queue(default_concurrency_limit=4)

LAUNCH_OPTIONS = dict(theme=theme(), css_paths=[CSS_PATH], footer_links=["api", "gradio"])


def main(argv=None):
    ap = argparse.ArgumentParser(description="LLM sparsity explorer (Gradio dashboard)")
    ap.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    ap.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; 0.0.0.0 to serve a network)")
    ap.add_argument("--share", action="store_true", help="make a temporary public gradio.live link (off by default)")
    args = ap.parse_args(argv)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **LAUNCH_OPTIONS)


if __name__ == "__main__":
    main()
