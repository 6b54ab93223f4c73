"""The Compare tab: every run of this browser tab in one table and one perplexity-vs-sparsity plot, and two runs'
layer maps and tier maps side by side."""
from __future__ import annotations

import gradio as gr

from engine.spec import spec_label

from . import figures, tables
from .results_tab import LIGHT, selection_for, tiermap_for
from .session import Session


class CompareWidgets:
    """The Compare tab's widgets (page.compare), made by render: what its listeners and the other tabs read."""
    __slots__ = ("runs_df", "plot", "run_a", "run_b", "heat_a", "heat_b", "layer", "module", "tier_a", "tier_b")


def render(page) -> None:
    w = page.compare = CompareWidgets()
    with gr.Tab("Compare", id="compare"):
        w.runs_df = gr.Dataframe(tables.runs_table([]), label="Runs of this session", interactive=False, wrap=True,
                                 max_height=320)
        gr.Markdown("Runs of earlier sessions: open them under *Past runs* and they join this list.",
                    elem_classes="note")
        w.plot = gr.Plot(figures.ppl_vs_sparsity([]), show_label=False)
        with gr.Row():
            w.run_a = gr.Dropdown([], label="Run A", interactive=True)
            w.run_b = gr.Dropdown([], label="Run B", interactive=True)
        with gr.Row():
            w.heat_a = gr.Plot(figures.layer_heatmap(None, title="Run A"), show_label=False)
            w.heat_b = gr.Plot(figures.layer_heatmap(None, title="Run B"), show_label=False)
        with gr.Row():
            w.layer = gr.Dropdown([], label="Decoder layer", interactive=True)
            w.module = gr.Dropdown([], label="Module", interactive=True)
        with gr.Row():
            w.tier_a = gr.Plot(figures.tier_map_figure(None)[0], show_label=False)
            w.tier_b = gr.Plot(figures.tier_map_figure(None)[0], show_label=False)


def show(page, s: Session, choices) -> dict:
    """The session's runs; runs A and B are its last two."""
    w = page.compare
    last = choices[-1][1] if choices else None
    prev = choices[-2][1] if len(choices) > 1 else last
    return {w.runs_df: tables.runs_table(s.runs), w.plot: figures.ppl_vs_sparsity(s.runs),
            w.run_a: gr.Dropdown(choices=choices, value=prev), w.run_b: gr.Dropdown(choices=choices, value=last)}


def compare(s: Session, a, b, layer, module):
    ra, rb = s.get(a), s.get(b)
    layers, layer, modules, module = selection_for(ra or rb, layer, module)
    fa, _ = tiermap_for(ra, layer, module)
    fb, _ = tiermap_for(rb, layer, module)

    def label(run_id, record):
        return f"Run #{s.number(run_id)}: {spec_label(record.get('spec'))}" if record else None
    return (figures.layer_heatmap(ra, title=label(a, ra)), figures.layer_heatmap(rb, title=label(b, rb)),
            gr.Dropdown(choices=layers, value=layer), gr.Dropdown(choices=modules, value=module), fa, fb)


def wire(page) -> None:
    w = page.compare
    gr.on([w.run_a.change, w.run_b.change, w.layer.input, w.module.input], compare,
          [page.session, w.run_a, w.run_b, w.layer, w.module],
          [w.heat_a, w.heat_b, w.layer, w.module, w.tier_a, w.tier_b],
          api_visibility="private", **LIGHT)
