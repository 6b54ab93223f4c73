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
and fail, an absurd N:M, a malformed sweep, a huge seed, a 5 MB upload, Stop, and Past runs; and N more that
attack Explore and Recover through the raw event API the page itself uses (explore_attack: those endpoints are not
public). The attackers start once the normal clients' first round is done. The report adds their request counts, the
run store's size (files, bytes) at the end, the server's RSS just before the attack and 25 s after the clients
stopped and every tab closed (`rss_idle_end_mb`), and a check that the cached model is still the dense model it
loaded (model_check).
"""
from __future__ import annotations

import argparse
import json
import os
import re
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
RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{8}")  # engine/record.py: YYYYMMDD-HHMMSS-8 hex digits


def as_hub_cache(model: Path, cache: Path) -> None:
    """Lay `model`'s files out as the hub client caches a download of HUB_ID (refs/main -> snapshots/<commit>)."""
    repo = cache / ("models--" + HUB_ID.replace("/", "--"))
    commit = "0" * 40
    shutil.copytree(model, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def start_server(port: int, scratch: Path, public: bool = False, cpus: set[int] | None = None) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", SPARSITY_CACHE=str(scratch / "baselines"), SPARSITY_BEHIND_PROXY="1",
               GRADIO_ANALYTICS_ENABLED="False", TOKENIZERS_PARALLELISM="false", HF_HUB_CACHE=str(scratch / "hub"))
    env.pop("SPACE_ID", None)
    env.pop("SPARSITY_PUBLIC", None)
    log = open(scratch / "server.log", "w")
    command = [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port),
               "--runs_dir", str(scratch / "runs")]
    command += ["--public"] if public else []
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None  # before exec: every server thread inherits it
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin)
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


def as_visitor(address: str) -> dict:
    """The header the proxy in front of a Space adds for a visitor at `address` (the soak plays that proxy: the
    server runs with SPARSITY_BEHIND_PROXY=1 and counts each client's turns by it)."""
    return {"X-Forwarded-For": address}


def hostile_loop(url: str, address: str, enough, counts: dict, lock: threading.Lock) -> None:
    """One attacker's session: each request of the cycle, again and again, until the deadline."""
    from gradio_client import Client

    client = Client(url, verbose=False, headers=as_visitor(address))
    quick = dict(calib="pydoc", nsamples=2, seqlen=32, eval_source="none")
    upload = (b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.txt\"\r\n\r\n"
              + b"A" * 5_000_000 + b"\r\n--x--\r\n")

    def post_upload():
        request = urllib.request.Request(url + "gradio_api/upload", data=upload, method="POST",
                                         headers={"Content-Type": "multipart/form-data; boundary=x",
                                                  **as_visitor(address)})
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


class RawSession:
    """One browser tab as the page's own JavaScript drives it: events by fn_index through Gradio's queue
    (POST /gradio_api/queue/join, then the SSE stream /gradio_api/queue/data), and a heartbeat stream whose end
    is the tab closing (Gradio then runs the page's unload listeners, components/explore_tab.tab_closed)."""

    def __init__(self, url: str, app: dict, address: str):
        import httpx

        self.url, self.app = url, app
        self.hash = os.urandom(6).hex()
        self.http = httpx.Client(base_url=url + "gradio_api/", timeout=600, headers=as_visitor(address))
        self._alive = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        try:
            with self.http.stream("GET", f"heartbeat/{self.hash}") as r:
                for _ in r.iter_lines():
                    if self._alive.is_set():
                        return  # leaving the block closes the connection: the tab is gone
        except Exception:
            pass

    def submit(self, dep: int, data: list) -> str | None:
        """Queue one event (the page's `trigger_id` is the dependency's first target) and return its event id."""
        target = self.app["deps"][dep]["targets"][0][0] if self.app["deps"][dep]["targets"] else None
        r = self.http.post("queue/join", json={"data": data, "fn_index": dep, "trigger_id": target,
                                               "session_hash": self.hash, "event_data": None})
        return r.json().get("event_id") if r.status_code == 200 else None

    def wait(self, seconds: float = 300) -> list[dict]:
        """Read the session's stream until every event sent so far completed (the server then closes it)."""
        messages, deadline = [], time.monotonic() + seconds
        with self.http.stream("GET", "queue/data", params={"session_hash": self.hash}) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    messages.append(json.loads(line[5:]))
                if time.monotonic() > deadline:
                    break
        return messages

    def close(self) -> None:
        self._alive.set()
        self.http.close()


def app_config(url: str) -> dict:
    """What the page knows from GET /config: each dependency's fn_index, inputs and targets, and each
    component's default value, label and elem_id; /info names the form's fields (the /run endpoint's parameters)."""
    import httpx

    config = httpx.get(url + "config", timeout=60).json()
    info = httpx.get(url + "gradio_api/info", timeout=60).json()
    comps = {c["id"]: c for c in config["components"]}
    deps = {d["id"]: d for d in config["dependencies"]}
    by_elem = {c["props"].get("elem_id"): i for i, c in comps.items() if c.get("props", {}).get("elem_id")}

    def dep(where) -> int:
        return next(i for i, d in deps.items() if where(d))

    form_names = [p["parameter_name"] for p in info["named_endpoints"]["/run"]["parameters"]]
    return dict(comps=comps, deps=deps, form_names=form_names,
                calibrate=dep(lambda d: [by_elem["xs-calibrate"], "click"] in d["targets"]),
                release=dep(lambda d: [by_elem["xs-dense"], "release"] in d["targets"]),
                stop=dep(lambda d: d.get("api_name") == "stop"),
                recover=dep(lambda d: d.get("api_name") == "recover"), run=dep(lambda d: d.get("api_name") == "run"),
                open_run=dep(lambda d: d.get("api_name") == "open_run"),
                on_load=[i for i, d in deps.items()
                         if d.get("backend_fn") and any(t[1] == "load" for t in d["targets"])])


def event_data(app: dict, dep: int, form: dict | None = None, **by_label) -> list:
    """The inputs of dependency `dep` as the page sends them: every component's default, the form's fields
    (the first inputs, /run's parameter names) from `form`, other inputs by their label (`by_label`)."""
    comps, inputs = app["comps"], app["deps"][dep]["inputs"]
    values = [None if comps[i]["type"] == "state" else comps[i]["props"].get("value") for i in inputs]
    names = app["form_names"] if dep in (app["calibrate"], app["run"]) else []
    for k, name in enumerate(names[: len(inputs)]):
        if form and name in form:
            values[k] = form[name]
    labels = [comps[i]["props"].get("label") for i in inputs]
    for label, value in by_label.items():
        for k, lab in enumerate(labels):
            if lab == label.replace("_", " "):
                values[k] = value
    return values


def explore_attack(url: str, address: str, app: dict, model_name: str, store: Path, enough, counts: dict,
                   lock) -> None:
    """One attacker of Explore and Recover, through the raw event API (these endpoints are not public). Each cycle
    opens a fresh tab (its page-load events, Past runs' listing among them), calibrates it with its own seed and
    set-up (so the tabs' calibrations differ), asks for a split with a block size of 65536, then for 64 windows of
    10^6 tokens per estimate, presses Stop while an estimate runs, opens another visitor's run from Past runs and
    presses Recover on it, runs a run of its own and recovers it (full or LoRA, 5 steps), then closes the tab
    (its heartbeat stream ends). Refusals are expected: the report counts each step's outcome and one refusal each."""
    methods = ["wanda", "magnitude", "wanda", "sparsegpt"]
    samples = counts.setdefault("explore_refusals", {})
    cycle = 0
    while not enough():
        cycle += 1
        tab = RawSession(url, app, address)
        form = dict(model_path=model_name, method=methods[cycle % 4], pattern="three_tier", calib="pydoc",
                    nsamples=2 + cycle % 4, seqlen=32 + 16 * (cycle % 3), eval_source="pydoc",
                    seed=int.from_bytes(os.urandom(3), "big"))
        with lock:
            counts.setdefault("attack_seeds", []).append(form["seed"])  # its runs, told apart in the store
        steps = [
            ("calibrate", lambda: tab.submit(app["calibrate"], event_data(app, app["calibrate"], form,
                                                                          Estimate_windows=2,
                                                                          Tokens_per_window=32))),
            ("huge_block", lambda: tab.submit(app["release"], event_data(app, app["release"],
                                                                         Block_size_B=65536))),
            ("huge_tokens", lambda: tab.submit(app["release"], event_data(app, app["release"], Estimate_windows=64,
                                                                          Tokens_per_window=1_000_000))),
            ("estimate_then_stop", lambda: (tab.submit(app["release"], event_data(app, app["release"], dense=0.2)),
                                            time.sleep(0.3), tab.submit(app["stop"], [None, None]))),
            ("open_others", lambda: tab.submit(app["open_run"], [None, listed[-1] if listed else "none"])),
            ("recover_others", lambda: tab.submit(app["recover"], _recover_data(app, listed[-1] if listed else ""))),
            ("own_run", lambda: (before.update(p.stem for p in store.glob("*.json")),
                                 tab.submit(app["run"], event_data(app, app["run"], {**form, "nsamples": 2,
                                                                                     "eval_windows": 1})))),
            ("recover_own", lambda: tab.submit(app["recover"], _recover_data(app, mine.pop() if mine else "",
                                                                             "LoRA" if cycle % 2 else "full"))),
        ]
        before, mine = set(), []
        for dep in app["on_load"]:  # what the page asks for when it opens: Past runs' listing among it
            tab.submit(dep, [])
        listed = RUN_ID.findall(json.dumps(tab.wait(60)))  # other visitors' completed runs, as Past runs lists them
        for name, step in steps:
            if enough():
                break
            outcome = "no answer"
            try:
                step()
                messages = tab.wait(300)
                done = [m for m in messages if m.get("msg") == "process_completed"]
                text = json.dumps(done)
                said = re.findall(r"banner (?:err|warn)[^>]*>(.{0,100})", text)
                outcome = "ok" if done and all(m.get("success") for m in done) and not said else "refused"
                if outcome == "refused":
                    samples.setdefault(name, said[-1] if said else
                                       str(done[-1].get("output", {}).get("error") if done else None)[:100])
                if name == "own_run" and outcome == "ok":  # its id: new in this tab's answer, and its own seed
                    mine[:] = [i for i in set(RUN_ID.findall(text)) - before
                               if _seed_of(store / f"{i}.json") == form["seed"]]
            except Exception:  # a refused request, a closed stream: expected
                pass
            with lock:
                counts[f"{name}: {outcome}"] = counts.get(f"{name}: {outcome}", 0) + 1
        tab.close()
        with lock:
            counts["tabs_closed"] = counts.get("tabs_closed", 0) + 1


def _recover_data(app: dict, run_id: str, mode: str = "full") -> list:
    """Recover's inputs (session, run, steps, lr, mode, rank): `run_id`, 5 steps, `mode`, the rest as the page."""
    values = event_data(app, app["recover"])
    values[1:3], values[4] = [run_id, 5], mode
    return values


def _seed_of(path: Path):
    try:
        return json.loads(path.read_text())["spec"]["seed"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def model_check(client, setup: dict, scratch: Path) -> dict:
    """Is the server's cached model still the dense model it loaded? Every run with baselines keys its dense
    perplexity by the model's fingerprint (engine/baselines.model_fingerprint: a sample of every parameter) at
    the time, so one fingerprint in the cache means every normal job found the same weights. Then the cache is
    emptied and a last run of the first set-up must recompute the dense perplexity on the cached model and get
    the first run's dense and pruned perplexities exactly (all digits of the stored floats): the same forward
    pass over every weight, before and after pruning with the same calibration."""
    cache = scratch / "baselines"
    keys = [json.loads(p.read_text())["key"] for p in cache.glob("*.json")]
    fingerprints = sorted({k["fingerprint"] for k in keys if k["kind"] == "dense"})
    for p in cache.glob("*.json"):
        p.unlink()
    status = client.predict(**setup, api_name="/run")[0]
    records = sorted((json.loads(p.read_text()) for p in (scratch / "runs").glob("*.json")),
                     key=lambda r: r["run_id"])
    last = records[-1]
    same = [r for r in records if r.get("status") == "completed" and r["spec"] == last["spec"]
            and r.get("request", {}).get("calib") == last.get("request", {}).get("calib")]
    first = same[0]
    return {"dense_fingerprints_seen": fingerprints, "last_run": status[:80],
            "first_ppl": first["ppl"], "last_ppl": last["ppl"],
            "ppl_equal": first["ppl"]["dense"] == last["ppl"]["dense"] and first["ppl"]["pruned"] ==
            last["ppl"]["pruned"]}


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
    ap.add_argument("--hostile", type=int, default=0,
                    help="attacking sessions of each kind (runs; Explore and Recover) beside the normal ones "
                         "(default 0)")
    ap.add_argument("--hostile_addresses", type=int, default=1,
                    help="addresses the attacking sessions come from (default 1: one stranger with many tabs)")
    ap.add_argument("--split_cpus", action="store_true",
                    help="the server on the first CPU, this script's clients (normal and hostile) on the others, as "
                         "on a deployment where visitors' browsers and scripts run on their own machines")
    args = ap.parse_args(argv)
    server_cpus = None
    if args.split_cpus:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            ap.error("--split_cpus needs at least 2 CPUs")
        server_cpus = {cpus[0]}
        os.sched_setaffinity(0, set(cpus[1:]))  # before any client thread starts: they all inherit it

    from gradio_client import Client

    load_start = list(os.getloadavg())
    scratch = Path(tempfile.mkdtemp(prefix="sparsity-soak-"))
    model = save_tiny_model(scratch / "tiny-llama")
    as_hub_cache(model, scratch / "hub")
    model_name = HUB_ID if args.public else str(model)
    port = free_port()
    server = start_server(port, scratch, public=args.public, cpus=server_cpus)
    url = f"http://127.0.0.1:{port}/"
    lock = threading.Lock()
    latencies, errors, rss = [], [], []  # rss: (jobs done, MB) after every job
    started = time.monotonic()
    deadline = started + args.minutes * 60

    def enough() -> bool:
        return time.monotonic() > deadline or (args.runs is not None and len(latencies) + len(errors) >= args.runs)

    def client_loop(i: int) -> None:
        client = Client(url, verbose=False, headers=as_visitor(normal_address(i)))
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
                if len(rss) >= args.clients * len(SETUPS) and not warmed.is_set():
                    rss_before[:] = [rss_mb(server.pid)]  # the model, the tokenizer, every code path loaded once
                    warmed.set()

    hostile_counts: dict = {}

    def normal_address(i: int) -> str:  # each normal client is a visitor of its own
        return f"198.51.100.{i + 1}"

    def hostile_address(k: int) -> str:  # the attacking sessions, spread over --hostile_addresses addresses
        return f"203.0.113.{k % max(1, args.hostile_addresses) + 1}"
    warmed, rss_before = threading.Event(), []  # the attackers start once the first round is done
    app = app_config(url) if args.hostile else None

    def attacker(loop, *extra) -> None:
        while not warmed.wait(1.0):
            if enough():
                return
        loop(*extra)
    store_peak = [0, 0]

    def watch_store() -> None:
        while not enough():
            n, size = store_size(scratch / "runs")
            store_peak[:] = max(store_peak[0], n), max(store_peak[1], size)
            time.sleep(1.0)

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(args.clients)]
    threads += [threading.Thread(target=attacker, args=(hostile_loop, url, hostile_address(k), enough,
                                                        hostile_counts, lock), daemon=True)
                for k in range(args.hostile)]
    threads += [threading.Thread(target=attacker, args=(explore_attack, url, hostile_address(args.hostile + k), app,
                                                        model_name, scratch / "runs", enough, hostile_counts, lock),
                                 daemon=True)
                for k in range(args.hostile)]
    threads.append(threading.Thread(target=watch_store, daemon=True))
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # every attacker's tab is closed: give Gradio a heartbeat (15 s) to notice and run the unload listeners
        time.sleep(25)
        rss_idle = rss_mb(server.pid)
        check = model_check(Client(url, verbose=False, headers=as_visitor(normal_address(0))),
                            {**COMMON, **SETUPS[0], "model_path": model_name},
                            scratch)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()

    first_round = next((mb for n, mb in rss if n >= args.clients * len(SETUPS)), rss[0][1] if rss else None)
    at_50 = next((mb for n, mb in rss if n >= 50), None)
    q = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else latencies * 19
    attack_seeds = set(hostile_counts.pop("attack_seeds", []))
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"), "clients": args.clients, "public": args.public,
        "split_cpus": {"server": sorted(server_cpus), "clients": sorted(os.sched_getaffinity(0))} if server_cpus
        else None, "load_avg_start": load_start, "load_avg_end": list(os.getloadavg()),
        "hostile_clients": args.hostile, "hostile_addresses": args.hostile_addresses if args.hostile else 0,
        "hostile_requests": dict(sorted(hostile_counts.items())),
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
    report.update(rss_before_attack_mb=round(rss_before[0], 1) if rss_before else None,
                  rss_idle_end_mb=round(rss_idle, 1), model_check=check)
    if rss_before:
        report["rss_idle_end_minus_before_attack_mb"] = round(rss_idle - rss_before[0], 1)
    n_files, n_bytes = store_size(scratch / "runs")
    report.update(store_files_end=n_files, store_kb_end=round(n_bytes / 1024, 1), store_files_peak=store_peak[0],
                  store_kb_peak=round(store_peak[1] / 1024, 1))
    records = [json.loads(p.read_text()) for p in (scratch / "runs").glob("*.json")]
    engine = [r["timings"]["total_s"] for r in records if r.get("status") == "completed"]
    normal = [r["timings"]["total_s"] for r in records if r.get("status") == "completed"
              and r.get("spec", {}).get("seed") not in attack_seeds]
    report.update(stored_records=len(records), stored_completed=len(engine),
                  engine_p50_s=round(statistics.median(engine), 2) if engine else None,
                  engine_p50_normal_s=round(statistics.median(normal), 2) if normal else None)
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
