"""What every benchmark shares: where things are, timing that respects CUDA's asynchrony, peak memory of a
section, the machine a number was measured on, and the JSON/table output."""
from __future__ import annotations

import os
import platform
import re
import statistics
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "wikitext-2-v1"
RESULTS = REPO / "bench" / "results"
# The three-tier recipe bench/HYBRID.md's row tt-best and bench/RECOVER.md measured: Fisher-weighted Wanda, blocks
# ranked model-wide by cost, the weights inside blocks chosen by the OBS saliency during the update, 0.35/0.45/0.20,
# K = 15 (engine/spec.py's BEST_THREE_TIER is the best split found since, bench/RESULTS.md).
OBS_CHOICE_RECIPE = dict(method="fisher_wanda", tier_scope="model", assignment="cost", within_block="obs",
                         reconstruct=True, block_rule="exact", ratios=(0.35, 0.45, 0.20), keep=15)


def sync(device) -> None:
    """Wait for queued GPU work, so that a wall clock read after it measures the work, not its launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Stopwatch:
    """Wall and CPU seconds of a `with` block (CPU: all threads of this process, time.process_time).

    On shared cores the wall time moves with the neighbours' load (2x within minutes here); the CPU time moves far
    less, since a process waiting for a core accumulates none. Ratios of CPU times are the steadier comparison on
    CPU; on a GPU read the wall time (CPU time there is mostly waiting for kernels)."""

    def __init__(self, device="cpu"):
        self.device = device
        self.wall = self.cpu = 0.0

    def __enter__(self):
        sync(self.device)
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


@torch.inference_mode()
def forward_pass(model, windows: torch.Tensor, device) -> Stopwatch:
    """Wall and CPU seconds of a plain model(input_ids) over every window, one at a time as the walk captures them."""
    with Stopwatch(device) as sw:
        for row in windows:
            model(row.unsqueeze(0).to(device), use_cache=False)
    return sw


def time_interleaved(fns: dict, device="cpu", repeats: int = 7, warmup: int = 1) -> dict:
    """Median / min wall seconds (and median CPU seconds) of several functions, timed round-robin: every function
    runs once per round, so a neighbour's burst of load lands on all of them alike and their medians compare."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    walls, cpus = {name: [] for name in fns}, {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            with Stopwatch(device) as sw:
                fn()
            walls[name].append(sw.wall)
            cpus[name].append(sw.cpu)
    return {name: {"median_s": statistics.median(ts), "min_s": min(ts), "cpu_median_s": statistics.median(cpus[name]),
                   "times_s": [round(x, 4) for x in ts]} for name, ts in walls.items()}


# ---------------------------------------------------------------------------------------------- memory

def _status_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _reset_hwm() -> bool:
    """Linux resets the process's peak RSS (VmHWM) to its current RSS when "5" is written to clear_refs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextmanager
def peak_memory(device="cpu"):
    """Peak memory of the code in the `with` block -> the yielded dict, filled on exit:
    peak_rss_mib (whole process, host), rss_before_mib, how (what measured it), and on CUDA peak_cuda_mib and
    cuda_before_mib (allocated tensors; the peak counts what was allocated before the block too).

    Host peak: the kernel's own high-water mark VmHWM, reset at the start of the block, so it is exact and the
    peak of this block alone. Where that reset is not possible (not Linux), psutil samples RSS every 5 ms;
    failing both, ru_maxrss (the peak of the whole process life, an upper bound)."""
    out: dict = {}
    cuda = torch.device(device).type == "cuda"
    if cuda:
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        out["cuda_before_mib"] = torch.cuda.memory_allocated() / 2**20  # the peak below includes these
    sampler = None
    if _reset_hwm():
        out["how"] = "VmHWM after clear_refs reset"
    else:
        sampler = _RssSampler()
    out["rss_before_mib"] = _rss_mib()
    try:
        yield out
    finally:
        if cuda:
            sync(device)
            out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        if sampler is not None:
            out["peak_rss_mib"], out["how"] = sampler.stop()
        else:
            out["peak_rss_mib"] = _status_kib("VmHWM") / 1024


def _rss_mib() -> float | None:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib / 1024
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return None


class _RssSampler:
    def __init__(self, every_s: float = 0.005):
        try:
            import psutil
            self._proc = psutil.Process()
        except ImportError:
            self._proc = None
            return
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(every_s)

    def stop(self) -> tuple[float, str]:
        if self._proc is None:
            import resource
            scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, "ru_maxrss (process lifetime)"
        self._stop.set()
        self._thread.join()
        return max(self.peak, self._proc.memory_info().rss) / 2**20, "psutil RSS sampled every 5 ms"


# --------------------------------------------------------------------------------------------- records

def machine(device="cpu") -> dict:
    """Where a number was measured: enough to tell a quiet GPU box from two contended laptop cores."""
    import transformers

    info = {"date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "host_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cpu": _cpu_model(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "device": str(device)}
    if hasattr(os, "getloadavg"):
        info["load_avg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    info["engine_commit"] = _git_commit()
    return info


def _git_commit() -> str | None:
    """HEAD of the repository, "+dirty" when engine/ has uncommitted changes: the code a number belongs to."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "engine"], cwd=REPO, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command_line() -> str:
    """How this script was started, as one would type it again (with its nice level when it ran niced)."""
    import sys

    niceness = os.nice(0) if hasattr(os, "nice") else 0
    return " ".join(([f"nice -n {niceness}"] if niceness else []) + ["python"] + sys.argv)


def write_json(path, obj) -> None:
    from engine.io.record import write_json_atomic
    write_json_atomic(str(path), obj)
    print(f"wrote {path}")


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """columns: (key, header, format spec such as '.3f'); None values print as '-'. Returns the table text."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append(["-" if r.get(k) is None else format(r[k], f) for k, _, f in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    text = "\n".join(lines)
    print(text)
    return text
