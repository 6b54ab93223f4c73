"""The progressive three-tier schedule: several iterations of prune -> (fine-tune), each with sparser tier ratios.

    parse_schedule(text)                 "0.9/0.1/0,0.35/0.45/0.2" or a CSV file -> [(dense, 2:4, top-K), ...]
    assign_tiers_demoting(imp, counts, previous)   tier grid where no block returns to a denser tier (pure)
    prune_iteration(model, spec, windows, previous)  -> {(layer, module): tier grid}; the model pruned in place
    run_progressive(...)                 the whole schedule, tier maps and weights saved per iteration (resumable)

Each iteration re-scores the current weights (pruned and fine-tuned) with fresh calibration windows (seed + k),
keeps the most important `dense` share of the blocks that were dense, then the most important `2:4` share among
the blocks that were dense or 2:4, and makes the rest top-K: a block is only ever demoted. Blocks compete within
each matrix (the original rule), ranked by summed importance, for the methods that score one matrix at a time
(magnitude, Wanda, SparseGPT).

State folder, one sub-folder per finished iteration:
    iteration-<k>/tier_maps.json   {"iteration", "ratios", "maps": {"<layer>:<module>": encode_tier_map}}
    iteration-<k>/model/           the weights after that iteration (and its fine-tune): what iteration k+1 starts from
    iteration-<k>/summary.json     the iteration's entry of the record (ratios, sparsity, perplexities, curve)
A rerun with the same folder loads the last finished iteration and continues after it.
"""
from __future__ import annotations

import csv
import math
import threading
import time
from pathlib import Path

import torch

from engine.errors import UserError
from engine.io.record import decode_tier_map, encode_tier_map, read_json, write_json_atomic
from engine.methods.registry import METHODS
from engine.patterns.registry import PATTERNS, TIER_AXIS
from engine.patterns.three_tier import DENSE, TOPK, TWO_FOUR, assign_tiers, block_importance, tier_census, tier_counts
from engine.patterns.tier_plan import MatrixPlan
from engine.spec import PruneSpec
from engine.walk.capture import capture_layer_inputs, targets_per_layer, walk_layers
from engine.walk.discovery import find_decoder_layers
from engine.walk.prune_matrix import matrix_scores, prune_matrix

# re-scored on the current weights each iteration: methods scored from a layer's own inputs (not model gradients)
PROGRESSIVE_METHODS = tuple(name for name, m in METHODS.items() if not m.needs & {"gradients", "gradient_rows"})


# ---- the schedule --------------------------------------------------------------------------------------------------

def parse_schedule(text: str) -> list[tuple[float, float, float]]:
    """A schedule of tier ratios: a CSV file with columns dense, mid_2_4 (or 2:4), topk (the fork's
    progressive_config.csv; other columns ignored), or a plain list "d/s/t,d/s/t,..." (spaces or commas between)."""
    text = str(text).strip()
    path = Path(text).expanduser()
    if text.lower().endswith(".csv") or path.is_file():
        if not path.is_file():
            raise UserError(f"schedule file {path} does not exist")
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        names = {"dense": "dense", "2:4": ("mid_2_4", "2:4", "2_4"), "topk": ("topk", "top_k")}
        try:
            ratios = [(float(r["dense"]), float(next(r[c] for c in names["2:4"] if c in r)),
                       float(next(r[c] for c in names["topk"] if c in r))) for r in rows]
        except (KeyError, StopIteration, ValueError, TypeError) as e:
            raise UserError(f"schedule file {path} needs numeric columns dense, mid_2_4, topk ({e})") from e
    else:
        try:
            ratios = [tuple(float(x) for x in item.split("/")) for item in text.replace(",", " ").split()]
        except ValueError as e:
            raise UserError(f"schedule {text!r}: write iterations as dense/2:4/top-K, "
                            "e.g. 0.9/0.1/0,0.35/0.45/0.2") from e
    return check_schedule(ratios)


def check_schedule(ratios) -> list[tuple[float, float, float]]:
    """Each iteration's ratios sum to 1 and never grow a denser tier (demotion only)."""
    ratios = [tuple(float(x) for x in r) for r in ratios]
    if not ratios:
        raise UserError("the schedule has no iterations")
    for k, r in enumerate(ratios, start=1):
        if len(r) != 3 or any(not math.isfinite(x) or x < 0 for x in r) or abs(sum(r) - 1) > 1e-6:
            raise UserError(f"schedule iteration {k}: ratios {r} must be three numbers >= 0 summing to 1")
    for k in range(1, len(ratios)):
        (d0, s0, _), (d1, s1, _) = ratios[k - 1], ratios[k]
        if d1 > d0 + 1e-9 or d1 + s1 > d0 + s0 + 1e-9:
            raise UserError(f"schedule iteration {k + 1} ({d1}/{s1}/{ratios[k][2]}) would promote blocks back to a "
                            f"denser tier than iteration {k} ({d0}/{s0}/{ratios[k - 1][2]}); blocks are only demoted")
    return ratios


def check_spec(spec: PruneSpec) -> None:
    if PATTERNS[spec.pattern].axis != TIER_AXIS or spec.method not in PROGRESSIVE_METHODS \
            or spec.tier_scope != "matrix" or spec.assignment != "importance" or spec.within_block == "obs":
        raise UserError("the progressive schedule runs three-tier blocks ranked per matrix by importance, with "
                        f"{', '.join(PROGRESSIVE_METHODS)} scores (within-block score or magnitude)")


# ---- one iteration -------------------------------------------------------------------------------------------------

def assign_tiers_demoting(importance: torch.Tensor, counts: tuple[int, int, int],
                          previous: torch.Tensor) -> torch.Tensor:
    """Like assign_tiers, but a block may only keep or lose density: dense among the previously dense, 2:4 among
    the previously dense or 2:4 (most important first), the rest top-K. -> int8 grid shaped like `importance`."""
    flat, prev = importance.flatten().float(), previous.flatten().to(importance.device)
    tiers = torch.full_like(prev, TOPK, dtype=torch.int8)
    n_dense, n_24, _ = counts
    for tier, n, eligible in ((DENSE, n_dense, prev == DENSE), (TWO_FOUR, n_24, prev <= TWO_FOUR)):
        eligible = eligible & (tiers == TOPK)
        n = min(n, int(eligible.sum()))
        order = torch.argsort(torch.where(eligible, flat, torch.full_like(flat, -math.inf)), descending=True,
                              stable=True)[:n]
        tiers[order] = tier
    return tiers.view(importance.shape)


@torch.no_grad()
def prune_iteration(model, spec: PruneSpec, windows: torch.Tensor | None, previous: dict | None = None,
                    cancel: threading.Event | None = None) -> tuple[dict, list[dict]]:
    """Prune `model` in place to `spec.ratios`, demoting only from `previous` {(layer, module): grid}.
    -> ({(layer, module): tier grid}, per-matrix entries {layer, module, numel, zeros, tiers})."""
    _, layers = find_decoder_layers(model)
    use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = False
    try:
        inputs = capture_layer_inputs(model, layers, windows) if spec.needs_layer_stats else None
        grids, entries = {}, []

        def prune(i, layer, targets, stats):
            for t in targets:
                scores = matrix_scores(t.weight(), stats.get(t.name), spec)
                importance = block_importance(scores, spec.block)
                counts = tier_counts(importance.numel(), spec.ratios)
                before = (previous or {}).get((i, t.name))
                tiers = assign_tiers(importance, counts) if before is None else \
                    assign_tiers_demoting(importance, counts, before)
                res = prune_matrix(t.weight(), stats.get(t.name), spec, scores=scores, plan=MatrixPlan(tiers=tiers))
                t.set_weight(res.W)
                grids[(i, t.name)] = res.tiers.cpu()
                zeros = int((t.weight() == 0).sum())
                entries.append({"layer": i, "module": t.name, "numel": res.keep.numel(), "zeros": zeros,
                                "tiers": tier_census(res.tiers)})
        walk_layers(layers, targets_per_layer(layers, spec.prune_router), inputs, prune,
                    hessian=spec.updates_weights, changes_layer=True, cancel=cancel)
    finally:
        model.config.use_cache = use_cache
    return grids, entries


# ---- tier maps on disk ---------------------------------------------------------------------------------------------

def save_tier_maps(path, iteration: int, ratios, grids: dict) -> None:
    maps = {f"{i}:{name}": encode_tier_map(g.numpy()) for (i, name), g in grids.items()}
    write_json_atomic(str(path), {"iteration": iteration, "ratios": list(ratios), "maps": maps})


def load_tier_maps(path) -> dict:
    maps = read_json(str(path))["maps"]
    return {(int(k.split(":", 1)[0]), k.split(":", 1)[1]): torch.from_numpy(decode_tier_map(v))
            for k, v in maps.items()}


def finished_iterations(state_dir) -> list[int]:
    """Iterations whose tier maps, weights and summary are all written, in order."""
    state = Path(state_dir)
    done = []
    for d in state.glob("iteration-*"):
        k = d.name.split("-", 1)[1]
        if k.isdigit() and (d / "tier_maps.json").is_file() and (d / "summary.json").is_file() \
                and (d / "model" / "config.json").is_file():
            done.append(int(k))
    return sorted(done)


# ---- the whole schedule --------------------------------------------------------------------------------------------

def run_progressive(model, tokenizer, spec: PruneSpec, schedule, state_dir, calib_source, eval_ids=None,
                    eval_seqlen: int | None = None, eval_windows: int | None = None, finetune=None,
                    progress=None, cancel: threading.Event | None = None) -> list[dict]:
    """Run the schedule on `model` (in place); -> one entry per iteration (ratios, sparsity, perplexities, the
    fine-tune's recovery block). Iterations already finished in `state_dir` are loaded, not repeated."""
    from transformers import AutoModelForCausalLM

    from engine.eval.perplexity import perplexity
    from engine.io import text as textdata
    from engine.io.save import save_pretrained_atomic
    from engine.recover.pipeline import recover

    check_spec(spec)
    schedule = check_schedule(schedule)
    progress = progress or (lambda event: None)
    seqlen = textdata.default_seqlen(model.config, spec.seqlen)
    state = Path(state_dir).expanduser()
    state.mkdir(parents=True, exist_ok=True)
    entries, previous = [], None
    done = [k for k in finished_iterations(state) if k <= len(schedule)]
    if done:
        last = state / f"iteration-{done[-1]}"
        progress({"stage": "progressive", "message": f"resuming after iteration {done[-1]} from {last}"})
        saved = AutoModelForCausalLM.from_pretrained(last / "model", dtype=model.dtype)
        model.load_state_dict(saved.state_dict(), strict=False)
        del saved
        previous = load_tier_maps(last / "tier_maps.json")
        entries = [read_json(str(state / f"iteration-{k}" / "summary.json")) for k in done]
    for k in range(len(entries) + 1, len(schedule) + 1):
        ratios = schedule[k - 1]
        t0 = time.perf_counter()
        step = spec.replace(ratios=ratios, seed=spec.seed + k - 1)  # fresh calibration windows each iteration
        progress({"stage": "progressive", "message": f"iteration {k}/{len(schedule)}: ratios "
                                                     f"{'/'.join(f'{x:g}' for x in ratios)}"})
        windows = (textdata.calibration_windows(tokenizer, calib_source, step.nsamples, seqlen, step.seed)
                   if step.uses_calibration else None)
        grids, matrices = prune_iteration(model, step, windows, previous, cancel)
        numel = sum(m["numel"] for m in matrices)
        entry = {"iteration": k, "ratios": list(ratios), "sparsity": sum(m["zeros"] for m in matrices) / numel,
                 "tiers": {t: sum(m["tiers"][t] for m in matrices) for t in ("dense", "2:4", "topk")},
                 "ppl_pruned": None, "recovery": None}
        if eval_ids is not None:
            entry["ppl_pruned"] = perplexity(model, eval_ids, eval_seqlen, max_windows=eval_windows, cancel=cancel).ppl
        if finetune is not None:
            entry["recovery"] = recover(model, tokenizer, finetune, calib_source, eval_ids, eval_seqlen, eval_windows,
                                        ppl_before=entry["ppl_pruned"], progress=progress, cancel=cancel)
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        folder = state / f"iteration-{k}"
        save_tier_maps(folder / "tier_maps.json", k, ratios, grids)
        save_pretrained_atomic(model, tokenizer, folder / "model", overwrite=True)
        write_json_atomic(str(folder / "summary.json"), entry)  # last: marks the iteration finished
        progress({"stage": "progressive", "iteration": k, "entry": entry})
        entries.append(entry)
        previous = grids
    return entries
