"""What a split buys on disk, measured: the compact save (engine/io/compact.py) beside the dense save and
storage_estimate's prediction, on the embedded SmolLM2-135M, with save and load times; then the same arithmetic
for LLaMA-2-7B's shapes.

    python bench/quality/compact.py                 # bf16, writes bench/results/compact.json and prints the tables

Masks by magnitude (no calibration): the bytes depend on the pattern and the split only, not on which weights the
method keeps. Times are wall seconds on this machine (state the load average beside them).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from bench.common import RESULTS  # noqa: E402
from engine.io.compact import load_compact, measured_storage, save_compact  # noqa: E402
from engine.io.models import load_model  # noqa: E402
from engine.io.save import save_pretrained_atomic  # noqa: E402
from engine.io.snapshot import DenseWeights  # noqa: E402
from engine.spec import PruneSpec  # noqa: E402
from engine.walk.layer_walk import prune_model  # noqa: E402

SPECS = {
    "unstructured 50%": dict(pattern="unstructured", sparsity=0.5),
    "2:4": dict(pattern="nm", n=2, m=4),
    "three-tier 0.35/0.45/0.20 K=15": dict(pattern="three_tier", ratios=(0.35, 0.45, 0.20), keep=15),
    "three-tier 0.15/0.25/0.60 K=96": dict(pattern="three_tier", ratios=(0.15, 0.25, 0.60), keep=96),
    "three-tier 0.40/0.40/0.20 K=10": dict(pattern="three_tier", ratios=(0.40, 0.40, 0.20), keep=10),
}
# LLaMA-2-7B: 32 layers of q, k, v, o [4096, 4096], gate, up [11008, 4096], down [4096, 11008]; untied embedding
# and head [32000, 4096]; 65 RMSNorm vectors [4096].
LLAMA7B = {"matrices": 32 * [(4096, 4096)] * 4 + 32 * [(11008, 4096)] * 2 + 32 * [(4096, 11008)],
           "rest": 2 * 32000 * 4096 + 65 * 4096}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def measure(lm, name: str, kw: dict, work: Path) -> dict:
    spec = PruneSpec(method="magnitude", **kw)
    result = prune_model(lm.model, spec, None)
    record = {"spec": spec.to_dict(), "matrices": result.matrices}
    dense_dir, compact_dir = work / "dense", work / "compact"
    t = time.perf_counter()
    save_pretrained_atomic(lm.model, lm.tokenizer, dense_dir)
    save_dense_s = time.perf_counter() - t
    t = time.perf_counter()
    storage = measured_storage(lm.model, record, save_compact(lm.model, lm.tokenizer, compact_dir, record))
    save_compact_s = time.perf_counter() - t
    t = time.perf_counter()
    dense = AutoModelForCausalLM.from_pretrained(dense_dir, dtype=lm.model.dtype)
    load_dense_s = time.perf_counter() - t
    t = time.perf_counter()
    compact, _ = load_compact(compact_dir)
    load_compact_s = time.perf_counter() - t
    same = all(torch.equal(a.view(torch.uint8), b.view(torch.uint8))
               for a, b in zip(dense.state_dict().values(), compact.state_dict().values()))
    row = {"split": name, "sparsity": result.sparsity, "dense_save_bytes": folder_bytes(dense_dir),
           "compact_save_bytes": folder_bytes(compact_dir), "bit_identical": same,
           "save_dense_s": save_dense_s, "save_compact_s": save_compact_s, "load_dense_s": load_dense_s,
           "load_compact_s": load_compact_s, **{k: storage[k] for k in (
               "bytes", "estimate_bytes", "estimate_gap", "pruned_dense_bytes", "ratio", "per_tier", "value_bits")}}
    shutil.rmtree(dense_dir)
    shutil.rmtree(compact_dir)
    return row


def bits_per_weight(kw: dict, shape, v: int = 16, block: int = 16) -> float:
    """storage_estimate's formula (engine/explore/storage.py) for a matrix [out, in] at the nominal split, plus
    the compact file's tier grid (one byte per block); unstructured / N:M take the bitmask where it is smaller."""
    out_f, in_f = shape
    if kw["pattern"] == "three_tier":
        d, s, t = kw["ratios"]
        index = min(kw["keep"] * math.ceil(math.log2(block ** 2)), block ** 2)  # positions, or an in-block mask
        return d * v + s * (v + 2) / 2 + t * (kw["keep"] * v + index) / block ** 2 + 8 / block ** 2
    kept = kw.get("n", 1) / kw["m"] if kw["pattern"] == "nm" else 1 - kw["sparsity"]
    index = math.ceil(math.log2(kw["m"])) if kw["pattern"] == "nm" else math.ceil(math.log2(in_f)) + 32 / kept / in_f
    return min(kept * (v + index), kept * v + 1)


def llama7b_rows(v: int = 16) -> list[dict]:
    numel = sum(o * i for o, i in LLAMA7B["matrices"])
    rows = []
    for name, kw in SPECS.items():
        pruned = sum(o * i * bits_per_weight(kw, (o, i), v) for o, i in LLAMA7B["matrices"]) / 8
        rows.append({"split": name, "pruned_dense_bytes": numel * v / 8, "compact_bytes": pruned,
                     "ratio": pruned / (numel * v / 8), "dense_save_bytes": (numel + LLAMA7B["rest"]) * v / 8,
                     "compact_save_bytes": pruned + LLAMA7B["rest"] * v / 8})
    return rows


def mb(x: float) -> str:
    return f"{x / 1e6:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--only", nargs="*", default=None, help="splits to measure (names of SPECS)")
    args = p.parse_args()
    lm = load_model(None, "cpu", args.dtype)
    snapshot = DenseWeights(lm.model, 1 << 40)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in SPECS.items():
            if args.only and name not in args.only:
                continue
            try:
                rows.append(measure(lm, name, kw, Path(tmp)))
            finally:
                snapshot.restore()
            print(json.dumps(rows[-1]), flush=True)
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None
    RESULTS.mkdir(exist_ok=True)
    out = {"model": "SmolLM2-135M-Instruct", "dtype": args.dtype, "loadavg": load, "rows": rows,
           "llama2_7b_bf16": llama7b_rows()}
    (RESULTS / "compact.json").write_text(json.dumps(out, indent=1))
    print(f"\nSmolLM2-135M {args.dtype}, load average {' '.join(load or [])}: pruned matrices in MB")
    print("| split | dense save MB | compact save MB | pruned: dense MB | compact MB | estimate MB | measured vs "
          "estimate | compact / dense | save s dense / compact | load s dense / compact |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['split']} | {mb(r['dense_save_bytes'])} | {mb(r['compact_save_bytes'])} | "
              f"{mb(r['pruned_dense_bytes'])} | {mb(r['bytes'])} | {mb(r['estimate_bytes'])} | "
              f"{100 * r['estimate_gap']:+.2f}% | {r['ratio']:.3f} | {r['save_dense_s']:.1f} / "
              f"{r['save_compact_s']:.1f} | {r['load_dense_s']:.1f} / {r['load_compact_s']:.1f} |")
    print("\nLLaMA-2-7B shapes, bf16, the same arithmetic (GB)")
    print("| split | dense save GB | compact save GB | pruned: dense GB | compact GB | compact / dense |")
    print("|---|---|---|---|---|---|")
    for r in out["llama2_7b_bf16"]:
        print(f"| {r['split']} | {r['dense_save_bytes'] / 1e9:.2f} | {r['compact_save_bytes'] / 1e9:.2f} | "
              f"{r['pruned_dense_bytes'] / 1e9:.2f} | {r['compact_bytes'] / 1e9:.2f} | {r['ratio']:.3f} |")


if __name__ == "__main__":
    main()
