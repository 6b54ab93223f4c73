"""The dashboard: set up a pruning run, watch it layer by layer, read where the zeros went, compare runs, reopen
past ones.

    python app.py [--port 7860] [--host 127.0.0.1] [--share] [--public] [--runs_dir DIR] [--trust_remote_code]

`--public`, SPARSITY_PUBLIC=1 or a Hugging Face Space (SPACE_ID set; only an explicit SPARSITY_PUBLIC=0/false/no/off
turns it off there, any other value refuses to start) serve strangers under components/policy.py: hub models only,
named texts, no saving, capped work, a bounded run store. The server prints its mode at start; Gradio's usage
analytics are off unless GRADIO_ANALYTICS_ENABLED turns them on; the upload route is closed (the app takes no files). Every run is recorded in the run store (engine/store.py),
so the Past runs tab lists it after a restart. The page is a thin layout over the engine: every callback reads
widgets, calls engine.run or a figure builder, and returns what to show. `build_demo(Settings(...))` makes a page;
the module attribute `demo` is the one built from the environment (what `gradio app.py` and a Space ask for).
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
import threading
import time
from dataclasses import dataclass, replace

import gradio as gr

from components import figures, policy, recover, tables
from components.history import History
from components.jobs import Job, Progress, progress_html
from components.layout import CSS_PATH, HEATMAP_CLICK_JS, banner, header_html, theme
from components.session import (ASSIGNMENT_CHOICES, BLOCK_RULE_CHOICES, DEVICE_CHOICES, DTYPE_CHOICES, EMBEDDED, EVAL_CHOICES,
                                METHOD_CHOICES, MODEL_PRESETS, NAMED_SOURCES, PATTERN_CHOICES, PUBLIC_PRESETS,
                                SCOPE_CHOICES, SKIP_EVAL, SOURCE_CHOICES, WITHIN_CHOICES, Session, grid_splits,
                                nominal_text, parse_splits, rebalance, recipe_values, request_from_form, size_guard)
from components.zero_shot import zero_shot_figure
from engine.errors import UserError
from engine.run import ModelCache, run
from engine.patterns import PATTERNS
from engine.spec import BEST_THREE_TIER as BEST, ORIGINAL_RECIPE, ORIGINAL_URL

BLOCK_PATTERNS = [name for name, p in PATTERNS.items() if p.blocks]
from engine.store import RunStore, StoreBudget

MODELS = ModelCache()  # one model in memory per process; restored to dense weights before every run
SUBMIT = threading.Lock()  # a tab's two clicks arrive on two threads: only one of them may start a job
LIGHT = dict(concurrency_limit=None)  # figure redraws never wait behind a run
STOP_GRACE_S = 3.0  # after Stop the page waits this long for the run to end, then frees the Run button
VIEWS = ["realised sparsity", "tier shares"]
DEFAULT_SWEEP = "0.35/0.45/0.20\n0.60/0.20/0.20\n0.20/0.60/0.20\n0.20/0.20/0.60\n0.40/0.40/0.20\n0.30/0.30/0.40"


@dataclass(frozen=True)
class Settings:
    """What the person running the server decides; nothing a page sends can change it."""
    public: bool = False
    trust_remote_code: bool = False
    runs_dir: str | None = None             # the run store; None: $SPARSITY_RUNS or ~/.cache/sparsity-explorer/runs
    limits: policy.Limits | None = None     # caps on a run's work (public) and model size (whenever set)
    max_waiting: int = 8                    # runs waiting for the engine behind the running one; more are refused
    queue_size: int | None = None           # Gradio's queue of events beyond that (None: 16 public, 64 local)
    analytics: bool = False                 # Gradio's usage analytics (a third party): only if the owner says so
    store_budget: StoreBudget | None = None  # bounds on the run store (None: StoreBudget() public, none local)

    def __post_init__(self):
        if self.public and self.limits is None:  # a public server is never without its caps
            object.__setattr__(self, "limits", policy.PUBLIC_LIMITS)
        if self.public and self.store_budget is None:  # strangers write one record per request
            object.__setattr__(self, "store_budget", StoreBudget())
        if self.queue_size is None:
            object.__setattr__(self, "queue_size", 16 if self.public else 64)

    @classmethod
    def from_env(cls, env=None, public: bool = False, trust_remote_code: bool = False,
                 runs_dir: str | None = None) -> "Settings":
        """Command-line choices, or else the environment's (SPARSITY_PUBLIC, SPACE_ID, SPARSITY_TRUST_REMOTE_CODE,
        GRADIO_ANALYTICS_ENABLED). A switch set to anything but an on or off value raises UserError."""
        env = os.environ if env is None else env
        public = policy.public_from_env(env) or public
        return cls(public=public, trust_remote_code=policy.trust_remote_code_from_env(env) or trust_remote_code,
                   runs_dir=runs_dir, analytics=policy.analytics_from_env(env))

    def describe(self) -> str:
        """One line for the server's log at start: which mode, and what that means."""
        if self.public:
            mode = (f"PUBLIC mode: hub models only (up to {self.limits.max_params / 1e9:g}B parameters), named texts, "
                    "no saving, capped work, a bounded run store")
        else:
            mode = "LOCAL mode: local paths and saving allowed, no caps (use --public to serve strangers)"
        return (f"Sparsity explorer: {mode}; models' own code {'allowed' if self.trust_remote_code else 'off'}; "
                f"usage analytics {'on' if self.analytics else 'off'}")


# ---- drawing ---------------------------------------------------------------------------------------------------

def heatmap_for(record, view):
    if view == VIEWS[1] and record and record.get("spec", {}).get("pattern") in BLOCK_PATTERNS:
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


def _with_form_signature(fn, fields: dict):
    """Gradio names API parameters (and their defaults) after the handler's signature. A handler takes the form
    as *values: give it a signature that lists the fields with the widgets' initial values as defaults."""
    params = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=c.value)
              for name, c in fields.items()]
    params.append(inspect.Parameter("s", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None))  # the Session

    def handler(*values):
        yield from fn(*values)
    handler.__signature__ = inspect.Signature(params)
    handler.__doc__ = fn.__doc__
    return handler


class Dashboard:
    """One page over the engine, built for `settings`; `demo` is the Gradio app."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        self.store = RunStore(self.settings.runs_dir, budget=self.settings.store_budget)
        self.history = History(self.store, public=self.settings.public)
        self._layout()
        self._wire()

    # ---- the page ------------------------------------------------------------------------------------------------

    def _layout(self):
        public, limits = self.settings.public, self.settings.limits
        with gr.Blocks(title="LLM sparsity explorer", analytics_enabled=self.settings.analytics) as self.demo:
            self.session = gr.State(lambda: Session())  # a fresh Session per browser tab
            gr.HTML(header_html())
            with gr.Row(equal_height=False):
                with gr.Column(scale=4, min_width=340, elem_id="setup"):
                    self._setup_column(public, limits)
                with gr.Column(scale=9):
                    self._results_column(public)

        # The set-up form, named as the API (gradio_client keyword arguments) and request_from_form call its fields.
        self.FORM = dict(
            model=self.model, model_path=self.model_path, device=self.device, dtype=self.dtype, method=self.method,
            pattern=self.pattern, sparsity=self.sparsity, n=self.n, m=self.m, ratio_dense=self.ratio_dense,
            ratio_24=self.ratio_24, ratio_topk=self.ratio_topk, block=self.block, keep=self.keep,
            tier_scope=self.tier_scope, within_block=self.within_block, assignment=self.assignment,
            block_rule=self.block_rule, top_blocks_ratio=self.top_blocks_ratio, score_threshold=self.score_threshold,
            reconstruct=self.reconstruct, calib=self.calib, calib_path=self.calib_path, nsamples=self.nsamples,
            seqlen=self.seqlen, eval_source=self.eval_source, eval_path=self.eval_path,
            eval_windows=self.eval_windows, baselines=self.baselines, seed=self.seed, save_dir=self.save_dir,
            overwrite=self.overwrite, finetune_steps=self.finetune_steps, finetune_lr=self.finetune_lr,
            lora_rank=self.lora_rank)
        self.SESSION_OUTPUTS = [self.runs_df, self.compare_plot, self.ternary, self.shown_run, self.run_a, self.run_b,
                                self.export_run]
        self.RESULT_OUTPUTS = [self.overview, self.ppl_plot, self.zero_shot_plot, self.heatmap, self.heat_view, self.layer_dd,
                               self.module_dd, self.tiermap, self.tiernote, self.matrices_df, self.recover_note,
                               self.loss_plot]
        self.HISTORY_OUTPUTS = [self.past_df, self.past_pick]
        self.JOB_OUTPUTS = [self.status, self.progress, *self.RESULT_OUTPUTS, *self.SESSION_OUTPUTS,
                            *self.HISTORY_OUTPUTS]

    def _setup_column(self, public: bool, limits: policy.Limits | None):
        gr.HTML("<div class='section-title'>Model</div>")
        self.model = gr.Dropdown(PUBLIC_PRESETS if public else MODEL_PRESETS, value=EMBEDDED, label="Preset")
        self.model_path = gr.Textbox(
            label="…or a hub id (overrides the preset)" if public else
                  "…or a hub id, local folder or .gguf file (overrides the preset)",
            placeholder="e.g. Qwen/Qwen2.5-0.5B" + ("" if public else "  ·  ~/models/llama  ·  model.Q4_1.gguf"))
        with gr.Row():
            self.device = gr.Dropdown(DEVICE_CHOICES, value="auto", label="Device", min_width=100)
            self.dtype = gr.Dropdown(DTYPE_CHOICES, value="auto", label="dtype", min_width=100)
        gr.HTML("<div class='section-title'>Method and pattern</div>")
        self.method = gr.Radio(METHOD_CHOICES, value=BEST["method"], label="Importance (method)")
        self.pattern = gr.Radio(PATTERN_CHOICES, value="three_tier", label="Pattern")
        with gr.Group(visible=False) as self.unstructured_box:
            self.sparsity = gr.Slider(0, 0.95, value=0.5, step=0.01, label="Sparsity",
                                      info="block patterns: the share of blocks pruned")
        with gr.Row(visible=False) as self.nm_box:
            self.n = gr.Number(2, precision=0, label="N (kept)", minimum=0)
            self.m = gr.Number(4, precision=0, label="M (group)", minimum=1)
        with gr.Column(visible=True) as self.tier_box:
            gr.Markdown("Tier split of the blocks — moving one slider rescales the other two in proportion, "
                        "so the three always sum to 1.", elem_classes="note")
            self.ratio_dense = gr.Slider(0, 1, value=BEST["ratios"][0], step=0.01, label="dense blocks (all kept)")
            self.ratio_24 = gr.Slider(0, 1, value=BEST["ratios"][1], step=0.01, label="2:4 blocks (half kept)")
            self.ratio_topk = gr.Slider(0, 1, value=BEST["ratios"][2], step=0.01, label="top-K blocks (K kept)")
            with gr.Row():
                self.best_btn = gr.Button("Best found: Fisher, ranked model-wide by cost, OBS", size="sm")
                self.original_btn = gr.Button("Original rule (Wanda hybrid fork): Wanda, per matrix, |W| inside",
                                              size="sm")
            gr.Markdown(f"Original rule: the three-tier rule of the [Wanda hybrid fork]({ORIGINAL_URL}) with its "
                        "defaults (0.4/0.4/0.2, K = 10), mask for mask.", elem_classes="note")
            self.tier_scope = gr.Radio(SCOPE_CHOICES, value=BEST["tier_scope"], label="Rank blocks across")
            self.assignment = gr.Radio(ASSIGNMENT_CHOICES, value=BEST["assignment"], label="Give blocks their tier by")
            self.block_rule = gr.Radio(BLOCK_RULE_CHOICES, value=BEST["block_rule"], label="Block arithmetic")
        with gr.Group(visible=False) as self.hybrid_box:
            self.top_blocks_ratio = gr.Slider(0, 1, value=0.6, step=0.01, label="top blocks (try 2:4, else dense)")
            self.score_threshold = gr.Slider(0, 1, value=0.8, step=0.01, label="2:4 taken if it keeps this share of "
                                             "the block's score")
        with gr.Column(visible=True) as self.block_box:
            with gr.Row():
                self.block = gr.Number(16, precision=0, minimum=4, step=4, label="Block size B")
                self.keep = gr.Number(BEST["keep"], precision=0, minimum=0, label="K per top-K block")
            self.within_block = gr.Radio(WITHIN_CHOICES, value=BEST["within_block"],
                                         label="Inside 2:4 / top-K blocks keep by")
        self.reconstruct = gr.Checkbox(BEST["reconstruct"], label="OBS weight update (reconstruct)",
                                       info="update the kept weights of the chosen mask (magnitude / Wanda; "
                                            "SparseGPT always does)")
        self.nominal = gr.Markdown(nominal_text("three_tier", 0.5, 2, 4, *BEST["ratios"], 16, BEST["keep"]),
                                   elem_id="nominal")
        with gr.Accordion("Calibration data", open=False) as self.calib_box:
            self.calib = gr.Dropdown(NAMED_SOURCES if public else SOURCE_CHOICES, value="auto", label="Source")
            self.calib_path = gr.Textbox(label="Path (.txt, .jsonl, .parquet or a WikiText folder)", visible=False)
            with gr.Row():
                self.nsamples = gr.Number(32, precision=0, minimum=1, label="Samples",
                                          info=f"at most {limits.nsamples} here" if public else "paper: 128")
                self.seqlen = gr.Number(512, precision=0, minimum=2, label="Tokens per sample",
                                        info="blank: model's context, ≤ 2048")
        with gr.Accordion("Evaluation", open=False):
            self.eval_source = gr.Dropdown(NAMED_SOURCES + [SKIP_EVAL] if public else EVAL_CHOICES, value="auto",
                                           label="Perplexity on")
            self.eval_path = gr.Textbox(label="Path (.txt, .jsonl, .parquet or a WikiText folder)", visible=False)
            self.eval_windows = gr.Number(32, precision=0, minimum=1, label="Windows",
                                          info=f"at most {limits.eval_windows} here" if public else
                                               "blank: every window (the paper)")
            self.baselines = gr.Checkbox(True, label="Also compute dense and magnitude baselines (cached)")
        with gr.Accordion("Recover (masked fine-tune after pruning)", open=False):
            gr.Markdown("Fine-tune the pruned model with every pruned weight held at exactly 0 (transformers "
                        "Trainer). Steps 0: off.", elem_classes="note")
            with gr.Row():
                self.finetune_steps = gr.Number(0, precision=0, minimum=0, label="Steps",
                                                info=f"at most {recover.PUBLIC_MAX_STEPS} here" if public else
                                                     "CPU: a few dozen")
                self.finetune_lr = gr.Number(recover.DEFAULTS.lr, label="Learning rate")
                self.lora_rank = gr.Number(0, precision=0, minimum=0, label="LoRA rank", info="0: full fine-tuning")
        with gr.Accordion("Advanced", open=False):
            self.seed = gr.Number(0, precision=0, label="Seed (calibration sampling)")
            # Saving writes to the server's disk: a public server has no such controls and refuses the fields.
            self.save_dir = gr.Textbox(label="Save the pruned model to (local folder, optional)", visible=not public,
                                       placeholder="e.g. ./out/smollm2-three-tier")
            self.overwrite = gr.Checkbox(False, label="Overwrite that folder if it is not empty", visible=not public)
            gr.Markdown(self._server_note(), elem_classes="note")
        with gr.Row(elem_id="run-buttons"):
            self.run_btn = gr.Button("Run", variant="primary", scale=3)
            self.stop_btn = gr.Button("Stop", variant="stop", scale=1)

    def _server_note(self) -> str:
        s = self.settings
        code = ("Models' own code (trust_remote_code) is **allowed** on this server." if s.trust_remote_code else
                "Models' own code (trust_remote_code) is off; whoever runs the server can allow it "
                "(`--trust_remote_code` or SPARSITY_TRUST_REMOTE_CODE=1).")
        if not s.public:
            return code
        lim = s.limits
        return (f"Public server: hub models up to {lim.max_params / 1e9:g}B parameters (safetensors weights only), "
                f"named texts, at most {lim.nsamples} samples of {lim.seqlen} tokens and {lim.eval_windows} evaluation "
                f"windows, no saving. {code}")

    def _results_column(self, public: bool):
        self.status = gr.HTML("", elem_id="status")
        self.progress = gr.HTML(progress_html(None), elem_id="progress")
        with gr.Tabs() as self.tabs:
            with gr.Tab("Results", id="results"):
                self.shown_run = gr.Dropdown([], value=None, label="Run shown", interactive=True)
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3, min_width=320):
                        self.overview = gr.HTML(tables.overview_html(None), elem_id="overview")
                    with gr.Column(scale=2, min_width=280):
                        self.ppl_plot = gr.Plot(figures.ppl_bars(None), show_label=False)
                # zero-shot accuracy per task (CLI --eval_zero_shot / engine RunRequest.zero_shot_tasks), when present
                self.zero_shot_plot = gr.Plot(zero_shot_figure(None), show_label=False, visible=False)
                self.heat_view = gr.Radio(VIEWS, value=VIEWS[0], label="Colour the layer map by", container=False)
                self.heatmap = gr.Plot(figures.layer_heatmap(None), show_label=False, elem_id="layer-heatmap")
                gr.Markdown("Click a cell — or choose a layer and a module — to open that matrix's block tier map.",
                            elem_classes="note")
                with gr.Row():
                    self.layer_dd = gr.Dropdown([], label="Decoder layer", interactive=True)
                    self.module_dd = gr.Dropdown([], label="Module", interactive=True)
                self.tiermap = gr.Plot(figures.tier_map_figure(None)[0], show_label=False, elem_id="tier-map")
                self.tiernote = gr.Markdown("", elem_classes="note")
                self.heatmap_click = gr.Textbox(visible="hidden", elem_id="heatmap-click")
            with gr.Tab("Recover", id="recover"):
                self.loss_plot = gr.Plot(recover.loss_curve_figure(None), show_label=False, elem_id="loss-curve")
                self.recover_note = gr.HTML(recover.recovery_html(None))
            with gr.Tab("Compare", id="compare"):
                self.runs_df = gr.Dataframe(tables.runs_table([]), label="Runs of this session", interactive=False,
                                            wrap=True, max_height=320)
                gr.Markdown("Runs of earlier sessions: open them under *Past runs* and they join this list.",
                            elem_classes="note")
                self.compare_plot = gr.Plot(figures.ppl_vs_sparsity([]), show_label=False)
                with gr.Row():
                    self.run_a = gr.Dropdown([], label="Run A", interactive=True)
                    self.run_b = gr.Dropdown([], label="Run B", interactive=True)
                with gr.Row():
                    self.heat_a = gr.Plot(figures.layer_heatmap(None, title="Run A"), show_label=False)
                    self.heat_b = gr.Plot(figures.layer_heatmap(None, title="Run B"), show_label=False)
                with gr.Row():
                    self.cmp_layer = gr.Dropdown([], label="Decoder layer", interactive=True)
                    self.cmp_module = gr.Dropdown([], label="Module", interactive=True)
                with gr.Row():
                    self.tier_a = gr.Plot(figures.tier_map_figure(None)[0], show_label=False)
                    self.tier_b = gr.Plot(figures.tier_map_figure(None)[0], show_label=False)
            with gr.Tab("Past runs", id="past"):
                gr.Markdown("Every run this server has recorded — completed, stopped, failed, or killed with the "
                            "process — newest first. Open one to see its figures again (it joins *Compare* and "
                            "*Export*).", elem_classes="note")
                with gr.Row():
                    self.past_pick = gr.Dropdown([], value=None, label="Open a past run", interactive=True, scale=4)
                    self.past_refresh = gr.Button("Refresh", size="sm", scale=1, min_width=90)
                self.past_df = gr.Dataframe(tables.past_runs_table([]), label="Run store", interactive=False,
                                            wrap=True, max_height=420)
            with gr.Tab("Sweep", id="sweep"):
                gr.Markdown("Runs the set-up on the left once per tier split, as one job (pattern: three-tier). "
                            "The model stays loaded and the baselines are computed once. Points appear on the "
                            "triangle as they finish; Stop ends the sweep after the current layer.",
                            elem_classes="note")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1, min_width=220):
                        self.sweep_text = gr.Textbox(DEFAULT_SWEEP, lines=10, max_lines=30,
                                                     label="Splits dense / 2:4 / top-K, one per line")
                        with gr.Row():
                            self.grid_step = gr.Dropdown([0.5, 0.25, 0.2, 0.1], value=0.25, label="Grid step",
                                                         min_width=110)
                            self.grid_btn = gr.Button("Fill grid", size="sm", min_width=90)
                        self.sweep_btn = gr.Button("Run sweep", variant="primary")
                    with gr.Column(scale=3):
                        self.ternary = gr.Plot(figures.ternary_sweep([]), show_label=False)
            with gr.Tab("Export", id="export"):
                self.export_run = gr.Dropdown([], label="Run", interactive=True)
                with gr.Row():
                    self.json_btn = gr.Button("Run record (JSON)")
                    self.csv_btn = gr.Button("Tables (CSV)")
                self.files = gr.File(label="Downloads", file_count="multiple", interactive=False)
                gr.Markdown("This server does not save models; run the dashboard on your machine to keep one."
                            if public else
                            "To keep the pruned model, give a folder under *Set-up › Advanced* before running: "
                            "the engine writes it there (with `results.json`) when the run completes.",
                            elem_classes="note")
                self.matrices_df = gr.Dataframe(tables.matrices_table(None), label="Matrices of the run shown",
                                                interactive=False, max_height=360)

    # ---- what the page shows -----------------------------------------------------------------------------------

    def show_record(self, s: Session, record, layer=None, module=None, view=None) -> dict:
        """Everything the Results tab shows for one record."""
        s.shown = record
        layers, layer, modules, module = selection_for(record, layer, module)
        three_tier = bool(record) and record.get("spec", {}).get("pattern") in BLOCK_PATTERNS
        view = view if three_tier else VIEWS[0]
        fig, note = tiermap_for(record, layer, module)
        has_zero_shot = bool(record) and bool(record.get("zero_shot") or record.get("zero_shot_dense"))
        return {self.overview: tables.overview_html(record), self.ppl_plot: figures.ppl_bars(record),
                self.zero_shot_plot: gr.Plot(zero_shot_figure(record), visible=has_zero_shot),
                self.heatmap: heatmap_for(record, view), self.heat_view: gr.Radio(value=view, interactive=three_tier),
                self.layer_dd: gr.Dropdown(choices=layers, value=layer),
                self.module_dd: gr.Dropdown(choices=modules, value=module),
                self.tiermap: fig, self.tiernote: note, self.matrices_df: tables.matrices_table(record),
                self.recover_note: recover.recovery_html(record),
                self.loss_plot: recover.loss_curve_figure(((record or {}).get("recovery") or {}).get("curve"))}

    def show_session(self, s: Session) -> dict:
        """The runs table, the plots over all runs, and the run pickers (Compare: the last two runs)."""
        choices = s.run_choices()
        last = choices[-1][1] if choices else None
        prev = choices[-2][1] if len(choices) > 1 else last
        return {self.runs_df: tables.runs_table(s.runs), self.compare_plot: figures.ppl_vs_sparsity(s.runs),
                self.ternary: figures.ternary_sweep(s.runs), self.shown_run: gr.Dropdown(choices=choices, value=last),
                self.run_a: gr.Dropdown(choices=choices, value=prev),
                self.run_b: gr.Dropdown(choices=choices, value=last),
                self.export_run: gr.Dropdown(choices=choices, value=last)}

    def show_history(self) -> dict:
        summaries = self.history.summaries()
        return {self.past_df: tables.past_runs_table(summaries),
                self.past_pick: gr.Dropdown(choices=self.history.choices(summaries))}

    # ---- the heavy job -------------------------------------------------------------------------------------------

    def request(self, form: dict, **changes):
        """The form -> a RunRequest under this server's policy (UserError naming every problem)."""
        policy.check_request(form, self.settings.public, self.settings.limits)
        finetune = recover.finetune_from_form(form.pop("finetune_steps", 0), form.pop("finetune_lr", None),
                                              form.pop("lora_rank", 0), public=self.settings.public)
        request = request_from_form(form, trust_remote_code=self.settings.trust_remote_code,
                                    safetensors_only=self.settings.public, store=self.store, **changes)
        return replace(request, finetune=finetune)

    def prune(self, s: Session, request, progress, cancel) -> dict:
        """One engine run on the worker thread; the record joins the tab's runs as soon as it exists."""
        cap = self.settings.limits.max_params if self.settings.limits else None
        record = run(request, progress=size_guard(request, progress, cap, MODELS), cancel=cancel, models=MODELS)
        s.add(record)
        return record

    def stream(self, s: Session, target, spec_dict: dict, label: str, sweep: bool = False):
        """Queue `target` for the engine and stream its place in the queue, progress, the filling heatmap and
        finished runs to the page."""
        with SUBMIT:
            if s.busy():
                raise gr.Error("This tab already has a run waiting or running; press Stop first.",
                               print_exception=False, title="Already running")
            job = Job(target, name=label)
            try:
                job.start(self.settings.max_waiting)
            except UserError as err:
                raise gr.Error(str(err), print_exception=False, title="Server busy") from None
            s.job = job
        p = Progress()
        live = p.record  # the run as far as it got, drawn as its layers finish
        live["spec"] = spec_dict
        drawn = False
        curve = {"train": [], "heldout": []}
        s.shown = live
        running = banner("info", f"Running {label}…")
        yield {self.status: running, self.progress: progress_html(p, 0.0)}
        finished = []
        try:
            for events in job.watch():
                # the banner on every update: after Stop then Run, the stopped job's last word may land in between
                out = {self.status: running}
                for event in events:
                    if event.get("stage") == "sweep_point":  # a sweep finished one split
                        finished.append(event["record"])
                        out.update(self.show_session(s))
                        p.matrices.clear()
                    p.update(event)
                    if recover.curve_from_events(curve, event):
                        out[self.loss_plot] = recover.loss_curve_figure(curve)
                out[self.progress] = progress_html(p, time.monotonic() - job.started)
                if p.new_layers:
                    first, drawn = not drawn, True
                    out[self.heatmap] = heatmap_for(live, s.view)
                    if first:
                        out.update(self.show_record(s, live, view=s.view))
                        out.pop(self.matrices_df)
                    p.new_layers = 0
                yield out
                if job.stopping and time.monotonic() - job.stop_requested > STOP_GRACE_S:
                    break  # a long layer or a model load: let it end unseen, free the Run button now
        finally:
            if job.running:  # the page went away or the event was cancelled: stop the engine at the next layer
                job.stop()
        yield from self._ending(s, job, p, finished, sweep)

    def _ending(self, s: Session, job: Job, p: Progress, finished: list, sweep: bool):
        """The last update of a job: how it ended, its figures, the session's runs and the run store."""
        out = {**self.show_session(s), **self.show_history()}
        if job.running:
            p.stage, p.message = "cancelled", "still finishing its current step; it will appear under Past runs"
            yield {**out, self.status: banner("warn", "Stopping… the run ends after its current step."),
                   self.progress: progress_html(p)}
            return
        if not job.started_work:
            p.stage, p.message = "cancelled", "stopped while waiting in the queue"
            yield {**out, self.status: banner("warn", "Stopped before it started."), self.progress: progress_html(p)}
            return
        if job.error:
            p.stage, p.message = "failed", job.error
            out.update({self.status: banner("err", job.error), self.progress: progress_html(p)})
            if finished:
                out.update(self.show_record(s, finished[-1], view=s.view))
            yield out
            raise gr.Error(job.error, print_exception=False, title="Run failed" if job.user_error else "Internal error")
        records = finished if sweep else [job.result]
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
            if not sweep and last.get("errors"):  # masks, tier maps and weights disagree: never a silent number
                text += f" The weights disagree with the masks: {last['errors'][0]}" + \
                    (f" (and {len(last['errors']) - 1} more)" if len(last["errors"]) > 1 else "") + "."
                kind = "warn"
        warnings = [r["store_warning"] for r in records if r.get("store_warning")]
        if warnings:
            text, kind = f"{text} Warning: {warnings[-1]}.", "warn"
        p.message = (f"{len(records)} split(s) finished" if sweep else
                     f"{(last or {}).get('layers_done')} of {(last or {}).get('n_layers')} decoder layers pruned")
        out.update({self.status: banner(kind, text), self.progress: progress_html(p, time.monotonic() - job.started)})
        if last:
            out.update(self.show_record(s, last, s.shown_layer, s.shown_module, view=s.view))
        yield out

    def refuse(self, err: UserError, title: str):
        yield {self.status: banner("err", str(err)),
               self.progress: progress_html(Progress(stage="failed", message=str(err)))}
        raise gr.Error(str(err), print_exception=False, title=title)

    def stopped_in_queue(self, s: Session) -> bool:
        """Whether this event was stopped while it waited in Gradio's queue (Stop counted it there)."""
        if s.stop_queued <= 0:
            return False
        s.stop_queued -= 1
        return True

    def ending_stopped_in_queue(self):
        p = Progress(stage="cancelled", message="stopped while waiting in the queue")
        yield {self.status: banner("warn", "Stopped before it started."), self.progress: progress_html(p)}

    def run_pruning(self, *values):
        """Prune once with the set-up on the left; streams progress and returns the run's figures."""
        s: Session = values[-1]
        if self.stopped_in_queue(s):
            yield from self.ending_stopped_in_queue()
            return
        try:
            request = self.request(dict(zip(self.FORM, values[:-1])))
        except UserError as err:
            yield from self.refuse(err, "Cannot run")
        label = figures.run_label({"spec": request.spec.to_dict()})
        yield from self.stream(s, lambda progress, cancel: self.prune(s, request, progress, cancel),
                               request.spec.to_dict(), label)

    def run_sweep(self, *values):
        """Prune once per tier split in `splits` (one job); the ternary plot fills in as splits finish."""
        s: Session = values[-1]
        if self.stopped_in_queue(s):
            yield from self.ending_stopped_in_queue()
            return
        try:
            splits = parse_splits(values[0])
            policy.check_sweep(len(splits), self.settings.public, self.settings.limits)
            base = self.request(dict(zip(self.FORM, values[1:-1]), pattern="three_tier"))
            requests = [replace(base, spec=base.spec.replace(ratios=r), save_dir=None, finetune=None) for r in splits]
        except UserError as err:
            yield from self.refuse(err, "Cannot sweep")

        def target(progress, cancel):
            for i, request in enumerate(requests):
                def tagged(event, i=i):
                    progress({**event, "sweep": (i, len(requests))})
                record = self.prune(s, request, tagged, cancel)
                progress({"stage": "sweep_point", "record": record, "sweep": (i, len(requests))})
                if record.get("status") != "completed" or cancel.is_set():
                    break

        yield from self.stream(s, target, requests[0].spec.to_dict(), f"sweep of {len(requests)} splits", sweep=True)

    def stop(self, s: Session, request: gr.Request = None):
        """Stop this tab's run, wherever it is: running, in the engine's line, or still in Gradio's own queue."""
        queued = self.queued_runs(request.session_hash) if request is not None else 0
        s.stop_queued = max(s.stop_queued, queued)  # each of those ends at once when its turn comes (a second
        # press counts the same waiting runs again, so it takes the larger count rather than adding)
        if s.job is not None and s.job.running:
            s.job.stop()
            return banner("warn", "Stopping after the current decoder layer…")
        if queued:
            return banner("warn", "Stopped while waiting in the queue.")
        return gr.skip()

    def queued_runs(self, session_hash) -> int:
        """Runs and sweeps of one tab still waiting in Gradio's queue, where the engine's line cannot see them."""
        queue = getattr(self.demo, "_queue", None)
        waiting = getattr(queue, "event_queue_per_concurrency_id", {}).get("engine")
        return sum(1 for event in list(getattr(waiting, "queue", []))
                   if event.session_hash == session_hash) if session_hash else 0

    # ---- small callbacks ---------------------------------------------------------------------------------------

    def open_past(self, s: Session, run_id):
        """A stored run back on the page: Results shows it, and it joins this tab's runs."""
        try:
            record = self.history.open(run_id)
        except UserError as err:
            raise gr.Error(str(err), print_exception=False, title="Cannot open") from None
        s.add(record)
        return {**self.show_record(s, record, view=s.view), **self.show_session(s),
                self.tabs: gr.Tabs(selected="results")}

    def open_past_row(self, s: Session, evt: gr.SelectData):
        row = getattr(evt, "row_value", None) or []
        return self.open_past(s, row[-1]) if row else {}

    def compare(self, s: Session, a, b, layer, module):
        ra, rb = s.get(a), s.get(b)
        layers, layer, modules, module = selection_for(ra or rb, layer, module)
        fa, _ = tiermap_for(ra, layer, module)
        fb, _ = tiermap_for(rb, layer, module)
        label = lambda run_id, r: f"Run #{s.number(run_id)}: {figures.run_label(r)}" if r else None
        return (figures.layer_heatmap(ra, title=label(a, ra)), figures.layer_heatmap(rb, title=label(b, rb)),
                gr.Dropdown(choices=layers, value=layer), gr.Dropdown(choices=modules, value=module), fa, fb)

    def export_json(self, s: Session, run_id):
        record = s.get(run_id)
        if record is None:
            raise gr.Error("No run to export yet.", print_exception=False)
        return [tables.write_record_json(policy.redact(record) if self.settings.public else record)]

    def export_csv(self, s: Session, run_id):
        if not s.runs:
            raise gr.Error("No run to export yet.", print_exception=False)
        return tables.write_tables_csv(s.runs, s.get(run_id))

    # ---- wiring ------------------------------------------------------------------------------------------------

    def _wire(self):
        ui, session = self, self.session
        # Run events start at once (a handler waits in the engine's own queue, showing its place there), so one
        # tab's second click finds its first job and is refused; beyond max_waiting Gradio's queue holds them.
        engine = dict(concurrency_id="engine", concurrency_limit=self.settings.max_waiting + 1)
        with self.demo:
            for trigger in (ui.method.change, ui.pattern.change, ui.reconstruct.change):
                trigger(_visibility, [ui.method, ui.pattern, ui.reconstruct],
                        [ui.unstructured_box, ui.nm_box, ui.tier_box, ui.hybrid_box, ui.block_box, ui.calib_box],
                        queue=False,
                        show_progress="hidden")

            ratios = [ui.ratio_dense, ui.ratio_24, ui.ratio_topk]
            for i, slider in enumerate(ratios):
                slider.input(lambda a, b, c, i=i: rebalance(i, (a, b, c)), ratios, ratios, queue=False,
                             show_progress="hidden", trigger_mode="always_last")
            recipe_outputs = [ui.method, ui.tier_scope, ui.assignment, ui.within_block, ui.reconstruct, *ratios,
                              ui.keep, ui.block_rule, ui.pattern]
            ui.original_btn.click(lambda: recipe_values(ORIGINAL_RECIPE), None, recipe_outputs, queue=False,
                                  show_progress="hidden")
            ui.best_btn.click(lambda: recipe_values(BEST), None, recipe_outputs, queue=False, show_progress="hidden")
            nominal_inputs = [ui.pattern, ui.sparsity, ui.n, ui.m, *ratios, ui.block, ui.keep, ui.top_blocks_ratio]
            gr.on([c.change for c in nominal_inputs], nominal_text, nominal_inputs, ui.nominal, queue=False,
                  show_progress="hidden")
            if not self.settings.public:
                ui.calib.change(lambda c: gr.Textbox(visible=c == "path"), ui.calib, ui.calib_path, queue=False,
                                show_progress="hidden")
                ui.eval_source.change(lambda c: gr.Textbox(visible=c == "path"), ui.eval_source, ui.eval_path,
                                      queue=False, show_progress="hidden")

            # trigger_mode "multiple": Run right after Stop must start the next run, not be dropped while the
            # stopped one finishes its layer; a second click during a run is refused by stream().
            ui.run_btn.click(_with_form_signature(self.run_pruning, self.FORM), [*self.FORM.values(), session],
                             self.JOB_OUTPUTS, api_name="run", show_progress="minimal",
                             show_progress_on=[ui.progress], trigger_mode="multiple", **engine)
            ui.sweep_btn.click(_with_form_signature(self.run_sweep, {"splits": ui.sweep_text, **self.FORM}),
                               [ui.sweep_text, *self.FORM.values(), session], self.JOB_OUTPUTS, api_name="sweep",
                               show_progress="minimal", show_progress_on=[ui.progress], trigger_mode="multiple",
                               **engine)
            ui.stop_btn.click(self.stop, session, ui.status, api_name="stop", **LIGHT)
            ui.grid_btn.click(grid_splits, ui.grid_step, ui.sweep_text, queue=False, api_visibility="private")

            def pick_run(s: Session, run_id):
                return self.show_record(s, s.get(run_id), view=s.view)
            ui.shown_run.input(pick_run, [session, ui.shown_run], self.RESULT_OUTPUTS, api_visibility="private",
                               **LIGHT)

            def view(s: Session, choice):
                s.view = choice
                return heatmap_for(s.shown, choice)
            ui.heat_view.input(view, [session, ui.heat_view], ui.heatmap, api_visibility="private", **LIGHT)

            def tier(s: Session, layer, module):
                s.shown_layer, s.shown_module = layer, module
                return tiermap_for(s.shown, layer, module)
            gr.on([ui.layer_dd.input, ui.module_dd.input], tier, [session, ui.layer_dd, ui.module_dd],
                  [ui.tiermap, ui.tiernote], api_name="tier_map", **LIGHT)

            def click(s: Session, text):
                """'layer|module|t' from the heatmap click script -> that matrix's tier map."""
                try:
                    layer, module = text.split("|")[:2]
                    layer = int(float(layer))
                except (AttributeError, ValueError):
                    return gr.skip(), gr.skip(), gr.skip(), gr.skip()
                s.shown_layer, s.shown_module = layer, module
                fig, note = tiermap_for(s.shown, layer, module)
                return gr.Dropdown(value=layer), gr.Dropdown(value=module), fig, note
            ui.heatmap_click.change(click, [session, ui.heatmap_click], [ui.layer_dd, ui.module_dd, ui.tiermap,
                                    ui.tiernote], api_visibility="private", **LIGHT)

            gr.on([ui.run_a.change, ui.run_b.change, ui.cmp_layer.input, ui.cmp_module.input], self.compare,
                  [session, ui.run_a, ui.run_b, ui.cmp_layer, ui.cmp_module],
                  [ui.heat_a, ui.heat_b, ui.cmp_layer, ui.cmp_module, ui.tier_a, ui.tier_b],
                  api_visibility="private", **LIGHT)

            opened = [*self.RESULT_OUTPUTS, *self.SESSION_OUTPUTS, ui.tabs]
            ui.past_pick.input(self.open_past, [session, ui.past_pick], opened, api_name="open_run", **LIGHT)
            ui.past_df.select(self.open_past_row, session, opened, api_visibility="private", **LIGHT)
            ui.past_refresh.click(self.show_history, None, self.HISTORY_OUTPUTS, api_name="past_runs", **LIGHT)
            self.demo.load(self.show_history, None, self.HISTORY_OUTPUTS, api_visibility="private", **LIGHT)

            ui.json_btn.click(self.export_json, [session, ui.export_run], ui.files, api_name="export_json", **LIGHT)
            ui.csv_btn.click(self.export_csv, [session, ui.export_run], ui.files, api_name="export_csv", **LIGHT)

            self.demo.load(None, js=HEATMAP_CLICK_JS)
        self.demo.queue(default_concurrency_limit=4, max_size=self.settings.queue_size)


def _visibility(method_, pattern_, reconstruct_):
    uses_calib = method_ != "magnitude" or bool(reconstruct_)
    return (gr.Group(visible=pattern_ in ("unstructured", "block", "block_topk")), gr.Row(visible=pattern_ == "nm"),
            gr.Column(visible=pattern_ == "three_tier"), gr.Group(visible=pattern_ == "threshold_hybrid"),
            gr.Column(visible=pattern_ in BLOCK_PATTERNS), gr.Accordion(visible=uses_calib))


def build_demo(settings: Settings | None = None) -> gr.Blocks:
    return Dashboard(settings or Settings.from_env()).demo


def __getattr__(name):
    """`app.demo`, built from the environment on first use (`gradio app.py`, tests/test_browser.py)."""
    if name == "demo":
        globals()["demo"] = build_demo()
        return globals()["demo"]
    raise AttributeError(f"module 'app' has no attribute {name!r}")


class RefuseUploads:
    """ASGI middleware: the app takes no files, so Gradio's upload route answers 403 instead of storing what a
    stranger sends (and serving it back)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].rstrip("/").endswith("/upload"):
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": b"this server takes no uploads\n"})
            return
        await self.app(scope, receive, send)


def launch_options() -> dict:
    """Blocks.launch keyword arguments of every launch: the look, and no uploads (max_file_size 0, no route)."""
    from starlette.middleware import Middleware
    return dict(theme=theme(), css_paths=[CSS_PATH], footer_links=["api", "gradio"], max_file_size=0,
                app_kwargs={"middleware": [Middleware(RefuseUploads)]})


def main(argv=None):
    ap = argparse.ArgumentParser(description="LLM sparsity explorer (Gradio dashboard)")
    ap.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    ap.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; 0.0.0.0 to serve a network)")
    ap.add_argument("--share", action="store_true", help="make a temporary public gradio.live link (off by default)")
    ap.add_argument("--public", action="store_true",
                    help="serve strangers: hub models only, named texts, no saving, capped work (also "
                         "SPARSITY_PUBLIC=1; on by default on a Hugging Face Space)")
    ap.add_argument("--runs_dir", default=None,
                    help="the run store (default: $SPARSITY_RUNS or ~/.cache/sparsity-explorer/runs)")
    ap.add_argument("--trust_remote_code", action="store_true",
                    help="let models run their repository's own code (also SPARSITY_TRUST_REMOTE_CODE=1); "
                         "off by default")
    args = ap.parse_args(argv)
    try:
        settings = Settings.from_env(public=args.public, trust_remote_code=args.trust_remote_code,
                                     runs_dir=args.runs_dir)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(settings.describe(), flush=True)
    build_demo(settings).launch(server_name=args.host, server_port=args.port, share=args.share, **launch_options())
    return 0


if __name__ == "__main__":
    sys.exit(main())
