"""Masked fine-tuning of a pruned model: every pruned weight stays exactly zero.

    pruned_masks(model)                  {parameter name: BoolTensor keep-mask} of every prunable matrix
    zeros_held(model, masks)             are all pruned weights still exactly 0?
    finetune(model, tok, spec, train, heldout, ...)  -> FinetuneResult (the loss curves), model trained in place

Built on transformers' Trainer, so mixed precision, gradient accumulation, gradient checkpointing, checkpoints and
resume are the Trainer's own. Two things hold the zeros:
- a gradient hook on each pruned parameter multiplies its gradient by the keep-mask as it is computed, before
  accumulation and clipping (the fork's SparseTrainer masks gradients where W == 0);
- after every optimizer step the pruned entries are set to 0 again. With Adam and masked gradients they are already
  0 (m = v = 0 there); the reset makes the guarantee bit-exact for any optimizer, weight decay or precision.
LoRA (PEFT) trains adapters on the pruned linear layers; `merge=True` folds them into the weights and then applies
the keep-mask, so the merged model has exactly the zeros it had before. Fused-expert parameters (3-D) have no
LoRA adapter: with LoRA they stay frozen, with full fine-tuning they train under their mask like any matrix.
"""
from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass

import torch
from torch import nn

from engine.errors import UserError
from engine.walk.discovery import find_decoder_layers, find_targets

# Upper bounds on what a fine-tune may ask for, whoever asks (CLI, dashboard, API): the training windows are drawn
# up front (int64 token ids), so steps x batch x accumulation x seqlen is memory before the first step.
MAX_STEPS = 1_000_000
MAX_BATCH = 4096                # windows per forward pass, and forward passes per step
MAX_SEQLEN = 1 << 17
MAX_TRAIN_TOKENS = 1 << 27      # 134M token ids: 1 GiB of windows
MAX_LR = 1.0                    # above it every optimizer diverges (a NaN perplexity, not a result)


@dataclass(frozen=True)
class FinetuneSpec:
    """What a recovery fine-tune does. `validate()` is called once, at the edge (CLI, dashboard, API)."""

    steps: int = 40                 # optimizer steps
    lr: float = 2e-5                # peak learning rate (linear decay after warmup)
    lora_rank: int | None = None    # None = full fine-tuning; R = LoRA adapters of rank R
    lora_alpha: float | None = None  # LoRA scale numerator; None = 2 x rank
    merge: bool = True              # LoRA: fold the adapters into the weights under the mask
    batch_size: int = 4             # windows per forward pass
    grad_accum: int = 1             # forward passes per optimizer step
    seqlen: int = 128               # tokens per training window
    heldout_windows: int = 8        # windows kept apart for the held-out loss
    eval_every: int = 10            # held-out loss every N steps (and at the end)
    save_every: int | None = None   # a resumable checkpoint (weights + optimizer) every N steps; None = none
    warmup_steps: int = 0
    weight_decay: float = 0.0
    gradient_checkpointing: bool = False
    seed: int = 0

    def validate(self) -> "FinetuneSpec":
        _whole("fine-tune steps", self.steps, 1, MAX_STEPS)
        if not _number_in(self.lr, 0.0, math.inf) or self.lr == 0:
            raise UserError(f"learning rate must be a number > 0, got {self.lr!r}")
        if self.lr > MAX_LR:
            raise UserError(f"learning rate must be at most {MAX_LR:g} (every optimizer diverges above), "
                            f"got {self.lr:g}")
        if self.lora_rank is not None:
            _whole("LoRA rank", self.lora_rank, 1, MAX_SEQLEN)
        if self.lora_alpha is not None and not (_number_in(self.lora_alpha, 0.0, 1e6) and self.lora_alpha > 0):
            raise UserError(f"LoRA alpha must be a number in (0, 1e6], got {self.lora_alpha!r}")
        _whole("fine-tune batch size", self.batch_size, 1, MAX_BATCH)
        _whole("gradient accumulation", self.grad_accum, 1, MAX_BATCH)
        _whole("fine-tune seqlen", self.seqlen, 2, MAX_SEQLEN)
        _whole("held-out windows", self.heldout_windows, 1, MAX_BATCH)
        _whole("held-out loss interval", self.eval_every, 1, MAX_STEPS)
        if self.save_every is not None:
            _whole("checkpoint interval", self.save_every, 1, MAX_STEPS)
        _whole("warmup steps", self.warmup_steps, 0, MAX_STEPS)
        if not _number_in(self.weight_decay, 0.0, 1.0):
            raise UserError(f"weight decay must be a number in [0, 1], got {self.weight_decay!r}")
        tokens = self.train_windows * self.seqlen
        if tokens > MAX_TRAIN_TOKENS:
            raise UserError(f"a fine-tune of {self.steps} steps x {self.batch_size} windows x {self.grad_accum} "
                            f"accumulation x {self.seqlen} tokens reads {tokens:,} tokens, more than "
                            f"{MAX_TRAIN_TOKENS:,} (its windows are drawn up front): use fewer steps or smaller "
                            "batches")
        return self

    @property
    def train_windows(self) -> int:
        return self.steps * self.batch_size * self.grad_accum

    def to_dict(self) -> dict:
        return asdict(self)


def _whole(what: str, value, least: int, most: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise UserError(f"{what} must be a whole number >= {least}, got {value!r}")
    if value > most:
        raise UserError(f"{what} must be at most {most:,}, got {value:,}")


def _number_in(value, low: float, high: float) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and not math.isnan(value)
            and low <= value <= high)


# ---- masks ---------------------------------------------------------------------------------------------------------

def pruned_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """{name: parameter} of every prunable matrix (a fused-experts parameter once, however many experts it holds)."""
    names = {id(p): n for n, p in model.named_parameters()}
    _, layers = find_decoder_layers(model)
    out = {}
    for layer in layers:
        for t in find_targets(layer):
            p = t.parameter
            out[names[id(p)]] = p
    return out


def pruned_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """{parameter name: keep-mask (W != 0)} of every prunable matrix, in its storage layout."""
    return {n: p.detach() != 0 for n, p in pruned_parameters(model).items()}


def _merged_name(name: str) -> str:
    """A parameter's name in the base model, from its name inside a PEFT model (before or after merging)."""
    for prefix in ("base_model.model.",):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name.replace(".base_layer.", ".")


def zeros_held(model: nn.Module, masks: dict[str, torch.Tensor]) -> bool:
    """True when every weight outside its keep-mask is exactly 0 (bit for bit: -0.0 counts as 0)."""
    params = {_merged_name(n): p for n, p in model.named_parameters()}
    return all(not params[n].detach()[~m.to(params[n].device)].any() for n, m in masks.items())


def count_zeros(model: nn.Module) -> int:
    return sum(int((p.detach() == 0).sum()) for p in pruned_parameters(model).values())


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    params = {_merged_name(n): p for n, p in model.named_parameters()}
    with torch.no_grad():
        for n, m in masks.items():
            params[n].masked_fill_(~m.to(params[n].device), 0)


class _HeldZeros:
    """Gradient hooks that mask each pruned parameter's gradient; removed by close()."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]):
        self.handles = []
        for n, p in model.named_parameters():
            m = masks.get(_merged_name(n))
            if m is not None and p.requires_grad:
                keep = m.to(p.device)
                self.handles.append(p.register_hook(lambda g, keep=keep: g * keep))

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


# ---- data ----------------------------------------------------------------------------------------------------------

class WindowDataset(torch.utils.data.Dataset):
    """Token windows [N, S] as causal-LM examples (labels = inputs; the model shifts them)."""

    def __init__(self, windows: torch.Tensor):
        self.windows = windows

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, i) -> dict:
        ids = self.windows[i]
        return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


# ---- training ------------------------------------------------------------------------------------------------------

@dataclass
class FinetuneResult:
    status: str                      # "completed" | "cancelled"
    steps_done: int
    train_curve: list                # [[step, loss], ...]
    heldout_curve: list              # [[step, loss], ...]
    seconds: float
    adapter: object = None           # the PEFT model when LoRA is kept separate (merge=False), else None


def lora_targets(model: nn.Module) -> list[str]:
    """Module names (in the model) of the pruned linear / Conv1D layers: where LoRA adapters go."""
    names = {id(m): n for n, m in model.named_modules()}
    _, layers = find_decoder_layers(model)
    return [names[id(t.module)] for layer in layers for t in find_targets(layer) if t.kind != "expert"]


def check_checkpoint(folder: str) -> None:
    """Refuse, in one line, a resume folder that is not a checkpoint the Trainer wrote (checkpoint-<step>/ holds
    trainer_state.json beside the weights and the optimizer)."""
    import os
    if not os.path.isdir(folder):
        raise UserError(f"checkpoint folder {str(folder)[:200]} does not exist")
    if not os.path.isfile(os.path.join(folder, "trainer_state.json")):
        raise UserError(f"{str(folder)[:200]} is not a fine-tune checkpoint (no trainer_state.json): pass a "
                        "checkpoint-<step> folder written with --save_every")


def check_lora_rank(model: nn.Module, rank: int) -> None:
    """A LoRA rank larger than a targeted matrix's smaller side is refused with one line."""
    modules = dict(model.named_modules())
    targets = lora_targets(model)
    if not targets:
        raise UserError("this model has no linear layers to put LoRA adapters on; use full fine-tuning")
    smallest = min(min(modules[n].weight.shape) for n in targets)
    if rank > smallest:
        raise UserError(f"LoRA rank {rank} is larger than the smallest pruned matrix side ({smallest}); "
                        f"choose a rank <= {smallest}")


class _Curves:
    """A Trainer callback: collects the loss curves, streams them as progress events, honours Stop."""

    def __init__(self, progress, cancel: threading.Event, masks, model):
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_optimizer_step(self, args, state, control, **kw):
                apply_masks(outer.model, outer.masks)

            def on_step_end(self, args, state, control, **kw):
                if outer.cancel.is_set():
                    control.should_training_stop = True
                    outer.stopped = True
                return control

            def on_log(self, args, state, control, logs=None, **kw):
                logs, step = logs or {}, state.global_step
                if "loss" in logs:
                    outer.train.append([step, float(logs["loss"])])
                    outer.progress({"stage": "finetune", "step": step, "total": state.max_steps,
                                    "loss": float(logs["loss"])})
                if "eval_loss" in logs:
                    outer.heldout.append([step, float(logs["eval_loss"])])
                    outer.progress({"stage": "finetune", "step": step, "total": state.max_steps,
                                    "heldout_loss": float(logs["eval_loss"])})

        self.callback = Callback()
        self.progress, self.cancel, self.masks, self.model = progress, cancel, masks, model
        self.train, self.heldout, self.stopped = [], [], False


def training_arguments(spec: FinetuneSpec, output_dir: str, device: torch.device):
    """The Trainer's arguments for `spec`: bf16/fp16 mixed precision on a GPU, float32 on the CPU."""
    from transformers import TrainingArguments

    on_gpu = device.type == "cuda"
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    return TrainingArguments(
        output_dir=output_dir, max_steps=spec.steps, learning_rate=spec.lr, lr_scheduler_type="linear",
        warmup_steps=spec.warmup_steps, weight_decay=spec.weight_decay,
        per_device_train_batch_size=spec.batch_size, per_device_eval_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum, activation_checkpointing=spec.gradient_checkpointing,
        eval_strategy="steps", eval_steps=spec.eval_every, logging_strategy="steps", logging_steps=1,
        save_strategy="steps" if spec.save_every else "no", save_steps=spec.save_every or spec.steps,
        save_total_limit=2,
        bf16=bf16, fp16=on_gpu and not bf16, use_cpu=not on_gpu, seed=spec.seed, data_seed=spec.seed,
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False)


def finetune(model: nn.Module, tokenizer, spec: FinetuneSpec, train: torch.Tensor, heldout: torch.Tensor,
             output_dir: str, masks: dict[str, torch.Tensor] | None = None, progress=None,
             cancel: threading.Event | None = None, resume_from: str | None = None) -> FinetuneResult:
    """Fine-tune `model` in place on `train` windows [N, S], held-out loss on `heldout` [M, S]; zeros held.

    masks        the keep-masks to hold (default: the model's current zeros)
    output_dir   the Trainer's checkpoints (checkpoint-<step>/), resumable with resume_from=that folder
    cancel       set it to stop after the current step: the weights of the last finished step stay, masked
    With LoRA and merge=False the base weights are left as they were and the PEFT model (the adapters around
    the model) is returned in `result.adapter`: `result.adapter.save_pretrained(dir)` writes the adapter alone.
    """
    import time

    progress = progress or (lambda event: None)
    cancel = cancel or threading.Event()
    if resume_from is not None:
        check_checkpoint(resume_from)
    masks = pruned_masks(model) if masks is None else masks
    device = model.get_input_embeddings().weight.device
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}  # LoRA freezes the base weights
    trained, adapter = model, None
    t0 = time.perf_counter()
    was_training = model.training
    try:
        if spec.lora_rank is not None:
            trained = _with_lora(model, spec)
        curves = _Curves(progress, cancel, masks, trained)
        hooks = _HeldZeros(trained, masks)
        try:
            steps_done = _train(trained, spec, training_arguments(spec, output_dir, device), train, heldout, curves,
                                resume_from)
        finally:
            hooks.close()
            model.train(was_training)
        if trained is not model:
            if spec.merge:
                trained.merge_and_unload()
                _unwrap(model)  # nothing of PEFT's stays on the model
                apply_masks(model, masks)
                _thaw(model, requires_grad)
            else:
                adapter = trained
    except BaseException:
        # the caller's model must come out as it went in, structurally: no adapter left around its layers (a later
        # run would prune lora_A, or skip the wrapped matrices), every parameter as trainable as before, no grads.
        # Its values are the caller's to restore (ModelCache.restore).
        _unwrap(model)
        _thaw(model, requires_grad)
        model.eval()
        raise
    model.eval()
    return FinetuneResult(status="cancelled" if curves.stopped else "completed", steps_done=steps_done,
                          train_curve=curves.train, heldout_curve=curves.heldout,
                          seconds=time.perf_counter() - t0, adapter=adapter)


def _train(trained: nn.Module, spec: FinetuneSpec, args, train, heldout, curves, resume_from) -> int:
    """The Trainer's loop on `trained` (the model, or PEFT's wrapper of it) -> the steps done; the held-out loss of
    the last step is evaluated if the schedule did not."""
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback

    trainer = Trainer(model=trained, args=args, train_dataset=WindowDataset(train),
                      eval_dataset=WindowDataset(heldout), callbacks=[curves.callback])
    trainer.remove_callback(PrinterCallback)  # progress goes through `progress`, not print()
    trainer.train(resume_from_checkpoint=resume_from)
    if not curves.heldout or curves.heldout[-1][0] != trainer.state.global_step:
        trainer.evaluate()  # the held-out loss of the weights we keep
    return trainer.state.global_step


def _unwrap(model: nn.Module) -> None:
    """Take every LoRA layer PEFT injected into `model` out again, unmerged: each goes back to its base layer (also
    when get_peft_model stopped half-way)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer) and name:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    if "peft_config" in vars(model):  # PEFT notes its config on the model it wraps
        del model.peft_config


def _thaw(model: nn.Module, requires_grad: dict[str, bool]) -> None:
    for n, p in model.named_parameters():
        p.requires_grad_(requires_grad.get(n, p.requires_grad))
        p.grad = None


def _with_lora(model: nn.Module, spec: FinetuneSpec):
    """The model wrapped with LoRA adapters on its pruned linear layers (base weights frozen)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise UserError("LoRA needs the peft package: pip install peft") from e
    check_lora_rank(model, spec.lora_rank)
    targets = lora_targets(model)
    fan_in_fan_out = any(type(m).__name__ == "Conv1D" for n, m in model.named_modules() if n in set(targets))
    config = LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_alpha or 2 * spec.lora_rank, lora_dropout=0.0,
                        target_modules=targets, fan_in_fan_out=fan_in_fan_out, task_type="CAUSAL_LM")
    return get_peft_model(model, config)
