"""Time the pure mask builders on one LLaMA-7B MLP-sized matrix (default 4096 x 11008) and, for reference, the
SparseGPT solver on a smaller one. Target: every mask builder under 1 s on two CPU cores.

    nice -n 19 python bench/speed/masks.py [--device cuda] [--shape 4096 11008] [--repeats 7]

Builders are timed round-robin (each once per round, median over rounds) so that a neighbour's burst of load
falls on all of them alike. Scores are |N(0,1)|, so every builder does its full work; each row also reports the
sparsity of the mask it built, so a fast builder that returns the wrong mask cannot pass unnoticed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.common import RESULTS, command_line, machine, print_table, time_interleaved, write_json  # noqa: E402
from engine.methods.sparsegpt import adaptive, n_of_m, sparsegpt_prune  # noqa: E402
from engine.patterns.masks import nm_mask, topk_block_mask, unstructured_mask  # noqa: E402
from engine.patterns.three_tier import (  # noqa: E402
    assign_tiers,
    block_importance,
    three_tier_mask,
    tier_counts,  # noqa: E402
)
from engine.spec import THREE_TIER_RATIOS  # noqa: E402

TARGET_S = 1.0
BLOCK, KEEP = 16, 15


def three_tier(scores: torch.Tensor) -> torch.Tensor:
    """The whole three-tier path of engine.walk.prune_matrix.prune_matrix for one matrix (tier_scope="matrix")."""
    importance = block_importance(scores, BLOCK)
    tiers = assign_tiers(importance, tier_counts(importance.numel(), THREE_TIER_RATIOS))
    return three_tier_mask(scores, tiers, BLOCK, KEEP)


def mask_rows(scores: torch.Tensor, device: str, repeats: int) -> list[dict]:
    importance = block_importance(scores, BLOCK)
    tiers = assign_tiers(importance, tier_counts(importance.numel(), THREE_TIER_RATIOS))
    builders = [  # (name, fn, is a whole builder with a target, or a stage of the three-tier one)
        ("three-tier 0.35/0.45/0.20 K=15", lambda: three_tier(scores), True),
        ("  block_importance", lambda: block_importance(scores, BLOCK), False),
        ("  assign_tiers", lambda: assign_tiers(importance, tier_counts(importance.numel(), THREE_TIER_RATIOS)), False),
        ("  three_tier_mask", lambda: three_tier_mask(scores, tiers, BLOCK, KEEP), False),
        ("    of which topk_block_mask", lambda: topk_block_mask(scores, BLOCK, KEEP), False),
        ("    of which nm_mask 2:4", lambda: nm_mask(scores, 2, 4), False),
        ("N:M 2:4", lambda: nm_mask(scores, 2, 4), True),
        ("unstructured 50% per row", lambda: unstructured_mask(scores, 0.5, "row"), True),
        ("unstructured 50% per matrix", lambda: unstructured_mask(scores, 0.5, "matrix"), True),
    ]
    timed = time_interleaved({name: fn for name, fn, _ in builders}, device, repeats=repeats)
    rows = []
    for name, fn, is_builder in builders:
        t, out = timed[name], fn()
        row = {"name": name, **t, "target_s": TARGET_S if is_builder else None,
               "sparsity": 1 - out.float().mean().item() if out.dtype == torch.bool else None}
        if is_builder:
            row["ok"] = "yes" if t["median_s"] < TARGET_S else "NO"
        rows.append(row)
    return rows


def sparsegpt_rows(shape, device: str, repeats: int, tokens: int) -> list[dict]:
    """The OBS solver on W [out, in] with H = 2/n X^T X of `tokens` random inputs whose channels differ in scale."""
    g = torch.Generator().manual_seed(1)
    out_f, in_f = shape
    W = torch.randn(out_f, in_f, generator=g).to(device)
    X = (torch.randn(tokens, in_f, generator=g) * torch.rand(in_f, generator=g).add(0.1)).to(device)
    H = 2.0 / tokens * X.T @ X
    cases = [("sparsegpt 50% unstructured", {"choose": adaptive(0.5)}),
             ("sparsegpt 2:4", {"choose": n_of_m(2, 4)}),
             ("sparsegpt fixed mask (reconstruct)", {"keep_mask": unstructured_mask(W.abs(), 0.5, "row")})]
    timed = time_interleaved({name: (lambda kw=kw: sparsegpt_prune(W, H, **kw)) for name, kw in cases}, device,
                             repeats=repeats)
    rows = []
    for name, kw in cases:
        _, keep = sparsegpt_prune(W, H, **kw)
        rows.append({"name": name, **timed[name], "sparsity": 1 - keep.float().mean().item(), "shape": list(shape)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--shape", type=int, nargs=2, default=[4096, 11008], metavar=("OUT", "IN"))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--obs-shape", type=int, nargs=2, default=[1024, 1024], metavar=("OUT", "IN"),
                   help="matrix for the SparseGPT reference (its column loop is slow on CPU)")
    p.add_argument("--obs-repeats", type=int, default=3)
    p.add_argument("--obs-tokens", type=int, default=4096, help="calibration tokens behind the Hessian")
    p.add_argument("--out", default=str(RESULTS / "masks.json"))
    a = p.parse_args()

    info = machine(a.device)
    scores = torch.randn(*a.shape, generator=torch.Generator().manual_seed(0)).abs().to(a.device)
    print(f"mask builders on {a.shape[0]}x{a.shape[1]} ({a.device}, {info['torch_threads']} threads)", file=sys.stderr)
    masks = mask_rows(scores, a.device, a.repeats)
    print(f"SparseGPT solver on {a.obs_shape[0]}x{a.obs_shape[1]}", file=sys.stderr)
    obs = sparsegpt_rows(a.obs_shape, a.device, a.obs_repeats, a.obs_tokens)
    info["load_avg_after"] = machine(a.device).get("load_avg_1_5_15")

    cols = [("name", "builder", "s"), ("median_s", "median s", ".3f"), ("min_s", "min s", ".3f"),
            ("sparsity", "sparsity", ".4f"), ("ok", f"< {TARGET_S:g} s", "s")]
    print(f"\nmask builders, {a.shape[0]}x{a.shape[1]}, median of {a.repeats} interleaved rounds after 1 warm-up, "
          f"{a.device}")
    print_table(masks, cols)
    print(f"\nSparseGPT solver (engine.methods.sparsegpt.sparsegpt_prune), {a.obs_shape[0]}x{a.obs_shape[1]}, "
          f"median of {a.obs_repeats}")
    print_table(obs, cols[:4])
    write_json(a.out, {"benchmark": "masks", "shape": a.shape, "repeats": a.repeats, "target_s": TARGET_S,
                       "machine": info, "masks": masks, "sparsegpt": obs,
                       "command": command_line()})


if __name__ == "__main__":
    main()
