"""The Export tab: a run's record as JSON, the session's tables as CSV, and the matrices of the run shown."""
from __future__ import annotations

import gradio as gr

from . import policy, tables
from .results_tab import LIGHT
from .session import Session


class ExportWidgets:
    """The Export tab's widgets (page.export), made by render: what its listeners and the other tabs read."""
    __slots__ = ("run", "json_btn", "csv_btn", "files", "matrices_df")


def render(page) -> None:
    w = page.export = ExportWidgets()
    with gr.Tab("Export", id="export"):
        w.run = gr.Dropdown([], label="Run", interactive=True)
        with gr.Row():
            w.json_btn = gr.Button("Run record (JSON)")
            w.csv_btn = gr.Button("Tables (CSV)")
        w.files = gr.File(label="Downloads", file_count="multiple", interactive=False)
        gr.Markdown("This server does not save models; run the dashboard on your machine to keep one."
                    if page.settings.public else
                    "To keep the pruned model, give a folder under *Set-up › Advanced* before running: "
                    "the engine writes it there (with `results.json`) when the run completes.", elem_classes="note")
        w.matrices_df = gr.Dataframe(tables.matrices_table(None), label="Matrices of the run shown",
                                     interactive=False, max_height=360)


def wire(page) -> None:
    w = page.export
    def export_json(s: Session, run_id):
        record = s.get(run_id)
        if record is None:
            raise gr.Error("No run to export yet.", print_exception=False)
        return [tables.write_record_json(policy.redact(record) if page.settings.public else record)]

    def export_csv(s: Session, run_id):
        if not s.runs:
            raise gr.Error("No run to export yet.", print_exception=False)
        return tables.write_tables_csv(s.runs, s.get(run_id))

    w.json_btn.click(export_json, [page.session, w.run], w.files, api_name="export_json", **LIGHT)
    w.csv_btn.click(export_csv, [page.session, w.run], w.files, api_name="export_csv", **LIGHT)
