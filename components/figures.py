"""Plotly figures drawn from run records (see engine/io/record.py for the layout). Pure: a record in, a figure out.

Nothing here computes masks or scores; it only reads what the engine wrote. Large tier maps are pooled into
super-blocks before drawing, because a browser gains nothing from more cells than it has pixels.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.io.record import decode_array, decode_tier_map
from engine.spec import TIER_NAMES, spec_label

from .explore_session import EXACT_REFERENCE, REFERENCE, SEARCH, SPLIT, pareto_front
from .registry import method_colours, pattern_marker, tier_split

# Okabe-Ito colours: told apart by readers with the common colour-vision deficiencies.
TIER_COLORS = {"dense": "#0072B2", "2:4": "#E69F00", "topk": "#CC79A7"}
TIER_LABELS = {"dense": "dense", "2:4": "2:4", "topk": "top-K"}
BASELINE_COLORS = {"dense": "#7f7f7f", "magnitude": "#D55E00", "pruned": "#0072B2"}
SPARSITY_SCALE = "Cividis"
MAX_TIER_CELLS = 40_000  # cells drawn in one tier map; ~200x200, more than a plot has pixels for
FONT = dict(family="Inter, system-ui, -apple-system, Segoe UI, sans-serif", size=12, color="#1f2937")


def _layout(fig: go.Figure, title: str | None = None, height: int = 360, **kw) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01, xanchor="left", font=dict(size=14)) if title else None,
                      height=height, template="plotly_white", font=FONT,
                      margin=dict(l=60, r=20, t=50 if title else 20, b=50), **kw)
    return fig


def empty_figure(message: str = "No run yet", height: int = 300) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font=dict(size=14, color="#6b7280"),
                       xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, height=height)


# -- layers x modules ------------------------------------------------------------------------------------------

def module_order(record: dict) -> list[str]:
    """Module names in the order the architecture lists them (first appearance)."""
    return list(dict.fromkeys(m["module"] for m in record.get("matrices", [])))


def layer_grid(record: dict, value) -> np.ndarray:
    """[n_layers, n_modules] of value(matrix_entry); NaN where a layer is not pruned (yet) or lacks the module."""
    modules = module_order(record)
    col = {name: j for j, name in enumerate(modules)}
    n_layers = max(int(record.get("n_layers") or 0),
                   1 + max((m["layer"] for m in record.get("matrices", [])), default=-1))
    grid = np.full((n_layers, len(modules)), np.nan)
    for m in record.get("matrices", []):
        grid[m["layer"], col[m["module"]]] = value(m)
    return grid


def _tier_share(tier: str):
    def share(m):
        tiers = m.get("tiers") or {}
        total = sum(tiers.values())
        return tiers.get(tier, 0) / total if total else np.nan
    return share


def _layers_height(n_layers: int) -> int:
    return int(min(900, max(320, 16 * n_layers + 130)))


def layer_heatmap(record: dict | None, title: str | None = "Realised sparsity per matrix") -> go.Figure:
    """Decoder layers (rows, 0 at the top) x module names (columns), colour = realised sparsity.

    Layers not pruned yet stay blank, so the map fills in as a run streams.
    """
    if not record or not record.get("matrices"):
        return empty_figure("Per-layer sparsity appears here as layers finish")
    modules = module_order(record)
    grid = layer_grid(record, lambda m: m["sparsity"])
    n_layers = grid.shape[0]
    fig = go.Figure(go.Heatmap(
        z=grid, x=modules, y=list(range(n_layers)), colorscale=SPARSITY_SCALE, hoverongaps=False,
        zmin=float(np.nanmin(grid)) if np.isfinite(grid).any() else 0,
        zmax=float(np.nanmax(grid)) if np.isfinite(grid).any() else 1,
        colorbar=dict(title=dict(text="sparsity", side="right"), tickformat=".0%", thickness=12),
        hovertemplate="layer %{y} · %{x}<br>sparsity %{z:.2%}<br><i>click for the tier map</i><extra></extra>"))
    fig.update_yaxes(title="decoder layer", autorange="reversed", dtick=1 if n_layers <= 32 else None)
    fig.update_xaxes(title=None, tickangle=-30, type="category")
    return _layout(fig, title, height=_layers_height(n_layers))


def tier_share_heatmaps(record: dict | None) -> go.Figure:
    """Three-tier runs: one layers x modules panel per tier, colour = share of that matrix's blocks in the tier."""
    if not record or not record.get("matrices"):
        return empty_figure("Tier shares appear here as layers finish")
    if not any(m.get("tiers") for m in record["matrices"]):
        return empty_figure("Tier shares exist for three-tier runs only")
    modules = module_order(record)
    fig = make_subplots(rows=1, cols=3, shared_yaxes=True, horizontal_spacing=0.025,
                        subplot_titles=[f"{TIER_LABELS[t]} share" for t in TIER_NAMES])
    for i, tier in enumerate(TIER_NAMES):
        grid = layer_grid(record, _tier_share(tier))
        fig.add_trace(go.Heatmap(
            z=grid, x=modules, y=list(range(grid.shape[0])), zmin=0, zmax=1, hoverongaps=False,
            colorscale=[[0, "#ffffff"], [1, TIER_COLORS[tier]]], showscale=False,
            hovertemplate=f"layer %{{y}} · %{{x}}<br>{TIER_LABELS[tier]} blocks %{{z:.1%}}<extra></extra>"),
            row=1, col=i + 1)
    n_layers = len(fig.data[0].y)
    fig.update_yaxes(autorange="reversed")
    fig.update_yaxes(title="decoder layer", row=1, col=1)
    fig.update_xaxes(tickangle=-45, type="category")
    _layout(fig, "Share of each matrix's blocks in each tier (white 0% → full colour 100%)",
            height=_layers_height(n_layers) + 30)
    return fig.update_layout(margin_t=80)


# -- one matrix's tier map -------------------------------------------------------------------------------------

def pool_tiers(tiers: np.ndarray, importance: np.ndarray | None, factor: int):
    """Pool f x f blocks into super-blocks.

    tiers [R, C] int -> (majority [R', C'] int8, shares [R', C', 3] float, mean importance [R', C'] or None),
    R' = ceil(R / f). Ties go to the denser tier. Edge super-blocks count only the blocks they hold.
    """
    R, C = tiers.shape
    Rp, Cp = -(-R // factor), -(-C // factor)
    padded = np.full((Rp * factor, Cp * factor), -1, dtype=np.int8)
    padded[:R, :C] = tiers
    cells = padded.reshape(Rp, factor, Cp, factor)
    counts = np.stack([(cells == t).sum(axis=(1, 3)) for t in range(3)], axis=-1)  # [R', C', 3]
    held = counts.sum(axis=-1, keepdims=True)
    shares = counts / np.maximum(held, 1)
    majority = counts.argmax(axis=-1).astype(np.int8)
    mean_imp = None
    if importance is not None:
        imp = np.zeros((Rp * factor, Cp * factor), dtype=np.float64)
        imp[:R, :C] = importance
        mean_imp = imp.reshape(Rp, factor, Cp, factor).sum(axis=(1, 3)) / np.maximum(held[..., 0], 1)
    return majority, shares, mean_imp


def pool_factor(shape, max_cells: int = MAX_TIER_CELLS) -> int:
    """Smallest f such that a [R, C] grid pooled in f x f super-blocks has at most max_cells cells."""
    R, C = shape
    f = max(1, math.ceil(math.sqrt(R * C / max_cells)))
    while -(-R // f) * -(-C // f) > max_cells:
        f += 1
    return f


def _weight_ticks(n_cells: int, cell: int) -> tuple[list[float], list[str]]:
    """Tick positions at cell edges labelled in weight coordinates: about six per axis, a power-of-two number
    of cells apart (weight matrices are sized in powers of two: 128, 256, 512 ... read naturally)."""
    span = n_cells * cell
    step = cell
    while span / step > 6:
        step *= 2
    values = list(range(0, span + 1, step))
    return [v / cell - 0.5 for v in values], [f"{v:,}" for v in values]


def tier_map_figure(entry: dict | None, block: int = 16, max_cells: int = MAX_TIER_CELLS,
                    title: str | None = None) -> tuple[go.Figure, str]:
    """One matrix's B x B block tier map -> (figure, note). Axes in weight coordinates: input column, output row.

    Maps with more than max_cells blocks are pooled into f x f super-blocks coloured by their majority tier
    (hover gives the share of each tier); the note says so.
    """
    if not entry:
        return empty_figure("Choose a layer and a module (or click the heatmap) to see its tier map", 420), ""
    if not entry.get("tier_map"):
        return empty_figure(f"{entry['module']} (layer {entry['layer']}): no tier map — not a three-tier run",
                            420), ""
    tiers = decode_tier_map(entry["tier_map"])
    imp = decode_array(entry["block_importance"]) if entry.get("block_importance") else None
    R, C = tiers.shape
    out_dim, in_dim = entry.get("shape") or (R * block, C * block)
    f = pool_factor((R, C), max_cells)
    title = title or f"layer {entry['layer']} · {entry['module']}  [{out_dim:,} × {in_dim:,}]"
    fig = go.Figure()
    if f == 1:
        note = f"{R} × {C} blocks of {block} × {block} weights, every block drawn."
        shown, shares, shown_imp = tiers, None, imp
    else:
        shown, shares, shown_imp = pool_tiers(tiers, imp, f)
        note = (f"{R:,} × {C:,} blocks is more than {max_cells:,} cells: drawn as {shown.shape[0]:,} × "
                f"{shown.shape[1]:,} super-blocks of {f} × {f} blocks ({f * block} × {f * block} weights), "
                "coloured by their majority tier; "
                "hover for each tier's share.")
    cell = f * block
    for t, tier in enumerate(TIER_NAMES):
        where = shown == t
        z = np.where(where, shown_imp if shown_imp is not None else 1.0, np.nan).astype(np.float32)
        if shares is None:
            hover = (f"<b>{TIER_LABELS[tier]}</b><br>block row %{{y}}, col %{{x}}<br>"
                     + ("importance %{z:.4g}" if shown_imp is not None else "") + "<extra></extra>")
            custom = None
        else:
            hover = (f"<b>mostly {TIER_LABELS[tier]}</b><br>super-block row %{{y}}, col %{{x}} ({f}×{f} blocks)<br>"
                     "dense %{customdata[0]}% · 2:4 %{customdata[1]}% · top-K %{customdata[2]}%"
                     + ("<br>mean importance %{z:.4g}" if shown_imp is not None else "") + "<extra></extra>")
            custom = np.rint(shares * 100).astype(np.uint8)
        fig.add_trace(go.Heatmap(
            z=z, customdata=custom, name=TIER_LABELS[tier], legendgroup=tier, showlegend=False, showscale=False,
            colorscale=[[0, TIER_COLORS[tier]], [1, TIER_COLORS[tier]]], hoverongaps=False, hovertemplate=hover))
        # Heatmaps have no legend swatch; a marker-only trace with no points gives one, toggling its tier.
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=TIER_LABELS[tier], legendgroup=tier,
                                 marker=dict(symbol="square", size=12, color=TIER_COLORS[tier])))
    xt, xl = _weight_ticks(shown.shape[1], cell)
    yt, yl = _weight_ticks(shown.shape[0], cell)
    fig.update_xaxes(title="input column", tickvals=xt, ticktext=xl, range=[-0.5, shown.shape[1] - 0.5],
                     showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(title="output row", tickvals=yt, ticktext=yl, range=[shown.shape[0] - 0.5, -0.5],
                     showgrid=False, zeroline=False, scaleanchor="x", scaleratio=1, constrain="domain")
    aspect = shown.shape[0] / max(shown.shape[1], 1)
    height = int(min(640, max(360, 520 * aspect + 110)))
    return _layout(fig, title, height=height, legend=dict(x=1.02, y=1, xanchor="left", yanchor="top"),
                   plot_bgcolor="#ffffff"), note


def find_matrix(record: dict | None, layer, module) -> dict | None:
    if not record or layer is None or not module:
        return None
    for m in record.get("matrices", []):
        if m["layer"] == int(layer) and m["module"] == module:
            return m
    return None


# -- results and comparisons -----------------------------------------------------------------------------------

def _log_axis(values) -> bool:
    v = [x for x in values if x]
    return bool(v) and max(v) / min(v) > 8


def ppl_bars(record: dict | None) -> go.Figure:
    """Perplexity of the pruned model beside the dense model and magnitude pruning at the same sparsity."""
    ppl = (record or {}).get("ppl") or {}
    if not any(ppl.get(k) for k in ("pruned", "dense", "magnitude")):
        return empty_figure("Perplexity appears here after evaluation", 280)
    method = (record.get("spec") or {}).get("method", "pruned")
    rows = [("dense", "dense"), ("magnitude", "magnitude (same pattern)"), ("pruned", f"this run ({method})")]
    rows = [(k, label) for k, label in rows if ppl.get(k)]
    values = [ppl[k] for k, _ in rows]
    fig = go.Figure(go.Bar(x=[label for _, label in rows], y=values, marker_color=[BASELINE_COLORS[k] for k, _ in rows],
                           text=[f"{v:,.2f}" for v in values], textposition="outside", cliponaxis=False,
                           hovertemplate="%{x}<br>perplexity %{y:,.3f}<extra></extra>"))
    log = _log_axis(values)
    fig.update_yaxes(title="perplexity (lower is better)", type="log" if log else "linear", dtick=1 if log else None,
                     rangemode="tozero")
    return _layout(fig, "Perplexity", height=300, showlegend=False)


def ppl_vs_sparsity(records: list[dict]) -> go.Figure:
    """Every finished run of the session: realised sparsity vs perplexity, one colour per method."""
    pts = [dict(r, _number=i) for i, r in enumerate(records, 1) if (r.get("ppl") or {}).get("pruned")]
    if not pts:
        return empty_figure("Runs with a perplexity appear here", 340)
    fig = go.Figure()
    colors = method_colours()
    for method in dict.fromkeys(r["spec"]["method"] for r in pts):
        rs = [r for r in pts if r["spec"]["method"] == method]
        fig.add_trace(go.Scatter(
            x=[r["sparsity"] for r in rs], y=[r["ppl"]["pruned"] for r in rs], mode="markers", name=method,
            marker=dict(size=11, color=colors.get(method),
                        symbol=[pattern_marker(r["spec"].get("pattern")) for r in rs],
                        line=dict(width=1, color="#ffffff")),
            text=[f"#{r['_number']} {spec_label(r.get('spec'))}" for r in rs],
            hovertemplate="%{text}<br>sparsity %{x:.2%}<br>perplexity %{y:,.3f}<extra></extra>"))
    dense = [r["ppl"]["dense"] for r in pts if r["ppl"].get("dense")]
    if dense:
        fig.add_hline(y=dense[-1], line_dash="dot", line_color="#7f7f7f", annotation_text=f"dense {dense[-1]:,.2f}",
                      annotation_position="bottom right")
    ys = [r["ppl"]["pruned"] for r in pts] + dense
    fig.update_xaxes(title="realised sparsity", tickformat=".0%")
    log = _log_axis(ys)
    fig.update_yaxes(title="perplexity", type="log" if log else "linear", dtick=1 if log else None)
    return _layout(fig, "Perplexity vs sparsity, all runs of this session", height=360)


def ternary_sweep(records: list[dict], keep: int | None = None, block: int | None = None) -> go.Figure:
    """Three-tier runs placed by their split (dense, 2:4, top-K), coloured by perplexity, with iso-sparsity lines."""
    pts = [r for r in records if tier_split(r["spec"].get("pattern"))]
    if pts:  # only runs comparable with the latest: same model and everything but the split
        pts = [r for r in pts if _setup(r) == _setup(pts[-1])]
    fig = go.Figure()
    if pts:
        keep = keep if keep is not None else pts[-1]["spec"]["keep"]
        block = block if block is not None else pts[-1]["spec"]["block"]
    q = 1 - (keep if keep is not None else 15) / (block or 16) ** 2  # share of a top-K block that is zero
    for s in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        # sparsity = b/2 + c*q is a straight line across the triangle.
        c = np.linspace(0, 1, 101)
        b = 2 * (s - c * q)
        a = 1 - b - c
        ok = (b >= -1e-9) & (a >= -1e-9)
        if ok.sum() < 2:
            continue
        fig.add_trace(go.Scatterternary(a=a[ok], b=b[ok], c=c[ok], mode="lines", showlegend=False, hoverinfo="skip",
                                        line=dict(color="#c7ccd4", width=1, dash="dot")))
        i = np.flatnonzero(ok)[len(np.flatnonzero(ok)) // 2]
        fig.add_trace(go.Scatterternary(a=[a[i]], b=[b[i]], c=[c[i]], mode="text", text=[f"{s:.0%}"], showlegend=False,
                                        hoverinfo="skip", textfont=dict(size=9, color="#9ca3af")))
    done = [r for r in pts if (r.get("ppl") or {}).get("pruned")]
    pending = [r for r in pts if not (r.get("ppl") or {}).get("pruned")]
    if done:
        ppl = np.array([r["ppl"]["pruned"] for r in done])
        fig.add_trace(go.Scatterternary(
            a=[r["spec"]["ratios"][0] for r in done], b=[r["spec"]["ratios"][1] for r in done],
            c=[r["spec"]["ratios"][2] for r in done], mode="markers+text", name="runs",
            text=[f"{p:,.1f}" for p in ppl], textposition="top center", textfont=dict(size=10),
            customdata=np.stack([ppl, [r["sparsity"] for r in done]], axis=-1),
            marker=dict(size=14, color=np.log10(ppl), colorscale="Viridis", line=dict(width=1, color="#ffffff"),
                        colorbar=dict(title=dict(text="perplexity", side="right"), thickness=12,
                                      tickvals=_log_ticks(ppl), ticktext=[f"{10 ** v:,.3g}" for v in _log_ticks(ppl)])),
            hovertemplate="dense %{a:.2f} · 2:4 %{b:.2f} · top-K %{c:.2f}<br>perplexity %{customdata[0]:,.3f}"
                          "<br>sparsity %{customdata[1]:.2%}<extra></extra>"))
    if pending:
        fig.add_trace(go.Scatterternary(
            a=[r["spec"]["ratios"][0] for r in pending], b=[r["spec"]["ratios"][1] for r in pending],
            c=[r["spec"]["ratios"][2] for r in pending], mode="markers", name="no perplexity",
            marker=dict(size=10, color="#ffffff", line=dict(width=1.5, color="#6b7280")),
            hovertemplate="dense %{a:.2f} · 2:4 %{b:.2f} · top-K %{c:.2f}<extra>no perplexity</extra>"))
    axis = dict(min=0, linewidth=1, ticks="outside", tickformat=".1f")
    fig.update_layout(ternary=dict(sum=1, aaxis=dict(title="dense", **axis), baxis=dict(title="2:4", **axis),
                                   caxis=dict(title="top-K", **axis), bgcolor="#fafafa"), showlegend=False)
    title = "Perplexity over the tier split" + (
        f" · {pts[-1]['spec']['method']}, K={keep}, B={block} · dotted: equal sparsity" if pts else "")
    if not pts:
        fig.add_annotation(text="Three-tier runs and sweep points appear here", showarrow=False, xref="paper",
                           yref="paper", x=0.5, y=1.08, font=dict(color="#6b7280"))
    _layout(fig, title, height=480)
    return fig.update_layout(margin=dict(t=90, b=60))


def _setup(record: dict) -> tuple:
    s = record["spec"]
    return ((record.get("model") or {}).get("name"), s["method"], s["keep"], s["block"], s["tier_scope"],
            s["within_block"], s.get("reconstruct"))


def _log_ticks(ppl: np.ndarray) -> list[float]:
    lo, hi = float(np.log10(ppl.min())), float(np.log10(ppl.max()))
    if hi - lo < 1e-9:
        return [lo]
    return list(np.linspace(lo, hi, 5))


# -- explored splits -----------------------------------------------------------------------------------------------

PARETO_AXES = {"sparsity": "sparsity of the masks", "storage": "estimated storage of the pruned weights (MiB)"}


def pareto_figure(points: list[dict], axis: str = "sparsity") -> go.Figure:
    """Every explored split (estimated perplexity +- spread) against sparsity or estimated storage, the Pareto
    front of the estimates, references (2:4, unstructured; re-planned, or pruned for real) as open symbols, and the
    exact run where one was made."""
    pts = [p for p in points if p.get("ppl")]
    if not pts:
        return empty_figure("Explored splits appear here once their estimate is in", 360)
    storage = axis == "storage"

    def xs(rs):
        return [r["storage"] / 2**20 if storage else r["sparsity"] for r in rs]
    fig = go.Figure()
    x_all, y_all = xs(pts), [p["ppl"] for p in pts]
    front = pareto_front(x_all, y_all, more_x_is_better=not storage)
    fig.add_trace(go.Scatter(x=[x_all[i] for i in front], y=[y_all[i] for i in front], mode="lines",
                             name="Pareto front", line=dict(color="#9ca3af", dash="dash", width=1.5),
                             hoverinfo="skip"))
    groups = [(SPLIT, how, f"explored split (estimate, {how})", symbol, TIER_COLORS["dense"])
              for how, symbol in (("masks only", "circle-open"), ("with update", "circle"))]
    groups.append((SEARCH, "masks only", "search trial (estimate)", "circle-open", "#0072B2"))
    groups += [(REFERENCE, how, f"reference (estimate, {how})", symbol, "#D55E00")
               for how, symbol in (("masks only", "square-open"), ("with update", "square"))]
    groups.append((EXACT_REFERENCE, "exact", "SparseGPT reference (exact walk)", "diamond-open", "#CC79A7"))
    for kind, how, name, symbol, color in groups:
        rs = [p for p in pts if p["kind"] == kind and p.get("estimate", "exact" if kind == EXACT_REFERENCE
                                                               else "masks only") == how]
        if not rs:
            continue
        fig.add_trace(go.Scatter(
            x=xs(rs), y=[r["ppl"] for r in rs], mode="markers+text", name=name,
            text=[f"#{r['n']}" for r in rs], textposition="top center", textfont=dict(size=10),
            error_y=dict(type="data", symmetric=False, array=[r["ppl_high"] - r["ppl"] for r in rs],
                         arrayminus=[r["ppl"] - r["ppl_low"] for r in rs], thickness=1, color=color),
            marker=dict(size=11, symbol=symbol, color=color, line=dict(width=1.5, color=color)),
            customdata=[[r["label"], r["sparsity"], r["storage"] / 2**20] for r in rs],
            hovertemplate=f"#%{{text}} %{{customdata[0]}}<br>perplexity %{{y:,.2f}} ({how})<br>sparsity "
                          "%{customdata[1]:.2%}<br>storage %{customdata[2]:,.1f} MiB<extra></extra>"))
    exact = [p for p in pts if p.get("exact")]
    if exact:
        fig.add_trace(go.Scatter(
            x=xs(exact), y=[p["exact"] for p in exact], mode="markers", name="exact run",
            marker=dict(size=12, symbol="diamond", color="#009E73", line=dict(width=1, color="#ffffff")),
            text=[f"#{p['n']}" for p in exact],
            hovertemplate="#%{text} exact run<br>perplexity %{y:,.3f}<extra></extra>"))
    fig.update_xaxes(title=PARETO_AXES[axis], tickformat=None if storage else ".0%")
    log = _log_axis(y_all + [p["exact"] for p in exact])
    fig.update_yaxes(title="perplexity (lower is better)", type="log" if log else "linear")
    return _layout(fig, "Explored splits: perplexity vs " + ("storage" if storage else "sparsity"), height=380,
                   legend=dict(orientation="h", y=-0.2))
