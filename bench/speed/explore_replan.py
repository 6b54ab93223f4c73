"""Re-plan time of the Explore flow on SmolLM2, without calibration data: magnitude scores (no forward pass), tier
scope model, assignment cost, K = 15 (the most planning work: every block of the 210 matrices competes, by cost).
Prints the first re-plan (which makes the per-block choices for this B, K), then three splits: the re-plan itself
(tier grids, counts, sparsity: what the maps need) and the keep-masks built afterwards (what an estimate needs).

    nice -n 5 python bench/speed/explore_replan.py
"""
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from engine.explore import calibrate, replan  # noqa: E402
from engine.io.models import load_model  # noqa: E402
from engine.spec import PruneSpec  # noqa: E402

torch.set_num_threads(2)
print("load average at start", os.getloadavg(), flush=True)
lm = load_model(None, "cpu", "auto", False)
spec = PruneSpec(method="magnitude", pattern="three_tier", tier_scope="model", assignment="cost", keep=15)
t = time.perf_counter()
cal = calibrate(lm.model, spec, None)
print(f"calibrate {time.perf_counter() - t:.2f} s", flush=True)
t = time.perf_counter()
replan(cal, spec)
print(f"first re-plan (per-block choices) {time.perf_counter() - t:.1f} s", flush=True)
for ratios in [(0.2, 0.6, 0.2), (0.15, 0.6, 0.25), (0.35, 0.45, 0.2)]:
    t = time.perf_counter()
    plan = replan(cal, spec.replace(ratios=ratios))
    planned = time.perf_counter() - t
    t = time.perf_counter()
    for m in plan.matrices.values():
        m.keep
    print(f"re-plan {ratios}: {planned:.2f} s (maps, counts, sparsity {plan.sparsity:.4f}); "
          f"keep-masks built afterwards {time.perf_counter() - t:.2f} s", flush=True)
print("load average at end", os.getloadavg(), flush=True)
