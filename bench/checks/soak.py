"""Soak the dashboard: start app.py on loopback, drive it with several gradio_client sessions at once for a bounded
time, and report jobs done, errors, job latency and the server's memory growth.

    python bench/checks/soak.py --clients 3 --minutes 3 [--runs 50] [--json bench/results/soak.json]
    python bench/checks/soak.py --public --hostile 1 ...   # a public server, and a client that attacks it meanwhile

Everything stays on this machine: the server is a subprocess of this script bound to 127.0.0.1, the model is a
tiny random LLaMA saved to a temp folder (as tests/conftest.py does), the text is the offline "pydoc" source, and
the run store and baseline cache are temp folders. Each client loops over a few set-ups (three-tier, unstructured,
2:4; magnitude, Wanda, SparseGPT) until the time or the run count is spent. Memory is the server's resident set
(VmRSS from /proc/<pid>/status), read after every job; growth is measured from the end of the first round (when
the model, the tokenizer and every code path have been loaded once) to the end.

`--public` serves under the public policy; the tiny model is then a hub id (`soak/tiny-llama`) in a temporary hub
cache, as a Space would find a downloaded model. `--hostile N` adds N clients that send, in a loop and as fast as
the server answers, what tests/test_hostile.py sends one at a time: a 1 MB model id, hub ids that pass the checks
and fail, an absurd N:M, a malformed sweep, a huge seed, a 5 MB upload, Stop, and Past runs. The report adds their
request counts and the run store's size (files, bytes) at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SETUPS = [  # the dashboard's form fields (gradio_client keyword arguments)
    dict(method="wanda", pattern="three_tier"),
    dict(method="magnitude", pattern="unstructured", sparsity=0.5),
    dict(method="sparsegpt", pattern="nm", n=2, m=4),
    dict(method="wanda", pattern="three_tier", assignment="cost", tier_scope="layer"),
]
COMMON = dict(calib="pydoc", nsamples=4, seqlen=64, eval_source="pydoc", eval_windows=2, baselines=True)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_tiny_model(folder: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from tests.conftest import _train_tokenizer
    from tests.conftest import save_tiny_model as save

    return save(folder, _train_tokenizer(), "llama", layers=4)


HUB_ID = "soak/tiny-llama"


def as_hub_cache(model: Path, cache: Path) -> None:
    """Lay `model`'s files out as the hub client caches a download of HUB_ID (refs/main -> snapshots/<commit>)."""
    repo = cache / ("models--" + HUB_ID.replace("/", "--"))
    commit = "0" * 40
    shutil.copytree(model, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def start_server(port: int, scratch: Path, public: bool = False) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", SPARSITY_CACHE=str(scratch / "baselines"),
               GRADIO_ANALYTICS_ENABLED="False", TOKENIZERS_PARALLELISM="false", HF_HUB_CACHE=str(scratch / "hub"))
    env.pop("SPACE_ID", None)
    env.pop("SPARSITY_PUBLIC", None)
    log = open(scratch / "server.log", "w")
    command = [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port),
               "--runs_dir", str(scratch / "runs")]
    command += ["--public"] if public else []
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}; see {scratch / 'server.log'}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not answer within 120 s")


def hostile_loop(url: str, enough, counts: dict, lock: threading.Lock) -> None:
    """One attacker's session: each request of the cycle, again and again, until the deadline."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    quick = dict(calib="pydoc", nsamples=2, seqlen=32, eval_source="none")
    upload = (b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.txt\"\r\n\r\n"
              + b"A" * 5_000_000 + b"\r\n--x--\r\n")

    def post_upload():
        request = urllib.request.Request(url + "gradio_api/upload", data=upload, method="POST",
                                         headers={"Content-Type": "multipart/form-data; boundary=x"})
        urllib.request.urlopen(request, timeout=30)

    i = 0
    pending = []  # runs sent without waiting for them, as a script would; at most 4 outstanding

    def send(**fields):
        pending.append(client.submit(**fields, api_name=fields.pop("api_name", "/run")))
        if len(pending) > 4:
            pending.pop(0).result(timeout=600)

    actions = [
        ("long_id", lambda: send(model_path="a/" + "b" * 1_000_000, **quick)),
        ("unknown_hub_id", lambda: send(model_path=f"nobody/model-{i}", **quick)),
        ("absurd_nm", lambda: send(model_path=HUB_ID, pattern="nm", n=1, m=1_000_000_000, **quick)),
        ("bad_sweep", lambda: send(splits="1.2.3/0/0", **quick, api_name="/sweep")),
        ("huge_seed", lambda: send(model_path=HUB_ID, seed=1e23, **quick)),
        ("upload", post_upload),
        ("stop", lambda: client.predict(api_name="/stop")),
        ("past_runs", lambda: client.predict(api_name="/past_runs")),
    ]
    while not enough():
        name, action = actions[i % len(actions)]
        i += 1
        try:
            action()
        except Exception:  # the app's one-line refusal (AppError), a closed connection, an HTTP error: expected
            pass
        with lock:
            counts[name] = counts.get(name, 0) + 1


def store_size(folder: Path) -> tuple[int, int]:
    files = list(folder.glob("*.json")) if folder.is_dir() else []
    return len(files), sum(p.stat().st_size for p in files if p.exists())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=3, help="concurrent sessions (default 3)")
    ap.add_argument("--minutes", type=float, default=3.0, help="stop starting jobs after this long (default 3)")
    ap.add_argument("--runs", type=int, default=None, help="also stop after this many jobs in all")
    ap.add_argument("--json", default=None, help="write the numbers here too")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (model, run store, server log)")
    ap.add_argument("--public", action="store_true", help="serve under the public policy (the model as a hub id)")
    ap.add_argument("--hostile", type=int, default=0, help="attacking clients among the normal ones (default 0)")
    args = ap.parse_args(argv)

    from gradio_client import Client

    scratch = Path(tempfile.mkdtemp(prefix="sparsity-soak-"))
    model = save_tiny_model(scratch / "tiny-llama")
    as_hub_cache(model, scratch / "hub")
    model_name = HUB_ID if args.public else str(model)
    port = free_port()
    server = start_server(port, scratch, public=args.public)
    url = f"http://127.0.0.1:{port}/"
    lock = threading.Lock()
    latencies, errors, rss = [], [], []  # rss: (jobs done, MB) after every job
    started = time.monotonic()
    deadline = started + args.minutes * 60

    def enough() -> bool:
        return time.monotonic() > deadline or (args.runs is not None and len(latencies) + len(errors) >= args.runs)

    def client_loop(i: int) -> None:
        client = Client(url, verbose=False)
        k = i
        while not enough():
            setup = {**COMMON, **SETUPS[k % len(SETUPS)], "model_path": model_name}
            k += 1
            t = time.perf_counter()
            try:
                status = client.predict(**setup, api_name="/run")[0]  # the banner: "Done in ..." when it worked
                error = None if "Done" in status else status[:200]
            except Exception as err:  # a failed job is a number in the report, not the end of the soak
                error = str(err)[:200]
            with lock:
                if error is None:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors.append(error)
                rss.append((len(latencies) + len(errors), rss_mb(server.pid)))

    hostile_counts: dict = {}
    store_peak = [0, 0]

    def watch_store() -> None:
        while not enough():
            n, size = store_size(scratch / "runs")
            store_peak[:] = max(store_peak[0], n), max(store_peak[1], size)
            time.sleep(1.0)

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(args.clients)]
    threads += [threading.Thread(target=hostile_loop, args=(url, enough, hostile_counts, lock), daemon=True)
                for _ in range(args.hostile)]
    threads.append(threading.Thread(target=watch_store, daemon=True))
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()

    first_round = next((mb for n, mb in rss if n >= args.clients * len(SETUPS)), rss[0][1] if rss else None)
    at_50 = next((mb for n, mb in rss if n >= 50), None)
    q = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else latencies * 19
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"), "clients": args.clients, "public": args.public,
        "hostile_clients": args.hostile, "hostile_requests": dict(sorted(hostile_counts.items())),
        "minutes": round((time.monotonic() - started) / 60, 2),
        "jobs": len(latencies), "errors": len(errors), "error_samples": errors[:3],
        "latency_p50_s": round(statistics.median(latencies), 2) if latencies else None,
        "latency_p95_s": round(q[18], 2) if latencies else None,
        "rss_start_mb": round(rss[0][1], 1) if rss else None,
        "rss_after_first_round_mb": round(first_round, 1) if first_round else None,
        "rss_end_mb": round(rss[-1][1], 1) if rss else None,
        "growth_after_first_round_mb": round(rss[-1][1] - first_round, 1) if rss else None,
        "growth_first_round_to_job_50_mb": round(at_50 - first_round, 1) if at_50 else None,
        "rss_by_jobs": [(n, round(mb, 1)) for n, mb in rss[:: max(1, len(rss) // 20)]],
    }
    n_files, n_bytes = store_size(scratch / "runs")
    report.update(store_files_end=n_files, store_kb_end=round(n_bytes / 1024, 1), store_files_peak=store_peak[0],
                  store_kb_peak=round(store_peak[1] / 1024, 1))
    records = [json.loads(p.read_text()) for p in (scratch / "runs").glob("*.json")]
    engine = [r["timings"]["total_s"] for r in records if r.get("status") == "completed"]
    report.update(stored_records=len(records), stored_completed=len(engine),
                  engine_p50_s=round(statistics.median(engine), 2) if engine else None)
    print(json.dumps({k: v for k, v in report.items() if k != "rss_by_jobs"}, indent=1))
    print("rss by jobs done:", " ".join(f"{n}:{mb:.0f}" for n, mb in report["rss_by_jobs"]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.keep:
        print("kept", scratch)
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
