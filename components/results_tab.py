"""The Results tab: one run's overview and perplexity, its per-layer heatmap, and the block tier map of the matrix
chosen there (a click on a heatmap cell opens it)."""
from __future__ import annotations

import re

import gradio as gr

from . import figures, tables
from .registry import block_pattern
from .session import Session
from .zero_shot import zero_shot_figure

VIEWS = ["realised sparsity", "tier shares"]
LIGHT = dict(concurrency_limit=None)  # figure redraws never wait behind a run


def heatmap_for(record, view):
    if view == VIEWS[1] and record and block_pattern(record.get("spec", {}).get("pattern")):
        return figures.tier_share_heatmaps(record)
    return figures.layer_heatmap(record)


LAYER_INDEX = re.compile(r"\d{1,6}(\.0*)?", re.ASCII)  # what the click relay and the layer dropdown send


def layer_index(value) -> int | None:
    """A decoder layer index as a client sends it (3, "3", "3.0"); None for anything else: a raw event may carry
    any text ("1e309", "nan", 10**400), which must never reach int() or a JSON encoder."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < 10**6 else None
    text = value if isinstance(value, str) else repr(value) if isinstance(value, float) else ""
    return int(float(text)) if LAYER_INDEX.fullmatch(text.strip()) else None


def tiermap_for(record, layer, module):
    entry = figures.find_matrix(record, layer_index(layer), module if isinstance(module, str) else None)
    block = (record or {}).get("spec", {}).get("block", 16)
    return figures.tier_map_figure(entry, block=block)


def selection_for(record, layer=None, module=None):
    """Layer/module choices of a record, keeping the current choice when the record has it."""
    n_layers = (record or {}).get("n_layers") or 0
    modules = figures.module_order(record or {})
    layer = layer_index(layer)
    layer = layer if layer is not None and layer < n_layers else (0 if n_layers else None)
    module = module if module in modules else (modules[0] if modules else None)
    return ([(f"layer {i}", i) for i in range(n_layers)], layer, modules, module)


class ResultsWidgets:
    """The Results tab's widgets (page.results), made by render: what its listeners and the other tabs read."""
    __slots__ = ("shown_run", "overview", "ppl_plot", "zero_shot_plot", "heat_view", "heatmap", "layer_dd", "module_dd",
                 "tiermap", "tiernote", "heatmap_click")


def render(page) -> None:
    w = page.results = ResultsWidgets()
    with gr.Tab("Results", id="results"):
        w.shown_run = gr.Dropdown([], value=None, label="Run shown", interactive=True)
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=320):
                w.overview = gr.HTML(tables.overview_html(None), elem_id="overview")
            with gr.Column(scale=2, min_width=280):
                w.ppl_plot = gr.Plot(figures.ppl_bars(None), show_label=False)
        # zero-shot accuracy per task (CLI --eval_zero_shot / engine RunRequest.zero_shot_tasks), when present
        w.zero_shot_plot = gr.Plot(zero_shot_figure(None), show_label=False, visible=False)
        w.heat_view = gr.Radio(VIEWS, value=VIEWS[0], label="Colour the layer map by", container=False)
        w.heatmap = gr.Plot(figures.layer_heatmap(None), show_label=False, elem_id="layer-heatmap")
        gr.Markdown("Click a cell — or choose a layer and a module — to open that matrix's block tier map.",
                    elem_classes="note")
        with gr.Row():
            w.layer_dd = gr.Dropdown([], label="Decoder layer", interactive=True)
            w.module_dd = gr.Dropdown([], label="Module", interactive=True)
        w.tiermap = gr.Plot(figures.tier_map_figure(None)[0], show_label=False, elem_id="tier-map")
        w.tiernote = gr.Markdown("", elem_classes="note")
        w.heatmap_click = gr.Textbox(visible="hidden", elem_id="heatmap-click")


def show(page, s: Session, record, layer=None, module=None, view=None) -> dict:
    """What this tab shows for one record (and the session remembers it as the record shown)."""
    w = page.results
    s.shown = record
    layers, layer, modules, module = selection_for(record, layer, module)
    blocks = bool(record) and block_pattern(record.get("spec", {}).get("pattern"))
    view = view if blocks else VIEWS[0]
    fig, note = tiermap_for(record, layer, module)
    has_zero_shot = bool(record) and bool(record.get("zero_shot") or record.get("zero_shot_dense"))
    return {w.overview: tables.overview_html(record), w.ppl_plot: figures.ppl_bars(record),
            w.zero_shot_plot: gr.Plot(zero_shot_figure(record), visible=has_zero_shot),
            w.heatmap: heatmap_for(record, view), w.heat_view: gr.Radio(value=view, interactive=blocks),
            w.layer_dd: gr.Dropdown(choices=layers, value=layer),
            w.module_dd: gr.Dropdown(choices=modules, value=module), w.tiermap: fig, w.tiernote: note}


def wire(page) -> None:
    w = page.results
    session = page.session

    def pick_run(s: Session, run_id):
        return page.show_record(s, s.get(run_id), view=s.view)
    w.shown_run.input(pick_run, [session, w.shown_run], page.RESULT_OUTPUTS, api_visibility="private",
                      **LIGHT)

    def view(s: Session, choice):
        s.view = choice
        return heatmap_for(s.shown, choice)
    w.heat_view.input(view, [session, w.heat_view], w.heatmap, api_visibility="private", **LIGHT)

    def tier(s: Session, layer, module):
        s.shown_layer, s.shown_module = layer_index(layer), module if isinstance(module, str) else None
        return tiermap_for(s.shown, layer, module)
    gr.on([w.layer_dd.input, w.module_dd.input], tier, [session, w.layer_dd, w.module_dd],
          [w.tiermap, w.tiernote], api_name="tier_map", **LIGHT)

    def click(s: Session, text):
        """'layer|module|t' from the heatmap click script -> that matrix's tier map."""
        parts = text.split("|") if isinstance(text, str) and len(text) < 1000 else []
        layer, module = (layer_index(parts[0]), parts[1]) if len(parts) >= 2 else (None, None)
        if layer is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        s.shown_layer, s.shown_module = layer, module
        fig, note = tiermap_for(s.shown, layer, module)
        return gr.Dropdown(value=layer), gr.Dropdown(value=module), fig, note
    w.heatmap_click.change(click, [session, w.heatmap_click],
                           [w.layer_dd, w.module_dd, w.tiermap, w.tiernote],
                           api_visibility="private", **LIGHT)
