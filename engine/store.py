"""The run store: every run (CLI or dashboard) as one JSON record in a folder, written atomically.

A record is written when the run starts (status "running", with the owner's pid), again as layers finish, and at
the end (completed / cancelled / failed). A process killed mid-run leaves its last "running" record behind;
`list()` reports it as "killed" once its owner process is gone, with the layers it had done.
File names are the generated run ids, never user text.
"""
from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

from .record import read_json, write_json_atomic

RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")


def default_store_dir() -> Path:
    env = os.environ.get("SPARSITY_RUNS")
    return Path(env).expanduser() if env else Path.home() / ".cache/sparsity-explorer/runs"


class RunStore:
    def __init__(self, directory: str | os.PathLike | None = None, min_interval_s: float = 2.0):
        self.directory = Path(directory) if directory is not None else default_store_dir()
        self.min_interval_s = min_interval_s
        self._last_write: dict[str, float] = {}

    def path(self, run_id: str) -> Path:
        if not RUN_ID.fullmatch(str(run_id)):
            raise ValueError(f"not a run id: {run_id!r}")
        return self.directory / f"{run_id}.json"

    def save(self, record: dict, force: bool = True) -> bool:
        """Write the record; with force=False at most once per min_interval_s per run (progress updates).
        Returns False when the store cannot be written (a full or read-only disk never stops a run)."""
        run_id = record["run_id"]
        now = time.monotonic()
        if not force and now - self._last_write.get(run_id, 0.0) < self.min_interval_s:
            return True
        record.setdefault("owner", {"pid": os.getpid(), "host": socket.gethostname()})
        try:
            write_json_atomic(str(self.path(run_id)), record)
        except OSError:
            return False
        self._last_write[run_id] = now
        return True

    def load(self, run_id: str) -> dict:
        return _with_liveness(read_json(str(self.path(run_id))))

    def list(self) -> list[dict]:
        """Every readable record, newest first (unreadable files are skipped, never fatal)."""
        records = []
        if not self.directory.is_dir():
            return records
        for p in self.directory.glob("*.json"):
            if not RUN_ID.fullmatch(p.stem):
                continue
            try:
                records.append(_with_liveness(read_json(str(p))))
            except (OSError, ValueError):
                continue
        return sorted(records, key=lambda r: r.get("run_id", ""), reverse=True)


def _with_liveness(record: dict) -> dict:
    if record.get("status") == "running" and not _owner_alive(record.get("owner") or {}):
        record = dict(record, status="killed",
                      message=f"the process running it ended before it finished; {record.get('layers_done', 0)} "
                              f"of {record.get('n_layers') or '?'} layers were done")
    return record


def _owner_alive(owner: dict) -> bool:
    if owner.get("host") not in (None, socket.gethostname()):
        return True  # another machine's run: cannot tell, assume alive
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
