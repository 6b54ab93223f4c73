"""The engine's line shared fairly among visitors (components/jobs.py EngineQueue), on a hand-set clock."""
from __future__ import annotations

import math
import threading
import time
from types import SimpleNamespace

import pytest

from components.jobs import EngineQueue, Job
from components.policy import visitor_of
from engine.errors import UserError


class Clock:
    """A hand-set clock for the queue's engine-time accounting."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def turn(queue: EngineQueue, clock: Clock, seconds: float = 1.0) -> "Job":
    """Give the next turn, hold the engine `seconds`, and return whose turn it was."""
    job = queue._order()[0]
    assert queue.wait_turn(job) is True
    clock.now += seconds
    queue.leave(job)
    return job


def test_the_engine_queue_gives_a_visitors_second_job_its_turn_after_everyone_elses_first():
    clock = Clock()
    queue = EngineQueue(clock=clock)
    many = [Job(lambda p, c: None, visitor="203.0.113.9") for _ in range(3)]  # one stranger's three tabs
    one, two = Job(lambda p, c: None, visitor="198.51.100.1"), Job(lambda p, c: None, visitor="198.51.100.2")
    for job in [*many, one, two]:  # the stranger came first
        queue.join(job)
    assert [queue.ahead(j) for j in [*many, one, two]] == [0, 3, 4, 1, 2]
    order = [turn(queue, clock) for _ in range(5)]
    assert order == [many[0], one, two, many[1], many[2]]


def test_the_engine_queue_serves_the_visitor_with_the_least_engine_time_lately_first():
    clock = Clock()
    queue = EngineQueue(half_life=60.0, clock=clock)
    heavy, light = "203.0.113.9", "198.51.100.1"
    queue.join(Job(lambda p, c: None, visitor=heavy))
    turn(queue, clock, 30.0)                  # the heavy visitor held the engine 30 s
    queue.join(Job(lambda p, c: None, visitor=light))
    turn(queue, clock, 2.0)                   # the light one 2 s
    assert queue.used(heavy) == pytest.approx(30.0 * 0.5 ** (2 / 60))
    assert queue.used(light) == pytest.approx(2.0)
    first = Job(lambda p, c: None, visitor=heavy)  # both waiting again, the heavy one first in time
    then = Job(lambda p, c: None, visitor=light)
    queue.join(first)
    queue.join(then)
    assert turn(queue, clock) is then        # the least time lately goes first
    assert turn(queue, clock) is first
    clock.now += 600                           # ten minutes idle: the heavy visitor's 30 s weigh 2^-10 of them
    assert queue.used(heavy) == pytest.approx((30.0 * 0.5 ** (4 / 60) + 1.0) * 0.5 ** (600 / 60))
    assert queue.used("never seen") == 0.0


def test_a_job_without_a_visitor_queues_first_come_first_served_as_before():
    clock = Clock()
    queue = EngineQueue(clock=clock)
    jobs = [Job(lambda p, c: None) for _ in range(4)]
    for job in jobs:
        queue.join(job)
    assert [turn(queue, clock, s) for s in (5.0, 1.0, 3.0, 1.0)] == jobs
    assert queue._used == {}                    # nothing remembered of visitors that never come back


def test_one_visitors_jobs_in_the_line_are_capped_and_the_refusal_is_one_line():
    queue = EngineQueue()
    mine = [Job(lambda p, c: None, visitor="203.0.113.9") for _ in range(3)]
    queue.join(mine[0], max_waiting=8, per_visitor=2)
    queue.join(mine[1], max_waiting=8, per_visitor=2)
    with pytest.raises(UserError, match="you already have 2 jobs waiting or running"):
        queue.join(mine[2], max_waiting=8, per_visitor=2)
    queue.join(Job(lambda p, c: None, visitor="198.51.100.1"), max_waiting=8, per_visitor=2)  # others still can
    queue.join(Job(lambda p, c: None), max_waiting=8, per_visitor=2)  # and so can a job without a visitor
    queue.leave(mine[0])
    queue.join(mine[2], max_waiting=8, per_visitor=2)  # one ended: room again


def test_a_visitors_stopped_jobs_do_not_count_against_the_cap_while_they_end():
    """Dragging a slider in Explore stops the last split's estimate and starts the next one: the stopped job may
    still hold the engine for a step, or wait to notice its Stop, but it never starts work again."""
    queue = EngineQueue()
    running, waiting, third = (Job(lambda p, c: None, visitor="198.51.100.1") for _ in range(3))
    queue.join(running, per_visitor=2)
    assert queue.wait_turn(running) is True
    queue.join(waiting, per_visitor=2)
    running.stop()  # superseded while it holds the engine (it ends at its next window)
    waiting.stop()  # superseded before its turn (it leaves the line when it wakes)
    queue.join(third, per_visitor=2)
    fourth = Job(lambda p, c: None, visitor="198.51.100.1")
    queue.join(fourth, per_visitor=2)  # the two live ones: the cap again
    with pytest.raises(UserError, match="you already have 2 jobs"):
        queue.join(Job(lambda p, c: None, visitor="198.51.100.1"), per_visitor=2)


def test_a_new_job_never_takes_the_turn_of_the_running_one():
    clock = Clock()
    queue = EngineQueue(clock=clock)
    heavy = Job(lambda p, c: None, visitor="203.0.113.9")
    queue.join(heavy)
    assert queue.wait_turn(heavy) is True
    newcomer = Job(lambda p, c: None, visitor="198.51.100.1")
    queue.join(newcomer)
    assert queue.ahead(heavy) == 0 and queue.ahead(newcomer) == 1
    stopped = threading.Event()

    def wait():
        stopped.set() if queue.wait_turn(newcomer) else None
    waiter = threading.Thread(target=wait)
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive()                   # it waits while the running job holds the engine
    queue.leave(heavy)
    waiter.join(5)
    assert not waiter.is_alive() and stopped.is_set()


def test_the_visitor_is_the_clients_address_or_behind_a_proxy_the_entry_the_proxy_appended():
    request = SimpleNamespace(client=SimpleNamespace(host="10.0.0.7"),
                              headers={"x-forwarded-for": "1.2.3.4, 203.0.113.9"})  # 1.2.3.4: what the client claimed
    assert visitor_of(request, behind_proxy=False) == "10.0.0.7"
    assert visitor_of(request, behind_proxy=True) == "203.0.113.9"
    bare = SimpleNamespace(client=SimpleNamespace(host="10.0.0.7"), headers={})
    assert visitor_of(bare, behind_proxy=True) == "10.0.0.7"  # no header: the peer
    assert visitor_of(SimpleNamespace(client=None, headers={"x-forwarded-for": "x" * 10_000}), True) == "x" * 64
    assert visitor_of(None, behind_proxy=True) is None


def test_a_public_server_caps_a_visitors_jobs_and_a_space_reads_its_proxys_header():
    from components.server import Settings
    assert Settings(public=True).per_visitor == 2 and Settings().per_visitor is None
    assert Settings.from_env({"SPACE_ID": "me/space"}).behind_proxy is True
    assert Settings.from_env({"SPARSITY_BEHIND_PROXY": "1"}).behind_proxy is True
    assert Settings.from_env({"SPACE_ID": "me/space", "SPARSITY_BEHIND_PROXY": "off"}).behind_proxy is False
    assert Settings.from_env({}).behind_proxy is False
    with pytest.raises(UserError, match="SPARSITY_BEHIND_PROXY='maybe' is not a switch"):
        Settings.from_env({"SPARSITY_BEHIND_PROXY": "maybe"})


def held(queue: EngineQueue, clock: Clock, visitor: str, seconds: float) -> None:
    """`visitor` holds the engine `seconds` now."""
    job = Job(lambda p, c: None, visitor=visitor)
    queue.join(job)
    assert queue.wait_turn(job) is True
    clock.now += seconds
    queue.leave(job)


def test_a_visitor_over_its_quota_yields_while_others_use_the_engine_and_not_when_it_is_alone():
    clock = Clock()
    queue = EngineQueue(half_life=60.0, clock=clock, recent_s=10.0)
    held(queue, clock, "203.0.113.9", 60.0)            # the heavy visitor: 60 s lately, its quota 30
    held(queue, clock, "198.51.100.1", 2.0)            # a light one had the engine just now
    heavy = Job(lambda p, c: None, visitor="203.0.113.9")
    queue.join(heavy, quota=30.0)
    # 60 s decayed over the light job's 2 s: 60 * 2^(-2/60); it is back under 30 after log2(that / 30) half-lives
    used = 60.0 * 0.5 ** (2.0 / 60.0)
    assert queue.yields(heavy) == pytest.approx(60.0 * math.log2(used / 30.0))
    light = Job(lambda p, c: None, visitor="198.51.100.2")
    queue.join(light, quota=30.0)                      # came later, goes first
    assert queue.ahead(light) == 0 and queue.ahead(heavy) == 1
    assert turn(queue, clock, 1.0) is light
    clock.now += 9.5                                   # the light visitors' turns are 10.5 s and 9.5 s old
    assert queue.yields(heavy) > 0                     # the second light one's turn is recent still
    clock.now += 0.5                                   # nobody else for 10 s: the engine is the heavy one's
    assert queue.yields(heavy) == 0.0 and queue.wait_turn(heavy) is True
    queue.leave(heavy)


def test_an_over_quota_visitor_is_served_once_its_time_decays_and_never_without_a_quota():
    clock = Clock()
    queue = EngineQueue(half_life=60.0, clock=clock, recent_s=1e9)  # others always count as recent here
    held(queue, clock, "198.51.100.1", 1.0)
    held(queue, clock, "203.0.113.9", 120.0)
    capped, uncapped = Job(lambda p, c: None, visitor="203.0.113.9"), Job(lambda p, c: None, visitor="203.0.113.9")
    queue.join(capped, quota=30.0)
    queue.join(uncapped)                               # a local server's job: no quota
    assert queue.yields(uncapped) == 0.0 and queue.yields(capped) == pytest.approx(120.0)  # 120 -> 30: 2 half-lives
    assert queue.ahead(uncapped) == 0                  # the capped job goes last although it came first
    assert turn(queue, clock, 0.0) is uncapped
    clock.now += 119.0
    assert queue.yields(capped) > 0
    clock.now += 1.0
    assert queue.yields(capped) == 0.0 and turn(queue, clock, 0.0) is capped


def test_two_visitors_over_the_quota_never_yield_to_each_other():
    clock = Clock()
    queue = EngineQueue(half_life=60.0, clock=clock)
    held(queue, clock, "203.0.113.8", 100.0)           # 100 s, halved by the other's turn: 50, over 30
    held(queue, clock, "203.0.113.9", 100.0)
    first, second = Job(lambda p, c: None, visitor="203.0.113.8"), Job(lambda p, c: None, visitor="203.0.113.9")
    queue.join(first, quota=30.0)
    queue.join(second, quota=30.0)
    assert queue.yields(first) == 0.0 and queue.yields(second) == 0.0
    assert turn(queue, clock) is first                 # the least time lately (31.5 s against 100) first


def test_a_refused_visitor_is_charged_for_the_refusal():
    clock = Clock()
    queue = EngineQueue(half_life=60.0, clock=clock)
    mine = [Job(lambda p, c: None, visitor="203.0.113.9") for _ in range(3)]
    for job in mine[:2]:
        queue.join(job, per_visitor=2)
    for _ in range(3):
        with pytest.raises(UserError, match="you already have 2 jobs"):
            queue.join(mine[2], per_visitor=2)
    assert queue.used("203.0.113.9") == 3 * EngineQueue.REFUSAL_CHARGE_S
    queue.charge(None, 5.0)                            # a job without a visitor: nobody to charge
    assert queue.used(None) == 0.0


def test_a_job_the_engine_refuses_charges_its_visitor(monkeypatch):
    from components import jobs
    queue = EngineQueue(clock=Clock())                 # time stands still: the job held the engine 0 s
    monkeypatch.setattr(jobs, "ENGINE", queue)

    def refused(progress, cancel):
        raise UserError("block size 65536 is wider than this model's matrices")
    job = Job(refused, visitor="203.0.113.9").start()
    assert job.done.wait(10) and job.user_error
    assert queue.used("203.0.113.9") == EngineQueue.REFUSAL_CHARGE_S


def test_a_public_server_has_an_engine_quota_and_a_local_one_none():
    from components.server import Settings
    assert Settings(public=True).engine_quota_s == 30.0 and Settings().engine_quota_s is None


def test_a_job_that_hands_the_engine_to_a_waiting_one_leaves_the_heap_trim_to_the_last(monkeypatch):
    """The trim (gc + malloc_trim) holds the GIL for ~0.5 s on a busy server: run by a job that hands the engine
    straight to the next one, it delayed that job's start (a slider released during an estimate waited for it)."""
    from components import jobs
    trims, started = [], []
    monkeypatch.setattr(jobs, "release_memory", lambda: trims.append(list(started)))
    go = threading.Event()
    first = Job(lambda p, c: go.wait(10), visitor="198.51.100.1").start()
    second = Job(lambda p, c: started.append("second"), visitor="198.51.100.1")
    assert first.done.wait(0.2) is False
    second.start()
    go.set()
    assert first.done.wait(10) and second.done.wait(10)
    second._thread.join(10)
    assert trims == [["second"]]  # once, after the second job ran: none between the two


def test_a_watched_job_s_event_is_yielded_at_once_and_a_burst_once_per_interval():
    """The page's stream wakes on a job's event instead of its next poll (a re-plan's maps went out up to one
    interval late), and a burst of events (a walk's matrices) is still one list per interval."""
    go, end = threading.Event(), threading.Event()
    sent = {}

    def target(progress, cancel):
        time.sleep(2.5)  # a quiet interval after "starting"
        sent["first"] = time.monotonic()
        progress({"stage": "first"})
        go.wait(10)
        for i in range(50):
            progress({"stage": "burst", "i": i})
        end.wait(10)
    job = Job(target, visitor="198.51.100.7").start()
    watch = job.watch(interval=2.0, heartbeat=60.0)
    while not any(e["stage"] == "first" for e in next(watch)):
        pass
    assert time.monotonic() - sent["first"] < 0.75  # polled, it waited for the next 2 s tick: 1.5 s here
    go.set()
    t0 = time.monotonic()
    burst = next(watch)
    end.set()
    rest = [e for got in watch for e in got]
    assert time.monotonic() - t0 >= 1.5  # within an interval of the last list: gathered, not one list per event
    assert [e["i"] for e in burst + rest if e["stage"] == "burst"] == list(range(50))


def test_a_jobs_ahead_work_runs_while_the_job_before_it_holds_the_engine_and_is_charged():
    """A job's `ahead` (the work that never touches the model: a split re-planned from kept block choices) runs
    at once, while the job ahead of it still holds the engine; the target waits for the turn; the visitor is
    charged the ahead's seconds as engine time; a job stopped before its ahead ran skips it."""
    from components import jobs
    go = threading.Event()
    holder = Job(lambda p, c: go.wait(10), visitor="198.51.100.1").start()
    log = []

    def ahead(progress, cancel):
        time.sleep(0.3)
        log.append(("ahead", holder.running))
        progress({"stage": "planned"})
    job = Job(lambda p, c: log.append(("target", holder.running)), visitor="198.51.100.2", ahead=ahead).start()
    deadline = time.monotonic() + 10
    while not any(e.get("stage") == "planned" for e in job.events) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log == [("ahead", True)] and job.running  # planned before its turn, which has not come
    go.set()
    assert job.done.wait(10) and log == [("ahead", True), ("target", False)]
    assert jobs.ENGINE.used("198.51.100.2") >= 0.3 * 0.5 ** (10 / 60)  # the ahead's 0.3 s counts as engine time

    skipped = Job(lambda p, c: None, ahead=lambda p, c: log.append("skipped's ahead"))
    skipped.stop()
    skipped.start()
    assert skipped.done.wait(10) and "skipped's ahead" not in log and not skipped.started_work
