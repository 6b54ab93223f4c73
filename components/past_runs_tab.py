"""The Past runs tab: every run the server has recorded (components/history.py over the run store), newest first;
opening one shows it under Results and adds it to this tab's runs."""
from __future__ import annotations

import gradio as gr

from engine.errors import UserError

from . import tables
from .results_tab import LIGHT
from .session import Session


class PastRunsWidgets:
    """The Past runs tab's widgets (page.past_runs), made by render: what its listeners and the other tabs read."""
    __slots__ = ("pick", "refresh", "table")


def render(page) -> None:
    w = page.past_runs = PastRunsWidgets()
    with gr.Tab("Past runs", id="past"):
        gr.Markdown("Every run this server has recorded — completed, stopped, failed, or killed with the "
                    "process — newest first. Open one to see its figures again (it joins *Compare* and "
                    "*Export*).", elem_classes="note")
        with gr.Row():
            w.pick = gr.Dropdown([], value=None, label="Open a past run", interactive=True, scale=4)
            w.refresh = gr.Button("Refresh", size="sm", scale=1, min_width=90)
        w.table = gr.Dataframe(tables.past_runs_table([]), label="Run store", interactive=False, wrap=True,
                               max_height=420)


def show(page) -> dict:
    w = page.past_runs
    summaries = page.history.summaries()
    return {w.table: tables.past_runs_table(summaries),
            w.pick: gr.Dropdown(choices=page.history.choices(summaries))}


def wire(page) -> None:
    w = page.past_runs
    def open_past(s: Session, run_id):
        """A stored run back on the page: Results shows it, and it joins this tab's runs."""
        try:
            record = page.history.open(run_id)
        except UserError as err:
            raise gr.Error(str(err), print_exception=False, title="Cannot open") from None
        s.add(record)
        return {**page.show_record(s, record, view=s.view), **page.show_session(s),
                page.tabs: gr.Tabs(selected="results")}

    def open_past_row(s: Session, evt: gr.SelectData):
        row = getattr(evt, "row_value", None) or []
        return open_past(s, row[-1]) if row else {}

    opened = [*page.RESULT_OUTPUTS, *page.SESSION_OUTPUTS, page.tabs]
    w.pick.input(open_past, [page.session, w.pick], opened, api_name="open_run", **LIGHT)
    w.table.select(open_past_row, page.session, opened, api_visibility="private", **LIGHT)
    w.refresh.click(lambda: show(page), None, page.HISTORY_OUTPUTS, api_name="past_runs", **LIGHT)
    page.demo.load(lambda: show(page), None, page.HISTORY_OUTPUTS, api_visibility="private", **LIGHT)
