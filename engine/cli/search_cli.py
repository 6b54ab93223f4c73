"""`main.py --search --trials N [--minutes M] [--target_sparsity LOW [HIGH]] [--objective storage] [--storage URL
--study NAME]`: one calibration of the dense model, then trials of the split search (engine/explore/split_search.py)
added to a study; one line per finished trial, the Pareto front as a table at the end, everything in DIR/search.json
with
--save. The same command again resumes the study; workers on other machines given the same --storage URL and
--study name add their trials to it. `--list_searches` lists a storage's studies, `--export_search FILE.csv|.json`
writes one study's trials.
"""
from __future__ import annotations

import argparse
import os
import time

from engine.cli.console import markdown_table
from engine.errors import UserError, excerpt
from engine.explore import DEFAULT_ESTIMATE_WINDOWS, calibrate, calibration_key, estimate
from engine.explore.split_search import (
    OBJECTIVES,
    SAMPLERS,
    SearchSettings,
    default_storage_url,
    evaluation_key,
    export_study,
    list_studies,
    open_storage,
    open_study,
    pareto_front,
    search,
    search_space,
    shown_url,
    study_identity,
    trial_records,
)
from engine.io import text as textdata
from engine.io.record import versions, write_json_atomic
from engine.io.save import check_save_dir
from engine.methods.registry import METHODS
from engine.spec import PruneSpec


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("split search (engine/explore/split_search.py, Optuna)")
    s.add_argument("--search", action="store_true",
                   help="one calibration, then trials over the pattern's parameters (three-tier: ratios, K, B, tier "
                   "scope, assignment, within-block choice), each a re-plan + quick estimate on --eval_windows "
                   "windows (default 6); prints the Pareto front; --save writes search.json")
    s.add_argument("--trials", type=int, default=None, help="trials this process adds to the study")
    s.add_argument("--minutes", type=float, default=None, help="stop adding trials after this many minutes")
    s.add_argument("--objective", default="sparsity",
                   help="; ".join(f"{name}: {o.title}" for name, o in OBJECTIVES.items()) + " (default sparsity)")
    s.add_argument("--target_sparsity", type=float, nargs="+", default=None, metavar="S",
                   help="sparsity band of the masks: LOW (at least LOW) or LOW HIGH; splits outside are not estimated")
    s.add_argument("--max_bits", type=float, default=None, help="storage cap in bits per weight")
    s.add_argument("--sampler", default="tpe", help="; ".join(f"{n}: {what}" for n, (_, what) in SAMPLERS.items()))
    s.add_argument("--search_seed", type=int, default=None, help="the sampler's seed (default: random)")
    s.add_argument("--search_space", nargs="+", default=None, metavar="FIELD=V1,V2",
                   help="search only these values of a field (e.g. keep=32,64,96 ratios=0.15/0.25/0.6,0.2/0.4/0.4); "
                   "the pattern's other fields keep their default ranges")
    s.add_argument("--storage", default=None, metavar="URL", help="Optuna storage URL shared by workers (e.g. "
                   "postgresql://user:pass@host/db; default: an SQLite file in the run store folder)")
    s.add_argument("--study", default=None, metavar="NAME", help="study name (default: derived from the model, "
                   "calibration and settings, so the same command resumes it)")
    s.add_argument("--list_searches", action="store_true", help="list the studies in the storage and exit")
    s.add_argument("--export_search", default=None, metavar="FILE", help="write --study's trials to FILE (.csv or "
                   ".json) and exit")


def search_settings(args) -> SearchSettings:
    band = args.target_sparsity
    if band is not None and len(band) not in (1, 2):
        raise UserError(f"--target_sparsity takes LOW or LOW HIGH, got {len(band)} numbers")
    return SearchSettings(objective=args.objective, band=None if band is None else (band[0], band[-1] if
                          len(band) == 2 else 1.0), max_bits=args.max_bits, trials=args.trials, minutes=args.minutes,
                          sampler=args.sampler, seed=args.search_seed,
                          windows=args.eval_windows or DEFAULT_ESTIMATE_WINDOWS)


def parse_space(items: list[str] | None) -> dict:
    """FIELD=V1,V2 ... -> {field: [values]} (ratios as d/s/t; numbers as numbers)."""
    out = {}
    for item in items or ():
        name, sep, values = str(item).partition("=")
        if not sep or not values:
            raise UserError(f"search space {excerpt(item, 40)} is not FIELD=V1,V2 (e.g. keep=32,64,96)")
        parsed = []
        for v in values.split(","):
            if name == "ratios":
                try:
                    parsed.append(tuple(float(x) for x in v.split("/")))
                except ValueError:
                    raise UserError(f"ratios {excerpt(v, 40)} are not three numbers d/s/t") from None
                continue
            parsed.append(_number(v))
        out[name] = parsed
    return out


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def storage_url(args) -> str:
    from engine.io.run_store import default_store_dir
    return args.storage or default_storage_url(args.runs_dir or default_store_dir())


def list_or_export(args, url: str) -> int:
    """--list_searches: the studies in the storage; --export_search FILE --study NAME: one study's trials."""
    storage = open_storage(url)
    if args.list_searches:
        print(studies_table(list_studies(storage)))
        return 0
    if not args.study:
        raise UserError("--export_search needs --study NAME (--list_searches lists them)")
    import optuna
    try:
        study = optuna.load_study(study_name=args.study, storage=storage)
    except KeyError:
        raise UserError(f"no study {excerpt(args.study, 60)} in {shown_url(url)} (--list_searches lists them)") \
            from None
    n = export_study(study, args.export_search)
    print(f"{n} trials of {args.study} written to {args.export_search}")
    return 0


def search_main(args, base: PruneSpec, request) -> int:
    """The --search command (and --list_searches, --export_search): `request` is the single run's RunRequest."""
    url = storage_url(args)
    if args.list_searches or args.export_search:
        return list_or_export(args, url)
    from engine.run import ModelCache

    t_start = time.perf_counter()
    settings = search_settings(args)
    given = parse_space(args.search_space)
    if request.eval is None:
        raise UserError("a search estimates perplexity: give an evaluation text (--eval_dataset)")
    if args.save:
        check_save_dir(args.save, args.overwrite)
    storage = open_storage(url)  # an unreachable URL is one line before the model loads
    eval_src = textdata.resolve_text(request.eval, "evaluation")
    uses_data = METHODS[base.method].uses_calibration
    calib_src = textdata.resolve_text(request.calib, "calibration") if uses_data else None
    lm = ModelCache().get(request)
    model, tok = lm.model, lm.tokenizer
    seqlen = textdata.default_seqlen(model.config, base.seqlen)
    base = base.replace(seqlen=seqlen)
    space = search_space(base, model, given, band=settings.band)
    eval_ids = textdata.evaluation_ids(tok, eval_src)
    windows = textdata.calibration_windows(tok, calib_src, base.nsamples, seqlen, base.seed) if uses_data else None
    data_name = calib_src.name if uses_data else None
    identity = study_identity(calibration_key(model, base, windows, data_name), space, settings,
                              evaluation_key(eval_ids, seqlen, settings.windows, estimate,
                                             base.updates_weights))
    study = open_study(storage, args.study, identity, settings, model=lm.name)  # refused before calibrating
    before = len(trial_records(study))
    print(f"study {study.study_name} in {shown_url(url)}: {before} finished trials; searching "
          f"{', '.join(space.fields)} ({OBJECTIVES[settings.objective].title})")
    calibration = calibrate(model, base, windows, data=data_name, hessians=True)  # kept only if the recipe updates
    kept = f", {calibration.hessian_nbytes / 2**20:.1f} MiB of Hessians" if calibration.hessians is not None else ""
    print(f"calibration {calibration.seconds:.1f}s ({calibration.nbytes / 2**20:.1f} MiB kept{kept})"
          + (f"; estimates masks only: {calibration.hessians_note}" if base.updates_weights
             and calibration.hessians is None else ""))

    def show(event):
        if event.get("stage") == "search":
            print(trial_line(event["record"]), flush=True)
    mine = search(study, calibration, space, settings, eval_ids, seqlen, progress=show)
    records = trial_records(study)
    front = pareto_front(records, settings.objective)
    print(front_table(front))
    print(f"{len(mine)} trials added by this process, {len(records)} in the study; search "
          f"{time.perf_counter() - t_start:.1f}s")
    if args.save:
        os.makedirs(os.path.expanduser(args.save), exist_ok=True)
        write_json_atomic(os.path.join(os.path.expanduser(args.save), "search.json"), {
            "model": lm.name, "study": study.study_name, "storage": shown_url(url), "identity": identity,
            "settings": {**settings.identity(), "trials": settings.trials, "minutes": settings.minutes,
                         "sampler": settings.sampler, "seed": settings.seed},
            "calibration": {"key": calibration.key, "seconds": calibration.seconds, "bytes": calibration.nbytes},
            "data": {"calibration": data_name, "evaluation": eval_src.name},
            "added": [r["number"] for r in mine], "trials": records, "front": [r["number"] for r in front],
            "timings": {"total_s": time.perf_counter() - t_start}, "versions": versions()})
    return 0


def trial_line(r: dict) -> str:
    ppl = "not estimated (outside the band / cap)" if r["ppl"] is None else \
        f"ppl {r['ppl']:.3f} (+-1 s.e. {r['ppl_low']:.3f}-{r['ppl_high']:.3f}, {r['windows']} windows)"
    how = {"repeat": f" | repeat of trial {r.get('repeat_of')}"}.get(r["status"], "")
    return (f"trial {r['number']} | {r['label']} | sparsity {r['sparsity']:.4f} | {r['bits']:.2f} bits/weight | "
            f"{ppl}{how} | {r['seconds']:.1f}s | {r['worker']}")


def front_table(front: list[dict]) -> str:
    return markdown_table(["trial", "split", "sparsity", "bits/weight", "ppl estimate", "+-1 s.e."], (
        (r["number"], r["label"], f"{r['sparsity']:.4f}", f"{r['bits']:.2f}", f"{r['ppl']:.3f}",
         f"{r['ppl_low']:.3f}-{r['ppl_high']:.3f}") for r in front))


def studies_table(studies: list[dict]) -> str:
    keys = ["study", "model", "pattern", "method", "objective", "trials", "started"]
    return markdown_table(keys, ([s[k] for k in keys] for s in studies))
