"""`main.py --sweep "0.35 0.45 0.2" "0.5 0.3 0.2" ...`: one calibration of the dense model, then per split a re-plan
and a quick perplexity estimate (engine/explore/, masks only). Prints one summary line per split (the single
run's format), then a table; `--save DIR` writes every point to DIR/sweep.json.

A sweep point is one quoted string: three numbers for three-tier (dense 2:4 top-K ratios), one sparsity for the
other patterns (unstructured: share of weights; block, block_topk: share of blocks; N:M: 1 - N/M with M kept).
Evaluation: the first --eval_windows windows of the evaluation text (default explore.DEFAULT_ESTIMATE_WINDOWS).
"""
from __future__ import annotations

import math
import os
import time

from engine.cli.console import markdown_table, summary_line
from engine.errors import UserError, excerpt
from engine.explore import DEFAULT_ESTIMATE_WINDOWS, calibrate, sweep, sweep_spec
from engine.io import text as textdata
from engine.io.record import versions, write_json_atomic
from engine.io.save import check_save_dir
from engine.methods.registry import METHODS
from engine.patterns.registry import PATTERNS, check_spec_fits
from engine.spec import PruneSpec
from engine.walk.discovery import find_decoder_layers


def parse_point(text: str) -> tuple[float, ...]:
    """One quoted sweep point -> its numbers ("0.35 0.45 0.2" or "0.35,0.45,0.2")."""
    parts = str(text).replace(",", " ").split()
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise UserError(f"sweep point {excerpt(text, 40)} is not a list of numbers; quote each split, e.g. "
                        '--sweep "0.35 0.45 0.2" "0.5 0.3 0.2"') from None
    if not values or not all(math.isfinite(v) for v in values):
        raise UserError(f"sweep point {excerpt(text, 40)} needs finite numbers")
    return values


def sweep_specs(base: PruneSpec, points: list[str]) -> list[PruneSpec]:
    """Every point as a validated spec, before any model is loaded (a bad triple is one line, at once)."""
    return [sweep_spec(base, parse_point(p)) for p in points]


def sweep_main(args, base: PruneSpec, request) -> int:
    """The --sweep command: `request` is the single run's RunRequest (model, data, device), `base` its spec."""
    from engine.run import ModelCache

    t_start = time.perf_counter()
    specs = sweep_specs(base, args.sweep)
    if request.eval is None:
        raise UserError("a sweep estimates perplexity: give an evaluation text (--eval_dataset)")
    windows_asked = args.eval_windows or DEFAULT_ESTIMATE_WINDOWS
    if windows_asked < 1:
        raise UserError(f"eval windows must be a whole number >= 1, got {windows_asked}")
    if args.save:
        check_save_dir(args.save, args.overwrite)
    eval_src = textdata.resolve_text(request.eval, "evaluation")
    uses_data = METHODS[base.method].uses_calibration
    calib_src = textdata.resolve_text(request.calib, "calibration") if uses_data else None
    lm = ModelCache().get(request)
    model, tok = lm.model, lm.tokenizer
    for spec in specs:  # before the calibration pass: a block wider than the matrices is one line at once
        check_spec_fits(spec, find_decoder_layers(model)[1])
    seqlen = textdata.default_seqlen(model.config, base.seqlen)
    eval_ids = textdata.evaluation_ids(tok, eval_src)
    windows = textdata.calibration_windows(tok, calib_src, base.nsamples, seqlen, base.seed) if uses_data else None
    t_load = time.perf_counter() - t_start

    calibration = calibrate(model, base.replace(seqlen=seqlen), windows, data=calib_src.name if uses_data else None)
    records = sweep(model, calibration, [s.replace(seqlen=seqlen) for s in specs], eval_ids, seqlen,
                    windows=windows_asked)

    for r in records:
        print(summary_line(_as_run_record(r, eval_src.name)) + f" | estimate: {r['windows']} windows, "
              f"+-1 s.e. {r['ppl_low']:.3f}-{r['ppl_high']:.3f}" + "".join(f" | {n}" for n in r["notes"]))
    print(sweep_table(records))
    timings = {"load_s": t_load, "calibration_s": calibration.seconds,
               "replan_s": sum(r["replan_s"] for r in records), "estimate_s": sum(r["estimate_s"] for r in records),
               "total_s": time.perf_counter() - t_start}
    print(f"one calibration {calibration.seconds:.1f}s ({calibration.nbytes / 2**20:.1f} MiB kept), "
          f"{len(records)} splits: re-plan {timings['replan_s']:.1f}s, estimate {timings['estimate_s']:.1f}s")
    if args.save:
        os.makedirs(os.path.expanduser(args.save), exist_ok=True)
        write_json_atomic(os.path.join(os.path.expanduser(args.save), "sweep.json"), {
            "model": lm.name, "calibration": {"key": calibration.key, "seconds": calibration.seconds,
                                              "bytes": calibration.nbytes},
            "data": {"calibration": calib_src.name if uses_data else None, "evaluation": eval_src.name},
            "eval": {"windows": windows_asked, "seqlen": seqlen}, "points": records, "timings": timings,
            "versions": versions()})
    return 0 if all(r["status"] == "completed" for r in records) else 1


def _as_run_record(r: dict, evaluation: str) -> dict:
    """A sweep point in the shape summary_line reads (the single run's record)."""
    return {"spec": r["spec"], "status": r["status"], "sparsity": r["sparsity"], "mask_sparsity": r["sparsity"],
            "ppl": {"pruned": r["ppl"], "dense": None, "magnitude": None},
            "timings": {"total_s": r["replan_s"] + r["estimate_s"]}, "data": {"evaluation": evaluation}}


def sweep_table(records: list[dict]) -> str:
    """One row per split: what it keeps, its estimated perplexity and its storage."""
    rows = []
    for r in records:
        spec = PruneSpec.from_dict(r["spec"])
        rows.append(("/".join(f"{x:g}" for x in PATTERNS[spec.pattern].point(spec)), f"{r['sparsity']:.4f}",
                     f"{r['ppl']:.3f}", f"{r['ppl_low']:.3f}-{r['ppl_high']:.3f}",
                     f"{r['storage']['bytes'] / 2**20:.2f}", f"{r['storage']['ratio']:.3f}", f"{r['replan_s']:.2f}",
                     f"{r['estimate_s']:.1f}"))
    return markdown_table(["split", "sparsity", "ppl estimate", "+-1 s.e.", "storage MiB", "x dense", "re-plan s",
                           "estimate s"], rows)
