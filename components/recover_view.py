"""The dashboard's Recover step: the form's fine-tune fields -> a FinetuneSpec, the live loss curve, and the
perplexity before / after beside dense and magnitude. Pure: values in, specs / figures / HTML out."""
from __future__ import annotations

import html
import math

import plotly.graph_objects as go

from components.figures import BASELINE_COLORS, _layout, empty_figure
from engine.cli.finetune_cli import DEFAULT_LR
from engine.errors import UserError
from engine.recover.masked_finetune import FinetuneSpec

DEFAULTS = FinetuneSpec()
PUBLIC_MAX_STEPS = 60  # a public server's cap on fine-tune steps
CPU_NOTE = ("On CPU a step of 4 windows x 128 tokens of SmolLM2-135M takes seconds: the default is a few dozen steps. "
            "On a GPU the Trainer runs bf16/fp16 mixed precision and the same steps take a fraction of a second, so "
            "hundreds of steps of longer windows (an epoch, as in the 7B recipe of the Wanda hybrid of Ji et al.) "
            "become practical.")


def finetune_from_form(steps, lr, lora_rank, public: bool = False) -> FinetuneSpec | None:
    """Steps 0 or blank = no fine-tune; LoRA rank 0 or blank = full fine-tuning. Checked here, once."""
    if steps in (None, "") or (isinstance(steps, (int, float)) and steps == 0):
        return None
    try:
        steps_i = int(steps)
        rank = int(lora_rank) if lora_rank not in (None, "", 0) else None
        lr_f = float(lr) if lr not in (None, "") else DEFAULTS.lr
    except (TypeError, ValueError) as e:
        raise UserError(f"recover settings must be numbers ({e})") from e
    if steps_i != steps:
        raise UserError(f"fine-tune steps must be a whole number >= 1, got {steps!r}")
    if public and steps_i > PUBLIC_MAX_STEPS:
        raise UserError(f"at most {PUBLIC_MAX_STEPS} fine-tune steps on this server, got {steps_i}")
    return FinetuneSpec(steps=steps_i, lr=lr_f, lora_rank=rank).validate()


def recover_spec_from_form(steps, lr, mode: str, lora_rank, public: bool = False) -> FinetuneSpec:
    """The Recover tab's fields -> a FinetuneSpec: steps must be >= 1 here (the button asks for a fine-tune), LoRA
    needs its rank, and a blank learning rate is the default of the mode (engine/cli/finetune_cli.py)."""
    if steps in (None, "") or (isinstance(steps, (int, float)) and steps < 1):
        raise UserError(f"fine-tune steps must be a whole number >= 1, got {steps!r}")
    lora = mode == "LoRA"
    if lora and lora_rank in (None, "", 0):
        raise UserError("LoRA needs a rank >= 1 (or choose full fine-tuning)")
    lr = DEFAULT_LR["lora" if lora else "full"] if lr in (None, "") else lr
    return finetune_from_form(steps, lr, lora_rank if lora else 0, public=public)


def curve_from_events(curve: dict, event: dict) -> bool:
    """Fold one engine event into {"train": [[step, loss]], "heldout": [...]}; True when the curve grew."""
    if event.get("stage") != "finetune" or "step" not in event:
        return False
    grew = False
    for key, name in (("loss", "train"), ("heldout_loss", "heldout")):
        if key in event:
            curve.setdefault(name, []).append([event["step"], event[key]])
            grew = True
    return grew


def loss_curve_figure(curve: dict | None, title: str = "Fine-tune loss (zeros held)") -> go.Figure:
    """Train loss per step and held-out loss, as the engine reports them."""
    curve = curve or {}
    if not curve.get("train") and not curve.get("heldout"):
        return empty_figure("No fine-tune yet: press Recover on a finished run")
    fig = go.Figure()
    for name, color, mode in (("train", BASELINE_COLORS["pruned"], "lines"),
                              ("heldout", BASELINE_COLORS["magnitude"], "lines+markers")):
        points = curve.get(name) or []
        if points:
            fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode=mode, name=
                                     "train" if name == "train" else "held-out", line=dict(color=color)))
    fig.update_xaxes(title="optimizer step")
    fig.update_yaxes(title="loss (nats / token)")
    return _layout(fig, title, height=340, legend=dict(orientation="h", y=1.02, x=1, xanchor="right"))


def progressive_figure(entries: list | None) -> go.Figure:
    """A progressive schedule's iterations: perplexity after pruning (and after each fine-tune) and sparsity, the
    iteration's tier ratios in the hover."""
    if not entries:
        return empty_figure("Not a progressive run (main_progressive_three_tier.py records its iterations here)")
    x = [e["iteration"] for e in entries]
    ratios = ["/".join(f"{r:g}" for r in e["ratios"]) for e in entries]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=[e.get("ppl_pruned") for e in entries], name="perplexity, pruned",
                             mode="lines+markers", customdata=ratios, line=dict(color=BASELINE_COLORS["magnitude"]),
                             hovertemplate="iteration %{x}, ratios %{customdata}<br>perplexity %{y:.2f}"
                                           "<extra></extra>"))
    after = [(e.get("recovery") or {}).get("ppl_after") for e in entries]
    if any(v is not None for v in after):
        fig.add_trace(go.Scatter(x=x, y=after, name="perplexity, fine-tuned", mode="lines+markers",
                                 customdata=ratios, line=dict(color=BASELINE_COLORS["pruned"]),
                                 hovertemplate="iteration %{x}, ratios %{customdata}<br>perplexity %{y:.2f}"
                                               "<extra></extra>"))
    fig.add_trace(go.Bar(x=x, y=[e["sparsity"] for e in entries], name="sparsity", yaxis="y2", opacity=0.25,
                         customdata=ratios, marker_color=BASELINE_COLORS["dense"],
                         hovertemplate="iteration %{x}, ratios %{customdata}<br>sparsity %{y:.1%}<extra></extra>"))
    fig.update_layout(yaxis=dict(title="perplexity"), xaxis=dict(title="iteration", dtick=1),
                      yaxis2=dict(title="sparsity", overlaying="y", side="right", tickformat=".0%", rangemode="tozero"))
    return _layout(fig, "Progressive schedule: each iteration demotes blocks only", height=340,
                   legend=dict(orientation="h", y=1.02, x=1, xanchor="right"))


def recovery_html(record: dict | None) -> str:
    """Perplexity before and after the fine-tune beside dense and magnitude, with the settings and the zeros check."""
    block = (record or {}).get("recovery")
    if not block:
        return ("<div class='note'>No recovery for this run. Press <b>Recover</b> above to fine-tune its pruned "
                "model with the zeros held (or set <i>Set-up › Recover › Steps</i> before Run).</div>"
                "<div class='note'>" + html.escape(CPU_NOTE) + "</div>")
    ppl = (record or {}).get("ppl") or {}
    rows = [("dense", ppl.get("dense")), ("magnitude (same pattern)", ppl.get("magnitude")),
            ("pruned", block.get("ppl_before")), ("pruned + fine-tune", block.get("ppl_after"))]
    s = block.get("settings") or {}
    kind = f"LoRA rank {s['lora_rank']} merged under the mask" if s.get("lora_rank") else "full fine-tuning"
    zeros = "every pruned weight still exactly 0" if block.get("zeros_held") else "ZEROS CHANGED"
    cells = "".join(f"<tr><td>{html.escape(n)}</td><td>{_fmt(v)}</td></tr>" for n, v in rows)
    return (f"<table class='overview'><tr><th>model</th><th>perplexity</th></tr>{cells}</table>"
            f"<div class='note'>{html.escape(block.get('status', ''))}: {block.get('steps_done')} of {s.get('steps')} "
            f"steps, {html.escape(kind)}, lr {s.get('lr')}, {s.get('batch_size')} x {s.get('seqlen')} tokens per step; "
            f"{zeros} ({block.get('zeros_after')} zeros). "
            f"Text: {html.escape(str((block.get('data') or {}).get('train')))}."
            f"</div><div class='note'>{html.escape(CPU_NOTE)}</div>")


def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.2f}"
