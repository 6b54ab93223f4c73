"""The run store: every run (CLI or dashboard) as one JSON record in a folder, written atomically.

A record is written when the run starts (status "running", with the owner's pid), again as layers finish, and at
the end (completed / cancelled / failed). A process killed mid-run leaves its last "running" record behind;
`list()` reports it as "killed" once its owner process is gone, with the layers it had done.
File names are the generated run ids, never user text. Every reader goes through `record_problem`: a file of the
wrong shape is skipped (and logged), never fatal. A store with a `StoreBudget` (a public server's) keeps records of
failed requests for a while only and its size and count bounded, dropping the oldest first.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from engine.io.record import RUN_ID, read_json, record_problem, write_json_atomic

log = logging.getLogger("store")


@dataclass(frozen=True)
class StoreBudget:
    """Bounds on a store strangers can write to (one record per request they send)."""
    max_records: int = 1000
    max_bytes: int = 256 << 20
    max_failed: int = 50           # records of failed requests kept at most ...
    failed_ttl_s: float = 86400.0  # ... and for at most a day


def default_store_dir() -> Path:
    env = os.environ.get("SPARSITY_RUNS")
    return Path(env).expanduser() if env else Path.home() / ".cache/sparsity-explorer/runs"


class RunStore:
    def __init__(self, directory: str | os.PathLike | None = None, min_interval_s: float = 2.0,
                 budget: StoreBudget | None = None):
        self.directory = Path(directory) if directory is not None else default_store_dir()
        self.min_interval_s = min_interval_s
        self.budget = budget
        self._last_write: dict[str, float] = {}
        self._statuses: dict[str, tuple[tuple, str | None]] = {}  # run id -> (mtime, size), status

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
        first = run_id not in self._last_write
        record.setdefault("owner", {"pid": os.getpid(), "host": socket.gethostname()})
        try:
            write_json_atomic(str(self.path(run_id)), record)
        except OSError:
            return False
        self._last_write[run_id] = now
        if self.budget is not None and (first or record.get("status") == "failed"):
            self.enforce_budget(keep=run_id)
        return True

    def save_final(self, record: dict) -> str | None:
        """Write a run's last record. When it cannot be written whole, write it without the per-matrix data (a near
        full disk may still take that); None when it was written, else what the store will show instead."""
        try:
            if self.save(record):
                return None
            short = dict(record, matrices=[],
                         message=((record.get("message") or "") + " (per-matrix data could not be stored)").strip())
            if self.save(short):
                return "the run store is nearly full: this run's record was stored without its per-matrix data"
            return (f"the run store ({self.directory}) could not be written: Past runs will show this run as killed, "
                    f"with the progress it last stored")
        finally:
            self._last_write.pop(record["run_id"], None)  # a finished run is never throttled again

    def load(self, run_id: str) -> dict:
        """The record of `run_id` (ValueError when the file is not a run record)."""
        record = read_json(str(self.path(run_id)))
        problem = record_problem(record)
        if problem:
            raise ValueError(f"{run_id}.json is not a run record: {problem}")
        return _with_liveness(record)

    def list(self) -> list[dict]:
        """Every readable record, newest first (unreadable or misshapen files are skipped and logged, never fatal)."""
        records = []
        if not self.directory.is_dir():
            return records
        for p in self.directory.glob("*.json"):
            if not RUN_ID.fullmatch(p.stem):
                continue
            try:
                records.append(self.load(p.stem))
            except (OSError, ValueError) as err:
                log.warning("run store: skipping %s: %s", p.name, str(err)[:200])
                continue
        return sorted(records, key=lambda r: r["run_id"], reverse=True)

    def enforce_budget(self, keep: str | None = None) -> list[str]:
        """Delete records beyond the budget: failed ones past their time or count first, then the oldest finished
        ones while the store holds too many or too much. Never `keep` nor a running one. Returns the ids removed."""
        budget = self.budget
        entries = []  # (run_id, mtime, size, status)
        for entry in os.scandir(self.directory):
            run_id = entry.name.removesuffix(".json")
            if not (entry.name.endswith(".json") and RUN_ID.fullmatch(run_id)):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue
            entries.append((run_id, st.st_mtime, st.st_size, self._status(run_id, st)))
        entries.sort()  # oldest first: run ids begin with their start time
        now, removed = time.time(), []
        failed = [e for e in entries if e[3] in ("failed", None)]  # None: not a run record at all
        for e in failed[:max(0, len(failed) - budget.max_failed)] + \
                [e for e in failed if now - e[1] > budget.failed_ttl_s]:
            if e[0] != keep and e[0] not in removed:
                removed.append(e[0])
        left = [e for e in entries if e[0] not in removed]
        count, size = len(left), sum(e[2] for e in left)
        for e in left:
            if count <= budget.max_records and size <= budget.max_bytes:
                break
            if e[0] == keep or e[3] == "running":
                continue
            removed.append(e[0])
            count, size = count - 1, size - e[2]
        for run_id in removed:
            try:
                self.path(run_id).unlink()
            except OSError:
                pass
            self._statuses.pop(run_id, None)
        return removed

    def _status(self, run_id: str, st) -> str | None:
        """A record's status, read once per file version (None: not a run record)."""
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._statuses.get(run_id)
        if cached is None or cached[0] != stamp:
            try:
                record = read_json(str(self.path(run_id)))
                status = None if record_problem(record) else record["status"]
            except (OSError, ValueError):
                status = None
            cached = self._statuses[run_id] = (stamp, status)
        return cached[1]


def _with_liveness(record: dict) -> dict:
    if record.get("status") == "running" and not _owner_alive(record.get("owner") or {}):
        during = " while saving the model" if record.get("stage") == "save" else ""
        record = dict(record, status="killed",
                      message=f"the process running it ended{during} before it finished; "
                              f"{record.get('layers_done', 0)} of {record.get('n_layers') or '?'} layers were done")
    return record


def _owner_alive(owner: dict) -> bool:
    if owner.get("host") not in (None, socket.gethostname()):
        return True  # another machine's run: cannot tell, assume alive
    pid = owner.get("pid")
    return isinstance(pid, int) and process_alive(pid)


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this machine still runs (a process of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
