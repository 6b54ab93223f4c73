"""Run the engine in a background thread, one job at a time, turns shared fairly among visitors, and fold its
progress events into something a page can show.

The Gradio handler that starts a job stays a generator: it polls the job a few times a second and streams
what changed (its place in the queue, then its progress), so the page stays responsive and Stop (which only sets
`job.cancel`) is handled at once.
"""
from __future__ import annotations

import ctypes
import gc
import html
import logging
import math
import threading
import time
import traceback
from dataclasses import dataclass, field

from engine.errors import UserError
from engine.io.record import RunRecord

log = logging.getLogger("dashboard")


class EngineQueue:
    """Turns at the process's one engine (one model in memory, one run at a time), shared fairly among visitors.

    A job holds the engine from its turn until its target returns, including a job whose page went away and which
    is only finishing its current layer. The next turn goes to a visitor's first waiting job before anyone's second,
    and among those to the visitor who has had the least engine time lately (seconds used, halving every
    `half_life` seconds); first come, first served among equals and within a visitor's own jobs. A job without a
    visitor (a local server's, which knows none) counts as a visitor of its own, so a local server is first come,
    first served. A waiting job knows its place and leaves the line at once when stopped. `max_waiting` bounds the
    line and `per_visitor` one visitor's jobs in it (the running one included): beyond them a job is refused, not
    queued, and the refused visitor is charged `REFUSAL_CHARGE_S` engine seconds.

    `quota` (a public server's): a visitor whose engine time lately exceeds it yields. Its waiting jobs go after
    everyone else's and start only when no other visitor has a job in the line or had the engine in the last
    `recent_s` seconds, or once its time has decayed under the quota. A visitor alone on the server is never held
    back; one who keeps the engine busy (or keeps being refused) while others use it waits for its time to decay.
    """

    REFUSAL_CHARGE_S = 10.0  # engine seconds charged for a job refused at the door or by the engine

    def __init__(self, half_life: float = 60.0, clock=time.monotonic, recent_s: float = 10.0):
        self._line: list[Job] = []     # arrival order; the running job stays in it until it leaves
        self._running: Job | None = None
        self._began = 0.0              # when the running job's turn came
        self._used: dict[object, tuple[float, float]] = {}  # visitor -> (engine seconds, as of when)
        self._last_turn: dict[object, float] = {}            # visitor -> when it last had the engine
        self._quota: dict[Job, float] = {}                  # job -> its visitor's quota (public servers)
        self._half_life, self._clock, self._recent_s = half_life, clock, recent_s
        self._changed = threading.Condition()

    def join(self, job: "Job", max_waiting: int | None = None, per_visitor: int | None = None,
             quota: float | None = None) -> None:
        with self._changed:
            if max_waiting is not None and len(self._line) > max_waiting:
                self._charge(job.visitor, self.REFUSAL_CHARGE_S)
                raise UserError(f"the queue is full ({len(self._line) - 1} runs waiting); try again in a few minutes")
            if per_visitor is not None and job.visitor is not None:
                # a stopped job never starts, and one stopped while running ends at its next step: neither counts
                mine = sum(j.visitor == job.visitor and not j.cancel.is_set() for j in self._line)
                if mine >= per_visitor:
                    self._charge(job.visitor, self.REFUSAL_CHARGE_S)
                    raise UserError(f"you already have {mine} job{'s' if mine > 1 else ''} waiting or running on "
                                    "this server (its limit); wait for one to end or press Stop")
            self._line.append(job)
            if quota is not None and job.visitor is not None:
                self._quota[job] = quota

    def charge(self, visitor, seconds: float) -> None:
        """Count `seconds` of engine time against `visitor` (a refusal's cost; nothing for a job without one)."""
        with self._changed:
            self._charge(visitor, seconds)

    def _charge(self, visitor, seconds: float) -> None:
        if visitor is not None:
            now = self._clock()
            self._used[visitor] = (self._decayed(visitor, now) + seconds, now)

    def yields(self, job: "Job") -> float:
        """Seconds until `job`'s visitor is back under its quota while it yields to others (0: it does not)."""
        with self._changed:
            return self._yield_s(job, self._clock())

    def _yield_s(self, job: "Job", now: float) -> float:
        quota = self._quota.get(job)
        if quota is None:
            return 0.0
        used = self._decayed(job.visitor, now)
        if used <= quota:
            return 0.0
        # only visitors under the quota count: two over it never yield to each other
        light = lambda who: who != job.visitor and self._decayed(who, now) <= quota  # noqa: E731
        others_waiting = any(light(j.visitor if j.visitor is not None else id(j)) for j in self._line
                             if j is not self._running)
        others_recent = any(light(w) and now - t < self._recent_s for w, t in self._last_turn.items())
        if not (others_waiting or others_recent):
            return 0.0
        return self._half_life * math.log2(used / quota)

    def used(self, visitor) -> float:
        """Engine seconds `visitor` has had lately (decayed: each second's weight halves every half_life)."""
        with self._changed:
            return self._decayed(visitor, self._clock())

    def _decayed(self, visitor, now: float) -> float:
        seconds, at = self._used.get(visitor, (0.0, now))
        return seconds * 0.5 ** ((now - at) / self._half_life)

    def _order(self) -> list["Job"]:
        """The line in the order turns will be given: the running job, then the waiting ones."""
        now, rank, keys = self._clock(), {}, {}
        for arrival, job in enumerate(self._line):
            if job is self._running:
                continue
            who = job.visitor if job.visitor is not None else id(job)
            keys[job] = (self._yield_s(job, now) > 0, rank.get(who, 0), self._decayed(who, now), arrival)
            rank[who] = rank.get(who, 0) + 1
        waiting = sorted(keys, key=keys.get)
        return ([self._running] if self._running is not None else []) + waiting

    def ahead(self, job: "Job") -> int:
        """Jobs before `job` in the line (0: its turn)."""
        with self._changed:
            order = self._order()
            return order.index(job) if job in order else 0

    def wait_turn(self, job: "Job", on_wait=None) -> bool:
        """Block until it is `job`'s turn (True: it holds the engine until `leave`) or it was stopped while
        waiting (False, and out of the line)."""
        with self._changed:
            reported = None
            while True:
                if job.cancel.is_set():  # also when its turn came with the Stop: a stopped job never starts
                    self._line.remove(job)
                    self._quota.pop(job, None)
                    self._changed.notify_all()
                    return False
                order, now = self._order(), self._clock()
                held_back = self._yield_s(job, now)
                if self._running is None and order[0] is job and not held_back:
                    self._running, self._began = job, now
                    return True
                place = (order.index(job), round(held_back / 10) * 10)  # told again when it moves, or per 10 s
                if on_wait and reported != place:
                    reported = place
                    on_wait(*place)
                self._changed.wait(0.2)

    def leave(self, job: "Job") -> bool:
        """`job` is out of the line; if it held the engine, its visitor is charged the time it held it. True when
        other jobs are waiting (the engine goes straight to the next one)."""
        with self._changed:
            if job is self._running:
                now = self._clock()
                self._last_turn[job.visitor if job.visitor is not None else id(job)] = now
                if job.visitor is not None:  # a job that is a visitor of its own never comes back: nothing to keep
                    self._used[job.visitor] = (self._decayed(job.visitor, now) + now - self._began, now)
                self._forget_idle(now)
                self._running = None
            if job in self._line:
                self._line.remove(job)
            self._quota.pop(job, None)
            self._changed.notify_all()
            return bool(self._line)

    def _forget_idle(self, now: float) -> None:
        """Drop visitors whose time has decayed below a millisecond and turns older than `recent_s` (the tables
        stay as small as the recent visitors)."""
        for who in [w for w in self._used if self._decayed(w, now) < 1e-3]:
            del self._used[who]
        for who in [w for w, t in self._last_turn.items() if now - t >= self._recent_s]:
            del self._last_turn[who]


ENGINE = EngineQueue()  # one per process, like the model cache it guards
AHEAD = threading.Lock()  # a job's work before its turn (Job's ahead), one at a time


class Job:
    """One call of `target(progress, cancel)` on a worker thread, after its turn in ENGINE's line. `ahead(progress,
    cancel)`, when given, is the part of the work that needs no turn (it never touches the model): it runs first,
    on the same thread, while the job holds its place in the line and the job before it lets go of the engine;
    one job's at a time (AHEAD), so a burst of jobs each stopped by the next skips it, and its seconds are charged
    to the visitor as engine time.

    The engine calls `progress(event)` from the worker; the page reads `events` from the handler's thread.
    list.append and slicing are atomic under the GIL, so no lock is needed for that hand-over.
    """

    def __init__(self, target, name: str = "engine-job", visitor: str | None = None, ahead=None):
        self.visitor = visitor             # who asked for it (the engine's line shares turns by visitor)
        self.cancel = threading.Event()
        self.done = threading.Event()
        self.events: list[dict] = []
        self._news = threading.Event()     # set by progress and at the end: the watcher wakes at once
        self.result = None
        self.error: str | None = None      # one line for the page
        self.user_error = False            # the user can fix it (UserError), as opposed to a bug
        self.started_work = False          # False: stopped while it waited for its turn
        self.started = time.monotonic()
        self.stop_requested: float | None = None
        self._target, self._ahead = target, ahead
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self, max_waiting: int | None = None, per_visitor: int | None = None,
              quota: float | None = None) -> "Job":
        """Take a place in the engine's line (UserError when it, or this visitor's share of it, is full) and start
        the worker."""
        ENGINE.join(self, max_waiting, per_visitor, quota)
        self._thread.start()
        return self

    def progress(self, event: dict) -> None:
        self.events.append(event)
        self._news.set()

    def stop(self) -> None:
        if self.stop_requested is None:
            self.stop_requested = time.monotonic()
        self.cancel.set()

    @property
    def running(self) -> bool:
        return not self.done.is_set()

    @property
    def stopping(self) -> bool:
        return self.running and self.cancel.is_set()

    def _main(self):
        try:
            def waiting(ahead, held_back_s=0):
                message = f"{ahead} run{'s' if ahead > 1 else ''} ahead of this one in the queue"
                if held_back_s:
                    message = (f"this server's share of the engine for you is used up while others wait: starts "
                               f"within about {held_back_s:.0f} s, or sooner when the others are done")
                self.progress({"stage": "wait", "ahead": ahead, "message": message})
            if self._ahead is not None:
                with AHEAD:
                    if not self.cancel.is_set():
                        t0 = time.monotonic()
                        try:
                            self._ahead(self.progress, self.cancel)
                        finally:
                            ENGINE.charge(self.visitor, time.monotonic() - t0)
            if ENGINE.wait_turn(self, waiting):
                self.started_work = True
                self.progress({"stage": "queued", "message": "starting"})
                self.result = self._target(self.progress, self.cancel)
        except UserError as err:
            self.error, self.user_error = str(err), True
            ENGINE.charge(self.visitor, ENGINE.REFUSAL_CHARGE_S)
        except Exception as err:  # a bug: keep the page alive, put the traceback in the server log
            log.error("engine job failed\n%s", traceback.format_exc())
            self.error = f"Internal error ({type(err).__name__}: {err}). The server log has the traceback."
        finally:
            handed_over = ENGINE.leave(self)
            self.done.set()
            self._news.set()
            if not handed_over:  # the heap goes back when the engine idles; a trim (~0.5 s holding the GIL on a
                release_memory()  # busy server) would otherwise delay the next job's start by as much

    def watch(self, interval: float = 0.25, heartbeat: float = 1.0):
        """Yield lists of new events until the job ends (an empty list now and then, so clocks keep ticking). The
        first event after a quiet `interval` is yielded at once; a burst is gathered into one list per interval."""
        seen, last, sent = 0, time.monotonic(), -math.inf  # sent: when the last list of events went out
        while True:
            self._news.wait(interval)
            burst = interval - (time.monotonic() - sent)
            if self._news.is_set() and burst > 0 and not self.done.is_set():
                self.done.wait(burst)  # the previous list went out less than an interval ago
            self._news.clear()
            finished = self.done.is_set()
            new = self.events[seen:]
            seen += len(new)
            if new or finished or time.monotonic() - last >= heartbeat:
                last = time.monotonic()
                sent = last if new else sent
                yield new
            if finished:
                return


def release_memory() -> None:
    """Give the heap a run freed back to the system. glibc keeps freed pages of its per-thread arenas, and every job
    runs on a new thread, so a long-lived server's resident memory creeps up by the peaks it has seen otherwise."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


# -- progress shown on the page ---------------------------------------------------------------------------------

STAGE_TITLES = {"wait": "Queued", "load": "Loading model", "calibration": "Calibration data", "baseline": "Baselines",
                "prune": "Pruning", "eval": "Evaluating", "save": "Saving", "done": "Done", "cancelled": "Stopped",
                "failed": "Failed", "queued": "Starting", "zero_shot": "Zero-shot", "finetune": "Recovering"}


@dataclass
class Progress:
    """What the progress bar shows, folded from engine events."""
    stage: str = "queued"
    message: str = ""
    layer: int | None = None         # last decoder layer finished
    name: str | None = None          # its module path, e.g. "model.layers.11"
    n_layers: int | None = None
    eta_s: float | None = None
    elapsed_s: float | None = None
    eval_done: int | None = None
    eval_total: int | None = None
    eval_what: str | None = None
    sweep: tuple[int, int] | None = None
    record: RunRecord = field(default_factory=RunRecord.new)  # the run as far as it got: its matrices so far
    new_layers: int = 0              # layers finished since the page last drew the heatmap

    @property
    def matrices(self) -> list[dict]:
        return self.record["matrices"]

    def update(self, event: dict) -> None:
        stage = event.get("stage", self.stage)
        if "sweep" in event:
            self.sweep = tuple(event["sweep"])
        if stage == "sweep_point":
            return
        if stage != self.stage and stage != "prune":
            self.eval_done = self.eval_total = None
        self.stage = stage
        if event.get("message"):
            self.message = event["message"]
        if stage == "prune":
            self.layer, self.n_layers, self.name = event.get("layer"), event.get("n_layers"), event.get("name")
            self.eta_s, self.elapsed_s = event.get("eta_s"), event.get("elapsed_s")
            self.message = event.get("message") or ""
            if event.get("matrices"):
                self.record.add_layer(event)
                self.new_layers += 1
        if stage == "eval" and "total" in event:
            self.eval_done, self.eval_total, self.eval_what = event.get("done"), event.get("total"), event.get("what")
        if stage == "finetune" and "step" in event:  # the recovery fine-tune: steps as the bar, the last loss
            self.eval_done, self.eval_total = event["step"], event["total"]
            if "loss" in event:
                self.message = f"step {event['step']} / {event['total']} · train loss {event['loss']:.3f}"

    def fraction(self) -> float | None:
        if self.stage in ("eval", "finetune") and self.eval_total:
            return self.eval_done / self.eval_total
        if self.stage == "prune" and self.n_layers:
            return (self.layer + 1) / self.n_layers
        return None


def _duration(s: float | None) -> str:
    if s is None:
        return ""
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def progress_html(p: Progress | None, elapsed: float | None = None) -> str:
    """A bar with the stage, the decoder layer, time per layer and time left."""
    if p is None:
        return "<div class='prog idle'><div class='prog-head'><span class='prog-stage'>Idle</span>" \
               "<span class='prog-detail'>press Run to prune</span></div><div class='prog-track'></div></div>"
    frac = p.fraction()
    detail, right = html.escape(p.message or ""), ""
    if p.stage == "prune" and p.n_layers:
        detail = (f"decoder layer {p.layer + 1} / {p.n_layers} done"
                  + (f" · <code>{html.escape(p.name)}</code>" if p.name else "")
                  + (f" · {html.escape(p.message)}" if p.message else ""))
        if p.elapsed_s is not None and p.layer is not None:
            right = f"{p.elapsed_s / (p.layer + 1):.1f} s/layer"
        if p.eta_s is not None:
            right += f" · about {_duration(p.eta_s)} left"
    elif p.stage == "eval" and p.eval_total:
        what = {"pruned": "pruned model", "dense": "dense baseline",
                "magnitude": "magnitude baseline"}.get(p.eval_what, p.eval_what or "")
        detail = f"perplexity of the {what}: window {p.eval_done} / {p.eval_total}"
    if elapsed is not None:
        right = (right + " · " if right else "") + f"{_duration(elapsed)} elapsed"
    if p.sweep:
        detail = f"sweep point {p.sweep[0] + 1} / {p.sweep[1]} · " + detail
    state = {"done": "ok", "cancelled": "warn", "failed": "err"}.get(p.stage, "busy" if frac is None else "")
    width = 100 if p.stage in ("done", "cancelled", "failed") else (frac or 0) * 100
    return (f"<div class='prog {state}'><div class='prog-head'>"
            f"<span class='prog-stage'>{STAGE_TITLES.get(p.stage, p.stage)}</span>"
            f"<span class='prog-detail'>{detail}</span><span class='prog-eta'>{right}</span></div>"
            f"<div class='prog-track'><div class='prog-fill' style='width:{width:.1f}%'></div></div></div>")
