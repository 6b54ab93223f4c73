"""The update-aware estimate (engine/explore/estimates.py estimate(update_from=)) on SmolLM2 and WikiText-2, in stages:

    splits   one calibration of the best recipe (engine/spec.py BEST_THREE_TIER: it has the OBS update) with the
             Hessians kept, then per split (K in {15, 32, 64, 96}, B in {8, 16}): the masks-only estimate, the
             update-aware estimate (its time), and the exact walk with the update on the same windows, written
             after every split (the exact walks are minutes each: as many as fit)
    first_maps  Calibrate -> first maps from the first few windows, and how fast a running estimate lets go
    memory   what the kept Hessians cost: SmolLM2 (measured), one LLaMA-2-7B-shaped decoder layer on CPU
             (measured), extrapolated to 32 layers

    nice -n 19 python bench/quality/estimate_update.py                       # both stages, 32 x 512 calibration
    python bench/quality/estimate_update.py --stages memory

Writes bench/results/estimate_update_<stage>.json; bench/RESULTS.md's section quotes them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from bench.common import DEFAULT_DATA, RESULTS, Stopwatch, command_line, machine, write_json  # noqa: E402
from engine.explore import calibrate, estimate, evaluate_windows, hessian_bytes, replan  # noqa: E402
from engine.io import text as textdata  # noqa: E402
from engine.run import ModelCache, RunRequest  # noqa: E402
from engine.spec import BEST_THREE_TIER, PruneSpec  # noqa: E402
from engine.walk.layer_walk import prune_model  # noqa: E402

# (block, K, ratios): every K of a 16 x 16 block and both of an 8 x 8 one, two splits each; diverse ones first
SPLITS = [(16, 96, (0.15, 0.25, 0.6)), (8, 15, (0.2, 0.5, 0.3)), (16, 15, (0.35, 0.45, 0.2)),
          (16, 64, (0.2, 0.4, 0.4)), (8, 32, (0.15, 0.25, 0.6)), (16, 32, (0.25, 0.5, 0.25)),
          (16, 96, (0.1, 0.5, 0.4)), (8, 15, (0.35, 0.45, 0.2)), (16, 15, (0.2, 0.6, 0.2)),
          (16, 64, (0.1, 0.3, 0.6)), (8, 32, (0.25, 0.5, 0.25)), (16, 32, (0.15, 0.6, 0.25))]


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(x):
        order = sorted(range(len(x)), key=x.__getitem__)
        r = [0.0] * len(x)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.mean(ra), statistics.mean(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return num / den if den else float("nan")


def header(a) -> dict:
    return {"machine": machine(), "command": command_line(), "load_before": os.getloadavg(),
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def finish(path: Path, rec: dict) -> None:
    rec["load_now"] = os.getloadavg()
    write_json(path, rec)


def splits_stage(a) -> None:
    models = ModelCache()
    lm = models.get(RunRequest(model=None, device="cpu"))
    model, tok = lm.model, lm.tokenizer
    windows = textdata.calibration_windows(tok, textdata.resolve_text(a.data, "calibration"), a.nsamples, a.seqlen, 0)
    eval_ids = textdata.evaluation_ids(tok, textdata.resolve_text(a.data, "evaluation"))
    base = PruneSpec(pattern="three_tier", nsamples=a.nsamples, seqlen=a.seqlen, **BEST_THREE_TIER)
    rec = header(a) | {"spec": base.to_dict(), "windows": a.windows, "rows": []}
    path = Path(a.out) if a.out else RESULTS / "estimate_update_splits.json"
    with Stopwatch() as sw:
        cal = calibrate(model, base, windows, data="wikitext-2 valid", hessians=True)
    rec["calibration"] = {"wall_s": sw.wall, "cpu_s": sw.cpu, "vectors_bytes": cal.nbytes,
                          "hessian_bytes": cal.hessian_nbytes, "note": cal.hessians_note}
    print(f"calibration {sw.wall:.1f}s, Hessians {cal.hessian_nbytes / 2**20:.0f} MiB", flush=True)
    finish(path, rec)
    for block, keep, ratios in SPLITS[a.skip:a.splits]:
        spec = base.replace(block=block, keep=keep, ratios=ratios)
        plan = replan(cal, spec)
        masks = estimate(model, plan, eval_ids, a.seqlen, windows=a.windows)
        upd = estimate(model, plan, eval_ids, a.seqlen, windows=a.windows, update_from=cal)
        row = {"block": block, "keep": keep, "ratios": list(ratios), "sparsity": plan.sparsity,
               "masks_only": masks.ppl, "masks_only_s": masks.seconds, "with_update": upd.ppl, "kind": upd.kind,
               "with_update_s": upd.seconds, "update_s": upd.update_s, "load": os.getloadavg()[0]}
        if not a.no_exact:
            with Stopwatch() as ex:
                prune_model(model, spec, windows)
            row["exact"] = evaluate_windows(model, eval_ids, a.seqlen, windows=a.windows).ppl
            row["exact_s"] = ex.wall
            models.restore()
            row["gap_with_update"] = row["with_update"] / row["exact"] - 1
            row["gap_masks_only"] = row["masks_only"] / row["exact"] - 1
        rec["rows"].append(row)
        done = [r for r in rec["rows"] if "exact" in r]
        if len(done) >= 3:
            rec["spearman_with_update"] = spearman([r["with_update"] for r in done], [r["exact"] for r in done])
            rec["spearman_masks_only"] = spearman([r["masks_only"] for r in done], [r["exact"] for r in done])
        finish(path, rec)
        print(json.dumps(row), flush=True)


def memory_stage(a) -> None:
    """Kept Hessian bytes: SmolLM2 from its shapes and sharing (q/k/v, gate/up share an input), and one
    LLaMA-2-7B-shaped layer calibrated for real on CPU (4096 hidden, 11008 intermediate)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from engine.walk.capture import targets_per_layer
    from engine.walk.discovery import find_decoder_layers
    rec = header(a)
    cfg = LlamaConfig(vocab_size=512, hidden_size=4096, intermediate_size=11008, num_hidden_layers=1,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    spec = PruneSpec(pattern="three_tier", nsamples=2, seqlen=128, **BEST_THREE_TIER)
    windows = torch.randint(0, 512, (2, 128), generator=torch.Generator().manual_seed(0))
    with Stopwatch() as sw:
        cal = calibrate(model, spec, windows, hessians=True, hessian_budget=2**40)
    layer = {"all_matrices_bytes": hessian_bytes(targets_per_layer(find_decoder_layers(model)[1])),
             "kept_bytes": cal.hessian_nbytes, "calibrate_s": sw.wall}
    rec["llama2_7b_layer"] = layer
    rec["llama2_7b_32_layers_kept_bytes"] = 32 * layer["kept_bytes"]
    print(json.dumps(rec), flush=True)
    finish(RESULTS / "estimate_update_memory.json", rec)


def first_maps_stage(a) -> None:
    """Calibrate -> first maps on SmolLM2 (model loaded): the first FIRST_WINDOWS windows calibrated and the form's
    split re-planned; then how fast a running estimate lets go when a new split stops it (cancel -> returned)."""
    import threading

    from engine.explore import FIRST_WINDOWS, calibrate_progressively
    lm = ModelCache().get(RunRequest(model=None, device="cpu"))
    model, tok = lm.model, lm.tokenizer
    windows = textdata.calibration_windows(tok, textdata.resolve_text(a.data, "calibration"), a.nsamples, a.seqlen, 0)
    eval_ids = textdata.evaluation_ids(tok, textdata.resolve_text(a.data, "evaluation"))
    spec = PruneSpec(pattern="three_tier", nsamples=a.nsamples, seqlen=a.seqlen, **BEST_THREE_TIER)
    rec = header(a) | {"spec": spec.to_dict(), "first_windows": FIRST_WINDOWS}
    t0 = time.perf_counter()
    first = next(calibrate_progressively(model, spec, windows))
    rec["first_calibration_s"] = time.perf_counter() - t0
    plan = replan(first, spec)
    rec["first_maps_s"] = time.perf_counter() - t0
    rec["load_at_first_maps"] = os.getloadavg()
    print(f"first maps after {rec['first_maps_s']:.1f} s ({first.windows} windows)", flush=True)
    latencies = []
    for _ in range(3):
        cancel, started, out = threading.Event(), threading.Event(), {}
        worker = threading.Thread(target=lambda: out.update(est=estimate(
            model, plan, eval_ids, a.seqlen, windows=6, cancel=cancel, progress=lambda e: started.set())))
        worker.start()
        started.wait()
        time.sleep(0.3)  # inside the second window's forward pass
        t = time.perf_counter()
        cancel.set()
        worker.join()
        latencies.append(time.perf_counter() - t)
    rec["abandon_s"] = latencies
    rec["window_s"] = estimate(model, plan, eval_ids, a.seqlen, windows=2).seconds / 2
    print(f"estimate let go {[round(x, 3) for x in latencies]} s after a cancel; a window takes "
          f"{rec['window_s']:.2f} s", flush=True)
    finish(RESULTS / "estimate_update_first_maps.json", rec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", nargs="+", choices=("splits", "memory", "first_maps"),
                   default=["splits", "memory", "first_maps"])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--windows", type=int, default=6, help="evaluation windows of the estimates and the exact runs")
    p.add_argument("--splits", type=int, default=len(SPLITS))
    p.add_argument("--skip", type=int, default=0, help="start at this split of the list (a run that added splits)")
    p.add_argument("--out", default=None,
                   help="splits stage's file (default bench/results/estimate_update_splits.json)")
    p.add_argument("--no-exact", action="store_true", help="estimates only, no exact walks")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for stage in a.stages:
        {"splits": splits_stage, "memory": memory_stage, "first_maps": first_maps_stage}[stage](a)


if __name__ == "__main__":
    main()
