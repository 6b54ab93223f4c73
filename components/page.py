"""One dashboard page: the set-up column on the left, the tabs on the right, each a module with its widgets
(`render`) and, right below them, its listeners (`wire`). Each tab keeps its widgets in its own object on the page
(`page.results.heatmap`); what one record or one session shows spans several tabs and is gathered here."""
from __future__ import annotations

import gradio as gr

from engine.io.run_store import RunStore

from . import (
    compare_tab,
    explore_tab,
    export_tab,
    figures,
    past_runs_tab,
    recover_tab,
    results_tab,
    runner,
    setup_form,
    sweep_tab,
    tables,
)
from .history import History
from .jobs import progress_html
from .layout import CLICK_RELAY_JS, header_html
from .server import Settings
from .session import Session

TABS = (results_tab, explore_tab, recover_tab, compare_tab, past_runs_tab, sweep_tab, export_tab)


class Page:
    """The page for `settings`; `demo` is the Gradio app, `form` the set-up fields by name."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        self.store = RunStore(self.settings.runs_dir, budget=self.settings.store_budget)
        self.history = History(self.store, public=self.settings.public)
        with gr.Blocks(title="LLM sparsity explorer", analytics_enabled=self.settings.analytics) as self.demo:
            self.session = gr.State(lambda: Session())  # a fresh Session per browser tab
            gr.HTML(header_html())
            with gr.Row(equal_height=False):
                with gr.Column(scale=4, min_width=340, elem_id="setup"):
                    setup_form.render(self)
                with gr.Column(scale=9, elem_id="results-column"):
                    self.status = gr.HTML("", elem_id="status")
                    self.progress = gr.HTML(progress_html(None), elem_id="progress")
                    with gr.Tabs() as self.tabs:
                        for tab in TABS:
                            tab.render(self)
            for part in (setup_form, *TABS, runner):
                part.wire(self)
            self.demo.load(None, js=CLICK_RELAY_JS)  # plot clicks -> hidden boxes (components/layout.py)
        self.demo.queue(default_concurrency_limit=4, max_size=self.settings.queue_size)

    @property
    def form(self) -> dict[str, gr.components.Component]:
        """The set-up fields by name (components/setup_form.py): the API's keyword arguments."""
        return self.setup.fields

    # ---- what several tabs show at once --------------------------------------------------------------------------

    @property
    def RESULT_OUTPUTS(self) -> list:
        r, rec = self.results, self.recover
        return [r.overview, r.ppl_plot, r.zero_shot_plot, r.heatmap, r.heat_view, r.layer_dd, r.module_dd, r.tiermap,
                r.tiernote, self.export.matrices_df, rec.note, rec.loss_plot, rec.progressive_plot]

    @property
    def SESSION_OUTPUTS(self) -> list:
        c = self.compare
        return [c.runs_df, c.plot, self.sweep.ternary, *self.run_pickers, c.run_a, c.run_b]

    @property
    def run_pickers(self) -> list:
        """The tabs' "which run" dropdowns that follow the latest run."""
        return [self.results.shown_run, self.export.run, self.recover.run]

    @property
    def HISTORY_OUTPUTS(self) -> list:
        return [self.past_runs.table, self.past_runs.pick]

    @property
    def JOB_OUTPUTS(self) -> list:
        return [self.status, self.progress, *self.RESULT_OUTPUTS, *self.SESSION_OUTPUTS, *self.HISTORY_OUTPUTS]

    def show_record(self, s: Session, record, layer=None, module=None, view=None) -> dict:
        """Everything the Results, Recover and Export tabs show for one record."""
        return {**results_tab.show(self, s, record, layer, module, view), **recover_tab.show(self, record),
                self.export.matrices_df: tables.matrices_table(record)}

    def show_session(self, s: Session) -> dict:
        """The runs table, the plots over all runs, and the run pickers (each on the latest run)."""
        choices = s.run_choices()
        last = choices[-1][1] if choices else None
        pickers = {picker: gr.Dropdown(choices=choices, value=last) for picker in self.run_pickers}
        return {**compare_tab.show(self, s, choices), self.sweep.ternary: figures.ternary_sweep(s.runs), **pickers}

    def show_history(self) -> dict:
        return past_runs_tab.show(self)

    def queued_runs(self, session_hash) -> int:
        """Engine jobs of one browser tab still waiting in Gradio's queue."""
        return runner.queued_runs(self, session_hash)
