"""Static pieces of the page: header, status banner, the script that turns a heatmap click into a selection."""
from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from .figures import TIER_COLORS, TIER_LABELS

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CSS_PATH = ASSETS / "style.css"


def theme() -> gr.themes.Base:
    return gr.themes.Default(primary_hue=gr.themes.colors.blue, neutral_hue=gr.themes.colors.slate,
                             font=["Inter", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
                             font_mono=["JetBrains Mono", "ui-monospace", "SFMono-Regular", "Menlo", "monospace"],
                             radius_size=gr.themes.sizes.radius_sm, spacing_size=gr.themes.sizes.spacing_md)


def header_html() -> str:
    swatches = "".join(f"<span><span class='sw' style='background:{TIER_COLORS[t]}'></span>{TIER_LABELS[t]}</span>"
                       for t in TIER_COLORS)
    return ("<div id='header'><h1>LLM sparsity explorer</h1>"
            "<p>Prune a Hugging Face causal LM with magnitude, Wanda or SparseGPT — unstructured, N:M, or "
            "<b>three-tier</b>: every weight matrix is cut into 16×16 blocks, ranked by importance and split into "
            f"<span class='tiers'>{swatches}</span> blocks (top-K keeps K weights per block). "
            "Then see where the zeros went, layer by layer and block by block, and what it costs in perplexity."
            "</p></div>")


def banner(kind: str, text: str) -> str:
    """kind: ok | warn | err | info. The text is escaped: engine messages may quote user input."""
    icon = {"ok": "✓", "warn": "■", "err": "⚠", "info": "…"}[kind]
    return f"<div class='banner {kind}'>{icon} {html.escape(text)}</div>"


# A plotly click inside #layer-heatmap writes "layer|module|time" into the hidden #heatmap-click box; the box's
# change event opens that matrix's tier map. Plotly's own plotly_click listeners are dropped whenever Gradio
# redraws the figure, so this listens on the document and reads the point Plotly last hovered.
HEATMAP_CLICK_JS = """
() => {
  if (window.__sparsityHeatmapClick) return;
  window.__sparsityHeatmapClick = true;
  document.addEventListener('click', (event) => {
    const plot = event.target.closest && event.target.closest('#layer-heatmap .js-plotly-plot');
    if (!plot || !plot._hoverdata || !plot._hoverdata.length) return;
    const point = plot._hoverdata[0];
    if (point.z === null || point.z === undefined || Number.isNaN(point.z)) return;
    const box = document.querySelector('#heatmap-click textarea, #heatmap-click input');
    if (!box) return;
    box.value = `${point.y}|${point.x}|${Date.now()}`;
    box.dispatchEvent(new Event('input', {bubbles: true}));
  }, true);
}
"""
