"""The Past runs tab: every run the server has recorded (components/history.py over the run store), newest first;
opening one shows it under Results and adds it to this tab's runs."""
from __future__ import annotations

import gradio as gr

from engine.errors import UserError

from . import tables
from .results_tab import LIGHT
from .session import Session


def render(page) -> None:
    with gr.Tab("Past runs", id="past"):
        gr.Markdown("Every run this server has recorded — completed, stopped, failed, or killed with the "
                    "process — newest first. Open one to see its figures again (it joins *Compare* and "
                    "*Export*).", elem_classes="note")
        with gr.Row():
            page.past_pick = gr.Dropdown([], value=None, label="Open a past run", interactive=True, scale=4)
            page.past_refresh = gr.Button("Refresh", size="sm", scale=1, min_width=90)
        page.past_df = gr.Dataframe(tables.past_runs_table([]), label="Run store", interactive=False, wrap=True,
                                    max_height=420)


def show(page) -> dict:
    summaries = page.history.summaries()
    return {page.past_df: tables.past_runs_table(summaries),
            page.past_pick: gr.Dropdown(choices=page.history.choices(summaries))}


def wire(page) -> None:
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
    page.past_pick.input(open_past, [page.session, page.past_pick], opened, api_name="open_run", **LIGHT)
    page.past_df.select(open_past_row, page.session, opened, api_visibility="private", **LIGHT)
    page.past_refresh.click(lambda: show(page), None, page.HISTORY_OUTPUTS, api_name="past_runs", **LIGHT)
    page.demo.load(lambda: show(page), None, page.HISTORY_OUTPUTS, api_visibility="private", **LIGHT)
