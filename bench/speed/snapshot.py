"""What keeping the dense weights aside costs (engine/io/snapshot.py): time to take and to restore the copy, in memory
and in a file, and the host memory each adds, on SmolLM2 and on a LLaMA-shaped model of --layers layers.

    nice -n 19 python bench/speed/snapshot.py                   # SmolLM2 + 8 LLaMA-7B-shaped layers (fp32, ~6.5 GB)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.common import RESULTS, Stopwatch, command_line, machine, peak_memory, print_table, write_json  # noqa: E402
from bench.speed.prune_speed import random_llama_7b  # noqa: E402
from engine.io.models import load_model  # noqa: E402
from engine.io.snapshot import DenseWeights  # noqa: E402


def measure(name: str, model, folder: str) -> list[dict]:
    rows = []
    for where, budget in (("memory", 1 << 50), ("file", 0)):
        with peak_memory() as mem, Stopwatch() as take:
            dense = DenseWeights(model, budget)
        with torch.no_grad():
            for p in dense.params.values():
                p.zero_()
        with Stopwatch() as restore:
            dense.restore()
        rows.append({"model": name, "where": where, "copy_gib": round(dense.nbytes / 2**30, 3),
                     "take_s": round(take.wall, 2), "restore_s": round(restore.wall, 2),
                     "added_rss_gib": round((mem["peak_rss_mib"] - mem["rss_before_mib"]) / 1024, 3)})
        dense.close()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=8, help="decoder layers of the LLaMA-7B-shaped model (0 = skip)")
    args = p.parse_args()
    import os
    folder = tempfile.mkdtemp(prefix="snapshot-bench-")
    os.environ["SPARSITY_SNAPSHOT_DIR"] = folder
    rows = measure("SmolLM2-135M (fp32)", load_model(None, "cpu").model, folder)
    if args.layers:
        rows += measure(f"LLaMA-7B shape, {args.layers} layers (fp32)",
                        random_llama_7b(args.layers, "cpu", torch.float32), folder)
    print_table(rows, [("model", "model", "s"), ("where", "kept in", "s"), ("copy_gib", "GiB", ".3f"),
                             ("take_s", "take s", ".2f"), ("restore_s", "restore s", ".2f"),
                             ("added_rss_gib", "added RSS GiB", ".3f")])
    write_json(RESULTS / "snapshot.json", {"machine": machine(), "command": command_line(), "rows": rows})


if __name__ == "__main__":
    main()
