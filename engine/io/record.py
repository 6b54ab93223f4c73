"""The run record: the one JSON document a run produces, which the walk appends to, the run store saves, the CLI
prints and the dashboard draws live and at the end. Its layout is the `RunRecord` class below (one field table, a
version); a record is a plain dict on disk and in memory, so JSON readers need nothing from this module.
"""
from __future__ import annotations

import base64
import copy
import json
import math
import os
import platform
import re
import stat
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

RECORD_VERSION = 1
ENGINE_VERSION = "0.1.0"
RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")
STATUSES = ("running", "completed", "cancelled", "failed")


@dataclass(frozen=True)
class Field:
    kind: str              # "object" | "whole" | "number" | "text" | "list": what a stored value must be (or null)
    initial: object        # the value of a new record (copied)
    meaning: str
    always: bool = True    # in every record from the start; else absent until set


class RunRecord(dict):
    """A run record: a dict with every field of `FIELDS`, which is the layout (readers check stored files against
    it: `record_problem`). Fields a run adds at its end for Wanda users (actual_sparsity, ppl_test ...) or the store
    adds (owner, stage) are listed too: absent until set."""

    FIELDS = {
        "record_version": Field("whole", RECORD_VERSION, "layout version of this document"),
        "run_id": Field("text", None, "generated (never user text): YYYYMMDD-HHMMSS-8 hex digits"),
        "status": Field("text", "running", "running | completed | cancelled | failed"),
        "message": Field("text", None, "why a run was cancelled or failed"),
        "spec": Field("object", None, "PruneSpec.to_dict()"),
        "model": Field("object", {}, "name, source, model_type, n_layers, dtype, device, compute_device, "
                                     "n_params_pruned"),
        "data": Field("object", {"calibration": None, "evaluation": None}, "the text sources really used"),
        "versions": Field("object", None, "python, torch, transformers, engine"),
        "request": Field("object", None, "what was asked besides the spec: calib, eval, eval_windows, baselines, "
                                         "device, dtype, zero-shot and fine-tune settings"),
        "timings": Field("object", {}, "{'<stage>_s': seconds}"),
        "layers_done": Field("whole", 0, "decoder layers pruned (layers >= layers_done are untouched)"),
        "n_layers": Field("whole", None, "decoder layers of the model"),
        "sparsity": Field("number", None, "zeros / weights over all pruned matrices, counted from the weights"),
        "mask_sparsity": Field("number", None, "weights the masks pruned / weights (differs from sparsity by kept "
                                               "weights that were already zero in the dense model)"),
        "nominal_sparsity": Field("number", None, "what the pattern aims at, before rounding per matrix"),
        "errors": Field("list", [], "disagreements between masks, tier maps and weights (empty when all agree)"),
        "ppl": Field("object", {"pruned": None, "dense": None, "magnitude": None}, "perplexities (evaluation)"),
        "eval": Field("object", None, "windows, tokens, seqlen of the pruned model's evaluation"),
        "zero_shot": Field("object", None, "zero-shot accuracies of the pruned model"),
        "zero_shot_dense": Field("object", None, "the same for the dense model"),
        "recovery": Field("object", None, "the masked fine-tune after pruning: settings, curve {train, heldout}, "
                                          "ppl_before, ppl_after, zeros held (layout in engine/recover/pipeline.py)"),
        "saved_model": Field("text", None, "where the pruned model was saved"),
    "storage": Field("object", None, "the saved model's bytes (engine/io/compact.py measured_storage): format, "
                                     "measured per tier and in total, storage_estimate's prediction, dense", False),
        "matrices": Field("list", [], "one MATRIX_FIELDS entry per pruned matrix, in walk order"),
        "actual_sparsity": Field("number", None, "Wanda's name for sparsity (set at the end)", False),
        "ppl_test": Field("number", None, "Wanda's name for ppl.pruned (set at the end)", False),
        "ppl_dense": Field("number", None, "ppl.dense (set at the end)", False),
        "ppl_magnitude": Field("number", None, "ppl.magnitude (set at the end)", False),
        "owner": Field("object", None, "pid and host of the process running it (the store sets it)", False),
        "stage": Field("text", None, "'save' while the model is being saved (the store's own)", False),
        "store_warning": Field("text", None, "why the store could not keep the record, if it could not", False),
        "schedule": Field("list", None, "a progressive run's tier ratios per iteration", False),
        "progressive": Field("list", None, "a progressive run's iterations (engine/recover/progressive.py): ratios, "
                                           "sparsity, ppl_pruned, recovery, seconds", False),
    }

    @classmethod
    def new(cls, **values) -> "RunRecord":
        """A record with every field at its initial value, then `values` (names outside FIELDS are refused)."""
        unknown = set(values) - set(cls.FIELDS)
        if unknown:
            raise ValueError(f"not run record fields: {', '.join(sorted(unknown))}")
        record = cls({name: copy.deepcopy(f.initial) for name, f in cls.FIELDS.items() if f.always})
        record.update(values)
        return record

    def add_layer(self, event: dict) -> None:
        """Append one decoder layer's matrices from the walk's "prune" progress event (engine/walk/layer_walk.py)."""
        self.setdefault("matrices", []).extend(event.get("matrices", []))
        self["layers_done"], self["n_layers"] = event["layer"] + 1, event["n_layers"]


# One pruned matrix in a record's "matrices" (engine/walk/layer_walk.py writes them; block fields are None elsewhere)
MATRIX_FIELDS = {
    "layer": "decoder layer index", "module": "name inside the layer ('self_attn.q_proj', 'mlp.experts.3.down_proj')",
    "shape": "[out, in]", "numel": "weights", "zeros": "W == 0 after pruning", "sparsity": "zeros / numel",
    "pruned": "weights the mask pruned", "dense_zeros": "W == 0 before pruning",
    "rounded_to_zero": "kept values the model's dtype rounds to 0",
    "errors": "only where the weights disagree with the mask or the tier map",
    "tiers": "{'dense': n, '2:4': n, 'topk': n} blocks (block patterns)",
    "tier_weights": "{'dense': {'numel', 'zeros'}, ...}: weights in each tier's blocks, pruned",
    "tier_map": "{'shape': [rows, cols], 'rows': ['0120...']}: tier id of each B x B block (0 dense, 1 2:4, 2 top-K)",
    "block_importance": "{'shape', 'dtype': 'float16', 'scale', 'b64'}: what blocks were ranked by, as ranked",
}


def record_problem(record) -> str | None:
    """Why `record` is not a run record of the RunRecord layout (None when it is one). Readers skip such a file: a
    stray `[]` or `{"spec": "garbage"}` in the store must not break the list for everyone."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    if not isinstance(record.get("run_id"), str) or not RUN_ID.fullmatch(record["run_id"]):
        return "no valid run_id"
    if record.get("status") not in STATUSES:
        return "no valid status"
    for name, f in RunRecord.FIELDS.items():
        value = record.get(name)
        if value is not None and not _is_kind(value, f.kind):
            return f"{name} is not {_KIND_WORDS[f.kind]}"
    if record.get("spec") is not None:
        from engine.spec import (
            PruneSpec,  # the spec module imports the registries (torch); the store's readers need not
        )
        try:
            PruneSpec.from_dict(record["spec"])
        except Exception as err:  # any complaint of the spec about a stored value: the record is not usable
            return f"its spec is not valid ({str(err)[:80]})"
    if any(v is not None and not _is_kind(v, "number") for v in (record.get("ppl") or {}).values()):
        return "ppl holds something other than numbers"
    if not all(isinstance(m, dict) and isinstance(m.get("layer"), int) and isinstance(m.get("module"), str)
               for m in record.get("matrices") or []):
        return "matrices is not a list of per-matrix entries"
    return None


_KIND_WORDS = {"object": "an object", "whole": "a whole number", "number": "a number", "text": "text",
               "list": "a list"}


def _is_kind(value, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "list":
        return isinstance(value, list)
    if kind == "text":
        return isinstance(value, str)
    if kind == "whole":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)  # "number"


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


def versions() -> dict:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "engine": ENGINE_VERSION}


def encode_tier_map(tiers: np.ndarray) -> dict:
    """int8 [rows, cols] of tier ids -> {"shape", "rows"}: one string of digits per row (each row's bytes read as
    one fixed-width string, no loop per row: a re-plan encodes 210 maps)."""
    tiers = np.ascontiguousarray(tiers, dtype=np.int8)
    rows, cols = tiers.shape
    text = (tiers.view(np.uint8) + ord("0")).view(f"S{cols}").ravel().astype(str).tolist() if cols else [""] * rows
    return {"shape": [rows, cols], "rows": text}


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
    write_atomic(path, lambda f: json.dump(obj, f, indent=1, default=_json_default))


def write_text_atomic(path: str, text: str) -> None:
    """`text` into `path` the same way: whole or not at all (a full disk leaves the old file, or none)."""
    write_atomic(path, lambda f: f.write(text))


def write_atomic(path: str, fill) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


MAX_JSON_BYTES = 256 << 20  # a record of a 70B model's tier maps is tens of MB; a public store holds 256 MB in all
MAX_JSON_DEPTH = 64         # a record nests 4 deep; a reader recursing into 10^5 nested lists must never see them


def read_json(path: str, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH):
    """A JSON file written by this engine (a run record, a baseline, results.json), read defensively: a regular file
    only (a FIFO, a device or a folder is refused without blocking: the open never waits for a writer), at most
    `max_bytes`, nested at most `max_depth` deep. Raises OSError when it cannot be read, ValueError when it is not
    such a file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{os.path.basename(path)} is not a regular file")
        if st.st_size > max_bytes:
            raise ValueError(f"{os.path.basename(path)} is {st.st_size / 2**20:.0f} MiB, more than a record's "
                             f"{max_bytes / 2**20:.0f} MiB")
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:  # grew since the fstat
        raise ValueError(f"{os.path.basename(path)} is more than {max_bytes / 2**20:.0f} MiB")
    try:
        value = json.loads(raw)
    except RecursionError:
        raise ValueError(f"{os.path.basename(path)} is nested too deeply") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{os.path.basename(path)} is not UTF-8 text: {e.reason}") from None
    if _depth(value) > max_depth:
        raise ValueError(f"{os.path.basename(path)} is nested more than {max_depth} deep")
    return value


def _depth(value) -> int:
    """How deep lists and objects nest in a parsed JSON value (iterative: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
