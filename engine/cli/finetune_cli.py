"""Recovery on the command line: the fine-tune flags main.py shares, and `finetune.py` for a saved pruned folder.

    python main.py ... --finetune_steps 40 [--lora_rank 8] [--lr 2e-5]       prune, then recover, then save
    python finetune.py --model out/smollm2-tt --finetune_steps 40 --save out/smollm2-tt-recovered

The folder's current zeros are the mask held. Its results.json, when present, is carried over with the
"recovery" block added. Bad input ends with one line `error: ...` and exit status 2.
"""
from __future__ import annotations

import argparse

from engine.cli.console import ProgressBars, recovery_summary
from engine.errors import UserError, run_command
from engine.recover.masked_finetune import FinetuneSpec, check_checkpoint

DEFAULT_LR = {"full": 2e-5, "lora": 2e-4}


def add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recovery (masked fine-tuning; pruned weights stay exactly zero)")
    g.add_argument("--finetune_steps", type=int, default=None, metavar="N",
                   help="fine-tune N optimizer steps after pruning, zeros held (default: off)")
    g.add_argument("--lora_rank", type=int, default=None, metavar="R",
                   help="LoRA adapters of rank R on the pruned linear layers, merged under the mask (default: full)")
    g.add_argument("--lr", type=float, default=None, help=f"peak learning rate, linear decay (default "
                   f"{DEFAULT_LR['full']:g} full, {DEFAULT_LR['lora']:g} LoRA)")
    g.add_argument("--finetune_batch_size", type=int, default=4, help="windows per step (default 4)")
    g.add_argument("--finetune_accum", type=int, default=1, help="gradient accumulation passes per step (default 1)")
    g.add_argument("--finetune_seqlen", type=int, default=128, help="tokens per fine-tune window (default 128)")
    g.add_argument("--heldout_windows", type=int, default=8, help="held-out windows for the held-out loss (default 8)")
    g.add_argument("--eval_every", type=int, default=10, help="held-out loss every N steps (default 10)")
    g.add_argument("--save_every", type=int, default=None, metavar="N",
                   help="resumable checkpoint every N steps in --finetune_dir (default: none)")
    g.add_argument("--finetune_dir", default=None, help="the fine-tune's checkpoints (default: a temporary folder)")
    g.add_argument("--gradient_checkpointing", action="store_true", help="trade compute for activation memory")


def finetune_spec_from_args(a: argparse.Namespace) -> FinetuneSpec | None:
    """The flags -> a validated FinetuneSpec, or None when --finetune_steps is absent."""
    if a.finetune_steps is None:
        if a.lora_rank is not None or a.lr is not None:
            raise UserError("--lora_rank and --lr need --finetune_steps N")
        return None
    lr = a.lr if a.lr is not None else DEFAULT_LR["full" if a.lora_rank is None else "lora"]
    return FinetuneSpec(steps=a.finetune_steps, lr=lr, lora_rank=a.lora_rank, batch_size=a.finetune_batch_size,
                        grad_accum=a.finetune_accum, seqlen=a.finetune_seqlen, heldout_windows=a.heldout_windows,
                        eval_every=a.eval_every, save_every=a.save_every,
                        gradient_checkpointing=a.gradient_checkpointing, seed=a.seed).validate()


# ---- finetune.py: recover a saved pruned folder ---------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="finetune.py", description="Masked fine-tuning of a saved pruned model: every "
                                "pruned weight stays exactly zero; perplexity before and after.")
    p.add_argument("--model", required=True,
                   help="a folder written by main.py --save (or any model whose zeros to keep)")
    p.add_argument("--save", required=True, metavar="DIR", help="write the recovered model and results.json here")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty --save directory")
    p.add_argument("--keep_adapter", action="store_true",
                   help="with --lora_rank: save the LoRA adapter alone (in DIR/adapter) instead of merging it")
    p.add_argument("--resume_from_checkpoint", default=None, metavar="CKPT",
                   help="continue from a checkpoint folder written with --save_every (same settings)")
    p.add_argument("--calib_dataset", default="auto", help="fine-tune text: auto | c4 | wikitext2 | pydoc | local path")
    p.add_argument("--eval_dataset", default="auto",
                   help="perplexity text: auto | wikitext2 | c4 | pydoc | path | none")
    p.add_argument("--eval_windows", type=int, default=None, help="evaluate at most N windows (default: all)")
    p.add_argument("--seqlen", type=int, default=None, help="evaluation window (default: min(model context, 2048))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--trust_remote_code", action="store_true")
    add_finetune_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(_main, args, "nothing was saved")


def _main(args) -> int:
    from dataclasses import replace
    from pathlib import Path

    spec = finetune_spec_from_args(args)
    if spec is None:
        raise UserError("--finetune_steps N is required")
    if args.keep_adapter:
        if spec.lora_rank is None:
            raise UserError("--keep_adapter needs --lora_rank R")
        spec = replace(spec, merge=False)
    folder = Path(args.model).expanduser()
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; pass the folder main.py --save wrote")
    if args.resume_from_checkpoint:
        check_checkpoint(args.resume_from_checkpoint)
    from engine.io import text as textdata
    from engine.io.models import load_model
    from engine.io.record import new_run_id, read_json, versions, write_json_atomic
    from engine.io.save import check_save_dir, save_pretrained_atomic
    from engine.recover.pipeline import recover

    save = check_save_dir(args.save, args.overwrite)
    eval_src = (None if str(args.eval_dataset).lower() == "none"
                else textdata.resolve_text(args.eval_dataset, "evaluation"))
    train_src = textdata.resolve_text(args.calib_dataset, "calibration")
    lm = load_model(str(folder), args.device, args.dtype, args.trust_remote_code)
    seqlen = textdata.default_seqlen(lm.model.config, args.seqlen)
    eval_ids = textdata.evaluation_ids(lm.tokenizer, eval_src) if eval_src else None
    record = read_json(str(folder / "results.json")) if (folder / "results.json").is_file() else \
        {"run_id": new_run_id(), "model": {"name": str(folder)}, "versions": versions()}
    bars = ProgressBars(disabled=False)
    try:
        block = recover(lm.model, lm.tokenizer, spec, train_src, eval_ids, seqlen, args.eval_windows,
                        output_dir=args.finetune_dir, resume_from=args.resume_from_checkpoint,
                        adapter_dir=str(save / "adapter") if args.keep_adapter else None, progress=bars)
    finally:
        bars.close()
    block.update(source=str(folder.resolve()), evaluation=eval_src.name if eval_src else None, eval_seqlen=seqlen)
    record["recovery"] = block
    if not args.keep_adapter:
        save_pretrained_atomic(lm.model, lm.tokenizer, save, overwrite=True)
        record["saved_model"] = str(save.resolve())
    write_json_atomic(str(save / "results.json"), record)
    line = " | ".join([f"finetune {folder}"] + (["ppl_before " + f"{block['ppl_before']:.3f}"]
                                                if block["ppl_before"] is not None else []) + recovery_summary(block))
    print(line)
    return 0 if block["status"] == "completed" else 1
