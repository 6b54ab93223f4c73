"""Calibrate once, re-plan many (engine/explore/) on SmolLM2 and WikiText-2, in stages:

    timing   calibration time, re-plan time of all 210 matrices (target <= 1 s on 2 cores), the quick estimate's
             time (target <= 10 s), a sweep of 10 splits, and exact walks (masks only) of the first --gaps splits:
             how far the estimate is from them, and the sweep's speed-up against 10 exact runs
    update   exact walks of the same splits with the OBS update (the mask fixed first, then the kept weights
             reconstructed): how far the masks-only estimate is from the number a user gets with the update
    search   the ratio triangle x K x block size on the cache (masks-only estimates) and its Pareto front, then
             (verify) exact walks with the update of the best-estimated splits at 50% sparsity or more, one per
             (B, K), against SparseGPT 2:4 and SparseGPT unstructured at the same sparsity: which split beats 2:4?
    browser  the dashboard in Chromium: a released slider -> re-planned, redrawn heatmap / tier shares / tier map

    nice -n 19 python bench/quality/explore.py                           # every stage, 32 x 512 calibration
    python bench/quality/explore.py --stages search --verify 4            # one stage (the others' JSON is kept)
    python bench/quality/explore.py --report-only                         # RESULTS.md from the JSON files

Exact perplexities are on the first --eval-windows windows of test.txt (40: bench/HYBRID.md's protocol); the gaps
compare the estimate with the exact walk on the estimate's own windows (its first --windows). Each stage writes
bench/results/explore_<stage>.json and the section "Explore" of bench/RESULTS.md. Timings are only meaningful on
quiet cores: every stage records the load average before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from bench.common import DEFAULT_DATA, REPO, RESULTS, Stopwatch, command_line, machine, write_json  # noqa: E402
from components.explore_session import pareto_front  # noqa: E402
from engine.eval.perplexity import perplexity  # noqa: E402
from engine.explore import DEFAULT_ESTIMATE_WINDOWS, calibrate, estimate, replan, storage_estimate  # noqa: E402
from engine.io import text as textdata  # noqa: E402
from engine.run import ModelCache, RunRequest  # noqa: E402
from engine.spec import PruneSpec  # noqa: E402
from engine.walk.layer_walk import prune_model  # noqa: E402

STAGES = ("timing", "update", "search", "verify", "browser")
SPLITS = [(0.35, 0.45, 0.2), (0.2, 0.6, 0.2), (0.15, 0.6, 0.25), (0.125, 0.6, 0.275), (0.25, 0.5, 0.25),
          (0.4, 0.4, 0.2), (0.5, 0.3, 0.2), (0.1, 0.5, 0.4), (0.3, 0.3, 0.4), (0.6, 0.2, 0.2)]
# (block, K) pairs the search tries: K per 16 x 16 block from the fork's 10-15 up to a quarter of the block, and a
# 32 x 32 block at the same kept shares
SEARCH_BLOCKS = [(16, 15), (16, 32), (16, 64), (16, 96), (8, 16), (32, 256)]
SEARCH_STEP = 0.05
SEARCH_BAND = (0.48, 0.53)  # nominal sparsities the search estimates (around 2:4's 50%)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", nargs="+", choices=STAGES, default=[s for s in STAGES if s != "verify"],
                   help="verify: the search's exact walks alone, from its JSON (search runs them too)")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--windows", type=int, default=DEFAULT_ESTIMATE_WINDOWS, help="evaluation windows of an estimate")
    p.add_argument("--eval-windows", type=int, default=40, help="evaluation windows of an exact walk")
    p.add_argument("--method", default="fisher_wanda")
    p.add_argument("--scope", default="model")
    p.add_argument("--assignment", default="cost")
    p.add_argument("--keep", type=int, default=15)
    p.add_argument("--gaps", type=int, default=6, help="splits walked exactly (timing, update)")
    p.add_argument("--verify", type=int, default=3, help="search: best splits walked exactly with the update")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md from the JSON files, run nothing")
    p.add_argument("--no-report", action="store_true", help="do not write RESULTS.md")
    a = p.parse_args()
    if not a.report_only:
        torch.set_num_threads(a.threads)
        bench = Bench(a)
        for stage in STAGES:
            if stage in a.stages:
                getattr(bench, stage)()
    if not a.no_report:
        write_report(load_all())
    print(report(load_all()))


def stage_path(stage: str) -> Path:
    return RESULTS / f"explore_{'search' if stage == 'verify' else stage}.json"  # verify completes search's file


def load_all() -> dict:
    return {s: json.loads(stage_path(s).read_text()) for s in STAGES if s != "verify" and stage_path(s).exists()}


def split_text(ratios) -> str:
    return "/".join(f"{x:g}" for x in ratios)


class Bench:
    """The model, the text and (made on first need) one calibration, shared by the stages of one command."""

    def __init__(self, a):
        self.a = a
        self.models = ModelCache()
        lm = self.models.get(RunRequest(model=None, device="cpu"))
        self.model, tok = lm.model, lm.tokenizer
        calib_src = textdata.resolve_text(a.data, "calibration")
        eval_src = textdata.resolve_text(a.data, "evaluation")
        self.windows = textdata.calibration_windows(tok, calib_src, a.nsamples, a.seqlen, 0)
        self.eval_ids = textdata.evaluation_ids(tok, eval_src)
        self.names = {"calibration": calib_src.name, "evaluation": eval_src.name}
        self.base = PruneSpec(method=a.method, pattern="three_tier", tier_scope=a.scope, assignment=a.assignment,
                              keep=a.keep, nsamples=a.nsamples, seqlen=a.seqlen)
        self.cal = None
        self.cal_timing = None

    def header(self) -> dict:
        return {"machine": machine(), "command": command_line(), "load_before": os.getloadavg(),
                "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "spec": self.base.to_dict(),
                "data": self.names, "estimate_windows": self.a.windows, "eval_windows": self.a.eval_windows}

    def finish(self, stage: str, rec: dict) -> None:
        rec["load_after"] = os.getloadavg()
        rec["uptime"] = os.popen("uptime").read().strip()
        write_json(stage_path(stage), rec)

    def calibration(self):
        if self.cal is None:
            with Stopwatch() as sw:
                self.cal = calibrate(self.model, self.base, self.windows, data=self.names["calibration"])
            self.cal_timing = {"wall_s": sw.wall, "cpu_s": sw.cpu, "kept_bytes": self.cal.nbytes}
            print(f"calibration {sw.wall:.1f}s wall, {sw.cpu:.1f}s cpu, {self.cal.nbytes / 2**20:.2f} MiB", flush=True)
        return self.cal

    def point(self, spec: PruneSpec) -> dict:
        with Stopwatch() as rp:
            plan = replan(self.calibration(), spec)
        est = estimate(self.model, plan, self.eval_ids, self.a.seqlen, windows=self.a.windows)
        return {"ratios": list(spec.ratios), "block": spec.block, "keep": spec.keep, "sparsity": plan.sparsity,
                "ppl_estimate": est.ppl, "ppl_low": est.ppl_low, "ppl_high": est.ppl_high, "replan_s": rp.wall,
                "estimate_s": est.seconds, "bits_per_weight": storage_estimate(plan)["bits_per_weight"]}

    def exact(self, spec: PruneSpec) -> dict:
        """The full sequential walk (engine/walk/layer_walk.py) from dense, its perplexity on the estimate's windows
        and on the protocol's, then the dense weights back."""
        with Stopwatch() as walk:
            result = prune_model(self.model, spec, self.windows)
        with Stopwatch() as ev:
            short = perplexity(self.model, self.eval_ids, self.a.seqlen, max_windows=self.a.windows).ppl
        full = perplexity(self.model, self.eval_ids, self.a.seqlen, max_windows=self.a.eval_windows).ppl
        self.models.restore()
        return {"spec": spec.to_dict(), "sparsity": result.mask_sparsity, "ppl_short": short, "ppl": full,
                "walk_s": walk.wall, "walk_cpu_s": walk.cpu, "short_eval_s": ev.wall}

    # --- stages -----------------------------------------------------------------------------------------------

    def timing(self) -> None:
        rec = self.header()
        self.cal = None  # timed from scratch
        self.calibration()
        rec["calibration"] = self.cal_timing
        with Stopwatch() as sw:
            first = replan(self.cal, self.base)
        rec["replan_first"] = {"wall_s": sw.wall, "cpu_s": sw.cpu, "matrices": len(first.matrices)}
        slider = []
        for split in SPLITS[1:4]:
            with Stopwatch() as sw:
                plan = replan(self.cal, self.base.replace(ratios=split))
            with Stopwatch() as mk:
                for m in plan.matrices.values():
                    m.keep  # noqa: B018 (the masks the estimate builds on first use)
            slider.append({"wall_s": sw.wall, "cpu_s": sw.cpu, "masks_s": mk.wall})
        rec["replan"] = {"median_wall_s": statistics.median(s["wall_s"] for s in slider),
                         "median_cpu_s": statistics.median(s["cpu_s"] for s in slider),
                         "median_masks_s": statistics.median(s["masks_s"] for s in slider), "runs": slider}
        print(f"re-plan: first {rec['replan_first']['wall_s']:.2f}s, then {rec['replan']['median_wall_s']:.2f}s "
              f"(+ masks {rec['replan']['median_masks_s']:.2f}s)", flush=True)
        points = []
        with Stopwatch() as sweep_sw:
            for split in SPLITS:
                points.append(self.point(self.base.replace(ratios=split)))
                pt = points[-1]
                print(f"  {split}: sparsity {pt['sparsity']:.4f} estimate {pt['ppl_estimate']:.2f} in "
                      f"{pt['replan_s']:.2f}+{pt['estimate_s']:.1f}s", flush=True)
        rec["sweep"] = {"n": len(SPLITS), "wall_s": sweep_sw.wall, "cpu_s": sweep_sw.cpu,
                        "with_calibration_s": sweep_sw.wall + rec["calibration"]["wall_s"], "points": points}
        rec["estimate"] = {"median_s": statistics.median(pt["estimate_s"] for pt in points), "windows": self.a.windows}
        rec["exact"] = []
        for split in SPLITS[: self.a.gaps]:
            rec["exact"].append(self.exact(self.base.replace(ratios=split)))
            e = rec["exact"][-1]
            print(f"  exact {split}: {e['ppl_short']:.2f} on {self.a.windows} windows, {e['ppl']:.2f} on "
                  f"{self.a.eval_windows}; walk {e['walk_s']:.1f}s", flush=True)
            self.finish("timing", rec)
        if rec["exact"]:
            run_s = statistics.mean(e["walk_s"] + e["short_eval_s"] for e in rec["exact"])
            rec["speedup"] = {"exact_runs_measured": len(rec["exact"]), "exact_run_s": run_s, "ten_exact_s": 10 * run_s,
                              "sweep_s": rec["sweep"]["with_calibration_s"],
                              "speedup": 10 * run_s / rec["sweep"]["with_calibration_s"]}
        self.finish("timing", rec)

    def update(self) -> None:
        timing = json.loads(stage_path("timing").read_text())
        rec = self.header()
        rec["exact"] = []
        for pt in timing["sweep"]["points"][: self.a.gaps]:
            spec = self.base.replace(ratios=tuple(pt["ratios"]), reconstruct=True)
            rec["exact"].append(self.exact(spec))
            e = rec["exact"][-1]
            print(f"  exact + update {pt['ratios']}: {e['ppl_short']:.2f} / {e['ppl']:.2f}; "
                  f"walk {e['walk_s']:.1f}s", flush=True)
            self.finish("update", rec)

    def search(self) -> None:
        rec = self.header()
        rec["grid"] = {"blocks": SEARCH_BLOCKS, "step": SEARCH_STEP, "band": SEARCH_BAND}
        rec["points"] = []
        for block, keep in SEARCH_BLOCKS:
            for ratios in triangle(SEARCH_STEP):
                spec = self.base.replace(ratios=ratios, block=block, keep=keep)
                if not SEARCH_BAND[0] <= spec.nominal_sparsity() <= SEARCH_BAND[1]:
                    continue
                rec["points"].append(self.point(spec))
                pt = rec["points"][-1]
                print(f"  B={block} K={keep} {split_text(ratios)}: {pt['sparsity']:.4f} -> {pt['ppl_estimate']:.2f}",
                      flush=True)
            self.finish("search", rec)
        self.verify()

    def verify(self) -> None:
        """Exact walks with the update of the search's best splits at 2:4's sparsity or above (the lowest estimate
        of each (B, K), the --verify best of those), then SparseGPT 2:4 and SparseGPT unstructured at the same
        sparsities, on the same calibration and windows."""
        rec = json.loads(stage_path("search").read_text())
        rec["verify"] = {"command": command_line(), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                         "load_before": os.getloadavg()}
        pts = rec["points"]
        rec["front"] = pareto_front([pt["sparsity"] for pt in pts], [pt["ppl_estimate"] for pt in pts])
        best = {}
        for i, pt in enumerate(pts):
            k = (pt["block"], pt["keep"])
            if pt["sparsity"] >= 0.4995 and (k not in best or pt["ppl_estimate"] < pts[best[k]]["ppl_estimate"]):
                best[k] = i
        chosen = sorted(best.values(), key=lambda i: pts[i]["ppl_estimate"])[: self.a.verify]
        rec["verified"] = []
        base = self.base.replace(reconstruct=True)
        for i in chosen:
            pt = rec["points"][i]
            e = self.exact(base.replace(ratios=tuple(pt["ratios"]), block=pt["block"], keep=pt["keep"]))
            rec["verified"].append({"point": i, **e})
            print(f"  verified B={pt['block']} K={pt['keep']} {split_text(pt['ratios'])}: {e['ppl']:.2f} at "
                  f"{e['sparsity']:.4f}", flush=True)
            self.finish("search", rec)
        refs = [PruneSpec(method="sparsegpt", pattern="nm", n=2, m=4, nsamples=self.a.nsamples, seqlen=self.a.seqlen)]
        for s in sorted({round(v["sparsity"], 4) for v in rec["verified"]} | {0.5}):
            refs.append(PruneSpec(method="sparsegpt", sparsity=s, nsamples=self.a.nsamples, seqlen=self.a.seqlen))
        rec["references"] = []
        for spec in refs:
            e = self.exact(spec)
            rec["references"].append({"label": spec.label(), **e})
            print(f"  reference {spec.label()}: {e['ppl']:.2f} at {e['sparsity']:.4f}", flush=True)
            self.finish("search", rec)
        self.finish("search", rec)

    def browser(self) -> None:
        from bench.checks.explore_browser import round_trips
        rec = self.header()
        rec.update(round_trips(self.a.data))
        self.finish("browser", rec)


def triangle(step: float) -> list[tuple[float, float, float]]:
    """Every (dense, 2:4, top-K) on a grid of `step`, summing to 1."""
    n = round(1 / step)
    return [(round(d * step, 4), round(t * step, 4), round((n - d - t) * step, 4))
            for d in range(n + 1) for t in range(n + 1 - d)]


# --- the report ---------------------------------------------------------------------------------------------------

def _load_line(rec: dict) -> str:
    return (f"load average {[round(x, 2) for x in rec['load_before']]} before, "
            f"{[round(x, 2) for x in rec['load_after']]} after")


def report(results: dict) -> str:
    lines = ["## Explore: calibrate once, re-plan many (engine/explore/)", ""]
    t = results.get("timing")
    if t:
        s, c = t["spec"], t["calibration"]
        lines += [f"- command: `{t['command']}` (stage timing), {t['started']}; {_load_line(t)}",
                  f"- machine: {t['machine'].get('cpu', '')}, {t['machine'].get('torch_threads', '')} torch threads",
                  f"- model: the embedded SmolLM2-135M-Instruct, 210 matrices; calibration {s['nsamples']} x "
                  f"{s['seqlen']} tokens of `{t['data']['calibration']}`; estimate: the first {t['estimate_windows']}"
                  f" windows x {s['seqlen']} of `{t['data']['evaluation']}`",
                  f"- recipe: {s['method']}, three-tier K = {s['keep']}, tier scope {s['tier_scope']}, assignment "
                  f"{s['assignment']}; the estimate is masks only", "",
                  "| stage | wall s | CPU s | target |", "|---|---|---|---|",
                  f"| calibration (gradient pass + one forward walk), {c['kept_bytes'] / 2**20:.2f} MiB kept | "
                  f"{c['wall_s']:.1f} | {c['cpu_s']:.1f} | once |",
                  f"| first re-plan of 210 matrices (makes the per-block choices of this B, K) | "
                  f"{t['replan_first']['wall_s']:.2f} | {t['replan_first']['cpu_s']:.2f} | once per B, K |",
                  f"| re-plan of 210 matrices for a new split: tier grids, counts, sparsity (median of 3) | "
                  f"{t['replan']['median_wall_s']:.2f} | {t['replan']['median_cpu_s']:.2f} | <= 1 s |",
                  f"| its 210 keep-masks, built when the estimate needs them (median of 3) | "
                  f"{t['replan']['median_masks_s']:.2f} | - | - |",
                  f"| estimate, {t['estimate_windows']} windows (median of the sweep) | {t['estimate']['median_s']:.1f}"
                  " | - | <= 10 s |",
                  f"| sweep of {t['sweep']['n']} splits incl. calibration | {t['sweep']['with_calibration_s']:.0f} | "
                  f"{t['sweep']['cpu_s'] + c['cpu_s']:.0f} | - |"]
        if t.get("speedup"):
            sp = t["speedup"]
            lines += [f"| one exact run (walk + the same {t['estimate_windows']}-window evaluation), mean of "
                      f"{sp['exact_runs_measured']} | {sp['exact_run_s']:.0f} | - | - |", "",
                      f"Sweep speed-up for N = 10: **{sp['speedup']:.1f}x**: 10 exact runs take "
                      f"{sp['ten_exact_s']:.0f} s (10 x the mean of the {sp['exact_runs_measured']} measured), the "
                      f"sweep {sp['sweep_s']:.0f} s (one calibration + 10 x (re-plan + estimate))."]
        u = {tuple(e["spec"]["ratios"]): e for e in results.get("update", {}).get("exact", [])}
        x = {tuple(e["spec"]["ratios"]): e for e in t["exact"]}
        n, m = t["estimate_windows"], t["eval_windows"]
        lines += ["", f"Estimate against the exact walk, split by split (K = {s['keep']}). Gap = estimate / exact - 1 "
                  f"on the estimate's own {n} windows; the exact columns also give the {m}-window number "
                  "(bench/HYBRID.md's protocol).", "",
                  f"| split | sparsity | estimate ({n} w.) | +-1 s.e. | exact, masks only ({n} w.) | gap | "
                  f"exact masks only ({m} w.) | exact + update ({n} w.) | gap | exact + update ({m} w.) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for pt in t["sweep"]["points"]:
            r = tuple(pt["ratios"])
            cells = [split_text(r), f"{pt['sparsity']:.4f}", f"{pt['ppl_estimate']:.2f}",
                     f"{pt['ppl_low']:.2f}-{pt['ppl_high']:.2f}"]
            for e in (x.get(r), u.get(r)):
                gap = f"{pt['ppl_estimate'] / e['ppl_short'] - 1:+.1%}" if e else "-"
                cells += [f"{e['ppl_short']:.2f}", gap, f"{e['ppl']:.2f}"] if e else ["-", "-", "-"]
            lines.append("| " + " | ".join(cells) + " |")
        for name, walked in (("masks only", x), ("with the update", u)):
            pairs = [(pt["ppl_estimate"], walked[tuple(pt["ratios"])]["ppl"]) for pt in t["sweep"]["points"]
                     if tuple(pt["ratios"]) in walked]
            if len(pairs) >= 3:
                lines += ["", f"Rank agreement of the estimate with the exact walk {name} ({m} windows), "
                          f"{len(pairs)} splits: Spearman rho = {spearman(pairs):.2f}."]
        if u:
            up = results["update"]
            lines += ["", f"Update column: `{up['command']}` (stage update), {up['started']}; {_load_line(up)}; "
                      f"walk with the update {statistics.mean(e['walk_s'] for e in u.values()):.0f} s on average."]
    sr = results.get("search")
    if sr:
        lines += ["", *search_report(sr)]
    b = results.get("browser")
    if b:
        lines += ["", *browser_report(b)]
    return "\n".join(lines)


def spearman(pairs: list[tuple[float, float]]) -> float:
    """Spearman's rank correlation of (a, b) pairs without ties."""
    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        r = [0] * len(values)
        for rank, i in enumerate(order):
            r[i] = rank
        return r
    ra, rb = ranks([a for a, _ in pairs]), ranks([b for _, b in pairs])
    n = len(pairs)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb)) / (n * (n * n - 1))


def search_report(sr: dict) -> list[str]:
    pts = sr["points"]
    lines = ["### Which split beats 2:4? (stage search)", "",
             f"`{sr['command']}`, {sr['started']}; {_load_line(sr)}. Grid: (B, K) in "
             f"{', '.join(f'({b}, {k})' for b, k in sr['grid']['blocks'])}; ratios on a {sr['grid']['step']:g} grid "
             "of the "
             f"triangle with nominal sparsity {sr['grid']['band'][0]:g}-{sr['grid']['band'][1]:g}: {len(pts)} splits "
             f"estimated (masks only, {sr['estimate_windows']} windows) on one calibration of "
             f"{sr['spec']['method']} ({sr['spec']['nsamples']} x {sr['spec']['seqlen']}), model scope by cost.", ""]
    front = sr.get("front", [])
    if front:
        lines += ["Pareto front of the estimates (lower perplexity at higher sparsity):", "",
                  "| B | K | split | sparsity | estimate | bits / weight |", "|---|---|---|---|---|---|"]
        for i in sorted(front, key=lambda i: pts[i]["sparsity"]):
            pt = pts[i]
            lines.append(f"| {pt['block']} | {pt['keep']} | {split_text(pt['ratios'])} | {pt['sparsity']:.4f} | "
                         f"{pt['ppl_estimate']:.2f} | {pt['bits_per_weight']:.2f} |")
        lines.append("")
    best = {}
    for pt in pts:
        k = (pt["block"], pt["keep"])
        if k not in best or pt["ppl_estimate"] < best[k]["ppl_estimate"]:
            best[k] = pt
    lines += ["Best estimate per (B, K) in the band:", "", "| B | K | split | sparsity | estimate |",
              "|---|---|---|---|---|"]
    for (b, k), pt in sorted(best.items()):
        lines.append(f"| {b} | {k} | {split_text(pt['ratios'])} | {pt['sparsity']:.4f} | {pt['ppl_estimate']:.2f} |")
    if sr.get("verified") or sr.get("references"):
        n = sr["eval_windows"]
        v = sr.get("verify", {})
        lines += ["", f"Exact walks with the OBS update (mask fixed first, then the kept weights reconstructed) of the "
                  "best-estimated split at 50% sparsity or more of each (B, K), the best "
                  f"{len(sr.get('verified', []))}; perplexity on {n} windows x {sr['spec']['seqlen']} of test.txt, "
                  "against the engine's strongest references on the same calibration and windows"
                  + (f" (`{v['command']}`, {v['started']}, load average {[round(x, 2) for x in v['load_before']]} "
                     "before)" if v else "") + ":", "",
                  "| recipe | sparsity | perplexity | bits / weight (storage_estimate) | walk s |",
                  "|---|---|---|---|---|"]
        for v in sr.get("verified", []):
            pt = pts[v["point"]]
            lines.append(f"| three-tier B = {pt['block']}, K = {pt['keep']}, {split_text(pt['ratios'])} + update "
                         f"(estimate {pt['ppl_estimate']:.2f}) | {v['sparsity']:.4f} | **{v['ppl']:.2f}** | "
                         f"{pt['bits_per_weight']:.2f} | {v['walk_s']:.0f} |")
        for r in sr.get("references", []):
            bits = f"{(1 - r['sparsity']) * (16 + 2):.2f}" if r["spec"]["pattern"] == "nm" else "-"  # 2:4: v + 2
            lines.append(f"| {r['label']} | {r['sparsity']:.4f} | {r['ppl']:.2f} | {bits} | {r['walk_s']:.0f} |")
    return lines


def browser_report(b: dict) -> list[str]:
    trips = b["trips"]
    lines = ["### Browser round trip (stage browser)", "",
             f"`{b['command']}`, {b['started']}; {_load_line(b)}. {b['setup']}", "",
             "| slider released at | heatmap redrawn (s) | tier shares and tier map redrawn (s) | engine re-plan (s) |",
             "|---|---|---|---|"]
    for t in trips:
        lines.append(f"| {t['position']} | {t['heatmap_s']:.2f} | {t['all_maps_s']:.2f} | {t['replan_s']} |")
    lines += ["", f"Median: heatmap **{statistics.median(t['heatmap_s'] for t in trips):.2f} s**, all three maps "
              f"**{statistics.median(t['all_maps_s'] for t in trips):.2f} s** after the release (target <= 2 s)."]
    return lines


def write_report(results: dict) -> None:
    path = REPO / "bench" / "RESULTS.md"
    text = path.read_text()
    section = report(results) + "\n"
    pattern = re.compile(r"## Explore: calibrate once.*?(?=\n## |\Z)", re.S)
    text = pattern.sub(lambda m: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


if __name__ == "__main__":
    main()
