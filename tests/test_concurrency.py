"""Several users of one dashboard: sessions queue for the one engine and keep their own runs; a tab's repeated
clicks start one job; Stop followed at once by Run starts the next run.

The engine is held by a blocking job of the test's own (the server runs in this process and shares the engine's
queue), so "the second waits" never depends on how fast this machine prunes.
"""
from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager

import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client.exceptions import AppError  # noqa: E402

from app import Settings  # noqa: E402
from components.jobs import ENGINE, EngineQueue, Job  # noqa: E402
from engine.errors import UserError  # noqa: E402
from tests.test_app import DEEP_RUN, client, out, serving, wait_for_layer  # noqa: E402

pytestmark = [pytest.mark.slow,  # end to end through the served dashboard
              pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")]  # raised inside gradio's queue
QUICK = dict(method="magnitude", pattern="unstructured", seqlen=32, eval_source="none")


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def served(runs_dir):
    with serving(Settings(runs_dir=str(runs_dir))) as pair:
        yield pair


@contextmanager
def engine_held():
    """Occupy the engine until the block ends, as a long run of another user would."""
    release = threading.Event()
    job = Job(lambda progress, cancel: release.wait(60), name="test-blocker").start()
    while not job.started_work:
        time.sleep(0.01)
    try:
        yield
    finally:
        release.set()
        job.done.wait(10)


def wait_for_progress(job, text: str, timeout: float = 30) -> str:
    """Until the job's progress bar (second output) contains `text`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for o in job.outputs():
            if o and o[1] and text in o[1]:
                return o[1]
        time.sleep(0.05)
    pytest.fail(f"the progress bar never said {text!r}: {[o[1] for o in job.outputs() if o][-3:]}")


def stored(runs_dir) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))]


def test_two_sessions_at_once_queue_and_each_gets_its_own_run(served, tiny_llama_dir, runs_dir):
    dash, url = served
    before = len(stored(runs_dir))
    first, second = client(url), client(url)  # two browser tabs
    with engine_held():
        job1 = first.submit(model_path=str(tiny_llama_dir), sparsity=0.3, **QUICK, api_name="/run")
        wait_for_progress(job1, "1 run ahead")
        job2 = second.submit(model_path=str(tiny_llama_dir), sparsity=0.7, **QUICK, api_name="/run")
        wait_for_progress(job2, "2 runs ahead")  # each sees its place in the queue
        client(url).predict(api_name="/stop")  # a third tab's Stop touches neither
    for job, target in ((job1, 0.3), (job2, 0.7)):
        result = job.result(timeout=60)
        assert "Done" in out(dash, result, dash.status)
        rows = out(dash, result, dash.compare.runs_df)["data"]
        assert len(rows) == 1, rows  # its own runs only
        assert float(rows[0][5].rstrip("%")) / 100 == pytest.approx(target, abs=0.01)
    records = stored(runs_dir)[before:]
    assert sorted(round(r["sparsity"], 2) for r in records) == [0.3, 0.7]
    assert all(r["status"] == "completed" for r in records)


def test_repeated_clicks_of_one_tab_start_one_job(served, tiny_llama_dir, runs_dir):
    dash, url = served
    before = len(stored(runs_dir))
    c = client(url)
    with engine_held():
        jobs = [c.submit(model_path=str(tiny_llama_dir), sparsity=0.5, **QUICK, api_name="/run") for _ in range(4)]
        deadline = time.monotonic() + 20
        while sum(job.done() for job in jobs) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # room for a fourth to end too, if two had been started
        kept = [job for job in jobs if not job.done()]
        assert len(kept) == 1, [job.status() for job in jobs]  # the one job, waiting for the held engine
    for job in jobs:
        if job is not kept[0]:
            with pytest.raises(AppError, match="already has a run"):
                job.result()
    result = kept[0].result(timeout=60)
    assert len(out(dash, result, dash.compare.runs_df)["data"]) == 1
    assert len(stored(runs_dir)) == before + 1


def test_stop_then_run_at_once_starts_the_next_run(served, tiny_llama_dir, deep_llama_dir, slow_layers):
    dash, url = served
    c = client(url)
    long_run = c.submit(model_path=str(deep_llama_dir), **DEEP_RUN, api_name="/run")
    wait_for_layer(long_run)
    c.predict(api_name="/stop")
    next_run = c.submit(model_path=str(tiny_llama_dir), sparsity=0.4, **QUICK, api_name="/run")  # no waiting
    assert "Stopped" in out(dash, long_run.result(timeout=60), dash.status)
    result = next_run.result(timeout=60)
    assert "Done" in out(dash, result, dash.status)
    assert [row[1] for row in out(dash, result, dash.compare.runs_df)["data"]] == ["cancelled", "completed"]


def test_stop_while_waiting_leaves_the_queue(served, tiny_llama_dir, runs_dir):
    dash, url = served
    before = len(stored(runs_dir))
    c = client(url)
    with engine_held():
        job = c.submit(model_path=str(tiny_llama_dir), **QUICK, api_name="/run")
        wait_for_progress(job, "1 run ahead")
        c.predict(api_name="/stop")
        result = job.result(timeout=10)  # at once, while the engine is still held
    assert "Stopped before it started" in out(dash, result, dash.status)
    assert len(stored(runs_dir)) == before  # it never ran


def test_the_engine_queue_is_first_come_first_served_and_bounded():
    queue = EngineQueue()
    jobs = [Job(lambda progress, cancel: None) for _ in range(3)]
    queue.join(jobs[0], max_waiting=1)
    queue.join(jobs[1], max_waiting=1)
    with pytest.raises(UserError, match="queue is full"):
        queue.join(jobs[2], max_waiting=1)
    assert [queue.ahead(j) for j in jobs[:2]] == [0, 1]
    jobs[1].stop()
    assert queue.wait_turn(jobs[1]) is False and queue.ahead(jobs[1]) == 0  # stopped while waiting: out of line
    queue.leave(jobs[0])
    queue.join(jobs[2], max_waiting=1)
    assert queue.wait_turn(jobs[2]) is True
    assert ENGINE is not queue  # the process's queue was never touched



@pytest.fixture(scope="module")
def served_behind_proxy(runs_dir):
    """A server behind a proxy (visitors are the last X-Forwarded-For entry), one job per visitor in the line."""
    with serving(Settings(runs_dir=str(runs_dir), behind_proxy=True, per_visitor=1)) as pair:
        yield pair


def tab_of(url, address: str):
    """A browser tab of the visitor at `address` (as the proxy in front of the server reports it)."""
    return gradio_client.Client(url, verbose=False, headers={"X-Forwarded-For": f"10.0.0.1, {address}"})


def test_one_visitors_tabs_share_one_turn_and_others_still_get_theirs(served_behind_proxy, tiny_llama_dir):
    dash, url = served_behind_proxy
    stranger, stranger_again, neighbour = (tab_of(url, "203.0.113.9"), tab_of(url, "203.0.113.9"),
                                           tab_of(url, "198.51.100.1"))
    with engine_held():
        first = stranger.submit(model_path=str(tiny_llama_dir), sparsity=0.3, **QUICK, api_name="/run")
        wait_for_progress(first, "1 run ahead")
        second = stranger_again.submit(model_path=str(tiny_llama_dir), sparsity=0.4, **QUICK, api_name="/run")
        with pytest.raises(AppError, match="you already have 1 job waiting or running"):
            second.result(timeout=30)  # the stranger's second tab is the same visitor: refused in one line
        theirs = neighbour.submit(model_path=str(tiny_llama_dir), sparsity=0.5, **QUICK, api_name="/run")
        # another visitor queues, and ahead of the stranger's first run: the refused second tab cost the stranger
        # EngineQueue.REFUSAL_CHARGE_S of engine time, the neighbour has none
        wait_for_progress(theirs, "1 run ahead")
    for job in (first, theirs):
        assert "Done" in out(dash, job.result(timeout=60), dash.status)
