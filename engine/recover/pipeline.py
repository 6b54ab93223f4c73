"""Recovery after pruning, end to end: text -> fine-tune windows -> masked fine-tune -> perplexity -> record block.

    finetune_windows(tokenizer, source, spec)   -> (train [N, S], heldout [M, S]) token windows
    recover(model, tokenizer, spec, source, ...) -> the run record's "recovery" block; the model is trained in place

The recovery block (results.json["recovery"]):
    settings      FinetuneSpec.to_dict()
    data          {"train": source name, "split": how train and held-out windows were cut}
    status        "completed" | "cancelled" (Stop: the weights of the last finished step are kept)
    steps_done    int
    curve         {"train": [[step, loss], ...], "heldout": [[step, loss], ...]}
    ppl_before, ppl_after   perplexity on the run's evaluation windows (None without evaluation)
    zeros_before, zeros_after, zeros_held   zeros of the pruned matrices, and whether every one stayed exactly 0
    seconds       fine-tuning wall time
    adapter       the folder of the LoRA adapter when kept separate, else None
"""
from __future__ import annotations

import random
import shutil
import tempfile
import threading

import torch

from engine.errors import Cancelled, DataError
from engine.eval.perplexity import perplexity
from engine.io import text as textdata
from engine.recover.masked_finetune import (
    FinetuneSpec,
    check_lora_rank,
    count_zeros,
    finetune,
    pruned_masks,
    zeros_held,
)

HELDOUT_SHARE = 0.1  # the last tenth of a running text's tokens gives the held-out windows


def finetune_windows(tokenizer, source: textdata.TextSource, spec: FinetuneSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Training windows drawn at random (seeded, as calibration draws them) from the first 90% of a running text's
    tokens, held-out windows cut one after another from the last 10%: the two never share a token. A document
    collection (C4, .jsonl) gives its held-out windows from its last documents, its training windows from the rest.
    """
    if source.documents is not None:
        docs = list(source.documents[i] for i in range(min(len(source.documents), 20000)))
        cut = max(1, int(len(docs) * (1 - HELDOUT_SHARE)))
        head, tail = docs[:cut], docs[cut:] or docs[-1:]
        train = textdata.calibration_windows(tokenizer, textdata.TextSource(source.name, "", "", head),
                                             spec.train_windows, spec.seqlen, spec.seed)
        ids = textdata.tokenize(tokenizer, "\n\n".join(tail))
    else:
        all_ids = textdata.tokenize(tokenizer, source.text)
        cut = int(all_ids.numel() * (1 - HELDOUT_SHARE))
        train = textdata._windows_from_ids(all_ids[:cut], spec.train_windows, spec.seqlen, random.Random(spec.seed),
                                           "fine-tuning text")
        ids = all_ids[cut:]
    n = min(spec.heldout_windows, ids.numel() // spec.seqlen)
    if n < 1:
        raise DataError(f"{source.name}: its held-out part has {ids.numel()} tokens, fewer than one window of "
                        f"{spec.seqlen}; use a longer text or a shorter fine-tune seqlen")
    return train, ids[: n * spec.seqlen].view(n, spec.seqlen)


def recover(model, tokenizer, spec: FinetuneSpec, source: textdata.TextSource, eval_ids: torch.Tensor | None = None,
            eval_seqlen: int | None = None, eval_windows: int | None = None, ppl_before: float | None = None,
            output_dir: str | None = None, resume_from: str | None = None, adapter_dir: str | None = None,
            progress=None, cancel: threading.Event | None = None) -> dict:
    """Masked fine-tune of a pruned `model` (its current zeros are held) and the recovery block for its record.

    eval_ids [1, T], eval_seqlen, eval_windows: the run's perplexity protocol, measured before (unless
    `ppl_before` is given) and after. output_dir keeps the Trainer's checkpoints; None = a temporary folder.
    LoRA kept separate (merge=False): the adapter is written to `adapter_dir` (the base weights stay as they were).
    """
    progress = progress or (lambda event: None)
    cancel = cancel or threading.Event()
    if spec.lora_rank is not None:
        check_lora_rank(model, spec.lora_rank)  # before any work
    progress({"stage": "finetune", "message": f"sampling {spec.train_windows} fine-tune windows of {spec.seqlen} "
                                              f"tokens and {spec.heldout_windows} held-out from {source.name}"})
    train, heldout = finetune_windows(tokenizer, source, spec)
    if eval_ids is not None and ppl_before is None:
        ppl_before = _ppl(model, eval_ids, eval_seqlen, eval_windows, "pruned", progress, cancel)
    masks = pruned_masks(model)
    zeros_before = count_zeros(model)
    scratch = None if output_dir else tempfile.mkdtemp(prefix="sparsity-finetune-")
    try:
        progress({"stage": "finetune", "message": f"{'LoRA rank ' + str(spec.lora_rank) if spec.lora_rank else 'full'}"
                                                  f" fine-tuning, {spec.steps} steps at lr {spec.lr:g}, zeros held"})
        result = finetune(model, tokenizer, spec, train, heldout, output_dir or scratch, masks=masks,
                          progress=progress, cancel=cancel, resume_from=resume_from)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    block = {"settings": spec.to_dict(), "status": result.status, "steps_done": result.steps_done,
             "data": {"train": source.name, "split": f"train windows from the first {1 - HELDOUT_SHARE:.0%} of the "
                      f"text, {heldout.shape[0]} held-out windows of {spec.seqlen} tokens from the rest"},
             "curve": {"train": result.train_curve, "heldout": result.heldout_curve},
             "ppl_before": ppl_before, "ppl_after": None, "zeros_before": zeros_before,
             "zeros_after": count_zeros(model), "zeros_held": zeros_held(model, masks),
             "seconds": round(result.seconds, 3), "adapter": None}
    if result.adapter is not None and adapter_dir:
        result.adapter.save_pretrained(adapter_dir)
        block["adapter"] = str(adapter_dir)
    if eval_ids is not None:
        try:
            block["ppl_after"] = _ppl(model, eval_ids, eval_seqlen, eval_windows, "recovered", progress, cancel)
        except Cancelled:
            block["status"] = "cancelled"
    return block


def _ppl(model, eval_ids, seqlen, max_windows, what, progress, cancel) -> float:
    def tick(done, total):
        progress({"stage": "eval", "what": what, "done": done, "total": total})
    progress({"stage": "eval", "message": f"perplexity of the {what} model"})
    return perplexity(model, eval_ids, seqlen, max_windows=max_windows, progress=tick, cancel=cancel).ppl
