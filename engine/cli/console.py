"""What the command lines print: tqdm progress bars driven by the engine's progress events, and a run's one-line
summary (main.py, finetune.py, the sweep and progressive commands)."""
from __future__ import annotations

import sys

from engine.spec import PruneSpec


def summary_line(record: dict) -> str:
    spec = PruneSpec.from_dict(record["spec"])
    ppl = record["ppl"]
    parts = [spec.label(), f"status {record['status']}", f"actual_sparsity {record['sparsity']:.4f}"]
    if record.get("mask_sparsity") is not None:
        parts.append(f"mask_sparsity {record['mask_sparsity']:.4f}")
    if ppl["pruned"] is not None:
        parts.append(f"ppl_test {ppl['pruned']:.3f}")
    for k in ("dense", "magnitude"):
        if ppl[k] is not None:
            parts.append(f"ppl_{k} {ppl[k]:.3f}")
    for task, scores in (record.get("zero_shot") or {}).items():
        parts.append(f"{task} acc {scores['acc']:.4f}")
    parts.extend(recovery_summary(record.get("recovery")))
    parts.append(f"time {record['timings'].get('total_s', 0):.1f}s")
    if record.get("data", {}).get("evaluation"):
        parts.append(f"eval {record['data']['evaluation']}")
    return " | ".join(parts)


class ProgressBars:
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
        if stage in ("prune", "finetune"):
            kind, total = stage, event["n_layers" if stage == "prune" else "total"]
        else:
            kind, total = f"eval:{event.get('what')}", event.get("total")
        if self.kind != kind:
            self.close()
            desc = {"prune": "pruning layers", "finetune": "fine-tuning"}.get(stage,
                                                                               f"perplexity ({event.get('what')})")
            self.bar, self.kind = tqdm(total=total, desc=desc, file=sys.stderr, leave=True), kind
        if stage == "prune":
            self.bar.set_postfix_str(f"layer {event['layer']}")
            self.bar.update(1)
        elif stage == "finetune":
            loss = {k: f"{event[k]:.3f}" for k in ("loss", "heldout_loss") if k in event}
            self.bar.set_postfix(loss, refresh=False)
            self.bar.update(event["step"] - self.bar.n)
        else:
            self.bar.update(event["done"] - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.kind = None, None


def recovery_summary(block: dict | None) -> list[str]:
    """The parts of a summary line about the recovery."""
    if not block:
        return []
    parts = [f"recovery {block['status']} {block['steps_done']} steps"]
    if block.get("ppl_after") is not None:
        parts.append(f"ppl_recovered {block['ppl_after']:.3f}")
    parts.append("zeros held" if block["zeros_held"] else "ZEROS CHANGED")
    return parts


def markdown_table(columns: list[str], rows) -> str:
    """A Markdown table: the header, its separator, one line per row (each row a sequence of cells)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
