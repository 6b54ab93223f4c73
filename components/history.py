"""Past runs: the run store (engine/io/run_store.py) read as a list the page can show, and one stored run opened again.

A record can be large (a tier map and block importances per matrix), so the list keeps a short summary per file
and reads a file again only when it changed; the whole record is read when a run is opened. Run ids are the file
names and are checked by the store, so nothing a client sends ever becomes a path.
"""
from __future__ import annotations

import logging
import os
import threading

from engine.errors import UserError
from engine.io.record import read_json
from engine.io.run_store import RUN_ID, RunStore, record_problem
from engine.spec import spec_label

from . import policy
from .tables import recovered_ppl, total_seconds

log = logging.getLogger("dashboard")


class History:
    def __init__(self, store: RunStore, public: bool = False, limit: int = 200):
        self.store, self.public, self.limit = store, public, limit
        self._cache: dict[str, tuple[tuple, dict | None]] = {}  # run id -> (mtime, size), summary (None: not shown)
        self._lock = threading.Lock()  # pages refresh the list from several threads at once

    def summaries(self) -> list[dict]:
        """The newest `limit` runs, newest first; a run whose process died reads as "killed"."""
        with self._lock:
            return self._summaries()

    def _summaries(self) -> list[dict]:
        stamps = {}
        if self.store.directory.is_dir():
            for entry in os.scandir(self.store.directory):
                run_id = entry.name.removesuffix(".json")
                if entry.name.endswith(".json") and RUN_ID.fullmatch(run_id):
                    try:
                        st = entry.stat()
                    except OSError:  # removed meanwhile
                        continue
                    stamps[run_id] = (st.st_mtime_ns, st.st_size)
        for gone in set(self._cache) - set(stamps):
            del self._cache[gone]
        out = []
        for run_id in sorted(stamps, reverse=True)[:self.limit]:
            cached = self._cache.get(run_id)
            if cached is None or cached[0] != stamps[run_id]:
                try:
                    record = read_json(str(self.store.path(run_id)))
                except (OSError, ValueError):  # half-written by a foreign tool, or corrupt: skip, never fail
                    continue
                problem = record_problem(record)
                if problem:  # valid JSON of the wrong shape: skipped (logged once per version of the file)
                    log.warning("Past runs: skipping %s.json: %s", run_id, problem)
                cached = self._cache[run_id] = (stamps[run_id], None if problem else self._summary(record))
            summary = cached[1]
            if summary is None:
                continue
            if summary["status"] == "running":  # its process may have died since it last wrote
                try:
                    live = self.store.load(run_id)
                except (OSError, ValueError):
                    continue
                summary = dict(summary, status=live["status"], message=live.get("message"))
            out.append(summary)
        return out

    def _summary(self, record: dict) -> dict | None:
        if self.public and not policy.shareable(record):
            return None
        ppl = record.get("ppl") or {}
        run_id = str(record.get("run_id"))
        return {"run_id": run_id, "started": f"{run_id[:4]}-{run_id[4:6]}-{run_id[6:8]} {run_id[9:11]}:{run_id[11:13]}",
                "status": record.get("status"), "message": record.get("message"),
                "model": (record.get("model") or {}).get("name") or "embedded", "spec": spec_label(record.get("spec")),
                "sparsity": record.get("sparsity"), "ppl": ppl.get("pruned"), "ppl_dense": ppl.get("dense"),
                "ppl_recovered": recovered_ppl(record),
                "layers": f"{record.get('layers_done', 0)}/{record.get('n_layers') or '?'}",
                "seconds": total_seconds(record)}

    def choices(self, summaries: list[dict]) -> list[tuple[str, str]]:
        return [(f"{s['started']} · {s['spec']} · {s['model']} · {s['status']}", s["run_id"]) for s in summaries]

    def open(self, run_id) -> dict:
        """The whole stored record of `run_id` (a public page gets only shareable runs, without the owner)."""
        try:
            record = self.store.load(str(run_id))
        except (ValueError, OSError):
            raise UserError(f"no stored run {str(run_id)[:40]!r}; refresh the list of past runs") from None
        if self.public:
            if not policy.shareable(record):
                raise UserError(f"no stored run {str(run_id)[:40]!r}; refresh the list of past runs")
            record = policy.redact(record)
        return record
