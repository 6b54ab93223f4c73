"""Zero-shot accuracy bars from run records (record["zero_shot"], filled by `--eval_zero_shot`). Pure: records in,
a figure out."""
from __future__ import annotations

import plotly.graph_objects as go

from engine.eval.zeroshot import PAPER_TASKS

from .figures import BASELINE_COLORS, _layout, empty_figure


def zero_shot_figure(record: dict | None, dense_record: dict | None = None) -> go.Figure:
    """Accuracy per task, dense beside this run, plus their mean (the paper's table as bars).

    The dense numbers come from `dense_record["zero_shot"]` when given (e.g. an unpruned run), else from this
    record's own `zero_shot_dense` (a run with baselines). Error bars are lm-eval's standard errors.
    """
    pruned = (record or {}).get("zero_shot") or {}
    dense = ((dense_record or {}).get("zero_shot") if dense_record else (record or {}).get("zero_shot_dense")) or {}
    if not pruned and not dense:
        return empty_figure("Zero-shot accuracy appears here after a run with zero-shot evaluation", 280)
    tasks = task_order([*pruned, *dense])
    method = ((record or {}).get("spec") or {}).get("method", "pruned")
    fig = go.Figure()
    for key, scores, label in (("dense", dense, "dense"), ("pruned", pruned, f"this run ({method})")):
        if not scores:
            continue
        shown = [t for t in tasks if t in scores]
        x, y, err = shown, [scores[t]["acc"] for t in shown], [scores[t].get("acc_stderr") or 0 for t in shown]
        if len(shown) > 1 and shown == tasks:  # a mean only over a full set, so the two means compare like for like
            x, y, err = x + ["mean"], y + [sum(y) / len(y)], err + [0]
        hover = [_hover(scores.get(t), label) for t in x]
        fig.add_trace(go.Bar(name=label, x=x, y=y, marker_color=BASELINE_COLORS[key],
                             error_y=dict(type="data", array=err, visible=any(err), thickness=1, width=3),
                             text=[f"{v:.3f}" for v in y], textposition="outside", cliponaxis=False,
                             hovertext=hover, hoverinfo="text"))
    fig.update_yaxes(title="accuracy (higher is better)", range=[0, 1.08])
    return _layout(fig, "Zero-shot accuracy", height=320, barmode="group",
                   legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))


def task_order(names) -> list[str]:
    """The paper's seven tasks in the paper's order, then any others in the order they first appear."""
    names = list(dict.fromkeys(names))
    return [t for t in PAPER_TASKS if t in names] + [t for t in names if t not in PAPER_TASKS]


def _hover(entry: dict | None, label: str) -> str:
    if entry is None:  # the mean bar
        return f"{label}<br>mean accuracy over the tasks shown"
    parts = [label, f"acc {entry['acc']:.4f}" + (f" ± {entry['acc_stderr']:.4f}" if entry.get("acc_stderr") else "")]
    if entry.get("acc_norm") is not None:
        parts.append(f"acc_norm {entry['acc_norm']:.4f}")
    if entry.get("n"):
        parts.append(f"{entry['n']} items")
    return "<br>".join(parts)
