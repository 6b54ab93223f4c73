"""Cached baseline perplexities (dense, magnitude, ...): a dense 7B evaluation is minutes we need not redo.

One JSON file per entry, named by a hash of its key and holding the key itself, so a hash collision or a
stale file is a miss, never a wrong answer. Unreadable or corrupt files are misses too: the cache can always
be deleted and never breaks a run.

    cache = BaselineCache()
    key = baseline_key("HuggingFaceTB/SmolLM2-135M", model_fingerprint(model), source.name, 2048, 40, "dense")
    if (hit := cache.get(key)) is None:
        hit = {"ppl": perplexity(...).ppl}
        cache.put(key, hit)
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from engine.io.record import read_json, write_json_atomic

# Bump when the evaluation protocol changes so that old numbers stop matching.
PROTOCOL_VERSION = 1
FINGERPRINT_SAMPLE = 4096  # elements read from each parameter tensor


def default_cache_dir() -> Path:
    """$SPARSITY_CACHE if set (used as the baselines folder itself), else ~/.cache/sparsity-explorer/baselines."""
    env = os.environ.get("SPARSITY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache/sparsity-explorer/baselines"


def baseline_key(model: str, fingerprint: str | None, source: str, seqlen: int, windows: int, kind: str,
                 spec: dict | None = None) -> dict:
    """The identity of one baseline number.

    model        the identity string the user gave (hub id or local path)
    fingerprint  model_fingerprint(model) or None; tells apart different weights under one name
    source       TextSource.name of the evaluation text
    kind         what was evaluated: "dense", "magnitude", ...
    spec         PruneSpec.canonical() of the pruned model's recipe (None for the dense model): every field that
                 decides the masks, derived from the spec, never a hand-picked list
    """
    return {"protocol": PROTOCOL_VERSION, "model": model, "fingerprint": fingerprint, "source": source,
            "seqlen": int(seqlen), "windows": int(windows), "kind": kind, "spec": spec}


@torch.no_grad()
def model_fingerprint(model: torch.nn.Module) -> str:
    """A cheap content hash: every parameter's name, shape, dtype and the exact bytes of a strided sample of
    FINGERPRINT_SAMPLE of its elements. Two checkpoints that differ in any tensor's sampled values differ here;
    a 7B model costs ~300 small reads, whatever its size."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|".encode())
        if p.device.type == "meta":
            continue
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // FINGERPRINT_SAMPLE)][:FINGERPRINT_SAMPLE]
        h.update(sample.contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class BaselineCache:
    """get(key) -> dict | None and put(key, value) over a folder of JSON files."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def path(self, key: dict) -> Path:
        canonical = json.dumps(key, sort_keys=True, separators=(",", ":"))
        return self.directory / f"{hashlib.sha256(canonical.encode()).hexdigest()[:32]}.json"

    def get(self, key: dict) -> dict | None:
        """The stored value for `key`, or None on a miss (absent, unreadable, corrupt or another key's file)."""
        try:
            entry = read_json(str(self.path(key)))
        except (OSError, ValueError):  # missing, unreadable, not JSON, not UTF-8
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("value"), dict):
            return None
        if entry.get("key") != _canonical(key):
            return None
        return entry["value"]

    def put(self, key: dict, value: dict) -> bool:
        """Store `value` for `key` atomically; False (and nothing written) when the folder is not writable."""
        try:
            write_json_atomic(str(self.path(key)), {"key": _canonical(key), "value": value})
        except OSError:
            return False
        return True


def _canonical(key: dict) -> dict:
    """The key as it reads back from JSON (tuples become lists), so stored and asked keys compare equal."""
    return json.loads(json.dumps(key, sort_keys=True))
