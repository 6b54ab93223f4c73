"""What a split buys in time: one LLaMA-7B-shaped matrix W [4096, 11008] (down_proj) times X [tokens, 11008] as
dense matmul, as 2:4 through PyTorch's semi-structured sparse tensor, and as a three-tier matrix computed in three
parts, each through a real kernel:

    dense blocks   the dense 16 x 16 blocks as a block-sparse (BSR) tensor     torch.sparse.mm
    2:4            the 2:4 blocks' weights (zero elsewhere: a valid 2:4 matrix) torch.sparse.to_sparse_semi_structured
    top-K          the top-K blocks (K weights each) as a BSR tensor          torch.sparse.mm

Every product is checked against the dense product of the same weights; times are medians of CUDA-event-timed
repeats, reported as ratios to dense.

    python bench/speed/kernels.py           # CUDA: bf16, tokens 1 / 16 / 256, writes bench/results/kernels.json
    python bench/speed/kernels.py --smoke   # any machine: a small float32 matrix, correctness only (no speed claims);
                                         # the parts that need CUDA are skipped with the reason
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from engine.patterns.three_tier import DENSE, TOPK, TWO_FOUR, assign_tiers, three_tier_mask, tier_counts  # noqa: E402

BLOCK = 16
SPLIT = (0.35, 0.45, 0.20)   # dense, 2:4, top-K shares of blocks
KEEP = 15


def three_tier_parts(W: torch.Tensor, ratios=SPLIT, keep: int = KEEP, block: int = BLOCK, seed: int = 0) -> dict:
    """W [out, in] pruned to a three-tier pattern (tiers by random block importance, weights by |W|) and split
    into its three parts {tier: [out, in], zero outside the tier's blocks}; the parts sum to the pruned W."""
    R, C = W.shape[0] // block, W.shape[1] // block
    importance = torch.rand(R, C, generator=torch.Generator().manual_seed(seed))
    tiers = assign_tiers(importance, tier_counts(R * C, ratios))
    keep_mask = three_tier_mask(W.abs().float().cpu(), tiers, block, keep).to(W.device)
    pruned = W.masked_fill(~keep_mask, 0)
    grid = tiers.to(W.device).repeat_interleave(block, 0).repeat_interleave(block, 1)
    return {"pruned": pruned, **{name: pruned.masked_fill(grid != t, 0)
                                 for name, t in (("dense blocks", DENSE), ("2:4", TWO_FOUR), ("top-K", TOPK))}}


def two_four(W: torch.Tensor) -> torch.Tensor:
    """W with the 2 largest |w| of every 4 consecutive weights per row kept."""
    groups = W.reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.abs().topk(2, dim=1).indices, True)
    return groups.masked_fill(~keep, 0).view_as(W)


# --- kernels: weight [out, in] -> a function of X [tokens, in] giving [tokens, out] --------------------------------

def dense_kernel(W):
    return lambda X: torch.matmul(X, W.T)


def semi_structured_kernel(W):
    """2:4 through PyTorch's semi-structured sparse tensor (CUTLASS / cuSPARSELt); CUDA only."""
    if W.device.type != "cuda":
        raise RuntimeError("to_sparse_semi_structured needs CUDA")
    Ws = torch.sparse.to_sparse_semi_structured(W)
    return lambda X: torch.nn.functional.linear(_pad_rows(X), Ws)[: X.shape[0]]


def bsr_kernel(W, block: int = BLOCK):
    """A block-sparse (BSR) tensor of W's nonzero B x B blocks times X^T."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta")
        Wb = W.to_sparse_bsr((block, block))
    return lambda X: torch.sparse.mm(Wb, X.T).T


def _pad_rows(X, multiple: int = 16):
    """Semi-structured kernels need the dense operand's rows in multiples of 8-16: batch 1 is padded."""
    pad = -X.shape[0] % multiple
    return torch.nn.functional.pad(X, (0, 0, 0, pad)) if pad else X


def three_tier_kernel(parts: dict):
    dense, sparse24, topk = bsr_kernel(parts["dense blocks"]), semi_structured_kernel(parts["2:4"]), \
        bsr_kernel(parts["top-K"])
    return lambda X: dense(X) + sparse24(X) + topk(X)


# --- timing -------------------------------------------------------------------------------------------------------

def cuda_ms(fn, X, repeats: int = 50, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn(X)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(X)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def run(shape, dtype, device, tokens, smoke: bool) -> dict:
    torch.manual_seed(0)
    W = torch.randn(*shape, dtype=torch.float32).to(device=device, dtype=dtype)
    parts = three_tier_parts(W)
    W24 = two_four(W)
    cases = {"dense": (W, lambda: dense_kernel(W)), "2:4 semi-structured": (W24, lambda: semi_structured_kernel(W24)),
             "three-tier (dense BSR + 2:4 + top-K BSR)": (parts["pruned"], lambda: three_tier_kernel(parts)),
             "three-tier: dense-block part (BSR)": (parts["dense blocks"], lambda: bsr_kernel(parts["dense blocks"])),
             "three-tier: 2:4 part (semi-structured)": (parts["2:4"], lambda: semi_structured_kernel(parts["2:4"])),
             "three-tier: top-K part (BSR)": (parts["top-K"], lambda: bsr_kernel(parts["top-K"]))}
    rows = []
    sums_exact = torch.equal(parts["dense blocks"] + parts["2:4"] + parts["top-K"], parts["pruned"])
    for n in tokens:
        X = torch.randn(n, shape[1], dtype=torch.float32).to(device=device, dtype=dtype)
        for name, (weights, build) in cases.items():
            row = {"case": name, "tokens": n}
            try:
                fn = build()
                got, want = fn(X).float(), dense_kernel(weights)(X).float()
            except (RuntimeError, NotImplementedError) as e:
                row["skipped"] = str(e).strip().splitlines()[0][:160]
                rows.append(row)
                continue
            tol = 1e-4 if dtype == torch.float32 else 2e-2
            row["max_rel_error"] = float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))
            row["matches_dense"] = row["max_rel_error"] <= tol
            if not smoke and device == "cuda":
                row["ms"] = cuda_ms(fn, X)
            rows.append(row)
    for n in tokens:  # ratios to the dense matmul at the same batch
        base = next((r.get("ms") for r in rows if r["case"] == "dense" and r["tokens"] == n), None)
        for r in rows:
            if r["tokens"] == n and base and r.get("ms"):
                r["ratio_to_dense"] = r["ms"] / base
    return {"shape": list(shape), "dtype": str(dtype), "device": device, "parts_sum_to_the_matrix": sums_exact,
            "split": SPLIT, "keep": KEEP, "rows": rows,
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None, "torch": torch.__version__}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="small float32 matrix, correctness only, any device")
    p.add_argument("--out", default=None, help="write the JSON here (default bench/results/kernels.json, not with "
                   "--smoke)")
    args = p.parse_args(argv)
    if args.smoke:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        result = run((64, 128), torch.float32, device, (1, 16), smoke=True)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA device: kernel timings need a GPU (use --smoke for a correctness check)")
        result = run((4096, 11008), torch.bfloat16, "cuda", (1, 16, 256), smoke=False)
    for r in result["rows"]:
        what = r.get("skipped") and f"skipped: {r['skipped']}" or (
            f"rel. error {r['max_rel_error']:.1e}" + (f", {r['ms']:.4f} ms" if "ms" in r else "")
            + (f", {r['ratio_to_dense']:.2f}x dense" if "ratio_to_dense" in r else ""))
        print(f"{r['tokens']:>4} tokens  {r['case']:<45} {what}")
    out = args.out or (None if args.smoke else str(Path(__file__).parent / "results" / "kernels.json"))
    if out:
        Path(out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
