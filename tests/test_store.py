"""The run store: atomic records, killed runs recognised, a failed run recorded with what it had done."""
import json
import subprocess
import sys

import pytest

from engine.io.record import new_run_id
from engine.io.run_store import RunStore
from engine.run import ModelCache, RunRequest, run
from engine.spec import PruneSpec


def test_save_load_list_newest_first(tmp_path):
    store = RunStore(tmp_path)
    a = {"run_id": "20260101-000000-aaaaaaaa", "status": "completed"}
    b = {"run_id": "20260102-000000-bbbbbbbb", "status": "completed"}
    store.save(a)
    store.save(b)
    (tmp_path / "20260103-000000-cccccccc.json").write_text("{ not json")  # corrupt: skipped
    (tmp_path / "notes.json").write_text("{}")  # not a run id: ignored
    assert [r["run_id"] for r in store.list()] == [b["run_id"], a["run_id"]]
    assert store.load(a["run_id"])["status"] == "completed"
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("bad", ["../etc/passwd", "x.json", "", "20260101-000000-AAAAAAAA"])
def test_run_ids_are_never_paths(tmp_path, bad):
    with pytest.raises(ValueError):
        RunStore(tmp_path).path(bad)


def test_a_running_record_of_a_dead_process_reads_as_killed(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(proc.stdout)
    rid = new_run_id()
    (tmp_path / f"{rid}.json").write_text(json.dumps(
        {"run_id": rid, "status": "running", "layers_done": 3, "n_layers": 30, "owner": {"pid": dead_pid}}))
    rec = RunStore(tmp_path).load(rid)
    assert rec["status"] == "killed" and "3 of 30 layers" in rec["message"]
    mine = {"run_id": new_run_id(), "status": "running"}
    RunStore(tmp_path).save(mine)
    assert RunStore(tmp_path).load(mine["run_id"])["status"] == "running"  # our own process is alive


def test_runs_are_recorded_including_failures(tiny_llama_dir, tmp_path, monkeypatch):
    store = RunStore(tmp_path / "runs")
    models = ModelCache()
    ok = run(RunRequest(model=str(tiny_llama_dir), spec=PruneSpec(nsamples=2, seqlen=32), calib="pydoc", eval=None,
                        store=store), models=models)
    assert store.load(ok["run_id"])["status"] == "completed"
    assert len(store.load(ok["run_id"])["matrices"]) == 14

    import engine.walk.layer_walk as pruner
    real = pruner._prune_layer

    def exploding(index, *a, **kw):
        if index == 1:
            raise RuntimeError("injected fault")
        return real(index, *a, **kw)
    monkeypatch.setattr(pruner, "_prune_layer", exploding)
    store.min_interval_s = 0.0
    with pytest.raises(RuntimeError):
        run(RunRequest(model=str(tiny_llama_dir), spec=PruneSpec(nsamples=2, seqlen=32), calib="pydoc", eval=None,
                       store=store), models=models)
    failed = [r for r in store.list() if r["status"] == "failed"]
    assert len(failed) == 1 and "injected fault" in failed[0]["message"]
    assert failed[0]["layers_done"] == 1 and len(failed[0]["matrices"]) == 7  # what it had done is kept
