"""Wall time and peak memory of a Wanda and a SparseGPT prune (engine.walk.layer_walk.prune_model), and each as a
multiple of plain forward passes of the same model over the same calibration windows. Target: Wanda <= 2.5x forward.

    nice -n 19 python bench/speed/prune_speed.py                             # SmolLM2, 32 x 512 tokens of valid.txt
    python bench/speed/prune_speed.py --device cuda --random-llama-7b             # LLaMA-7B shape, random weights
    nice -n 19 python bench/speed/prune_speed.py --random-llama-7b --layers 1 --nsamples 2 --seqlen 128   # CPU smoke

Why the ratio: the layer walk runs every decoder layer twice per window (once with statistics hooks, once to
make the next layer's inputs), so ~2x a forward pass is the floor; the rest is scoring, masks and the OBS solve.
The stage breakdown wraps the walk's own functions (engine.walk.layer_walk.*) with timers; the engine is not changed.

On shared cores the load can halve or double between the forward passes and the prune they frame, so two
steadier ratios are printed too: "x forward CPU" (the same ratio in process CPU time, which a process waiting for
a core does not accumulate) and "x propagate" = prune wall time / the walk's own propagation time, i.e. the
prune's cost in plain passes of the decoder-layer stack, measured during the prune itself (ideal Wanda: ~2).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import engine.walk.capture as walk  # noqa: E402
import engine.walk.layer_walk as pruner  # noqa: E402
import engine.walk.prune_matrix as matrix  # noqa: E402
from bench.common import (  # noqa: E402
    DEFAULT_DATA,
    RESULTS,
    Stopwatch,
    command_line,
    forward_pass,
    machine,
    peak_memory,
    print_table,
    sync,
    write_json,
)
from engine.io import text as textdata  # noqa: E402
from engine.spec import BEST_THREE_TIER, PruneSpec  # noqa: E402

WANDA_TARGET = 2.5
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                num_hidden_layers=32, vocab_size=32000, max_position_embeddings=2048)


def random_llama_7b(layers: int, device: str, dtype: torch.dtype):
    """A LLaMA-7B-shaped model with random weights, built straight on `device` in `dtype` (no 28 GB fp32 detour)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**LLAMA_7B, "num_hidden_layers": layers})
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


class StageTimers:
    """Wrap the walk's functions with wall clocks (the engine is not changed), per phase: the model-wide planning
    pass (_model_wide_plans, tier scope "model") or the pruning walk. collect = a layer run with statistics hooks,
    propagate = the run that makes the next layer's inputs, scores = method scores, masks = prune_matrix less the
    OBS update (sparsegpt_prune), gradient = the Fisher pass."""

    WRAPPED = ((walk, "layer_statistics"), (walk, "run_layer"), (pruner, "matrix_scores"), (pruner, "prune_matrix"),
               (pruner, "gradient_pass"), (pruner, "_model_wide_plans"), (matrix, "sparsegpt_prune"))

    def __init__(self, device):
        self.device, self.seconds, self.calls = device, defaultdict(float), defaultdict(int)
        self.phase = "walk"
        self._saved = {}

    def __enter__(self):
        for module, name in self.WRAPPED:
            self._saved[(module, name)] = fn = getattr(module, name)
            setattr(module, name, self._timed(name, fn))
        return self

    def _timed(self, name, fn):
        def wrapper(*args, **kwargs):
            sync(self.device)
            outer, t = self.phase, time.perf_counter()
            if name == "_model_wide_plans":
                self.phase = "plan"
            try:
                return fn(*args, **kwargs)
            finally:
                sync(self.device)
                self.phase = outer
                self.seconds[f"{name}@{outer}"] += time.perf_counter() - t
                self.calls[f"{name}@{outer}"] += 1
        return wrapper

    def __exit__(self, *exc):
        for (module, name), fn in self._saved.items():
            setattr(module, name, fn)

    def breakdown(self, total_s: float, capture_s: float) -> dict:
        # layer_statistics calls run_layer through the module global, so the wrapped run_layer also counts its
        # layer runs: propagation is what is left after taking those out.
        s = self.seconds
        plan = {"plan_collect_s": s["layer_statistics@plan"], "plan_scores_s": s["matrix_scores@plan"]}
        plan["plan_other_s"] = s["_model_wide_plans@walk"] - sum(plan.values())
        collect = s["layer_statistics@walk"]
        parts = {"capture_s": capture_s, "gradient_s": s["gradient_pass@walk"], **plan, "collect_stats_s": collect,
                 "propagate_s": s["run_layer@walk"] - collect, "scores_s": s["matrix_scores@walk"],
                 "masks_s": s["prune_matrix@walk"] - s["sparsegpt_prune@walk"], "update_s": s["sparsegpt_prune@walk"]}
        parts["capture_s"] -= parts["gradient_s"]  # the pruner's capture_s timer starts before the gradient pass
        parts["other_s"] = total_s - sum(parts.values())
        return {k: round(v, 3) for k, v in parts.items()}


RECIPES = {"best": dict(pattern="three_tier", **BEST_THREE_TIER),
           # the split the product's search found at >= 50% (bench/RESULTS.md, the search against the grid)
           "searched": dict(pattern="three_tier", **{**BEST_THREE_TIER, "ratios": (0.074, 0.174, 0.752),
                                                     "block": 32, "keep": 449}),
           "sparsegpt-2:4": dict(method="sparsegpt", pattern="nm", n=2, m=4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", help="auto = float32 on CPU, bfloat16 on GPU")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="WikiText folder; calibration reads valid.txt")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--recipes", nargs="+", choices=RECIPES, default=[],
                   help="named recipes instead of --methods: the best three-tier recipe (engine/spec.py), "
                        "the split the search found, SparseGPT 2:4")
    p.add_argument("--random-llama-7b", action="store_true", help="LLaMA-7B shape with random weights and tokens")
    p.add_argument("--layers", type=int, default=None, help="truncate the random LLaMA to N decoder layers")
    p.add_argument("--out", default=None, help="default bench/results/prune_speed[_llama7b]_<device>.json")
    a = p.parse_args()

    from engine.io.models import load_model, resolve_device, resolve_dtype

    device = resolve_device(a.device)
    dtype = resolve_dtype(a.dtype, "cpu" if device == "cpu" else "cuda")
    t = time.perf_counter()
    if a.random_llama_7b:
        layers = a.layers or LLAMA_7B["num_hidden_layers"]
        model = random_llama_7b(layers, device, dtype)
        name = f"random LLaMA-7B shape, {layers} layer{'s' if layers != 1 else ''}"
        windows = torch.randint(0, LLAMA_7B["vocab_size"], (a.nsamples, a.seqlen),
                                generator=torch.Generator().manual_seed(0))
        data_name = "random token ids"
    else:
        lm = load_model(None, device, a.dtype)
        model, name = lm.model, lm.name
        src = textdata.resolve_text(a.data, "calibration")
        windows = textdata.calibration_windows(lm.tokenizer, src, a.nsamples, a.seqlen, seed=0)
        data_name = src.name
    load_s = time.perf_counter() - t
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n_params / 1e6:.0f}M parameters, {dtype}, {device}; loaded in {load_s:.1f} s; "
          f"{a.nsamples} windows x {a.seqlen} tokens", file=sys.stderr, flush=True)

    # Each prune starts from the dense weights. A copy on the model's own device keeps the restore cheap.
    dense = {k: v.detach().clone() for k, v in model.state_dict().items()}
    forward_pass(model, windows[:1], device)  # warm-up: first-call allocations, kernel selection

    # Forward passes interleave with the prunes (F, prune, F, prune, F): on shared cores the load drifts,
    # and each prune is compared with the mean of the forward passes around it.
    forwards = [forward_pass(model, windows, device)]
    print(f"forward pass: {forwards[-1].wall:.1f} s", file=sys.stderr, flush=True)
    rows = []
    runs = [(r, PruneSpec(nsamples=a.nsamples, seqlen=a.seqlen, **RECIPES[r])) for r in a.recipes] or \
        [(m, PruneSpec(method=m, pattern="unstructured", sparsity=a.sparsity, nsamples=a.nsamples, seqlen=a.seqlen))
         for m in a.methods]
    for method, spec in runs:
        with peak_memory(device) as mem, StageTimers(device) as timers, Stopwatch(device) as sw:
            result = pruner.prune_model(model, spec, windows)
        model.load_state_dict(dense)
        forwards.append(forward_pass(model, windows, device))
        fwd = (forwards[-2].wall + forwards[-1].wall) / 2
        fwd_cpu = (forwards[-2].cpu + forwards[-1].cpu) / 2
        stages = timers.breakdown(sw.wall, result.timings.get("capture_s", 0.0))
        row = {"method": method, "prune_s": sw.wall, "forward_s": fwd, "ratio": sw.wall / fwd,
               "prune_cpu_s": sw.cpu, "forward_cpu_s": fwd_cpu, "ratio_cpu": sw.cpu / fwd_cpu,
               "layer_passes": sw.wall / stages["propagate_s"] if stages["propagate_s"] > 0 else None,
               "sparsity": result.sparsity, "peak_rss_mib": mem["peak_rss_mib"],
               "rss_before_mib": mem["rss_before_mib"],
               "peak_over_before_mib": None if mem["rss_before_mib"] is None
               else mem["peak_rss_mib"] - mem["rss_before_mib"],
               "peak_cuda_mib": mem.get("peak_cuda_mib"), "cuda_before_mib": mem.get("cuda_before_mib"),
               "memory_how": mem.get("how"), "stages": stages,
               "target_ratio": WANDA_TARGET if method == "wanda" else None}
        if method == "wanda":
            row["ok"] = "yes" if row["ratio"] <= WANDA_TARGET else "NO"
        rows.append(row)
        print(f"{method}: {sw.wall:.1f} s = {row['ratio']:.2f}x forward ({fwd:.1f} s); "
              f"CPU time {row['ratio_cpu']:.2f}x; "
              f"stages {row['stages']}", file=sys.stderr, flush=True)

    info = machine(device)
    title = (f"\n{name}, {a.nsamples} x {a.seqlen} tokens ({data_name}), {dtype}, {device}, "
             f"{info['torch_threads']} threads, load avg {info.get('load_avg_1_5_15')}")
    print(title)
    cols = [("method", "method", "s"), ("prune_s", "prune s", ".1f"), ("forward_s", "forward s", ".1f"),
            ("ratio", "x forward", ".2f"), ("ok", f"<= {WANDA_TARGET}x", "s"),
            ("ratio_cpu", "x forward CPU", ".2f"), ("layer_passes", "x propagate", ".2f"),
            ("sparsity", "sparsity", ".4f"), ("peak_rss_mib", "peak RSS MiB", ".0f"),
            ("peak_over_before_mib", "+ MiB", ".0f")]
    if device != "cpu":
        cols.append(("peak_cuda_mib", "peak CUDA MiB", ".0f"))
    print_table(rows, cols)
    stage_rows = [{"method": r["method"], **r["stages"]} for r in rows]
    print("\nwhere the prune time goes (s)")
    print_table(stage_rows, [("method", "method", "s")] + [(k, k[:-2], ".1f") for k in rows[0]["stages"]])

    out = a.out or RESULTS / f"prune_speed{'_llama7b' if a.random_llama_7b else ''}_{torch.device(device).type}.json"
    write_json(out, {"benchmark": "prune_speed", "model": name, "n_params": n_params, "dtype": str(dtype),
                     "nsamples": a.nsamples, "seqlen": a.seqlen, "data": data_name, "load_s": load_s,
                     "forward_s_each": [f.wall for f in forwards],
                     "forward_cpu_s_each": [f.cpu for f in forwards], "rows": rows, "machine": info,
                     "command": command_line()})


if __name__ == "__main__":
    main()
