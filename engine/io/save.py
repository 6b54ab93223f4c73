"""Save a pruned model so that `AutoModelForCausalLM.from_pretrained(dir)` loads it, all or nothing.

The model is written to a hidden sibling `.NAME.partial-<pid>-*` and put in place by one rename; with `overwrite`
an existing folder is swapped with it in one atomic exchange (renameat2 RENAME_EXCHANGE; where the file system
lacks it, two renames, undone if the second fails) and removed only after the swap. Any write error (a full disk,
whatever the writer raises) leaves the target as it was. A process killed mid-save leaves only hidden siblings
named after its pid; the next save beside them removes them, or puts back an old folder whose swap never finished.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

from safetensors import SafetensorError

from engine.errors import UserError, excerpt
from engine.io.run_store import process_alive

# Files a model save writes (transformers' model and tokenizer files). With overwrite, everything else in the old
# folder (results.json, logs, the user's own files) is carried into the new one; these never are, so old shards
# or an old index can never sit beside new weights.
MODEL_FILES = re.compile(r"(config\.json|generation_config\.json|.*\.safetensors|.*\.safetensors\.index\.json|"
                         r"pytorch_model.*\.bin|.*\.bin\.index\.json|tokenizer.*|special_tokens_map\.json|"
                         r"added_tokens\.json|vocab\..*|merges\.txt|chat_template.*|.*\.tiktoken|spiece\.model)")
SAVE_FORMATS = {"dense": "dense: a normal save_pretrained folder, pruned weights stored as zeros",
                "compact": "compact: each pruned matrix stored by its pattern, loads back bit for bit"}
WRITE_ERRORS = (OSError, SafetensorError, RuntimeError)  # RuntimeError: torch's writer on a failed write
RENAME_EXCHANGE = 2
AT_FDCWD = -100


def check_save_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse early (before any work) a target that exists and is not empty, or cannot be written. Leaves nothing
    behind: a folder made to test the write is removed again (the save makes it when it has something to put)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"save path {path} exists and is a file")
    clean_partials(path)
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"save directory {path} exists and is not empty; pass --overwrite or choose another")
    made = []  # folders this check creates, deepest first
    p = path
    while not p.exists() and p != p.parent:
        made.append(p)
        p = p.parent
    try:  # a real write, not os.access: as root, access() says yes to read-only and virtual file systems
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"cannot write to {path} ({e.strerror or e}); choose another save directory") from e
    finally:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:
                pass
    return path


def save_pretrained_atomic(model, tokenizer, path: str | os.PathLike, overwrite: bool = False,
                           extra_files: dict[str, str] | None = None, write=None) -> Path:
    """Save model + tokenizer (+ `extra_files`: {name: text}, e.g. the model card) to `path`, all or nothing.
    `write(folder)` replaces the model + tokenizer save (engine/io/compact.py writes its own layout)."""
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_partials(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-{os.getpid()}-", dir=path.parent))
    except OSError as e:
        raise UserError(f"cannot write to {path.parent} ({e.strerror or e}); choose another save directory") from e
    try:
        if write is not None:
            write(tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if path.exists():
            if not overwrite and any(path.iterdir()):
                raise UserError(f"save directory {path} appeared while saving and is not empty")
            _carry_over(path, tmp)
            _swap(tmp, path)  # tmp now holds the old folder
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except WRITE_ERRORS as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(e):
            raise UserError(f"disk full while saving the model to {path}; nothing was written there") from None
        raise UserError(f"could not save the model to {path}: {excerpt(_first_line(e), 160)}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def disk_full(err: BaseException) -> bool:
    """A full disk or quota, as an OSError or as the message of safetensors' / torch's writer."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(err)
    return "No space left" in text or "code: 28" in text or "StorageFull" in text or "Disk quota" in text


def clean_partials(path: Path) -> None:
    """Remove what killed saves into `path` left beside it: `.NAME.partial-<pid>-*` of processes that are gone,
    and put back `.NAME.old-<pid>-*` (an old folder whose swap never finished) when `path` itself is missing."""
    parent = path.parent
    if not parent.is_dir():
        return
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(partial|old)-(\d+)-\w+")
    for entry in sorted(parent.iterdir()):
        match = pattern.fullmatch(entry.name)
        if not match or process_alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not path.exists():
            os.replace(entry, path)
        else:
            shutil.rmtree(entry, ignore_errors=True)


def _carry_over(old: Path, new: Path) -> None:
    """Hard-link (or copy) into `new` what `old` holds beyond model files and `new` does not have."""
    for item in old.iterdir():
        if MODEL_FILES.fullmatch(item.name) or (new / item.name).exists():
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.copytree(item, new / item.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(item, new / item.name)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _swap(new: Path, target: Path) -> None:
    """Exchange two folders: `target` gets `new`'s content and `new` the old one; atomic where the kernel can."""
    libc = ctypes.CDLL(None, use_errno=True)
    exchange = getattr(libc, "renameat2", None)
    if exchange is not None and exchange(AT_FDCWD, os.fsencode(new), AT_FDCWD, os.fsencode(target),
                                         RENAME_EXCHANGE) == 0:
        return
    # no atomic exchange here: move the old folder aside, the new one in, and undo the first if the second fails
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
    os.replace(target, aside)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(aside, target)
        raise
    os.replace(aside, new)




def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
