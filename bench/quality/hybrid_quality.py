"""Three-tier quality on the embedded SmolLM2-135M: a reference table, then one row per variant.

Protocol: calibration 32 windows x 512 tokens of valid.txt, evaluation 40 windows x 512 of test.txt,
Wanda scores unless the row says otherwise. Every row runs through the product's own path (engine.run.run).

    python bench/quality/hybrid_quality.py  # every row, writes bench/HYBRID.md and bench/results/hybrid.json
    python bench/quality/hybrid_quality.py --rows 'tt-*,24'  # rows whose key starts with tt-, and the row 24
    python bench/quality/hybrid_quality.py --quick          # 8 x 512 calibration, 10 x 512 evaluation: for exploring
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import DEFAULT_DATA, OBS_CHOICE_RECIPE, REPO, RESULTS  # noqa: E402
from engine.eval.perplexity import perplexity  # noqa: E402
from engine.io import text as textdata  # noqa: E402
from engine.run import ModelCache, RunRequest, run  # noqa: E402
from engine.spec import ORIGINAL_RECIPE, PruneSpec  # noqa: E402

# A reference table (an independent layer-wise implementation, same protocol), for the rows that reproduce it.
ISSUE = {"dense": 25.6, "un50": 49.9, "un50-obs": 45.5, "24": 131.9, "24-obs": 84.4, "tt-score": 396.3,
         "tt-score-obs": 138.5, "mag50": 296.9}
TT = dict(pattern="three_tier", ratios=(0.35, 0.45, 0.20), keep=15)
ROWS = [  # key, label, spec keyword arguments (None = dense)
    ("dense", "dense", None),
    ("un50", "Wanda unstructured 50%", dict(method="wanda", sparsity=0.5)),
    ("un50-obs", "Wanda unstructured 50% + OBS update", dict(method="wanda", sparsity=0.5, reconstruct=True)),
    ("24", "Wanda 2:4", dict(method="wanda", pattern="nm", n=2, m=4)),
    ("24-obs", "Wanda 2:4 + OBS update", dict(method="wanda", pattern="nm", n=2, m=4, reconstruct=True)),
    ("sgpt-24", "SparseGPT 2:4 (each group's 2 chosen during the OBS update): the strongest 2:4 of the engine",
     dict(method="sparsegpt", pattern="nm", n=2, m=4)),
    ("mag50", "magnitude unstructured 50%", dict(method="magnitude", sparsity=0.5)),
    ("original", "three-tier, ORIGINAL_RECIPE: the Wanda hybrid fork's rule (|W| inside blocks, int() counts, ties "
     "with the K-th kept, clipped edge blocks)", dict(ORIGINAL_RECIPE, **TT)),
    ("original-defaults", "three-tier, ORIGINAL_RECIPE with the fork's defaults 0.4/0.4/0.2, K=10",
     dict(ORIGINAL_RECIPE, pattern="three_tier")),
    ("tt-score", "three-tier, Wanda score inside blocks (matrix scope, importance, exact rule)",
     dict(method="wanda", **TT)),
    ("tt-score-obs", "three-tier, Wanda score inside blocks + OBS update",
     dict(method="wanda", reconstruct=True, **TT)),
    ("tt-magnitude", "three-tier, |W| inside blocks, exact rule (summed score, floor counts, exactly K)",
     dict(method="wanda", within_block="magnitude", **TT)),
    ("tt-layer", "three-tier, layer scope", dict(method="wanda", tier_scope="layer", **TT)),
    ("tt-model", "three-tier, model scope", dict(method="wanda", tier_scope="model", **TT)),
    ("tt-cost", "three-tier, cost assignment", dict(method="wanda", assignment="cost", **TT)),
    ("tt-cost-layer", "three-tier, cost assignment, layer scope",
     dict(method="wanda", assignment="cost", tier_scope="layer", **TT)),
    ("tt-cost-model", "three-tier, cost assignment, model scope",
     dict(method="wanda", assignment="cost", tier_scope="model", **TT)),
    ("tt-cost-obs", "three-tier, cost assignment + OBS update",
     dict(method="wanda", assignment="cost", reconstruct=True, **TT)),
    ("tt-cost-layer-obs", "three-tier, cost, layer scope + OBS update",
     dict(method="wanda", assignment="cost", tier_scope="layer", reconstruct=True, **TT)),
    ("tt-sgpt", "three-tier, SparseGPT (OBS saliency ranks, OBS update)", dict(method="sparsegpt", **TT)),
    ("tt-sgpt-cost-layer", "three-tier, SparseGPT, cost, layer scope",
     dict(method="sparsegpt", assignment="cost", tier_scope="layer", **TT)),
    ("fisher-24", "Fisher 2:4 (same scores as the fisher rows)", dict(method="fisher", pattern="nm", n=2, m=4)),
    ("fisher-24-obs", "Fisher 2:4 + OBS update", dict(method="fisher", pattern="nm", n=2, m=4, reconstruct=True)),
    ("tt-fisher-matrix", "three-tier, Fisher, cost, matrix scope", dict(method="fisher", assignment="cost", **TT)),
    ("tt-fisher-layer", "three-tier, Fisher, cost, layer scope",
     dict(method="fisher", assignment="cost", tier_scope="layer", **TT)),
    ("tt-fisher-imp", "three-tier, Fisher, importance, model scope", dict(method="fisher", tier_scope="model", **TT)),
    ("tt-fisher", "three-tier, Fisher, cost, model scope (best masks only)",
     dict(method="fisher", assignment="cost", tier_scope="model", **TT)),
    ("tt-fisher-obs", "three-tier, Fisher, cost, model scope + OBS update (mask fixed first)",
     dict(method="fisher", assignment="cost", tier_scope="model", reconstruct=True, **TT)),
    ("tt-fisher-obsw", "three-tier, Fisher, cost, model scope + OBS update, kept by OBS saliency",
     dict(method="fisher", assignment="cost", tier_scope="model", reconstruct=True, within_block="obs", **TT)),
    ("tt-cost-layer-obsw", "three-tier, Wanda, cost, layer scope + OBS update, kept by OBS saliency",
     dict(method="wanda", assignment="cost", tier_scope="layer", reconstruct=True, within_block="obs", **TT)),
    ("tt-sgpt-obsw", "three-tier, SparseGPT, matrix scope by importance, kept by OBS saliency during the update",
     dict(method="sparsegpt", within_block="obs", **TT)),
    ("tt-fw-matrix", "three-tier, Fisher-weighted Wanda, cost, matrix scope",
     dict(method="fisher_wanda", assignment="cost", **TT)),
    ("tt-fw-layer", "three-tier, Fisher-weighted Wanda, cost, layer scope",
     dict(method="fisher_wanda", assignment="cost", tier_scope="layer", **TT)),
    ("tt-fw-imp", "three-tier, Fisher-weighted Wanda, importance, model scope",
     dict(method="fisher_wanda", tier_scope="model", **TT)),
    ("tt-fw", "three-tier, Fisher-weighted Wanda, cost, model scope (best masks only)",
     dict(method="fisher_wanda", assignment="cost", tier_scope="model", **TT)),
    ("tt-fw-obs", "three-tier, Fisher-weighted Wanda, cost, model scope + OBS update (mask fixed first)",
     dict(method="fisher_wanda", assignment="cost", tier_scope="model", reconstruct=True, **TT)),
    ("block50", "the fork's block pruning: half of the 16x16 blocks removed (Wanda block scores)",
     dict(method="wanda", pattern="block", sparsity=0.5, within_block="magnitude")),
    ("hybrid-0.9-0.8", "the fork's threshold hybrid: top 0.9 of blocks 2:4 where it keeps 0.8 of the score, else "
     "dense; rest top-K, K=10", dict(method="wanda", pattern="threshold_hybrid", top_blocks_ratio=0.9,
                                      score_threshold=0.8, keep=10, within_block="magnitude")),
    ("tt-best", "three-tier, OBS_CHOICE_RECIPE: Fisher-weighted Wanda, cost, model scope, OBS update, kept by "
     "OBS saliency", dict(OBS_CHOICE_RECIPE, **TT)),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--rows", default="",
                   help="comma-separated row keys, run in that order; 'x*' = every key starting with x (default: all)")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--eval_windows", type=int, default=40)
    p.add_argument("--quick", action="store_true", help="8 calibration windows, 10 evaluation windows")
    p.add_argument("--report-only", action="store_true", help="rewrite the markdown from the JSON, run nothing")
    p.add_argument("--out", default=str(RESULTS / "hybrid.json"))
    p.add_argument("--md", default=str(REPO / "bench" / "HYBRID.md"))
    a = p.parse_args()
    if a.quick:
        a.nsamples, a.eval_windows = 8, 10
        a.out, a.md = a.out.replace(".json", "-quick.json"), a.md.replace(".md", "-quick.md")
    prefixes = [x for x in a.rows.split(",") if x]
    rows = ROWS if not prefixes else \
        list({r[0]: r for x in prefixes for r in ROWS  # in the order asked for
              if r[0] == x or (x.endswith("*") and r[0].startswith(x[:-1]))}.values())

    results = _load(a.out)
    if a.report_only:
        _write(a, results, _load_meta(a.out))
        return
    models = ModelCache()
    for key, label, kw in rows:
        t = time.perf_counter()
        if kw is None:
            lm = models.get(RunRequest(model=None, device="cpu"))
            src = textdata.resolve_text(a.data, "evaluation")
            ids = textdata.evaluation_ids(lm.tokenizer, src)
            ppl, sparsity = perplexity(lm.model, ids, a.seqlen, max_windows=a.eval_windows).ppl, 0.0
        else:
            spec = PruneSpec(nsamples=a.nsamples, seqlen=a.seqlen, **kw)
            rec = run(RunRequest(model=None, device="cpu", spec=spec, calib=a.data, eval=a.data,
                                 eval_windows=a.eval_windows, baselines=False), models=models)
            ppl, sparsity = rec["ppl"]["pruned"], rec["sparsity"]
        results[key] = {"label": label, "spec": kw, "ppl": ppl, "sparsity": sparsity,
                        "seconds": round(time.perf_counter() - t, 1)}
        print(f"{key:20s} {label:60s} sparsity {sparsity:.4f}  ppl {ppl:10.2f}  ({results[key]['seconds']} s)",
              flush=True)
        _write(a, results)


def _load_meta(path: str) -> dict | None:
    try:
        return json.loads(Path(path).read_text())["meta"]
    except (OSError, ValueError, KeyError):
        return None


def _load(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return {}


def _write(a, results: dict, meta: dict | None = None) -> None:
    meta = meta or {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "nsamples": a.nsamples, "seqlen": a.seqlen,
            "eval_windows": a.eval_windows, "data": a.data, "machine": "2 CPU cores, float32"}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"meta": meta, "rows": results}, indent=1))
    order = [k for k, _, _ in ROWS if k in results]
    lines = ["# Three-tier quality on SmolLM2-135M-Instruct", "",
             f"Calibration {a.nsamples} windows x {a.seqlen} tokens of valid.txt, evaluation {a.eval_windows} "
             f"windows x {a.seqlen} of test.txt (local WikiText-2), {meta['machine']}, {meta['date']}.",
             "", "Command: `python bench/quality/hybrid_quality.py" + (" --quick" if a.quick else "") + "`. Column "
             "*reference*: the numbers of an independent layer-wise implementation, where a row reproduces them.", "",
             "| row | variant | sparsity | perplexity | reference | time (s) |", "|---|---|---|---|---|---|"]
    for k in order:
        r = results[k]
        lines.append(f"| `{k}` | {r['label'].replace('|', chr(92) + '|')} | {r['sparsity']:.4f} | {r['ppl']:.2f} "
                     f"| {'' if a.quick else ISSUE.get(k, '')} | {r['seconds']} |")
    findings = REPO / "bench" / "hybrid_findings.md"  # the analysis, kept beside the table it explains
    if not a.quick and findings.exists():
        lines += ["", findings.read_text()]
    Path(a.md).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
