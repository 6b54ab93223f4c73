"""The Sweep tab: the set-up on the left run once per tier split, as one job; the triangle fills in as splits
finish. The Run sweep button is wired with Run in components/runner.py (one job, one queue)."""
from __future__ import annotations

import gradio as gr

from . import figures
from .session import grid_splits

DEFAULT_SWEEP = "0.35/0.45/0.20\n0.60/0.20/0.20\n0.20/0.60/0.20\n0.20/0.20/0.60\n0.40/0.40/0.20\n0.30/0.30/0.40"


class SweepWidgets:
    """The Sweep tab's widgets (page.sweep), made by render: what its listeners and the other tabs read."""
    __slots__ = ("splits", "grid_step", "grid_btn", "button", "ternary")


def render(page) -> None:
    w = page.sweep = SweepWidgets()
    with gr.Tab("Sweep", id="sweep"):
        gr.Markdown("Runs the set-up on the left once per tier split, as one job (pattern: three-tier). "
                    "The model stays loaded and the baselines are computed once. Points appear on the "
                    "triangle as they finish; Stop ends the sweep after the current layer.", elem_classes="note")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=220):
                w.splits = gr.Textbox(DEFAULT_SWEEP, lines=10, max_lines=30,
                                      label="Splits dense / 2:4 / top-K, one per line")
                with gr.Row():
                    w.grid_step = gr.Dropdown([0.5, 0.25, 0.2, 0.1], value=0.25, label="Grid step", min_width=110)
                    w.grid_btn = gr.Button("Fill grid", size="sm", min_width=90)
                w.button = gr.Button("Run sweep", variant="primary")
            with gr.Column(scale=3):
                w.ternary = gr.Plot(figures.ternary_sweep([]), show_label=False)


def wire(page) -> None:
    w = page.sweep
    w.grid_btn.click(grid_splits, w.grid_step, w.splits, queue=False, api_visibility="private")
