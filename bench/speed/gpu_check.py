"""The GPU paths, end to end, on a LLaMA-2-7B-shaped model with random weights (no download), in one command:

    python bench/speed/gpu_check.py                 # one large GPU (H100/H200 class): about 6-8 minutes
    python bench/speed/gpu_check.py --smoke         # a tiny LLaMA on the CPU in seconds (the test suite runs this)
    python bench/speed/gpu_check.py --stages wanda-2:4,offload   # a subset

Stages (128 x 2048 calibration tokens unless --nsamples/--seqlen say otherwise, random token ids):
  wanda-unstructured, wanda-2:4, tt-original (the original three-tier rule of the Wanda hybrid fork), tt-best (the
  best three-tier recipe's loss-weighted scores and model-wide tiers, masks only), sparsegpt-2:4, obs-one-layer (the
  best recipe's OBS update on decoder layer 0 alone), offload (--device offload: weights in CPU memory, layers
  computed on the GPU one at a time, under a GPU memory cap smaller than the model), device-map (accelerate's
  device_map="auto": whole model on the GPU works; a cap that pushes layers off the GPU is refused with a clear
  message, not pruned wrong).

Each stage prints its wall time, peak GPU memory, the ratio to plain forward passes over the same windows, and the
result of exact checks: counts per matrix as the pattern's formula says, no disagreement between masks and weights,
and on layer 0 the masks built on the device equal the masks built on the CPU from the same scores, bit for bit.
Dense weights are restored between stages. A JSON record goes to bench/results/gpu_check*.json.
Targets (H100/H200): Wanda 7B < 60 s with peak memory <= weights + 6 GiB; SparseGPT 7B < 6 min.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.common import (  # noqa: E402
    OBS_CHOICE_RECIPE,
    RESULTS,
    Stopwatch,
    command_line,
    forward_pass,
    machine,
    peak_memory,
    write_json,
)
from bench.speed.prune_speed import random_llama_7b  # noqa: E402
from engine.errors import UserError  # noqa: E402
from engine.io.snapshot import DenseWeights  # noqa: E402
from engine.patterns.block_rules import int_tier_counts  # noqa: E402
from engine.patterns.three_tier import (  # noqa: E402
    tier_census,
    tier_counts,  # noqa: E402
    tier_violations,
)
from engine.spec import ORIGINAL_RECIPE, PruneSpec  # noqa: E402
from engine.walk.capture import StatsHooks, capture_layer_inputs, run_layer  # noqa: E402
from engine.walk.discovery import find_decoder_layers, find_targets  # noqa: E402
from engine.walk.layer_walk import prune_model  # noqa: E402
from engine.walk.prune_matrix import matrix_scores, prune_matrix  # noqa: E402

STAGES = {
    "wanda-unstructured": dict(method="wanda", sparsity=0.5),
    "wanda-2:4": dict(method="wanda", pattern="nm"),
    "tt-original": dict(pattern="three_tier", **ORIGINAL_RECIPE),
    "tt-best": dict(pattern="three_tier", **{**OBS_CHOICE_RECIPE, "within_block": "score", "reconstruct": False}),
    "sparsegpt-2:4": dict(method="sparsegpt", pattern="nm"),
    "obs-one-layer": dict(pattern="three_tier", **{**OBS_CHOICE_RECIPE, "tier_scope": "matrix"}),
    "offload": dict(method="wanda", pattern="nm"),
    "device-map": dict(method="wanda", pattern="nm"),
}
SMOKE_SHAPE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4,
                   num_hidden_layers=2, vocab_size=512, max_position_embeddings=256)


def build(smoke: bool, device: str, dtype: torch.dtype):
    if not smoke:
        return random_llama_7b(32, device, dtype)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMOKE_SHAPE)).to(device, dtype).eval()


def expected_pruned(spec: PruneSpec, entry: dict) -> int:
    """What the pattern's formula says a matrix loses (random weights: no exact zeros before pruning)."""
    rows, cols = entry["shape"]
    if spec.pattern == "unstructured":
        return rows * int(cols * spec.sparsity)
    if spec.pattern == "nm":
        return rows * ((cols // spec.m) * (spec.m - spec.n))
    t = entry["tiers"]
    b = spec.block  # the shapes here are multiples of B
    return t["2:4"] * b * b // 2 + t["topk"] * (b * b - spec.keep)


def check_record(spec: PruneSpec, result, n_layers: int) -> list[str]:
    problems = list(result.errors)
    if result.status != "completed" or result.layers_done != n_layers:
        problems.append(f"status {result.status}, {result.layers_done} of {n_layers} layers")
    original = spec.block_rule == "original"  # keeps every weight tied with the K-th: at most the formula's count
    for m in result.matrices:
        if m["pruned"] > expected_pruned(spec, m) or (m["pruned"] != expected_pruned(spec, m) and not original):
            problems.append(f"layer {m['layer']} {m['module']}: pruned {m['pruned']}, "
                            f"formula {expected_pruned(spec, m)}")
    if spec.pattern == "three_tier" and spec.tier_scope == "matrix":
        counts = int_tier_counts if original else tier_counts
        for m in result.matrices:
            n = sum(m["tiers"].values())
            if tuple(m["tiers"].values()) != counts(n, spec.ratios):
                problems.append(f"layer {m['layer']} {m['module']}: tiers {m['tiers']} != counts of the ratios")
    return problems


@torch.no_grad()
def first_layer_stats(model, windows, hessian: bool):
    """Decoder layer 0's targets and their input statistics over `windows` (Hessians too with `hessian`)."""
    _, layers = find_decoder_layers(model)
    inputs = capture_layer_inputs(model, layers, windows)
    targets = find_targets(layers[0])
    hooks = StatsHooks(targets, hessian=hessian)
    try:
        run_layer(layers[0], inputs)
    finally:
        hooks.remove()
    return targets, hooks.stats


@torch.no_grad()
def device_equals_cpu(model, spec: PruneSpec, windows, device: str) -> list[str]:
    """Layer 0: masks from the device's scores and from the same scores on the CPU agree bit for bit."""
    targets, stats = first_layer_stats(model, windows[:8], hessian=False)
    masks_only = spec.replace(reconstruct=False, within_block="score", method="wanda") \
        if spec.method not in ("magnitude", "wanda") else spec.replace(reconstruct=False)
    problems = []
    for t in targets:
        W = t.weight()
        scores = matrix_scores(W, stats[t.name], masks_only)
        on_device = prune_matrix(W, None, masks_only.replace(method="magnitude", group="row"), scores=scores).keep
        on_cpu = prune_matrix(W.cpu(), None, masks_only.replace(method="magnitude", group="row"),
                              scores=scores.cpu()).keep
        if not torch.equal(on_device.cpu(), on_cpu):
            differ = int((on_device.cpu() != on_cpu).sum())
            problems.append(f"layer 0 {t.name}: device mask != CPU mask ({differ} differ)")
    return problems


@torch.no_grad()
def obs_one_layer(model, spec: PruneSpec, windows) -> list[str]:
    """The OBS update with the choice inside blocks on decoder layer 0 alone (Hessians from all windows)."""
    targets, stats = first_layer_stats(model, windows, hessian=True)
    problems = []
    matrix_spec = spec.replace(method="wanda")  # per-matrix scores: the gradient pass is the tt-best stage's
    for t in targets:
        res = prune_matrix(t.weight(), stats.pop(t.name), matrix_spec)
        t.set_weight(res.W)
        rows, cols = res.keep.shape
        expected = tier_counts((rows // spec.block) * (cols // spec.block), spec.ratios)
        if tuple(tier_census(res.tiers).values()) != expected:
            problems.append(f"layer 0 {t.name}: tiers {tier_census(res.tiers)} != {expected}")
        if tier_violations(t.weight(), res.tiers, spec.block, spec.keep):
            problems.append(f"layer 0 {t.name}: weights break their tier map")
    return problems


def run_stage(name: str, model, windows, args, forward_s: float, dense: DenseWeights) -> dict:
    spec = PruneSpec(nsamples=len(windows), seqlen=windows.shape[1], **STAGES[name])
    n_layers = len(find_decoder_layers(model)[1])
    row = {"stage": name, "spec": spec.label()}
    problems: list[str] = []
    with peak_memory(args.device) as mem, Stopwatch(args.device) as sw:
        if name == "obs-one-layer":
            problems = obs_one_layer(model, spec, windows)
        elif name == "offload":
            problems = offload_stage(model, spec, windows, args, row)
        elif name == "device-map":
            problems = device_map_stage(model, spec, windows, args, row)
        else:
            result = prune_model(model, spec, windows)
            problems = check_record(spec, result, n_layers)
    dense.restore()
    if name not in ("obs-one-layer", "offload", "device-map"):
        problems += device_equals_cpu(model, spec, windows, args.device)
    row.update(wall_s=round(sw.wall, 2), x_forward=round(sw.wall / forward_s, 2),
               peak_gpu_gib=round(mem.get("peak_cuda_mib", 0) / 1024, 2),
               peak_rss_gib=round(mem["peak_rss_mib"] / 1024, 2), ok=not problems, problems=problems[:5])
    return row


def offload_stage(model, spec, windows, args, row) -> list[str]:
    """Weights in CPU memory, one layer at a time on the device, under a memory cap below the model's size."""
    home = next(model.parameters()).device
    model.to("cpu")
    try:
        if args.device == "cuda":
            weights = sum(p.numel() * p.element_size() for p in model.parameters())
            cap = weights / 2 / torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(cap)
            row["gpu_cap_gib"] = round(weights / 2 / 2**30, 2)
        result = prune_model(model, spec, windows, offload_device=args.device)
        problems = check_record(spec, result, len(find_decoder_layers(model)[1]))
        problems += [f"{n} left on {p.device}" for n, p in model.named_parameters() if p.device.type != "cpu"][:1]
    finally:
        if args.device == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0)
        model.to(home)
    return problems


def device_map_stage(model, spec, windows, args, row) -> list[str]:
    """accelerate's dispatch as from_pretrained(device_map="auto") does it: the whole model on the device prunes
    like a plain model; a max_memory cap that pushes layers off the device is refused with a clear message."""
    from accelerate import cpu_offload, dispatch_model, infer_auto_device_map
    from accelerate.hooks import remove_hook_from_module

    problems = []
    target = 0 if args.device == "cuda" else "cpu"
    dispatch_model(model, device_map={"": target})
    try:
        result = prune_model(model, spec, windows)
        problems += check_record(spec, result, len(find_decoder_layers(model)[1]))
    finally:
        remove_hook_from_module(model, recurse=True)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    home = next(model.parameters()).device
    state = {k: v.to("cpu") for k, v in model.state_dict().items()}
    if target == 0:  # a third of the model fits the GPU cap: accelerate offloads the rest to CPU memory
        device_map = infer_auto_device_map(model, max_memory={0: int(weights / 3), "cpu": int(weights * 2)})
        row["capped_map"] = sorted({str(v) for v in device_map.values()})
        dispatch_model(model.to("cpu"), device_map=device_map)
    else:  # the CPU standing in for the GPU: the same offload hooks (weights kept aside, parameters on meta)
        cpu_offload(model, execution_device=torch.device("cpu"))
    try:
        DenseWeights(model, 1 << 50)
        problems.append("a model with layers offloaded by accelerate was accepted for pruning")
    except UserError as e:
        row["capped_message"] = str(e)[:120]
    finally:
        remove_hook_from_module(model, recurse=True)
        model.load_state_dict(state, assign=True)
        model.to(home)
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny LLaMA on the CPU, 4 x 32 tokens: checks, not speed")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    p.add_argument("--nsamples", type=int, default=None, help="calibration windows (default 128; 4 with --smoke)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per window (default 2048; 32 with --smoke)")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated, from: " + ", ".join(STAGES))
    p.add_argument("--out", default=None, help="JSON record path (default bench/results/gpu_check[-smoke].json)")
    args = p.parse_args(argv)
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU visible to torch; run with --smoke for the CPU check", file=sys.stderr)
        return 2
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        print(f"error: unknown stage {unknown[0]!r}; choose from {', '.join(STAGES)}", file=sys.stderr)
        return 2
    nsamples, seqlen = args.nsamples or (4 if args.smoke else 128), args.seqlen or (32 if args.smoke else 2048)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16

    t0 = time.perf_counter()
    model = build(args.smoke, args.device, dtype)
    build_s = time.perf_counter() - t0
    weights_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    windows = torch.randint(0, model.config.vocab_size, (nsamples, seqlen), generator=torch.Generator().manual_seed(0))
    forward_s = forward_pass(model, windows, args.device).wall
    dense = DenseWeights(model, 1 << 50)
    print(f"model {weights_gib:.2f} GiB built in {build_s:.1f} s on {args.device}; plain forward over "
          f"{nsamples} x {seqlen} tokens {forward_s:.2f} s", flush=True)
    rows = []
    for name in stages:
        row = run_stage(name, model, windows, args, forward_s, dense)
        rows.append(row)
        print(f"{name:20s} {row['wall_s']:8.2f} s  x{row['x_forward']:<7} peak GPU {row['peak_gpu_gib']:6.2f} GiB  "
              f"{'ok' if row['ok'] else 'FAILED: ' + '; '.join(row['problems'])}", flush=True)
    out = Path(args.out) if args.out else RESULTS / f"gpu_check{'-smoke' if args.smoke else ''}.json"
    write_json(out, {"machine": machine(args.device), "command": command_line(), "weights_gib": weights_gib,
                     "nsamples": nsamples, "seqlen": seqlen, "forward_s": forward_s, "stages": rows})
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
