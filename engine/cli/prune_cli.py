"""The command line, compatible with the Wanda scripts:

    python main.py --model meta-llama/Llama-2-7b-hf --prune_method wanda --sparsity_ratio 0.5 \\
        --sparsity_type unstructured --save out/llama2_7b/unstructured/wanda/

Bad input ends with one line `error: ...` and exit status 2; a Ctrl-C ends with status 130.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from engine.cli.console import ProgressBars, summary_line
from engine.cli.finetune_cli import add_finetune_arguments, finetune_spec_from_args
from engine.cli.search_cli import add_search_arguments
from engine.errors import UserError, run_command
from engine.eval.sparsity_check import SparsityReport, sparsity_report
from engine.eval.zeroshot import PAPER_TASKS
from engine.io.save import SAVE_FORMATS
from engine.methods.registry import METHODS
from engine.patterns.block_rules import normalise_ratios
from engine.patterns.registry import PATTERNS, pattern_params
from engine.spec import ORIGINAL_URL, RECIPES, THREE_TIER_RATIOS, PruneSpec, parse_sparsity_type, sparsity_type_names


def build_parser() -> argparse.ArgumentParser:
    # Long by nature: one statement per flag, grouped as Wanda and the Wanda hybrid document them (a table, not logic).
    p = argparse.ArgumentParser(prog="main.py", description=f"Prune a causal LM layer by layer ({', '.join(METHODS)}; "
                                f"{', '.join(PATTERNS)}) and measure WikiText-2 perplexity.")
    w = p.add_argument_group("Wanda's flags")
    w.add_argument("--model", default=None, help="hub id, local directory or .gguf file (default: the embedded "
                   "SmolLM2-135M-Instruct)")
    w.add_argument("--seed", type=int, default=0, help="seed for the calibration windows (default 0)")
    w.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    w.add_argument("--sparsity_type", default="unstructured",
                   help=" | ".join(sparsity_type_names()) + " (default unstructured)")
    w.add_argument("--prune_method", default="wanda", choices=list(METHODS), help="default wanda; "
                   + "; ".join(f"{name}: {m.summary}" for name, m in METHODS.items()))
    w.add_argument("--cache_dir", default=None, help="Hugging Face download cache")
    w.add_argument("--save", default=None, metavar="DIR",
                   help="write results.json, a log line and the pruned model here")
    w.add_argument("--save_model", default=None, metavar="DIR2", help="put the pruned model here instead of --save")
    w.add_argument("--eval_zero_shot", nargs="*", default=None, metavar="TASK",
                   help="zero-shot accuracy of the pruned model with lm-evaluation-harness (pip install -r "
                   "requirements-eval.txt); no TASK = the paper's seven: " + ", ".join(PAPER_TASKS))
    w.add_argument("--zero_shot_limit", type=int, default=None, metavar="N",
                   help="evaluate at most N items per zero-shot task (recorded; default: all)")
    w.add_argument("--zero_shot_include", default=None, metavar="DIR",
                   help="a folder of extra lm-eval task YAMLs (their relative data_files are read from the working "
                   "directory)")
    add_pattern_arguments(p)
    _add_fork_flags(p)
    e = p.add_argument_group("data, evaluation, hardware")
    e.add_argument("--calib_dataset", default="auto", help="auto (default: c4 as in the paper; pydoc offline) | c4 | "
                   "wikitext2 | gsm8k (the Wanda hybrid fork's: one question+answer per window) | pydoc | local path")
    e.add_argument("--eval_dataset", default="auto",
                   help="auto (default: wikitext2; pydoc offline) | wikitext2 | c4 | pydoc | local path | none")
    e.add_argument("--eval_windows", type=int, default=None, help="evaluate at most N windows (default: all)")
    e.add_argument("--seqlen", type=int, default=None, help="tokens per window (default: min(model context, 2048))")
    e.add_argument("--baselines", action="store_true", help="also report dense and magnitude perplexity (cached)")
    e.add_argument("--reconstruct", action="store_true",
                   help="OBS weight update for masks chosen by magnitude / Wanda (SparseGPT always updates)")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | offload (CPU weights, GPU compute)")
    e.add_argument("--dtype", default="auto",
                   help="auto (float32 on CPU, bf16/fp16 on GPU) | float32 | float16 | bfloat16")
    e.add_argument("--no_save_model", action="store_true", help="with --save: write results only, not the model")
    e.add_argument("--save_format", default="dense", choices=list(SAVE_FORMATS),
                   help="; ".join(SAVE_FORMATS.values()) + " (default dense; layout: engine/io/compact.py)")
    e.add_argument("--decompress", nargs=2, default=None, metavar=("DIR", "OUT"),
                   help="prune nothing: write the compact save DIR as a normal folder OUT "
                   "(AutoModelForCausalLM.from_pretrained loads it)")
    e.add_argument("--overwrite", action="store_true", help="allow a non-empty --save directory")
    e.add_argument("--trust_remote_code", action="store_true", help="run a model repository's own code")
    e.add_argument("--runs_dir", default=None, help="run store folder (default: $SPARSITY_RUNS or "
                   "~/.cache/sparsity-explorer/runs); every run is recorded there, the dashboard lists them")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.add_argument("--snapshot_max_gb", type=float, default=None, metavar="GB",
                   help="keep the dense weights for restoring in memory up to this size, in a temporary file above "
                   "it (0 = never in memory; default: $SPARSITY_SNAPSHOT_MAX_GB or 8)")
    e.add_argument("--sweep", nargs="+", default=None, metavar="SPLIT",
                   help='one calibration, then a quick masks-only perplexity estimate per split (engine/explore/): '
                   'each split one quoted triple for three-tier ("0.35 0.45 0.2"), one sparsity for other patterns '
                   '(N:M: 1 - N/M with M kept); evaluates --eval_windows windows (default 6); --save writes sweep.json')
    e.add_argument("--check", default=None, metavar="DIR", help="prune nothing: print the per-layer and overall "
                   "sparsity (W == 0) of a saved model, as Wanda's check_sparsity, and compare with its results.json")
    add_finetune_arguments(p)
    add_search_arguments(p)
    return p


def _add_fork_flags(p: argparse.ArgumentParser) -> None:
    f = p.add_argument_group("the Wanda hybrid fork's flags",
                             f"{ORIGINAL_URL}: main_block_three_tier.py, main_block.py, main_block_topk.py, "
                             "main_block_hybrid_2_4.py")
    f.add_argument("--recipe", default=None, choices=list(RECIPES),
                   help="a named three-tier recipe; flags given explicitly win. original: the fork's three-tier rule "
                   "and defaults (wanda, |W| inside blocks, 0.4 0.4 0.2, K=10, block rule original); best: the best "
                   "split and recipe measured (bench/RESULTS.md, 'Which split beats 2:4?')")
    for flag, default, what in (("--top_dense_ratio", 0.4, "dense"), ("--mid_2_4_ratio", 0.4, "2:4"),
                                ("--bottom_topk_ratio", 0.2, "top-K")):
        f.add_argument(flag, type=float, default=None,
                       help=f"share of blocks {what} (the fork's form of --sparsity_ratios, which it overrides; a "
                       f"missing one is {default:g}; with block rule original the three are normalised to sum 1)")
    f.add_argument("--use_slow_tokenizer", action="store_true",
                   help="load the model's slow (Python) tokenizer, as the fork's scripts do (use_fast=False)")


def add_pattern_arguments(p: argparse.ArgumentParser) -> None:
    """A flag per pattern parameter (engine/patterns/registry.py), with its help, type, choices and default."""
    g = p.add_argument_group("pattern parameters", "each read by the patterns named; N and M come from "
                             "--sparsity_type N:M")
    for name, param in pattern_params().items():
        if param.flag is None:
            continue
        readers = ", ".join(n for n, pat in PATTERNS.items() if name in pat.fields)
        kw = dict(help=f"{readers}: {param.help}")
        if param.type is bool:
            kw.update(action="store_true")
        elif param.type is tuple:  # the recipe's, else the fork's three flags, else the default (tier_ratios)
            kw.update(type=float, nargs=len(param.default), default=None,
                      metavar=tuple(field.upper() for field, _ in param.parts))
        else:
            kw.update(type=param.type if param.type is not str else None, default=param.default,
                      choices=list(param.choices) if param.choices else None)
        g.add_argument(param.flag or f"--{name}", **kw)


# recipe key -> argparse dest
RECIPE_FLAGS = {"method": "prune_method", "reconstruct": "reconstruct",
                **{name: param.dest for name, param in pattern_params().items() if param.flag is not None}}


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse; a --recipe sets the defaults of its flags and the line is parsed again, so explicit flags win."""
    args = parser.parse_args(argv)
    if args.recipe:
        recipe = RECIPES[args.recipe]
        parser.set_defaults(**{RECIPE_FLAGS[k]: list(v) if k == "ratios" else v for k, v in recipe.items()})
        args = parser.parse_args(argv)
    return args


def tier_ratios(a: argparse.Namespace) -> tuple[float, float, float]:
    """The three-tier split: the fork's three flags if any is given, else --sparsity_ratios; normalised as the fork
    does under its rule (with its warning)."""
    fork = (a.top_dense_ratio, a.mid_2_4_ratio, a.bottom_topk_ratio)
    if any(r is not None for r in fork):
        ratios = tuple(d if r is None else r for r, d in zip(fork, (0.4, 0.4, 0.2)))
    else:
        ratios = tuple(a.sparsity_ratios or THREE_TIER_RATIOS)
    if a.block_rule == "original" and normalise_ratios(ratios) != ratios:
        print(f"Warning: Ratios sum to {sum(ratios):.4f}, not 1.0. Normalizing...", file=sys.stderr)
        ratios = normalise_ratios(ratios)
    return ratios


def spec_from_args(a: argparse.Namespace) -> PruneSpec:
    params = {name: getattr(a, param.dest) for name, param in pattern_params().items() if param.flag is not None}
    params["ratios"] = tier_ratios(a)  # the fork's three flags, or --sparsity_ratios
    params.update(parse_sparsity_type(a.sparsity_type))  # a pattern's own syntax (N:M) wins over its flags
    return PruneSpec(method=a.prune_method, reconstruct=a.reconstruct, nsamples=a.nsamples, seqlen=a.seqlen,
                     seed=a.seed, **params)


def main(argv: list[str] | None = None, defaults: dict | None = None) -> int:
    parser = build_parser()
    if defaults:
        parser.set_defaults(**defaults)
    args = parse_args(parser, argv)
    searching = args.search or args.list_searches or args.export_search
    return run_command(_main, args, "the finished trials are in the study; the same command resumes it" if searching
                       else "nothing was saved (the run store records the run as stopped)")


def _main(args) -> int:
    from engine.io.run_store import RunStore
    from engine.run import RunRequest, run  # heavy imports after argument errors are reported

    if args.check:
        return check_saved(args.check, args.device, args.dtype, args.trust_remote_code)
    if args.decompress:
        from engine.io.compact import decompress
        out = decompress(*args.decompress, overwrite=args.overwrite)
        print(f"decompressed {args.decompress[0]} into {out}")
        return 0

    spec = spec_from_args(args)
    eval_source = None if str(args.eval_dataset).lower() == "none" else args.eval_dataset
    request = RunRequest(model=args.model, spec=spec, calib=args.calib_dataset, eval=eval_source,
                         eval_windows=args.eval_windows, baselines=args.baselines, device=args.device,
                         dtype=args.dtype, save_dir=args.save, save_model=not args.no_save_model,
                         save_model_dir=args.save_model, save_format=args.save_format, overwrite=args.overwrite,
                         trust_remote_code=args.trust_remote_code, cache_dir=args.cache_dir,
                         zero_shot_tasks=zero_shot_tasks(args.eval_zero_shot), zero_shot_limit=args.zero_shot_limit,
                         zero_shot_include=args.zero_shot_include, snapshot_max_gb=args.snapshot_max_gb,
                         finetune=finetune_spec_from_args(args), finetune_dir=args.finetune_dir,
                         slow_tokenizer=args.use_slow_tokenizer, store=RunStore(args.runs_dir))
    if args.sweep:
        from engine.cli.sweep_cli import sweep_specs
        sweep_specs(spec, args.sweep)  # a bad split is one line before anything loads
    if args.search:
        from engine.cli.search_cli import parse_space, search_settings
        search_settings(args), parse_space(args.search_space)  # bad settings are one line before anything loads
    if args.quiet:
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        disable_progress_bars()
    if args.sweep:
        from engine.cli.sweep_cli import sweep_main
        return sweep_main(args, spec, request)
    if args.search or args.list_searches or args.export_search:
        from engine.cli.search_cli import search_main
        return search_main(args, spec, request)
    bars = ProgressBars(disabled=args.quiet)
    try:
        record = run(request, progress=bars)
    finally:
        bars.close()
    return report_run(args, record)


def report_run(args, record: dict) -> int:
    """Print a finished run the Wanda way (report, summary, errors) and write log_<method>.txt under --save."""
    record_spec = record["spec"]
    print(wanda_report(record))
    line = summary_line(record)
    print(line)
    for problem in record.get("errors") or ():
        print(f"error: {problem}", file=sys.stderr)
    if record.get("store_warning"):
        print(f"warning: {record['store_warning']}", file=sys.stderr)
    if args.save and record["status"] == "completed":
        from engine.io.record import write_text_atomic
        log = os.path.join(os.path.expanduser(args.save), f"log_{record_spec['method']}.txt")
        try:
            write_text_atomic(log, wanda_log(record))
        except OSError as e:
            raise UserError(f"could not write {log}: {e.strerror or e}; the run's model and results.json are "
                            f"in {args.save}") from None
    return 0 if record["status"] == "completed" and not record.get("errors") else 1


def check_saved(folder: str, device: str, dtype: str, trust_remote_code: bool) -> int:
    """--check DIR: Wanda's per-layer lines and sanity-check line for a saved model; 1 if its results.json
    records another sparsity."""
    from pathlib import Path

    from engine.io.models import load_model
    from engine.io.record import read_json

    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise UserError(f"{folder} is not a saved model folder (no config.json)")
    lm = load_model(str(path), device, dtype, trust_remote_code)
    report = sparsity_report(lm.model)
    print("\n".join(report.sanity_check()))
    try:
        recorded = read_json(str(path / "results.json")).get("sparsity")
    except (OSError, ValueError, AttributeError):
        return 0
    if isinstance(recorded, (int, float)):
        # the record counts the matrices it pruned; routers it left dense count here too (as in Wanda)
        same = abs(recorded * report.numel - report.zeros) < 0.5 or _routers_explain(lm.model, recorded, report)
        print(f"results.json records sparsity {recorded:.4f}: " + ("agrees" if same else "DISAGREES"))
        return 0 if same else 1
    return 0


def _routers_explain(model, recorded: float, report) -> bool:
    """Whether the record's sparsity equals the count without the router gates it never prunes."""
    engine_count = sparsity_report(model, prune_router=False)
    return engine_count.numel != report.numel and abs(recorded * engine_count.numel - engine_count.zeros) < 0.5


def wanda_report(record: dict) -> str:
    """The lines Wanda's scripts print after pruning: sparsity per layer, the sanity check, the perplexity."""
    lines = SparsityReport.from_record(record).sanity_check()
    if record["ppl"]["pruned"] is not None:
        name = (record["data"].get("evaluation") or "").split(" ")[0]
        lines.append(f"{'wikitext' if name.startswith('wikitext') else name} perplexity {record['ppl']['pruned']}")
    return "\n".join(lines)


def wanda_log(record: dict) -> str:
    """log_<method>.txt as Wanda writes it: a tab-separated header and one row (ppl_test nan without evaluation)."""
    ppl = record["ppl"]["pruned"]
    return (f"method\tactual_sparsity\tppl_test\n{record['spec']['method']}\t{record['sparsity'] or 0:.4f}\t"
            f"{math.nan if ppl is None else ppl:.4f}\n")


def zero_shot_tasks(values: list[str] | None) -> list[str] | None:
    """--eval_zero_shot values -> task names: absent = None (off), given bare = the paper's seven; commas split."""
    if values is None:
        return None
    names = [t.strip() for v in values for t in v.split(",") if t.strip()]
    return names or list(PAPER_TASKS)
