"""Save a pruned model so that `AutoModelForCausalLM.from_pretrained(dir)` loads it.

Written to a temporary sibling directory and renamed when complete: an interrupted save never leaves a
directory that looks like a finished model.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError


def check_save_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse early (before any work) a target that exists and is not empty, or cannot be written."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"save path {path} exists and is a file")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"save directory {path} exists and is not empty; pass --overwrite or choose another")
    try:  # a real write, not os.access: as root, access() says yes to read-only and virtual file systems
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"cannot write to {path} ({e.strerror or e}); choose another save directory") from e
    return path


def save_pretrained_atomic(model, tokenizer, path: str | os.PathLike, overwrite: bool = False) -> Path:
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    except OSError as e:
        raise UserError(f"cannot write to {path.parent} ({e.strerror or e}); choose another save directory") from e
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if path.exists():
            if not overwrite and any(path.iterdir()):
                raise UserError(f"save directory {path} appeared while saving and is not empty")
            # keep files we did not write (results.json, logs): move ours over them, config.json last, so
            # that a directory without it (what an interruption leaves) never passes for a finished model
            for item in sorted(tmp.iterdir(), key=lambda p: p.name == "config.json"):
                target = path / item.name
                if target.is_dir():
                    shutil.rmtree(target)
                os.replace(item, target)
            tmp.rmdir()
        else:
            os.replace(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise UserError(f"disk full while saving the model to {path}; nothing was left behind") from e
        raise UserError(f"could not save the model to {path}: {e.strerror or e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
