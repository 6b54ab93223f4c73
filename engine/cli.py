"""The command line, compatible with the Wanda scripts:

    python main.py --model meta-llama/Llama-2-7b-hf --prune_method wanda --sparsity_ratio 0.5 \\
        --sparsity_type unstructured --save out/llama2_7b/unstructured/wanda/

Bad input ends with one line `error: ...` and exit status 2; a Ctrl-C ends with status 130.
"""
from __future__ import annotations

import argparse
import os
import sys

from .errors import UserError
from .spec import METHODS, PruneSpec, parse_sparsity_type
from .zeroshot import PAPER_TASKS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py", description="Prune a causal LM layer by layer (magnitude, Wanda, "
                                "SparseGPT; unstructured, N:M, three-tier) and measure WikiText-2 perplexity.")
    w = p.add_argument_group("Wanda's flags")
    w.add_argument("--model", default=None, help="hub id, local directory or .gguf file (default: the embedded "
                   "SmolLM2-135M-Instruct)")
    w.add_argument("--seed", type=int, default=0, help="seed for the calibration windows (default 0)")
    w.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    w.add_argument("--sparsity_ratio", type=float, default=0.5, help="unstructured sparsity (default 0.5)")
    w.add_argument("--sparsity_type", default="unstructured", help="unstructured (default) | 2:4 | 4:8 | N:M | three_tier")
    w.add_argument("--prune_method", default="wanda", choices=list(METHODS),
                   help="default wanda; fisher = |W|*sqrt(empirical Fisher), one backward pass per calibration window")
    w.add_argument("--cache_dir", default=None, help="Hugging Face download cache")
    w.add_argument("--save", default=None, metavar="DIR", help="write results.json, a log line and the pruned model here")
    w.add_argument("--save_model", default=None, metavar="DIR2", help="put the pruned model here instead of --save")
    w.add_argument("--use_variant", action="store_true", help="unstructured: Wanda's variant, per row prune while the "
                   "sorted scores' running sum stays under alpha x the row total, alpha bisected to the target sparsity")
    w.add_argument("--eval_zero_shot", nargs="*", default=None, metavar="TASK",
                   help="zero-shot accuracy of the pruned model with lm-evaluation-harness (pip install -r "
                   "requirements-eval.txt); no TASK = the paper's seven: " + ", ".join(PAPER_TASKS))
    w.add_argument("--zero_shot_limit", type=int, default=None, metavar="N",
                   help="evaluate at most N items per zero-shot task (recorded; default: all)")
    w.add_argument("--zero_shot_include", default=None, metavar="DIR",
                   help="a folder of extra lm-eval task YAMLs (their relative data_files are read from the working directory)")
    o = p.add_argument_group("three-tier")
    o.add_argument("--sparsity_ratios", type=float, nargs=3, default=[0.35, 0.45, 0.20], metavar=("DENSE", "2:4", "TOPK"),
                   help="share of 16x16 blocks kept dense, made 2:4, and top-K; sum to 1 (default 0.35 0.45 0.20)")
    o.add_argument("--block_size", type=int, default=16, help="block side B (default 16)")
    o.add_argument("--topk_per_block", type=int, default=15, help="weights K kept in each top-K block (default 15)")
    o.add_argument("--tier_scope", default="matrix", choices=["matrix", "layer", "model"],
                   help="where blocks compete for tiers: each matrix (the seed), each decoder layer, the whole model (default matrix)")
    o.add_argument("--within_block", default="score", choices=["score", "magnitude", "obs"],
                   help="pick weights inside 2:4 and top-K blocks by the method's score, by |W| (the seed's rule), or "
                        "obs: by the OBS saliency while the weights are updated, as SparseGPT picks N:M (needs "
                        "--reconstruct or sparsegpt) (default score)")
    o.add_argument("--tier_assignment", default="importance", choices=["importance", "cost"],
                   help="which blocks get which tier: by summed importance (the seed's rule) or by the squared "
                   "score mass each tier would drop (default importance)")
    e = p.add_argument_group("data, evaluation, hardware")
    e.add_argument("--calib_dataset", default="auto", help="auto (default: c4 as in the paper; pydoc offline) | c4 | wikitext2 | pydoc | local path")
    e.add_argument("--eval_dataset", default="auto", help="auto (default: wikitext2; pydoc offline) | wikitext2 | c4 | pydoc | local path | none")
    e.add_argument("--eval_windows", type=int, default=None, help="evaluate at most N windows (default: all)")
    e.add_argument("--seqlen", type=int, default=None, help="tokens per window (default: min(model context, 2048))")
    e.add_argument("--baselines", action="store_true", help="also report dense and magnitude perplexity (cached)")
    e.add_argument("--reconstruct", action="store_true",
                   help="OBS weight update for masks chosen by magnitude / Wanda (SparseGPT always updates)")
    e.add_argument("--group", default=None, choices=["row", "matrix"],
                   help="unstructured comparison group (default: row for wanda/sparsegpt, matrix for magnitude)")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | offload (CPU weights, GPU compute)")
    e.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bf16/fp16 on GPU) | float32 | float16 | bfloat16")
    e.add_argument("--no_save_model", action="store_true", help="with --save: write results only, not the model")
    e.add_argument("--overwrite", action="store_true", help="allow a non-empty --save directory")
    e.add_argument("--trust_remote_code", action="store_true", help="run a model repository's own code")
    e.add_argument("--runs_dir", default=None, help="run store folder (default: $SPARSITY_RUNS or "
                   "~/.cache/sparsity-explorer/runs); every run is recorded there, the dashboard lists them")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def spec_from_args(a: argparse.Namespace) -> PruneSpec:
    return PruneSpec(method=a.prune_method, sparsity=a.sparsity_ratio, ratios=tuple(a.sparsity_ratios),
                     block=a.block_size, keep=a.topk_per_block, tier_scope=a.tier_scope, within_block=a.within_block,
                     assignment=a.tier_assignment,
                     group=a.group, reconstruct=a.reconstruct, nsamples=a.nsamples, seqlen=a.seqlen, seed=a.seed,
                     use_variant=a.use_variant, **parse_sparsity_type(a.sparsity_type))


def main(argv: list[str] | None = None, defaults: dict | None = None) -> int:
    parser = build_parser()
    if defaults:
        parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    try:
        return _main(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was saved (the run store records the run as stopped)", file=sys.stderr)
        return 130


def _main(args) -> int:
    from .run import RunRequest, run  # heavy imports after argument errors are reported
    from .store import RunStore

    spec = spec_from_args(args)
    eval_source = None if str(args.eval_dataset).lower() == "none" else args.eval_dataset
    request = RunRequest(model=args.model, spec=spec, calib=args.calib_dataset, eval=eval_source,
                         eval_windows=args.eval_windows, baselines=args.baselines, device=args.device,
                         dtype=args.dtype, save_dir=args.save, save_model=not args.no_save_model,
                         save_model_dir=args.save_model, overwrite=args.overwrite,
                         trust_remote_code=args.trust_remote_code, cache_dir=args.cache_dir,
                         zero_shot_tasks=zero_shot_tasks(args.eval_zero_shot), zero_shot_limit=args.zero_shot_limit,
                         zero_shot_include=args.zero_shot_include,
                         store=RunStore(args.runs_dir))
    if args.quiet:
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        disable_progress_bars()
    bars = _Bars(disabled=args.quiet)
    try:
        record = run(request, progress=bars)
    finally:
        bars.close()
    line = summary_line(record)
    print(line)
    if record.get("store_warning"):
        print(f"warning: {record['store_warning']}", file=sys.stderr)
    if args.save and record["status"] == "completed":
        with open(os.path.join(os.path.expanduser(args.save), f"log_{spec.method}.txt"), "a") as f:
            f.write(line + "\n")
    return 0 if record["status"] == "completed" else 1


def zero_shot_tasks(values: list[str] | None) -> list[str] | None:
    """--eval_zero_shot values -> task names: absent = None (off), given bare = the paper's seven; commas split."""
    if values is None:
        return None
    names = [t.strip() for v in values for t in v.split(",") if t.strip()]
    return names or list(PAPER_TASKS)


def summary_line(record: dict) -> str:
    spec = PruneSpec.from_dict(record["spec"])
    ppl = record["ppl"]
    parts = [spec.label(), f"status {record['status']}", f"actual_sparsity {record['sparsity']:.4f}"]
    if ppl["pruned"] is not None:
        parts.append(f"ppl_test {ppl['pruned']:.3f}")
    for k in ("dense", "magnitude"):
        if ppl[k] is not None:
            parts.append(f"ppl_{k} {ppl[k]:.3f}")
    for task, scores in (record.get("zero_shot") or {}).items():
        parts.append(f"{task} acc {scores['acc']:.4f}")
    parts.append(f"time {record['timings'].get('total_s', 0):.1f}s")
    if record.get("data", {}).get("evaluation"):
        parts.append(f"eval {record['data']['evaluation']}")
    return " | ".join(parts)


class _Bars:
    """tqdm bars driven by the engine's progress events."""

    def __init__(self, disabled: bool):
        self.disabled = disabled
        self.bar = None
        self.kind = None

    def __call__(self, event: dict) -> None:
        if self.disabled:
            return
        from tqdm.auto import tqdm

        stage = event.get("stage")
        if "message" in event:
            self.close()
            tqdm.write(f"[{stage}] {event['message']}", file=sys.stderr)
            return
        kind, total = ((stage, event["n_layers"]) if stage == "prune" else (f"eval:{event.get('what')}", event.get("total")))
        if self.kind != kind:
            self.close()
            desc = "pruning layers" if stage == "prune" else f"perplexity ({event.get('what')})"
            self.bar, self.kind = tqdm(total=total, desc=desc, file=sys.stderr, leave=True), kind
        if stage == "prune":
            self.bar.set_postfix_str(f"layer {event['layer']}")
            self.bar.update(1)
        else:
            self.bar.update(event["done"] - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.kind = None, None
