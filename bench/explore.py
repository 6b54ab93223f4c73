"""Calibrate once, re-plan many (engine/explore.py) on SmolLM2 and WikiText-2: calibration time, re-plan time of all
210 matrices (target <= 1 s on 2 cores), the quick estimate's time (target <= 10 s), a 10-split sweep against 10
exact walks, and how far the estimate is from the exact walk (masks only) split by split.

    nice -n 19 python bench/explore.py                      # 32 x 512 calibration of valid.txt, test.txt windows
    nice -n 19 python bench/explore.py --nsamples 8 --gaps 2 --budget-min 20   # on busy cores

Exact walks cost a calibration each; they run while --budget-min allows (the sweep's speed-up extrapolates from
those measured: the record says how many). Writes bench/results/explore.json and a section of RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import DEFAULT_DATA, REPO, RESULTS, Stopwatch, command_line, machine, write_json  # noqa: E402
from engine import data as textdata  # noqa: E402
from engine.explore import DEFAULT_ESTIMATE_WINDOWS, calibrate, estimate, masks_only, replan  # noqa: E402
from engine.perplexity import perplexity  # noqa: E402
from engine.pruner import prune_model  # noqa: E402
from engine.run import ModelCache, RunRequest  # noqa: E402
from engine.spec import PruneSpec  # noqa: E402

SPLITS = [(0.35, 0.45, 0.2), (0.2, 0.6, 0.2), (0.15, 0.6, 0.25), (0.125, 0.6, 0.275), (0.25, 0.5, 0.25),
          (0.4, 0.4, 0.2), (0.5, 0.3, 0.2), (0.1, 0.5, 0.4), (0.3, 0.3, 0.4), (0.6, 0.2, 0.2)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--windows", type=int, default=DEFAULT_ESTIMATE_WINDOWS, help="evaluation windows of an estimate")
    p.add_argument("--method", default="fisher_wanda")
    p.add_argument("--scope", default="model")
    p.add_argument("--assignment", default="cost")
    p.add_argument("--keep", type=int, default=15)
    p.add_argument("--gaps", type=int, default=6, help="exact walks to compare with the estimate (at most)")
    p.add_argument("--budget-min", type=float, default=40, help="stop starting exact walks past this wall time")
    p.add_argument("--out", default=str(RESULTS / "explore.json"))
    p.add_argument("--no-report", action="store_true", help="do not write RESULTS.md")
    a = p.parse_args()
    t_start = time.perf_counter()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    load_before = os.getloadavg()

    models = ModelCache()
    lm = models.get(RunRequest(model=None, device="cpu"))
    model, tok = lm.model, lm.tokenizer
    calib_src = textdata.resolve_text(a.data, "calibration")
    eval_src = textdata.resolve_text(a.data, "evaluation")
    windows = textdata.calibration_windows(tok, calib_src, a.nsamples, a.seqlen, 0)
    eval_ids = textdata.evaluation_ids(tok, eval_src)
    base = PruneSpec(method=a.method, pattern="three_tier", tier_scope=a.scope, assignment=a.assignment, keep=a.keep,
                     nsamples=a.nsamples, seqlen=a.seqlen)
    rec = {"machine": machine(), "command": command_line(), "load_before": load_before, "spec": base.to_dict(),
           "data": {"calibration": calib_src.name, "evaluation": eval_src.name}, "estimate_windows": a.windows}
    print(f"load average {load_before}; {base.label()}", flush=True)

    with Stopwatch() as sw:
        cal = calibrate(model, base, windows, data=calib_src.name)
    rec["calibration"] = {"wall_s": sw.wall, "cpu_s": sw.cpu, "kept_bytes": cal.nbytes}
    print(f"calibration {sw.wall:.1f}s wall, {sw.cpu:.1f}s cpu, {cal.nbytes / 2**20:.2f} MiB kept", flush=True)

    with Stopwatch() as sw:
        first = replan(cal, base)
    rec["replan_first"] = {"wall_s": sw.wall, "cpu_s": sw.cpu, "matrices": len(first.matrices)}
    slider = []
    for split in SPLITS[1:4]:
        with Stopwatch() as sw:
            replan(cal, base.replace(ratios=split))
        slider.append({"wall_s": sw.wall, "cpu_s": sw.cpu})
    rec["replan"] = {"median_wall_s": statistics.median(s["wall_s"] for s in slider),
                     "median_cpu_s": statistics.median(s["cpu_s"] for s in slider), "runs": slider}
    print(f"re-plan of {len(first.matrices)} matrices: first (per-block data) {rec['replan_first']['wall_s']:.2f}s, "
          f"then {rec['replan']['median_wall_s']:.2f}s wall / {rec['replan']['median_cpu_s']:.2f}s cpu", flush=True)

    points = []
    with Stopwatch() as sweep_sw:
        for split in SPLITS:
            spec = base.replace(ratios=split)
            with Stopwatch() as rp:
                plan = replan(cal, spec)
            est = estimate(model, plan, eval_ids, a.seqlen, windows=a.windows)
            points.append({"ratios": list(split), "sparsity": plan.sparsity, "ppl_estimate": est.ppl,
                           "ppl_low": est.ppl_low, "ppl_high": est.ppl_high, "replan_s": rp.wall,
                           "estimate_s": est.seconds})
            print(f"  {split}: sparsity {plan.sparsity:.4f} estimate {est.ppl:.2f} "
                  f"({est.ppl_low:.2f}-{est.ppl_high:.2f}) in {est.seconds:.1f}s", flush=True)
    rec["sweep"] = {"n": len(SPLITS), "wall_s": sweep_sw.wall, "cpu_s": sweep_sw.cpu,
                    "with_calibration_s": sweep_sw.wall + rec["calibration"]["wall_s"], "points": points}
    rec["estimate"] = {"median_s": statistics.median(pt["estimate_s"] for pt in points), "windows": a.windows}

    exact = []
    for split, point in zip(SPLITS, points):
        if len(exact) >= a.gaps or (exact and time.perf_counter() - t_start > a.budget_min * 60):
            break
        spec, _ = masks_only(base.replace(ratios=split))
        with Stopwatch() as walk:
            result = prune_model(model, spec, windows)
        with Stopwatch() as ev:
            ppl = perplexity(model, eval_ids, a.seqlen, max_windows=a.windows).ppl
        models.restore()
        exact.append({"ratios": list(split), "sparsity": result.mask_sparsity, "ppl_exact": ppl,
                      "ppl_estimate": point["ppl_estimate"], "gap": point["ppl_estimate"] / ppl - 1,
                      "walk_s": walk.wall, "eval_s": ev.wall, "exact_s": walk.wall + ev.wall})
        print(f"  exact {split}: {ppl:.2f} (estimate {point['ppl_estimate']:.2f}) walk {walk.wall:.1f}s", flush=True)
    rec["exact"] = exact
    if exact:
        per_run = statistics.mean(e["exact_s"] for e in exact)
        rec["speedup"] = {"exact_runs_measured": len(exact), "exact_run_s": per_run,
                          "ten_exact_s": 10 * per_run, "sweep_s": rec["sweep"]["with_calibration_s"],
                          "speedup": 10 * per_run / rec["sweep"]["with_calibration_s"]}
    rec["load_after"] = os.getloadavg()
    rec["uptime"] = os.popen("uptime").read().strip()
    rec["wall_s"] = time.perf_counter() - t_start
    write_json(a.out, rec)
    if not a.no_report:
        write_report(rec)
    print(report(rec))


def report(rec: dict) -> str:
    c, s = rec["calibration"], rec["spec"]
    lines = ["## Explore: calibrate once, re-plan many (engine/explore.py)", "",
             f"- command: `nice -n 19 {rec['command']}`; wall time {rec['wall_s'] / 60:.1f} min",
             f"- machine: {rec['machine'].get('cpu', '')} {rec['machine'].get('torch_threads', '')} torch threads; "
             f"load average at start {[round(x, 2) for x in rec['load_before']]}, at end "
             f"{[round(x, 2) for x in rec['load_after']]} (`{rec['uptime']}`)",
             f"- model: the embedded SmolLM2-135M-Instruct, 30 layers, 210 matrices; calibration {s['nsamples']} x "
             f"{s['seqlen']} tokens of `{rec['data']['calibration']}`; estimate: the first {rec['estimate_windows']} "
             f"windows x {s['seqlen']} of `{rec['data']['evaluation']}`",
             f"- recipe: {s['method']}, three-tier K={s['keep']}, tier scope {s['tier_scope']}, assignment "
             f"{s['assignment']}, masks only (the estimate never runs the OBS update)", "",
             "| stage | wall s | CPU s | target |", "|---|---|---|---|",
             f"| calibration (gradient pass + one forward walk), {c['kept_bytes'] / 2**20:.2f} MiB kept | "
             f"{c['wall_s']:.1f} | {c['cpu_s']:.1f} | once |",
             f"| first re-plan of 210 matrices (makes the per-block data of this B, K) | "
             f"{rec['replan_first']['wall_s']:.2f} | {rec['replan_first']['cpu_s']:.2f} | once per B, K |",
             f"| re-plan of 210 matrices for a new split (median of 3) | {rec['replan']['median_wall_s']:.2f} | "
             f"{rec['replan']['median_cpu_s']:.2f} | <= 1 s |",
             f"| estimate, {rec['estimate_windows']} windows (median of the sweep) | {rec['estimate']['median_s']:.1f} "
             f"| - | <= 10 s |",
             f"| sweep of {rec['sweep']['n']} splits incl. calibration | {rec['sweep']['with_calibration_s']:.0f} | - "
             f"| - |"]
    if rec.get("speedup"):
        sp = rec["speedup"]
        lines += [f"| 10 exact walks (+ the same evaluation), extrapolated from {sp['exact_runs_measured']} measured |"
                  f" {sp['ten_exact_s']:.0f} | - | - |", "",
                  f"Sweep speed-up for N = 10: **{sp['speedup']:.1f}x** (10 x the mean measured exact run against one "
                  "calibration + 10 x (re-plan + estimate))."]
    lines += ["", "| split | sparsity | estimate | +-1 s.e. | exact walk (masks only) | gap |",
              "|---|---|---|---|---|---|"]
    exact = {tuple(e["ratios"]): e for e in rec["exact"]}
    for pt in rec["sweep"]["points"]:
        e = exact.get(tuple(pt["ratios"]))
        lines.append(f"| {'/'.join(f'{x:g}' for x in pt['ratios'])} | {pt['sparsity']:.4f} | {pt['ppl_estimate']:.2f} "
                     f"| {pt['ppl_low']:.2f}-{pt['ppl_high']:.2f} | "
                     + (f"{e['ppl_exact']:.2f} | {e['gap']:+.1%} |" if e else "not measured | - |"))
    lines += ["", "The estimate plans every matrix on the dense model's statistics; the exact walk re-measures each "
              "layer after the layers upstream are pruned (same masks-only recipe, same windows). Not measured here: "
              "the gap with the OBS update (the best recipe's exact walk), the browser round trip (dashboard)."]
    return "\n".join(lines)


def write_report(rec: dict) -> None:
    path = REPO / "bench" / "RESULTS.md"
    text = path.read_text()
    section = report(rec) + "\n"
    pattern = re.compile(r"## Explore: calibrate once.*?(?=\n## |\Z)", re.S)
    text = pattern.sub(lambda m: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


if __name__ == "__main__":
    main()
