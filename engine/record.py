"""The run record: the one JSON document a run produces and the CLI, the dashboard and the run store read.

Layout (all keys always present unless noted):
    record_version  1
    run_id          str, generated (never user text)
    status          "running" | "completed" | "cancelled" | "failed"
    message         str | None: why a run was cancelled or failed
    spec            PruneSpec.to_dict()
    model           {"name", "model_type", "n_layers", "dtype", "device", "n_params_pruned"}
    data            {"calibration": str | None, "evaluation": str | None}   (sources really used)
    versions        {"python", "torch", "transformers", "engine"}
    timings         {"<stage>_s": float, ...}
    layers_done     int: decoder layers pruned (layers >= layers_done are untouched)
    n_layers        int
    sparsity        float: zeros / weights over all pruned matrices, counted from the weights (W == 0)
    mask_sparsity   float: weights the masks pruned / weights (differs from `sparsity` by kept weights that
                    were already zero in the dense model)
    errors          list of str: disagreements between masks, tier maps and weights (empty when all agree)
    nominal_sparsity float
    ppl             {"pruned": float|None, "dense": float|None, "magnitude": float|None}  (filled by evaluation)
    recovery        None, or the masked fine-tune after pruning: settings, curve {"train", "heldout"}, ppl_before,
                    ppl_after, zeros_before/after, zeros_held (layout in engine/recover.py)
    matrices        list of per-matrix entries:
        layer, module ("self_attn.q_proj", "mlp.experts.3.down_proj"), shape [out, in],
        numel, zeros (W == 0 after pruning), sparsity (zeros / numel), pruned (by the mask),
        dense_zeros (W == 0 before pruning), rounded_to_zero (kept values the model's dtype rounds to 0),
        errors       list of str, only where the weights disagree with the mask or the tier map
        tiers        {"dense": n, "2:4": n, "topk": n}            (block patterns only, else None)
        tier_weights {"dense": {"numel", "zeros"}, "2:4": ..., "topk": ...}: weights in each tier's blocks, pruned
        tier_map     {"shape": [rows, cols], "rows": ["0120...", ...]}  (three-tier only; digit = tier id
                     0 dense, 1 2:4, 2 top-K of the block at [row, col] in units of B x B blocks)
        block_importance {"shape": [...], "dtype": "float16", "b64": str}  (three-tier only; the score the
                     blocks were ranked by, as ranked: normalised when tier_scope is not "matrix")
"""
from __future__ import annotations

import base64
import json
import os
import platform
import tempfile
import uuid
from datetime import datetime, timezone

import numpy as np

RECORD_VERSION = 1
ENGINE_VERSION = "0.1.0"


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


def versions() -> dict:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "engine": ENGINE_VERSION}


def encode_tier_map(tiers: np.ndarray) -> dict:
    tiers = np.asarray(tiers, dtype=np.int8)
    return {"shape": list(tiers.shape), "rows": ["".join(map(str, row)) for row in tiers.tolist()]}


def decode_tier_map(entry: dict) -> np.ndarray:
    """{"shape", "rows"} -> int8 array [rows, cols] of tier ids (0 dense, 1 2:4, 2 top-K)."""
    rows = entry["rows"]
    if not rows:
        return np.zeros(entry["shape"], dtype=np.int8)
    flat = np.frombuffer("".join(rows).encode("ascii"), dtype=np.uint8) - ord("0")
    return flat.astype(np.int8).reshape(entry["shape"])


def encode_array(values: np.ndarray) -> dict:
    a = np.asarray(values, dtype=np.float32)
    scale = float(np.abs(a).max()) if a.size else 0.0
    # float16 overflows above 65504: store the values divided by their largest magnitude and the scale.
    scaled = (a / scale if scale > 0 else a).astype(np.float16)
    return {"shape": list(a.shape), "dtype": "float16", "scale": scale,
            "b64": base64.b64encode(scaled.tobytes()).decode("ascii")}


def decode_array(entry: dict) -> np.ndarray:
    a = np.frombuffer(base64.b64decode(entry["b64"]), dtype=np.float16).astype(np.float32)
    scale = entry.get("scale") or 1.0
    return (a * scale).reshape(entry["shape"])


def write_json_atomic(path: str, obj) -> None:
    """Write JSON to a temporary file beside `path`, then rename: readers never see half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
