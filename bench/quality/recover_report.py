"""bench/RECOVER.md and assets/recover-loss.png from the results of bench/quality/recover.py.

    python bench/quality/recover_report.py [results.json ...]     (default: bench/results/recover.json)

Several result files (rows run in separate processes) are merged. The figure is the dashboard's own loss-curve
curves, one panel per row, drawn with Pillow.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import REPO, RESULTS  # noqa: E402

ORDER = ["tt-rule", "tt-best", "24-sparsegpt", "dense"]
FIGURE = REPO / "assets" / "recover-loss.png"


def main() -> None:
    paths = sys.argv[1:] or [str(RESULTS / "recover.json")]
    rows = {}
    for p in paths:
        rows.update(json.loads(Path(p).read_text()))
    (RESULTS / "recover.json").write_text(json.dumps(rows, indent=1))
    keys = [k for k in ORDER if k in rows]
    render(rows, keys)
    text = table(rows, keys) + "\n\n" + curves(rows, keys)
    (REPO / "bench" / "results" / "recover-tables.md").write_text(text + "\n")
    print(text)


def table(rows: dict, keys: list[str]) -> str:
    lines = ["| row | pattern | sparsity | ppl before | ppl after | change | zeros (before = after) | held-out loss "
             "first → last | fine-tune s |", "|---|---|---|---|---|---|---|---|---|"]
    for k in keys:
        r, rec = rows[k], rows[k]["recovery"]
        held = rec["curve"]["heldout"]
        lines.append(f"| `{k}` | {r['label']} | {r['sparsity']:.4f} | {rec['ppl_before']:.2f} | {rec['ppl_after']:.2f} "
                     f"| {100 * (rec['ppl_after'] / rec['ppl_before'] - 1):+.1f}% | {rec['zeros_before']:,} = "
                     f"{rec['zeros_after']:,}: {'held' if rec['zeros_held'] else 'CHANGED'} | "
                     f"{held[0][1]:.3f} → {held[-1][1]:.3f} | {rec['seconds']:.0f} |")
    return "\n".join(lines)


def curves(rows: dict, keys: list[str]) -> str:
    """The loss curves as numbers: held-out loss at each measurement, train loss every 5 steps."""
    out = []
    for k in keys:
        c = rows[k]["recovery"]["curve"]
        train = {step: loss for step, loss in c["train"]}
        out.append(f"`{k}` held-out loss: " + ", ".join(f"{step}: {loss:.3f}" for step, loss in c["heldout"]))
        out.append(f"`{k}` train loss: "
                   + ", ".join(f"{s}: {train[s]:.3f}" for s in sorted(train) if s % 5 == 0 or s == 1))
    return "\n\n".join(out)


def render(rows: dict, keys: list[str]) -> None:
    """One panel per row: train loss (line) and held-out loss (line with dots), drawn with Pillow (this machine
    has no browser for plotly's image export)."""
    from PIL import Image, ImageDraw, ImageFont

    W, H, pad_l, pad_r, pad_t, pad_b = 340, 300, 58, 14, 46, 44
    img = Image.new("RGB", (W * len(keys), H + 34), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((10, 8), "Masked fine-tune of SmolLM2-135M on WikiText-2, zeros held: train (blue) and held-out "
                    "(orange, dots) loss per step", fill="#1f2937", font=font)
    for j, k in enumerate(keys):
        x0, y0 = j * W + pad_l, 34 + pad_t
        x1, y1 = (j + 1) * W - pad_r, 34 + H - pad_b
        c, rec = rows[k]["recovery"]["curve"], rows[k]["recovery"]
        pts = c["train"] + c["heldout"]
        steps = max(p[0] for p in pts)
        lo, hi = min(p[1] for p in pts), max(p[1] for p in pts)
        lo, hi = lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9)

        def xy(step, loss):
            return x0 + (x1 - x0) * step / steps, y1 - (y1 - y0) * (loss - lo) / (hi - lo)
        d.rectangle([x0, y0, x1, y1], outline="#9ca3af")
        for t in range(5):
            v = lo + (hi - lo) * t / 4
            y = xy(0, v)[1]
            d.line([x0 - 4, y, x0, y], fill="#6b7280")
            d.text((x0 - 40, y - 6), f"{v:.3f}" if hi - lo < 0.2 else f"{v:.2f}", fill="#374151", font=font)
        for t in range(0, steps + 1, max(1, steps // 6)):
            x = xy(t, lo)[0]
            d.line([x, y1, x, y1 + 4], fill="#6b7280")
            d.text((x - 6, y1 + 6), str(t), fill="#374151", font=font)
        d.text((x0 + (x1 - x0) / 2 - 12, y1 + 20), "step", fill="#374151", font=font)
        d.text((x0, 34 + 8), f"{k}: {rows[k]['sparsity']:.1%} sparse", fill="#111827", font=font)
        d.text((x0, 34 + 22), f"ppl {rec['ppl_before']:.1f} -> {rec['ppl_after']:.1f}", fill="#111827", font=font)
        d.line([xy(*p) for p in c["train"]], fill="#0072B2", width=2)
        d.line([xy(*p) for p in c["heldout"]], fill="#D55E00", width=2)
        for p in c["heldout"]:
            x, y = xy(*p)
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill="#D55E00")
    img.save(FIGURE)


if __name__ == "__main__":
    main()
