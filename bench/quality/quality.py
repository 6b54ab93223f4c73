"""The quality table: dense / magnitude / Wanda / SparseGPT x {50% unstructured, 2:4, three-tier 0.35/0.45/0.20 K=15}
on the embedded SmolLM2-135M, through the product's own path (engine.run.run with a RunRequest, one ModelCache so
the model loads once). Calibration: random windows of valid.txt; evaluation: the first windows of test.txt.

    nice -n 19 python bench/quality/quality.py     # 8 x 8 windows: < 25 min on two busy cores -> results/quality.json
    nice -n 19 python bench/quality/quality.py --nsamples 32 --eval-windows 64 --out bench/results/quality_32x64.json
                                                  # the issue's example sizes: ~17 min on quiet cores, ~1 h on busy
    nice -n 19 python bench/quality/quality.py --only sparsegpt:nm   # one row, to time it before choosing the sizes
    python bench/quality/quality.py --report-only         # rewrite bench/RESULTS.md from bench/results/*.json

Each finished row is written to the JSON at once; --resume keeps rows already there with the same settings, so
an interrupted table continues where it stopped. RESULTS.md shows the table with the most evaluation tokens
first, then the other sizes, then the speed benchmarks' latest records.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.common import DEFAULT_DATA, REPO, RESULTS, command_line, machine, print_table, write_json  # noqa: E402
from engine.methods.registry import METHODS as REGISTRY  # noqa: E402
from engine.spec import PruneSpec  # noqa: E402

PATTERNS = {  # name -> PruneSpec keywords
    "unstructured": {"pattern": "unstructured", "sparsity": 0.5},
    "nm": {"pattern": "nm", "n": 2, "m": 4},
    "three_tier": {"pattern": "three_tier", "ratios": (0.35, 0.45, 0.20), "block": 16, "keep": 15},
}
PATTERN_LABEL = {"unstructured": "50% unstructured", "nm": "2:4", "three_tier": "three-tier 0.35/0.45/0.20 K=15"}
METHODS = ("magnitude", "wanda", "sparsegpt")  # the table's three ways; --methods runs others of the registry
RESULTS_MD = REPO / "bench" / "RESULTS.md"


def table_rows(nsamples: int, seqlen: int, methods=METHODS) -> list[tuple[str, PruneSpec]]:
    """(key, spec) for every row. Dense is a magnitude prune at sparsity 0: the same run() path, no weight changed."""
    rows = [("dense", PruneSpec(method="magnitude", pattern="unstructured", sparsity=0.0, seqlen=seqlen))]
    for pattern, kw in PATTERNS.items():
        for method in methods:
            rows.append((f"{method}:{pattern}", PruneSpec(method=method, nsamples=nsamples, seqlen=seqlen, **kw)))
    return rows


def run_row(key: str, spec: PruneSpec, a, models) -> dict:
    from engine.run import RunRequest, run

    request = RunRequest(model=None, spec=spec, calib=a.data, eval=a.data, eval_windows=a.eval_windows,
                         baselines=False, device=a.device, dtype=a.dtype, save_dir=None)
    t0 = time.perf_counter()

    def progress(event):
        if "message" in event:
            print(f"  [{time.perf_counter() - t0:6.1f} s] {event['stage']}: {event['message']}", file=sys.stderr,
                  flush=True)
    record = run(request, progress=progress, models=models)
    method, _, pattern = key.partition(":")
    return {"key": key, "method": method, "pattern": PATTERN_LABEL.get(pattern, "-"), "status": record["status"],
            "ppl": record["ppl"]["pruned"], "sparsity": record["sparsity"], "nominal": record["nominal_sparsity"],
            "time_s": record["timings"]["total_s"] - record["timings"].get("load_s", 0.0),
            "timings": record["timings"], "eval": record["eval"], "data": record["data"], "spec": record["spec"],
            "model": record["model"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA),
                   help="WikiText folder: valid.txt calibrates, test.txt evaluates")
    p.add_argument("--nsamples", type=int, default=8, help="calibration windows (8: see RESULTS.md, Sizes and time)")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=8, help="first N windows of test.txt")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--only", nargs="+", default=None, help="row keys: dense, wanda:nm, sparsegpt:three_tier, ...")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(REGISTRY),
                   help=f"methods of the rows (default: {' '.join(METHODS)})")
    p.add_argument("--resume", action="store_true", help="keep finished rows of an earlier run with the same settings")
    p.add_argument("--out", default=str(RESULTS / "quality.json"))
    p.add_argument("--no-report", action="store_true", help="do not rewrite bench/RESULTS.md")
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args()
    if a.report_only:
        write_results_md(json.loads(Path(a.out).read_text()) if "--out" in sys.argv else largest_table())
        return

    from engine.run import ModelCache

    settings = {"data": a.data, "nsamples": a.nsamples, "seqlen": a.seqlen, "eval_windows": a.eval_windows,
                "device": a.device, "dtype": a.dtype}
    done = {}
    if a.resume and Path(a.out).exists():
        old = json.loads(Path(a.out).read_text())
        if old.get("settings") == settings:
            done = {r["key"]: r for r in old["rows"]}
    todo = [(k, s) for k, s in table_rows(a.nsamples, a.seqlen, a.methods) if a.only is None or k in a.only]
    models = ModelCache()
    rows, t_start = [], time.perf_counter()
    doc = {"benchmark": "quality", "settings": settings, "machine_start": machine(a.device), "rows": rows,
           "command": command_line()}
    for key, spec in todo:
        if key in done:
            rows.append(done[key])
            continue
        print(f"{key}: {spec.label()}", file=sys.stderr, flush=True)
        rows.append(run_row(key, spec, a, models))
        r = rows[-1]
        print(f"{key}: ppl {r['ppl']:.3f}, sparsity {r['sparsity']:.4f}, {r['time_s']:.0f} s "
              f"(elapsed {time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)
        doc["wall_s"] = time.perf_counter() - t_start
        doc["machine_end"] = machine(a.device)
        write_json(a.out, doc)
    print_table(rows, COLUMNS)
    if not a.no_report and a.only is None:
        write_results_md(doc)


COLUMNS = [("method", "method", "s"), ("pattern", "pattern", "s"), ("ppl", "ppl", ".2f"),
           ("sparsity", "actual sparsity", ".4f"), ("nominal", "nominal", ".4f"), ("time_s", "time s", ".0f")]


# ------------------------------------------------------------------------------------------ RESULTS.md

def md_table(rows: list[dict], columns) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join("-" if r.get(k) is None else format(r[k], f) for k, _, f in columns) + " |")
    return "\n".join(lines)


def write_results_md(doc: dict) -> None:
    """bench/RESULTS.md: the quality table and, when their JSON is there, the speed benchmarks' tables."""
    s, m = doc["settings"], doc["machine_start"]
    end = doc.get("machine_end", m)
    rows = doc["rows"]
    stage_keys = ("calibration_data_s", "capture_s", "prune_s", "eval_s")
    stage_rows = [{"row": r["key"], **{k: r["timings"].get(k) for k in stage_keys}} for r in rows]
    out = [
        "# Benchmark results",
        "",
        "Measured numbers, written by the scripts in `bench/` (see `bench/README.md`); raw records in "
        "`bench/results/`.",
        "",
        "## Quality: perplexity of SmolLM2-135M-Instruct pruned three ways",
        "",
        f"- command: `{doc['command']}`",
        f"- date: {m['date_utc']}; wall time of the table {doc.get('wall_s', 0) / 60:.1f} min (model loaded once)",
        f"- machine: {m['host_cpus']} CPU cores ({m['cpu']}) shared with other processes, "
        f"{m['torch_threads']} torch threads; load average at start {m.get('load_avg_1_5_15')}, "
        f"at end {end.get('load_avg_1_5_15')}; torch {m['torch']}, transformers {m['transformers']}, "
        f"device {s['device']}, dtype {rows[0]['model']['dtype'] if rows else '?'}, "
        f"engine commit {m.get('engine_commit')}",
        f"- model: the embedded SmolLM2-135M-Instruct (local GGUF, Q4_1 dequantized to float), "
        f"{rows[0]['model']['n_layers'] if rows else '?'} decoder layers, all 7 linear layers of each pruned",
        f"- calibration: {s['nsamples']} random windows x {s['seqlen']} tokens of `valid.txt` (seed 0); "
        f"evaluation: the first {s['eval_windows']} windows x {s['seqlen']} tokens of `test.txt` "
        f"({s['eval_windows'] * s['seqlen']} tokens), Wanda's perplexity formula; data folder `{s['data']}`",
        "- path: `engine.run.run(RunRequest(calib=<data>, eval=<data>, eval_windows=N, baselines=False))` per row, one "
        "`ModelCache` (dense weights restored between rows). Dense = magnitude at sparsity 0 through the same path.",
        "- time s: the row's wall time without the one model load (calibration windows, layer walk, evaluation).",
        "",
        md_table(rows, COLUMNS),
        "",
        "Where each row's time went (s):",
        "",
        md_table(stage_rows, [("row", "row", "s")] + [(k, k[:-2].replace("_", " "), ".1f") for k in stage_keys]),
        "",
        "### Sizes and time",
        "",
        *sizes_note(doc),
        "",
        "### Notes",
        "",
        *observations(rows),
        NOTES.format(eval_windows=s["eval_windows"]),
    ]
    out += other_quality_tables(doc)
    out += speed_sections()
    RESULTS_MD.write_text("\n".join(out) + "\n")
    print(f"wrote {RESULTS_MD}")


def observations(rows: list[dict]) -> list[str]:
    """What the table says, computed from it (so the text cannot go stale when the numbers change)."""
    by = {r["key"]: r for r in rows if r.get("ppl") is not None}
    out = []
    if "dense" in by:
        out.append(f"- Dense perplexity {by['dense']['ppl']:.2f} on these windows.")
    for pattern, label in PATTERN_LABEL.items():
        got = sorted((by[f"{m}:{pattern}"]["ppl"], m) for m in METHODS if f"{m}:{pattern}" in by)
        if len(got) > 1:
            order = " < ".join(f"{m} {ppl:.2f}" for ppl, m in got)
            out.append(f"- {label}: {order}" + (f" ({got[-1][0] / got[0][0]:.1f}x between best and worst)."
                                                 if got[0][0] > 0 else "."))
    ratios = [(m, by[f"{m}:three_tier"]["ppl"] / by[f"{m}:nm"]["ppl"]) for m in METHODS
              if f"{m}:three_tier" in by and f"{m}:nm" in by]
    if ratios:
        sp = next(by[f"{m}:three_tier"]["sparsity"] for m, _ in ratios)
        out.append(f"- Three-tier ({100 * sp:.1f}% sparse) against 2:4 (50%), same method: perplexity "
                   + ", ".join(f"{m} {x:.2f}x" for m, x in ratios) + " the 2:4 value.")
    return out


def quality_tables() -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted(RESULTS.glob("quality*.json"))]


def largest_table() -> dict:
    """The table with the most evaluation tokens (the latest of equals): the main one of RESULTS.md."""
    docs = [d for d in quality_tables() if d.get("rows")]
    return max(reversed(docs), key=lambda d: d["settings"]["eval_windows"] * d["settings"]["seqlen"])


def sizes_note(doc: dict) -> list[str]:
    docs = [d for d in quality_tables() if d.get("rows")] or [doc]
    fast = min(eval_seconds_per_window(d["rows"])[0] for d in docs)
    s = doc["settings"]
    out = [SIZE_NOTE.format(seqlen=s["seqlen"], fast=fast, full_fast=128 * len(doc["rows"]) * fast / 60,
                            rows=len(doc["rows"])), ""]
    for d in sorted(docs, key=lambda d: -d["settings"]["eval_windows"]):
        ds, m = d["settings"], d["machine_start"]
        out.append(f"- {ds['nsamples']} calibration x {ds['eval_windows']} evaluation windows: "
                   f"{d.get('wall_s', 0) / 60:.1f} min on {m['date_utc']}, load average at start "
                   f"{m.get('load_avg_1_5_15')} (engine {m.get('engine_commit')})")
    return out + ["", SIZE_CHOICE]


def eval_seconds_per_window(rows: list[dict]) -> tuple[float, float]:
    """The fastest and slowest evaluation forward pass of one window over the table's rows (seconds)."""
    per = [r["timings"]["eval_s"] / r["eval"]["windows"] for r in rows if r.get("eval") and "eval_s" in r["timings"]]
    return (min(per), max(per)) if per else (float("nan"), float("nan"))


def other_quality_tables(doc: dict) -> list[str]:
    """Tables of other sizes (bench/results/quality*.json, e.g. --out bench/results/quality_32x64.json), compact."""
    out = []
    for f in sorted(RESULTS.glob("quality*.json")):
        d = json.loads(f.read_text())
        if d.get("settings") == doc["settings"] or not d.get("rows"):
            continue
        s, m = d["settings"], d["machine_start"]
        n_all = len(table_rows(s["nsamples"], s["seqlen"]))
        extent = "whole table" if len(d["rows"]) == n_all else f"{len(d['rows'])} of {n_all} rows (interrupted)"
        out += ["", f"## Quality at other sizes: {s['nsamples']} calibration x {s['eval_windows']} evaluation windows "
                f"of {s['seqlen']} tokens", "",
                f"`{d['command']}` — {m['date_utc']}, load average at start {m.get('load_avg_1_5_15')}, at end "
                f"{d.get('machine_end', m).get('load_avg_1_5_15')}, engine {m.get('engine_commit')}; "
                f"{extent} in {d.get('wall_s', 0) / 60:.1f} "
                f"min. Same path and notes as above; {s['eval_windows'] * s['seqlen']} evaluation tokens.", "",
                md_table(d["rows"], COLUMNS), "", *observations(d["rows"])]
    return out


def speed_sections() -> list[str]:
    """The other benchmarks' latest tables, from their JSON records (skipped when absent)."""
    out = []
    f = RESULTS / "masks.json"
    if f.exists():
        d = json.loads(f.read_text())
        mm = d["machine"]
        cols = [("name", "builder", "s"), ("median_s", "median s", ".3f"), ("min_s", "min s", ".3f"),
                ("sparsity", "sparsity", ".4f"), ("ok", f"< {d['target_s']:g} s", "s")]
        # keep the stage rows' indentation visible in markdown
        rows = [{**r, "name": "&nbsp;&nbsp;" * (len(r["name"]) - len(r["name"].lstrip())) + r["name"].strip()}
                for r in d["masks"]]
        out += ["", f"## Mask builders ({d['shape'][0]} x {d['shape'][1]}, random |N(0,1)| scores)", "",
                f"`{d['command']}` — {mm['date_utc']}, {mm['device']}, {mm['torch_threads']} threads, load average "
                f"{mm.get('load_avg_1_5_15')}, engine {mm.get('engine_commit')}; median of {d['repeats']} round-robin "
                "rounds after one warm-up. Indented rows are stages of the three-tier builder.", "",
                md_table(rows, cols), "",
                f"SparseGPT solver for reference ({d['sparsegpt'][0]['shape'][0]} x {d['sparsegpt'][0]['shape'][1]}):",
                "", md_table(d["sparsegpt"], cols[:4])]
    for f in sorted(RESULTS.glob("prune_speed*.json")):
        d = json.loads(f.read_text())
        mm = d["machine"]
        cols = [("method", "method", "s"), ("prune_s", "prune s", ".1f"), ("forward_s", "forward s", ".1f"),
                ("ratio", "x forward", ".2f"), ("ok", "<= 2.5x", "s"), ("ratio_cpu", "x forward CPU", ".2f"),
                ("layer_passes", "x propagate", ".2f"), ("sparsity", "sparsity", ".4f"),
                ("peak_rss_mib", "peak RSS MiB", ".0f"), ("peak_over_before_mib", "+ MiB over before", ".0f"),
                ("peak_cuda_mib", "peak CUDA MiB", ".0f")]
        for r in d["rows"]:  # records from before these columns existed: derive what can be derived
            r.setdefault("layer_passes", r["prune_s"] / r["stages"]["propagate_s"])
            r.setdefault("peak_over_before_mib", r["peak_rss_mib"] - (r["rss_before_mib"] or r["peak_rss_mib"]))
        stage = [{"method": r["method"], **r["stages"]} for r in d["rows"]]
        smoke = "random LLaMA" in d["model"] and mm["device"] == "cpu"
        out += ["", f"## Prune speed: {d['model']}, {d['nsamples']} x {d['seqlen']} tokens", "",
                *(["A CPU smoke test of the GPU benchmark (it checks that the 7B-shaped path runs and how the time "
                   "splits); with this few tokens the ratios mean nothing. The 7B timing is "
                   "`python bench/speed/prune_speed.py --device cuda --random-llama-7b`.", ""] if smoke else []),
                f"`{d['command']}` — {mm['date_utc']}, {mm['device']} {d['dtype']}, {mm['torch_threads']} threads, "
                f"load average {mm.get('load_avg_1_5_15')}, engine {mm.get('engine_commit')}. forward s = mean of the "
                "plain forward passes over the same windows just before and after that prune (each: "
                f"{', '.join(f'{x:.0f}' for x in d['forward_s_each'])} s); x forward CPU = the same ratio in process "
                "CPU time; x propagate = prune time / the walk's own propagation pass over the decoder layers (timed "
                "during the prune, so immune to load drift; ideal Wanda ~2). + MiB = peak RSS of the prune minus RSS "
                "before it (the model and a dense copy of its weights are resident before).", "",
                md_table(d["rows"], cols), "",
                "Where the prune time goes (s):", "",
                md_table(stage, [("method", "method", "s")] + [(k, k[:-2], ".1f") for k in d["rows"][0]["stages"]])]
    f = RESULTS / "ppl_throughput.json"
    if f.exists():
        d = json.loads(f.read_text())
        mm = d["machine"]
        out += ["", f"## Perplexity throughput ({d['windows']} x {d['seqlen']} tokens)", "",
                f"`{d['command']}` — {mm['date_utc']}, {mm['device']}, {mm['torch_threads']} threads, load average "
                f"{mm.get('load_avg_1_5_15')}, engine {mm.get('engine_commit')}. whole = {len(d['whole'])} full passes "
                f"of each loop, order alternated; paired = window by window, engine and bare back to back.", "",
                md_table(d["summary"], [("what", "loop", "s"), ("seconds", "wall s", ".1f"), ("cpu_s", "CPU s", ".1f"),
                                        ("tokens_per_s", "tokens/s", ".0f"),
                                        ("overhead_pct", "overhead wall %", "+.2f"),
                                        ("overhead_cpu_pct", "overhead CPU %", "+.2f")]),
                "", d["verdict"]]
    f = RESULTS / "snapshot.json"
    if f.exists():
        d = json.loads(f.read_text())
        mm = d["machine"]
        out += ["", "## Dense weights kept aside (engine/io/snapshot.py)", "",
                f"`{d['command']}` — {mm['date_utc']}, {mm['device']}, load average {mm.get('load_avg_1_5_15')}, "
                f"engine {mm.get('engine_commit')}. take = copy before any pruning; restore = write back after the "
                "weights were zeroed; added RSS = peak host memory of taking the copy over before it. The file is "
                "written one tensor at a time and read back memory-mapped (here from the page cache).", "",
                md_table(d["rows"], [("model", "model", "s"), ("where", "kept in", "s"), ("copy_gib", "GiB", ".3f"),
                                     ("take_s", "take s", ".2f"), ("restore_s", "restore s", ".2f"),
                                     ("added_rss_gib", "added RSS GiB", ".3f")])]
    f = RESULTS / "gpu_check.json"
    if f.exists():
        d = json.loads(f.read_text())
        mm = d["machine"]
        out += ["", f"## GPU check: LLaMA-2-7B shape, {d['nsamples']} x {d['seqlen']} tokens", "",
                f"`{d['command']}` — {mm['date_utc']}, {mm['device']}, engine {mm.get('engine_commit')}; weights "
                f"{d['weights_gib']:.1f} GiB, plain forward {d['forward_s']:.1f} s.", "",
                md_table(d["stages"], [("stage", "stage", "s"), ("wall_s", "wall s", ".1f"),
                                       ("x_forward", "x forward", ".2f"), ("peak_gpu_gib", "peak GPU GiB", ".2f"),
                                       ("ok", "checks", "")])]
    else:
        out += ["", "## GPU check", "",
                "`bench/speed/gpu_check.py` (LLaMA-2-7B shape on one GPU) has not run on a GPU yet: no "
                "GPU was lent to the sessions so far. Its `--smoke` form runs on the CPU in the test suite."]
    return out


SIZE_NOTE = ("The protocol asks for 128 evaluation windows of {seqlen} tokens if the machine allows. On these two "
             "shared cores one {seqlen}-token forward pass of SmolLM2 takes {fast:.1f} s when they are quiet and up to "
             "~7 s while other processes run at normal priority (these scripts run at `nice -n 19`), so evaluating "
             "128 windows x {rows} rows would take {full_fast:.0f} minutes to over two hours before any calibration. "
             "The tables therefore use fewer windows (the same windows in every row of a table). How long each took:")

SIZE_CHOICE = ("The sizes were chosen after timing single rows (`--only`) under the early-afternoon load (load average "
               "5-7; a 512-token forward 4-8 s; Wanda 2:4 with 16 calibration + 16 evaluation windows took 397 s for "
               "that one row, SparseGPT three-tier with 8 + 8 took 292 s). 8 x 8 is the size that stays within 25 "
               "minutes whatever the neighbours do: it took 15.5 min at load average 5-6 (engine a7c52c4, the same "
               "perplexities as the 8 x 8 table here except magnitude 50% unstructured, 361.16, whose ties are broken "
               "differently since). 32 x 64, the protocol's example, needs a quiet machine: 17 min at load ~2, about "
               "an hour at the early-afternoon load. SparseGPT's rows carry a fixed cost that no data size reduces "
               "(its OBS column loop over the 210 matrices, 'prune_matrix' in the prune-speed table); the layer walk "
               "costs about two forward passes per calibration window, evaluation one per window.")

NOTES = """- Perplexities on {eval_windows} evaluation windows are comparable across the rows of this table (the same
  windows), not with published full-test-set numbers. WikiText-2 here is the tokenized v1 form (`<unk>`, ` @-@ `),
  not the raw form of the Wanda paper, and the model is the Q4_1 GGUF dequantized to float32, so its dense
  perplexity already carries 4-bit rounding; every number here is higher than a paper's.
- The three-tier rows are not at the same sparsity as the others: 0.35/0.45/0.20 with K=15 of 256 removes
  0.45 x 1/2 + 0.20 x 241/256 = 41.3% of the weights (nominal column), against 50% for unstructured and 2:4.
- Actual sparsity in these tables counts the zeros of the keep-masks over every pruned matrix (all 7 linear layers
  of all 30 decoder layers; embeddings and the tied LM head stay dense): they were measured before the engine
  counted W == 0. It differs from nominal only by the rounding of per-matrix block counts; the engine's records now
  count the weights too, which adds the 4-bit checkpoint's own zeros kept inside dense blocks (`mask_sparsity` in a
  record is the column here).
- Times are wall times on two cores shared with other processes at normal priority while this ran at
  `nice -n 19`; the same row can take twice as long an hour later. The stage split above is the robust part:
  calibration rows pay about two forward passes per calibration window, SparseGPT adds its OBS solve.
"""


if __name__ == "__main__":
    main()
