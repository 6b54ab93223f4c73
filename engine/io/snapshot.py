"""Dense weights kept aside so a pruned model can always be put back exactly, at any model size.

Every parameter is kept (pruning writes the decoder layers' matrices, a recovery fine-tune writes everything):

  * in memory (a CPU copy) while their size is within the budget, or
  * in one file on disk above it (written one tensor at a time, so RAM never holds more than one tensor
    beyond the model), read back memory-mapped on restore.

The budget is `--snapshot_max_gb` on the command line and `SPARSITY_SNAPSHOT_MAX_GB` for the dashboard;
0 keeps no in-memory copy at all (always the file). Either way `restore()` writes the dense values back into
the same parameter objects, bit for bit, so whoever holds the model keeps a valid, dense model.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.errors import UserError

DEFAULT_MAX_GB = 8.0
ENV_MAX_GB = "SPARSITY_SNAPSHOT_MAX_GB"
ENV_DIR = "SPARSITY_SNAPSHOT_DIR"


def snapshot_budget_bytes(max_gb: float | None = None) -> int:
    """The in-memory budget in bytes: `max_gb` if given, else $SPARSITY_SNAPSHOT_MAX_GB, else 8 GB."""
    if max_gb is None:
        text = os.environ.get(ENV_MAX_GB, "").strip()
        try:
            max_gb = float(text) if text else DEFAULT_MAX_GB
        except ValueError:
            raise UserError(f"{ENV_MAX_GB}={text[:40]!r} is not a number of gigabytes") from None
    if not np.isfinite(max_gb) or max_gb < 0:
        raise UserError(f"the snapshot budget must be a number of gigabytes >= 0, got {max_gb!r}")
    return int(max_gb * (1 << 30))


class DenseWeights:
    """A copy of a model's parameters; `restore()` puts them back in place, exactly."""

    def __init__(self, model: nn.Module, max_bytes: int):
        self._copies: dict[str, torch.Tensor] = {}
        self._file: Path | None = None
        self._offsets: dict[str, int] = {}
        self.params = dict(model.named_parameters())  # tied weights once
        meta = [n for n, p in self.params.items() if p.device.type == "meta"]
        if meta:
            raise UserError(f"{len(meta)} weight matrices (e.g. {meta[0]}) are offloaded by accelerate and not in "
                            "memory; they cannot be pruned in place. Use --device offload (weights in CPU memory, "
                            "layers computed on the GPU one at a time) instead of a device map that offloads")
        self.nbytes = sum(p.numel() * p.element_size() for p in self.params.values())
        self.in_memory = self.nbytes <= max_bytes
        if self.in_memory:
            self._copies = {n: p.detach().to("cpu", copy=True) for n, p in self.params.items()}
        else:
            self._write_file()

    def _write_file(self) -> None:
        folder = Path(os.environ.get(ENV_DIR) or tempfile.gettempdir())
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, path = tempfile.mkstemp(prefix="dense-weights-", suffix=".bin", dir=folder)
        except OSError as e:
            raise UserError(f"cannot keep the dense weights in {folder} ({e.strerror or e}); set {ENV_DIR} "
                            "to a writable folder") from e
        self._file = Path(path)
        need = self.nbytes
        free = shutil.disk_usage(folder).free
        try:
            with os.fdopen(fd, "wb") as f:
                if free < need:
                    raise OSError(errno.ENOSPC, "not enough free space")
                offset = 0
                for name, p in self.params.items():  # one tensor at a time: RAM never holds the whole copy
                    data = p.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()  # 0-d too
                    f.write(memoryview(data))
                    self._offsets[name] = offset
                    offset += data.nbytes
        except OSError as e:
            self.close()
            raise UserError(f"cannot keep the dense weights ({need / 2**30:.2f} GiB) in {folder}: "
                            f"{e.strerror or e} ({free / 2**30:.2f} GiB free). Free space, point {ENV_DIR} elsewhere, "
                            "or raise --snapshot_max_gb / SPARSITY_SNAPSHOT_MAX_GB to keep them in memory") from e

    def _stored(self, name: str, p: torch.Tensor) -> torch.Tensor:
        if self.in_memory:
            return self._copies[name]
        nbytes = p.numel() * p.element_size()
        raw = np.memmap(self._file, dtype=np.uint8, mode="c", offset=self._offsets[name], shape=(nbytes,))
        return torch.from_numpy(raw).view(p.dtype).view(p.shape)

    @torch.no_grad()
    def restore(self) -> None:
        for name, p in self.params.items():
            p.copy_(self._stored(name, p).to(p.device))

    def close(self) -> None:
        self._copies = {}
        if self._file is not None:
            try:
                self._file.unlink()
            except OSError:
                pass
            self._file = None

    def __del__(self):
        self.close()
