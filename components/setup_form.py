"""The set-up column: model, method and pattern, data, evaluation, recovery, Run and Stop.

The choices come from the engine's registries and every default from the spec (components/registry.py); a widget
that sets a spec field is shown only for the patterns that read that field. Each widget the engine reads is a form
field (`page.setup.fields`): the API's keyword arguments and request_from_form's keys are these names.
"""
from __future__ import annotations

import gradio as gr

from engine.io.save import SAVE_FORMATS
from engine.patterns.registry import Param
from engine.spec import BEST_THREE_TIER, ORIGINAL_RECIPE, ORIGINAL_URL, RECIPE_PATTERN, PruneSpec

from . import recover_view
from .registry import (
    FINETUNE_DEFAULTS,
    FORM_SPEC,
    field_choices,
    form_fields,
    form_params,
    method_choices,
    pattern_choices,
    pattern_fields,
    uses_calibration,
)
from .session import (
    DEVICE_CHOICES,
    DTYPE_CHOICES,
    EMBEDDED,
    EVAL_CHOICES,
    MODEL_PRESETS,
    NAMED_SOURCES,
    NOMINAL_INPUTS,
    PUBLIC_PRESETS,
    SKIP_EVAL,
    SOURCE_CHOICES,
    nominal_text,
    rebalance,
    recipe_values,
)

QUIET = dict(queue=False, show_progress="hidden")


class SetupFormWidgets:
    """The set-up column's widgets (page.setup). `fields`: the widgets the engine reads, by name (the API's keyword
    arguments, request_from_form's keys); `parts`: widget or box -> the spec fields it sets."""
    __slots__ = ("fields", "parts", "nominal", "calib_box", "best_btn", "original_btn", "run_btn", "stop_btn")


def render(page) -> None:
    w = page.setup = SetupFormWidgets()
    w.fields = {}
    public, limits, spec = page.settings.public, page.settings.limits, FORM_SPEC

    def field(name: str, component):
        w.fields[name] = component
        return component
    shown = w.parts = {}  # widget or box -> the spec fields it sets; shown when the pattern reads one

    gr.HTML("<div class='section-title'>Model</div>")
    field("model", gr.Dropdown(PUBLIC_PRESETS if public else MODEL_PRESETS, value=EMBEDDED, label="Preset"))
    field("model_path", gr.Textbox(
        label="…or a hub id (overrides the preset)" if public else
              "…or a hub id, local folder or .gguf file (overrides the preset)",
        placeholder="e.g. Qwen/Qwen2.5-0.5B" + ("" if public else "  ·  ~/models/llama  ·  model.Q4_1.gguf")))
    with gr.Row():
        field("device", gr.Dropdown(DEVICE_CHOICES, value="auto", label="Device", min_width=100))
        field("dtype", gr.Dropdown(DTYPE_CHOICES, value="auto", label="dtype", min_width=100))

    gr.HTML("<div class='section-title'>Method and pattern</div>")
    field("method", gr.Radio(method_choices(), value=spec.method, label="Importance (method)"))
    field("pattern", gr.Radio(pattern_choices(), value=spec.pattern, label="Pattern"))
    pattern_widgets(spec, field, shown)
    with gr.Row():
        w.best_btn = gr.Button(f"Best found: {PruneSpec(pattern=RECIPE_PATTERN, **BEST_THREE_TIER).label()}",
                               size="sm")
        w.original_btn = gr.Button("Original rule (Wanda hybrid, Ji et al.): Wanda, per matrix, |W| inside",
                                   size="sm")
    gr.Markdown(f"Original rule: the three-tier rule of the [Wanda hybrid of Ji et al.]({ORIGINAL_URL}) with its "
                "defaults (0.4/0.4/0.2, K = 10), mask for mask.", elem_classes="note")
    field("reconstruct", gr.Checkbox(spec.reconstruct, label="OBS weight update (reconstruct)",
                                     info="update the kept weights of the chosen mask (magnitude / Wanda; "
                                          "SparseGPT always does)"))
    w.nominal = gr.Markdown(nominal_text({name: w.fields[name].value for name in nominal_fields()}),
                            elem_id="nominal")

    with gr.Accordion("Calibration data", open=False, visible=spec.uses_calibration) as w.calib_box:
        field("calib", gr.Dropdown(NAMED_SOURCES if public else SOURCE_CHOICES, value="auto", label="Source"))
        field("calib_path", gr.Textbox(label="Path (.txt, .jsonl, .parquet or a WikiText folder)", visible=False))
        with gr.Row():
            field("nsamples", gr.Number(spec.nsamples, precision=0, minimum=1, label="Samples",
                                        info=f"at most {limits.nsamples} here" if public else "paper: 128"))
            field("seqlen", gr.Number(spec.seqlen, precision=0, minimum=2, label="Tokens per sample",
                                      info="blank: model's context, ≤ 2048"))
    with gr.Accordion("Evaluation", open=False):
        field("eval_source", gr.Dropdown(NAMED_SOURCES + [SKIP_EVAL] if public else EVAL_CHOICES, value="auto",
                                         label="Perplexity on"))
        field("eval_path", gr.Textbox(label="Path (.txt, .jsonl, .parquet or a WikiText folder)", visible=False))
        field("eval_windows", gr.Number(32, precision=0, minimum=1, label="Windows",
                                        info=f"at most {limits.eval_windows} here" if public else
                                             "blank: every window (the paper)"))
        field("baselines", gr.Checkbox(True, label="Also compute dense and magnitude baselines (cached)"))
    with gr.Accordion("Recover (masked fine-tune after pruning)", open=False):
        gr.Markdown("Fine-tune the pruned model with every pruned weight held at exactly 0 (transformers "
                    "Trainer). Steps 0: off; the Recover tab also recovers a finished run.", elem_classes="note")
        with gr.Row():
            field("finetune_steps", gr.Number(0, precision=0, minimum=0, label="Steps",
                                              info=f"at most {recover_view.PUBLIC_MAX_STEPS} here" if public else
                                                   "CPU: a few dozen"))
            field("finetune_lr", gr.Number(FINETUNE_DEFAULTS.lr, label="Learning rate"))
            field("lora_rank", gr.Number(0, precision=0, minimum=0, label="LoRA rank", info="0: full fine-tuning"))
    with gr.Accordion("Advanced", open=False):
        field("seed", gr.Number(spec.seed, precision=0, label="Seed (calibration sampling)"))
        # Saving writes to the server's disk: a public server has no such controls and refuses the fields.
        field("save_dir", gr.Textbox(label="Save the pruned model to (local folder, optional)", visible=not public,
                                     placeholder="e.g. ./out/smollm2-three-tier"))
        field("save_format", gr.Radio([(title, name) for name, title in SAVE_FORMATS.items()], value="dense",
                                      label="Save format", visible=not public,
                                      info="compact: bytes measured per tier beside the estimate (Results)"))
        field("overwrite", gr.Checkbox(False, label="Overwrite that folder if it is not empty", visible=not public))
        gr.Markdown(page.settings.note(), elem_classes="note")
    with gr.Row(elem_id="run-buttons"):
        w.run_btn = gr.Button("Run", variant="primary", scale=3)
        w.stop_btn = gr.Button("Stop", variant="stop", scale=1)


def param_widget(param: Param, value, visible: bool):
    """The widget of one pattern parameter, from its declaration (engine/patterns/registry.py)."""
    label = param.label or param.name
    if param.choices:
        return gr.Radio(field_choices(param.name), value=value, label=label, visible=visible, info=param.info)
    if param.type is bool:
        return gr.Checkbox(value, label=label, visible=visible, info=param.info)
    if param.type is float and param.high is not None:
        return gr.Slider(param.low or 0, param.high, value=value, step=param.step or 0.01, label=label,
                         visible=visible, info=param.info)
    return gr.Number(value, precision=0 if param.type is int else None, minimum=param.low, maximum=param.high,
                     step=param.step or 1, label=label, visible=visible, info=param.info)


def pattern_widgets(spec: PruneSpec, field, shown: dict) -> None:
    """A widget per pattern parameter (a slider per element of a tuple, e.g. the three tier ratios), shown when
    `spec`'s pattern reads it; parameters sharing a row sit side by side. `shown`: widget or box -> its fields."""
    reads = set(pattern_fields(spec.pattern))
    params = list(form_params().values())
    i = 0
    while i < len(params):
        row = [params[i]]
        while params[i].row and i + len(row) < len(params) and params[i + len(row)].row == params[i].row:
            row.append(params[i + len(row)])
        i += len(row)
        visible = any(p.name in reads for p in row)
        if row[0].parts:  # a tuple: one slider per element, summing to 1 (rebalance)
            with gr.Column(visible=visible) as box:
                gr.Markdown("Tier split of the blocks — moving one slider rescales the other two in proportion, "
                            "so the three always sum to 1.", elem_classes="note")
                for (name, label), value in zip(row[0].parts, getattr(spec, row[0].name)):
                    field(name, gr.Slider(0, 1, value=value, step=0.01, label=label))
        elif len(row) > 1:
            with gr.Row(visible=visible) as box:
                for p in row:
                    field(p.name, param_widget(p, getattr(spec, p.name), True))
        else:
            box = field(row[0].name, param_widget(row[0], getattr(spec, row[0].name), visible))
        shown[box] = tuple(p.name for p in row)


def nominal_fields() -> list[str]:
    """The form fields the nominal sparsity line reads."""
    return [*NOMINAL_INPUTS, *(f for p in form_params().values() for f in form_fields(p))]


def shown_for(page, pattern: str) -> dict:
    """Which of the form's pattern widgets and boxes `pattern` shows: those setting a field the pattern reads."""
    reads = set(pattern_fields(pattern))
    return {part: bool(reads & set(fields)) for part, fields in page.setup.parts.items()}


def wire(page) -> None:
    w, f = page.setup, page.setup.fields
    f["pattern"].change(lambda pattern: [gr.update(visible=v) for v in shown_for(page, pattern).values()],
                        f["pattern"], list(w.parts), **QUIET)
    gr.on([f["method"].change, f["reconstruct"].change], lambda m, r: gr.update(visible=uses_calibration(m, r)),
          [f["method"], f["reconstruct"]], w.calib_box, **QUIET)

    ratios = [f["ratio_dense"], f["ratio_24"], f["ratio_topk"]]
    for i, slider in enumerate(ratios):
        slider.input(lambda a, b, c, i=i: rebalance(i, (a, b, c)), ratios, ratios, trigger_mode="always_last",
                     **QUIET)
    recipe_outputs = [f[name] for name in ("method", "tier_scope", "assignment", "within_block", "reconstruct")]
    recipe_outputs += [*ratios, f["keep"], f["block_rule"], f["pattern"]]
    w.original_btn.click(lambda: recipe_values(ORIGINAL_RECIPE), None, recipe_outputs, **QUIET)
    w.best_btn.click(lambda: recipe_values(BEST_THREE_TIER), None, recipe_outputs, **QUIET)

    names = nominal_fields()
    gr.on([f[name].change for name in names], lambda *values: nominal_text(dict(zip(names, values))),
          [f[name] for name in names], w.nominal, **QUIET)
    if not page.settings.public:
        f["calib"].change(lambda c: gr.Textbox(visible=c == "path"), f["calib"], f["calib_path"], **QUIET)
        f["eval_source"].change(lambda c: gr.Textbox(visible=c == "path"), f["eval_source"], f["eval_path"], **QUIET)
