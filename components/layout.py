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


# Plot clicks relayed to hidden text boxes, whose change events do the work: a click on a cell of #layer-heatmap
# writes "layer|module|time" into #heatmap-click (that matrix's tier map opens), a click on a point of #xs-pareto
# writes "n|time" into #pareto-click (that split's maps open). Plotly's own plotly_click listeners are dropped
# whenever Gradio redraws a figure, so one listener on the document reads the point Plotly last hovered.
CLICK_RELAY_JS = """
() => {
  if (window.__sparsityClicks) return;
  window.__sparsityClicks = true;
  const relays = [
    ['#layer-heatmap .js-plotly-plot', '#heatmap-click',
     (p) => (p.z === null || p.z === undefined || Number.isNaN(p.z)) ? null : `${p.y}|${p.x}`],
    ['#xs-pareto .js-plotly-plot', '#pareto-click',
     (p) => (typeof p.text === 'string' && p.text.startsWith('#')) ? p.text.slice(1) : null],
  ];
  document.addEventListener('click', (event) => {
    for (const [plotSel, boxSel, value] of relays) {
      const plot = event.target.closest && event.target.closest(plotSel);
      if (!plot || !plot._hoverdata || !plot._hoverdata.length) continue;
      const v = value(plot._hoverdata[0]);
      const box = document.querySelector(`${boxSel} textarea, ${boxSel} input`);
      if (v === null || !box) continue;
      box.value = `${v}|${Date.now()}`;
      box.dispatchEvent(new Event('input', {bubbles: true}));
    }
  }, true);
}
"""
