"""Recovery on SmolLM2-135M-Instruct: perplexity before and after a short masked fine-tune, per pattern.

    nice -n 19 python bench/quality/recover.py [--steps 30] [--lr 1e-4] [--rows tt-rule,24-sparsegpt,tt-best,dense]

Protocol (bench/HYBRID.md's quick protocol, sized for 2 shared CPU cores): pruning calibration 8 windows x 512
tokens of valid.txt (seed 0), perplexity on the first 10 windows x 512 tokens of test.txt (local WikiText-2);
fine-tuning steps of 4 windows x 128 tokens
drawn from the first 90% of valid.txt's tokens, the held-out loss on 8 windows from its last 10%. Every row goes
through the product's own path (engine.run.run with a FinetuneSpec); the dense row fine-tunes the unpruned model
with the same settings, to separate what the fine-tune repairs from what it adapts to WikiText. Results land in
bench/results/recover.json row by row (a rerun skips rows already there).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import DEFAULT_DATA, OBS_CHOICE_RECIPE, RESULTS  # noqa: E402
from engine.io import text as textdata  # noqa: E402
from engine.recover.masked_finetune import FinetuneSpec  # noqa: E402
from engine.recover.pipeline import recover  # noqa: E402
from engine.run import ModelCache, RunRequest, run  # noqa: E402
from engine.spec import ORIGINAL_RECIPE, THREE_TIER_RATIOS, PruneSpec  # noqa: E402

ROWS = {
    "tt-rule": ("three-tier, the original rule of the Wanda hybrid fork (ORIGINAL_RECIPE) at 0.35/0.45/0.20, K=15",
                dict(pattern="three_tier", **{**ORIGINAL_RECIPE, "ratios": THREE_TIER_RATIOS, "keep": 15})),
    "24-sparsegpt": ("2:4, SparseGPT", dict(method="sparsegpt", pattern="nm", n=2, m=4)),
    "tt-best": ("three-tier, OBS-choice recipe (Fisher-weighted Wanda, model scope, cost, OBS update inside blocks)",
                dict(pattern="three_tier", **OBS_CHOICE_RECIPE)),
    "dense": ("dense (no pruning), the same fine-tune", None),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--eval_windows", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default=str(RESULTS / "recover.json"))
    a = p.parse_args()
    ft = FinetuneSpec(steps=a.steps, lr=a.lr, batch_size=4, seqlen=128, heldout_windows=8, eval_every=5,
                      warmup_steps=4).validate()
    out = Path(a.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    models = ModelCache()
    for key in a.rows.split(","):
        if key in results:
            continue
        label, kw = ROWS[key]
        t = time.perf_counter()
        if kw is None:
            lm = models.get(RunRequest(model=None, device="cpu"))
            src = textdata.resolve_text(a.data, "evaluation")
            block = recover(lm.model, lm.tokenizer, ft, textdata.resolve_text(a.data, "calibration"),
                            textdata.evaluation_ids(lm.tokenizer, src), 512, a.eval_windows, progress=_print)
            row = {"sparsity": 0.0, "recovery": block}
            models.restore()
        else:
            spec = PruneSpec(nsamples=a.nsamples, seqlen=512, seed=0, **kw)
            rec = run(RunRequest(model=None, device="cpu", spec=spec, calib=a.data, eval=a.data,
                                 eval_windows=a.eval_windows, baselines=False, finetune=ft),
                      models=models, progress=_print)
            row = {"sparsity": rec["sparsity"], "recovery": rec["recovery"], "timings": rec["timings"]}
        row.update(protocol={"nsamples": a.nsamples, "eval_windows": a.eval_windows, "seqlen": 512},
                   label=label, spec=kw, seconds=round(time.perf_counter() - t, 1))
        results[key] = row
        r = row["recovery"]
        print(f"{key}: sparsity {row['sparsity']:.4f} ppl {r['ppl_before']:.2f} -> {r['ppl_after']:.2f} "
              f"zeros held {r['zeros_held']} ({row['seconds']} s)", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))


def _print(event: dict) -> None:
    if "message" in event:
        print(f"[{event['stage']}] {event['message']}", flush=True)
    elif event.get("stage") == "prune":
        print(f"  pruned layer {event['layer'] + 1}/{event['n_layers']}", flush=True)
    elif event.get("stage") == "finetune":
        print(f"  step {event['step']}/{event['total']} " + " ".join(
            f"{k} {event[k]:.4f}" for k in ("loss", "heldout_loss") if k in event), flush=True)


if __name__ == "__main__":
    main()
