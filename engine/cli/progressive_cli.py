"""`main_progressive_three_tier.py`: the progressive three-tier schedule from the command line.

    python main_progressive_three_tier.py --schedule progressive_config.csv --state_dir out/prog \\
        --calib_dataset ../shared/data/wikitext-2-v1 --eval_dataset ../shared/data/wikitext-2-v1 --eval_windows 10 \\
        --finetune_steps 30 --save out/prog-final

A rerun with the same --state_dir continues after the last finished iteration. Bad input ends with one line
`error: ...` and exit status 2.
"""
from __future__ import annotations

import argparse
import sys

from engine.cli.console import ProgressBars
from engine.cli.finetune_cli import add_finetune_arguments, finetune_spec_from_args
from engine.errors import UserError, run_command
from engine.recover.progressive import PROGRESSIVE_METHODS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main_progressive_three_tier.py", description="Progressive three-tier pruning: "
                                "iterations of prune -> fine-tune with sparser tier ratios, blocks only demoted.")
    p.add_argument("--model", default=None, help="hub id, local directory or .gguf file (default: embedded SmolLM2)")
    p.add_argument("--schedule", required=True, help="tier ratios per iteration: a CSV file (columns dense, mid_2_4, "
                   "topk: the fork's progressive_config.csv) or a list d/s/t,d/s/t,...")
    p.add_argument("--state_dir", required=True, help="tier maps, weights and summary of each finished iteration")
    p.add_argument("--prune_method", default="wanda", choices=list(PROGRESSIVE_METHODS))
    p.add_argument("--within_block", default="magnitude", choices=["score", "magnitude"],
                   help="weights kept inside 2:4 / top-K blocks (default magnitude, the original code)")
    p.add_argument("--block_size", type=int, default=16)
    p.add_argument("--topk_per_block", type=int, default=15)
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=None)
    p.add_argument("--seed", type=int, default=0,
                   help="calibration seed of iteration 1 (iteration k uses seed + k - 1)")
    p.add_argument("--calib_dataset", default="auto")
    p.add_argument("--eval_dataset", default="auto", help="... or none")
    p.add_argument("--eval_windows", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--trust_remote_code", action="store_true")
    p.add_argument("--save", default=None, metavar="DIR", help="write the final model and results.json here")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--runs_dir", default=None, help="run store folder the record joins (default: $SPARSITY_RUNS or "
                   "~/.cache/sparsity-explorer/runs; the dashboard's Past runs charts its iterations)")
    add_finetune_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(_main, args, "finished iterations are kept in the state folder")


def _main(args) -> int:
    from engine.recover.progressive import check_spec, parse_schedule
    from engine.spec import PruneSpec

    schedule = parse_schedule(args.schedule)
    spec = PruneSpec(method=args.prune_method, pattern="three_tier", ratios=schedule[-1], block=args.block_size,
                     keep=args.topk_per_block, within_block=args.within_block, nsamples=args.nsamples,
                     seqlen=args.seqlen, seed=args.seed)
    check_spec(spec)
    finetune = finetune_spec_from_args(args)
    if args.eval_windows is not None and args.eval_windows < 1:
        raise UserError(f"eval windows must be a whole number >= 1, got {args.eval_windows}")
    from engine.io import text as textdata
    from engine.io.models import load_model
    from engine.io.record import RunRecord, new_run_id, versions, write_json_atomic
    from engine.io.run_store import RunStore
    from engine.io.save import check_save_dir, save_pretrained_atomic
    from engine.recover.progressive import run_progressive
    from engine.walk.discovery import find_decoder_layers

    save = check_save_dir(args.save, args.overwrite) if args.save else None
    eval_src = (None if str(args.eval_dataset).lower() == "none"
                else textdata.resolve_text(args.eval_dataset, "evaluation"))
    calib_src = textdata.resolve_text(args.calib_dataset, "calibration")
    lm = load_model(args.model, args.device, args.dtype, args.trust_remote_code)
    seqlen = textdata.default_seqlen(lm.model.config, args.seqlen)
    eval_ids = textdata.evaluation_ids(lm.tokenizer, eval_src) if eval_src else None
    bars = ProgressBars(disabled=False)

    def progress(event):
        if event.get("stage") == "progressive" and "entry" in event:
            bars.close()
            print(iteration_line(event["entry"]), flush=True)
        else:
            bars(event)
    try:
        entries = run_progressive(lm.model, lm.tokenizer, spec, schedule, args.state_dir, calib_src, eval_ids, seqlen,
                                  args.eval_windows, finetune, progress=progress)
    finally:
        bars.close()
    last, n_layers = entries[-1], len(find_decoder_layers(lm.model)[1])
    record = RunRecord.new(
        run_id=new_run_id(), status="completed", model={"name": lm.name, "source": lm.source}, spec=spec.to_dict(),
        versions=versions(), schedule=[list(r) for r in schedule], progressive=entries,
        data={"calibration": calib_src.name, "evaluation": eval_src.name if eval_src else None},
        sparsity=last["sparsity"], nominal_sparsity=spec.nominal_sparsity(), layers_done=n_layers, n_layers=n_layers,
        ppl={"pruned": _final_ppl(last), "dense": None, "magnitude": None},
        actual_sparsity=last["sparsity"], ppl_test=_final_ppl(last))
    warning = RunStore(args.runs_dir).save_final(record)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if save is not None:
        save_pretrained_atomic(lm.model, lm.tokenizer, save, overwrite=True)
        write_json_atomic(str(save / "results.json"), record)
    return 0



def _final_ppl(entry: dict):
    rec = entry.get("recovery") or {}
    return rec.get("ppl_after") if rec.get("ppl_after") is not None else entry.get("ppl_pruned")


def iteration_line(entry: dict) -> str:
    parts = [f"iteration {entry['iteration']}", "ratios " + "/".join(f"{x:g}" for x in entry["ratios"]),
             f"sparsity {entry['sparsity']:.4f}"]
    if entry.get("ppl_pruned") is not None:
        parts.append(f"ppl_pruned {entry['ppl_pruned']:.3f}")
    rec = entry.get("recovery")
    if rec and rec.get("ppl_after") is not None:
        parts.append(f"ppl_recovered {rec['ppl_after']:.3f}")
    return " | ".join(parts)
