"""The split search (engine/explore/split_search.py): a seeded search finds a small space's exhaustive front, studies of
another calibration are refused, bad settings are one line, the front is exact on hand-made points, studies persist and
export, workers share one study (SQLite; PostgreSQL where a server can be started)."""
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import tiny_config
from engine.errors import UserError
from engine.explore import calibrate, estimate, replan
from engine.explore.calibration import NO_UPDATE_NOTE
from engine.explore.split_search import (
    SearchSettings,
    band_ratios,
    evaluation_key,
    export_study,
    list_studies,
    open_storage,
    open_study,
    pareto_front,
    search,
    search_space,
    study_identity,
    trial_records,
)
from engine.spec import PruneSpec

SEQLEN = 32
RATIOS = [(0.5, 0.3, 0.2), (0.2, 0.4, 0.4), (0.1, 0.2, 0.7)]
KEEPS = [4, 16, 64]


def _model(seed=0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config("llama", layers=1)).eval()


def _ids(n, seed):
    return torch.randint(0, 384, n, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def setup():
    model = _model()
    base = PruneSpec(method="wanda", pattern="three_tier", nsamples=4, seqlen=SEQLEN, tier_scope="model")
    cal = calibrate(model, base, _ids((4, SEQLEN), 1), data="random")
    return model, base, cal, _ids((1, 4 * SEQLEN), 2)


def _study(url, cal, space, settings, eval_ids, name="s"):
    ident = study_identity(cal.key, space, settings, evaluation_key(eval_ids, SEQLEN, settings.windows, estimate))
    return open_study(open_storage(url), name, ident, settings, model="tiny")


def _small_space(base, cal):
    return search_space(base, cal.model, given={"ratios": RATIOS, "keep": KEEPS}, fields=[])


def _exhaustive(model, base, cal, eval_ids, windows):
    """Every point of the small space, re-planned and estimated: the exact answer a search must find."""
    points = []
    for i, (r, k) in enumerate((r, k) for r in RATIOS for k in KEEPS):
        plan = replan(cal, base.replace(ratios=r, keep=k))
        est = estimate(model, plan, eval_ids, SEQLEN, windows=windows)
        points.append({"number": i, "label": plan.spec.label(), "sparsity": plan.sparsity, "ppl": est.ppl,
                       "bits": 0.0, "feasible": True})
    return points


def test_a_seeded_search_finds_the_exhaustive_front_of_a_small_space(setup, tmp_path):
    model, base, cal, eval_ids = setup
    space = _small_space(base, cal)
    assert space.fields == ["keep", "ratios"] and "tier_scope" in space.fixed
    settings = SearchSettings(trials=30, seed=0, windows=3)
    study = _study(f"sqlite:///{tmp_path}/s.db", cal, space, settings, eval_ids)
    records = search(study, cal, space, settings, eval_ids, SEQLEN)
    assert len(records) == 30 and len(trial_records(study)) == 30
    want = pareto_front(_exhaustive(model, base, cal, eval_ids, 3), "sparsity")
    got = pareto_front(records, "sparsity")
    assert [r["label"] for r in got] == [r["label"] for r in want]
    assert [r["ppl"] for r in got] == pytest.approx([r["ppl"] for r in want], rel=1e-6)
    # nine points, thirty trials: a repeated split takes the estimate already in the study, it is not run again
    estimated = [r for r in records if r["status"] == "estimated"]
    assert len({r["label"] for r in estimated}) == len(estimated) <= 9
    assert all(r["estimate_s"] == 0.0 for r in records if r["status"] == "repeat")


def test_a_band_makes_the_search_constrained(setup, tmp_path):
    model, base, cal, eval_ids = setup
    space = _small_space(base, cal)
    settings = SearchSettings(trials=12, seed=1, windows=2, band=(0.3, 0.5))
    records = search(_study(f"sqlite:///{tmp_path}/b.db", cal, space, settings, eval_ids), cal, space, settings,
                     eval_ids, SEQLEN)
    outside = [r for r in records if not 0.3 <= r["sparsity"] <= 0.5]
    assert outside and all(r["status"] == "outside" and r["ppl"] is None and r["estimate_s"] == 0 for r in outside)
    assert all(0.3 <= r["sparsity"] <= 0.5 for r in pareto_front(records, "sparsity"))


def test_band_ratios_put_a_split_at_the_asked_sparsity_of_the_band():
    base = PruneSpec(method="wanda", pattern="three_tier", block=16, keep=96)  # top-K blocks 62.5% sparse
    assert band_ratios(base, (0.5, 0.55), 0.0, 0.0) == (0.0, 1.0, 0.0)   # the band's low end, no top-K blocks
    assert band_ratios(base, (0.5, 0.55), 0.0, 1.0) == (0.2, 0.0, 0.8)   # the same sparsity, no 2:4 blocks
    assert band_ratios(base, (0.5, 0.55), 1.0, 0.5) == (0.06, 0.3, 0.64)  # 0.3 / 2 + 0.64 * 0.625 = 0.55
    assert base.replace(ratios=band_ratios(base, (0.5, 0.55), 1.0, 0.5)).nominal_sparsity() == pytest.approx(0.55)
    # K = 200 of 256: the top-K tier is 21.9% sparse, so 50% is all 2:4 and no split of this K reaches 55%
    assert band_ratios(base.replace(keep=200), (0.5, 0.55), 0.7, 0.3) == (0.0, 1.0, 0.0)
    assert band_ratios(base.replace(keep=200), (0.6, 0.9), 0.2, 0.9) == (0.0, 1.0, 0.0)  # the nearest it reaches
    assert band_ratios(base, (0.0, 0.0), 0.5, 0.5) == (1.0, 0.0, 0.0)    # nothing pruned: all dense


def test_a_band_search_only_suggests_splits_inside_the_band(setup, tmp_path):
    model, base, cal, eval_ids = setup
    band = (0.45, 0.5)
    settings = SearchSettings(trials=10, seed=3, windows=1, band=band)
    space = search_space(base, cal.model, band=band)
    records = search(_study(f"sqlite:///{tmp_path}/band.db", cal, space, settings, eval_ids), cal, space, settings,
                     eval_ids, SEQLEN)
    nominal = [PruneSpec.from_dict(r["requested"]).nominal_sparsity() for r in records]
    assert len(nominal) == 10 and all(band[0] - 1e-3 <= s <= band[1] + 1e-3 for s in nominal), nominal
    assert len({r["label"] for r in records}) > 5  # spread over the band, not one point
    unstructured = base.replace(pattern="unstructured")
    space = search_space(unstructured, cal.model, band=band)
    study = _study(f"sqlite:///{tmp_path}/band-u.db", cal, space, settings, eval_ids)
    got = [r["sparsity"] for r in search(study, cal, space, settings, eval_ids, SEQLEN)]
    assert all(band[0] - 1e-2 <= s <= band[1] + 1e-2 for s in got), got


def test_the_default_space_comes_from_the_patterns_fields(setup):
    model, base, cal, eval_ids = setup
    space = search_space(base, cal.model)
    assert space.fields == ["block", "keep", "ratios", "tier_scope", "assignment", "within_block"]
    assert space.fixed == ["block_rule"]
    assert space.ctx["choices"]["within_block"] == ["score", "magnitude"]  # "obs" is planned as "score"
    nm = search_space(base.replace(pattern="nm"), cal.model)
    assert nm.fields == ["m", "n"]
    assert search_space(base.replace(pattern="unstructured"), cal.model).fields == ["sparsity", "group"]


def test_a_search_over_the_default_space_runs_every_pattern_kind(setup, tmp_path):
    model, base, cal, eval_ids = setup
    settings = SearchSettings(trials=3, seed=0, windows=1, objective="storage")
    space = search_space(base, cal.model)
    records = search(_study(f"sqlite:///{tmp_path}/d.db", cal, space, settings, eval_ids), cal, space, settings,
                     eval_ids, SEQLEN)
    assert len(records) == 3 and all(r["status"] in ("estimated", "repeat") for r in records)
    assert all(math.isfinite(r["ppl"]) and r["bits"] > 0 for r in records)


def test_a_budget_in_minutes_stops_between_trials(setup, tmp_path):
    model, base, cal, eval_ids = setup
    space = _small_space(base, cal)
    settings = SearchSettings(trials=None, minutes=0.5 / 60, seed=0, windows=1)
    t0 = time.monotonic()
    records = search(_study(f"sqlite:///{tmp_path}/m.db", cal, space, settings, eval_ids), cal, space, settings,
                     eval_ids, SEQLEN)
    assert records and time.monotonic() - t0 < 0.5 + 5 * max(r["seconds"] for r in records) + 2


def test_invalid_combinations_of_choices_spend_the_budget_and_never_loop(setup, tmp_path):
    model, base, cal, eval_ids = setup
    space = search_space(base, cal.model, given={"block": [8], "keep": [65]}, fields=[])  # 65 > 8 x 8
    settings = SearchSettings(trials=3, seed=0, windows=1)
    study = _study(f"sqlite:///{tmp_path}/i.db", cal, space, settings, eval_ids)
    assert search(study, cal, space, settings, eval_ids, SEQLEN) == []
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3
    assert "K (weights kept per top-K block)" in study.trials[0].user_attrs["error"]


def test_the_front_of_hand_made_points():
    def p(n, s, ppl, bits=0.0, feasible=True):
        return {"number": n, "sparsity": s, "ppl": ppl, "bits": bits, "feasible": feasible}
    pts = [p(0, 0.5, 40.0, 9), p(1, 0.6, 60.0, 7), p(2, 0.5, 50.0, 8), p(3, 0.4, 45.0, 10), p(4, 0.7, 30.0, 12, False),
           p(5, 0.3, 39.0, 11), p(6, 0.6, 60.0, 7)]
    assert [r["number"] for r in pareto_front(pts, "sparsity")] == [5, 0, 1]
    assert [r["number"] for r in pareto_front(pts, "storage")] == [5, 0, 2, 1]


@pytest.mark.parametrize("kw, words", [
    (dict(trials=0), "trials must be a whole number in [1,"), (dict(trials=None), "needs a budget"),
    (dict(minutes=0), "minutes must lie in (0,"), (dict(band=(0.5, 1.2)), "band must be two numbers"),
    (dict(band=(-0.1, 0.5)), "band must be two numbers"), (dict(band=(0.6, 0.5)), "band must be two numbers"),
    (dict(objective="speed"), "unknown search objective 'speed'; choose one of sparsity, storage"),
    (dict(max_bits=0), "storage cap must be a positive"), (dict(sampler="grid"), "unknown sampler"),
])
def test_bad_settings_are_one_line(kw, words):
    with pytest.raises(UserError) as e:
        SearchSettings(**kw)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_bad_spaces_and_storages_are_one_line(setup, tmp_path):
    model, base, cal, eval_ids = setup
    with pytest.raises(UserError, match="three_tier has no parameter 'sparsity' to search"):
        search_space(base, cal.model, fields=["sparsity"])
    with pytest.raises(UserError, match="search choice keep=999: K"):
        search_space(base, cal.model, given={"keep": [999]})
    with pytest.raises(UserError, match=r"cannot open the study storage postgresql://u:\*\*\*@127.0.0.1:1/x"):
        open_storage("postgresql://u:secret@127.0.0.1:1/x")
    with pytest.raises(UserError, match="cannot open the study storage"):
        open_storage("nonsense://")
    with pytest.raises(UserError, match="cannot open the study storage"):
        open_storage(f"sqlite:///{tmp_path}/no/such/dir/s.db")


def test_a_study_of_another_calibration_is_refused_and_kept(setup, tmp_path):
    model, base, cal, eval_ids = setup
    url = f"sqlite:///{tmp_path}/c.db"
    space = _small_space(base, cal)
    settings = SearchSettings(trials=2, seed=0, windows=1)
    search(_study(url, cal, space, settings, eval_ids), cal, space, settings, eval_ids, SEQLEN)
    other = calibrate(model, base, _ids((4, SEQLEN), 7), data="random")  # other windows: another calibration
    with pytest.raises(UserError, match=r"study 's' belongs to another calibration \(differs in windows\)"):
        _study(url, other, _small_space(base, other), settings, eval_ids)
    with pytest.raises(UserError, match="another objective, band or cap"):
        _study(url, cal, space, SearchSettings(trials=2, band=(0.1, 0.9), windows=1), eval_ids)
    with pytest.raises(UserError, match="another evaluation windows or estimate"):
        _study(url, cal, space, SearchSettings(trials=2, windows=2), eval_ids)
    study = _study(url, cal, space, settings, eval_ids)
    assert len(trial_records(study)) == 2  # nothing lost; and the same settings resume it
    search(study, cal, space, settings, eval_ids, SEQLEN)
    assert [r["number"] for r in trial_records(study)] == [0, 1, 2, 3]


def test_studies_are_listed_and_exported(setup, tmp_path):
    model, base, cal, eval_ids = setup
    url = f"sqlite:///{tmp_path}/e.db"
    space = _small_space(base, cal)
    settings = SearchSettings(trials=3, seed=0, windows=1)
    study = _study(url, cal, space, settings, eval_ids, name="first")
    search(study, cal, space, settings, eval_ids, SEQLEN)
    [row] = list_studies(open_storage(url))
    assert row["study"] == "first" and row["trials"] == 3 and row["method"] == "wanda" and row["model"] == "tiny"
    assert export_study(study, tmp_path / "t.csv") == 3
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0].startswith("number,status,feasible,front,label,sparsity,bits,ppl") and len(lines) == 4
    assert export_study(study, tmp_path / "t.json") == 3
    data = json.loads((tmp_path / "t.json").read_text())
    assert [t["number"] for t in data["trials"]] == [0, 1, 2] and data["front"]
    with pytest.raises(UserError, match="export to .csv or .json"):
        export_study(study, tmp_path / "t.txt")


def test_a_search_stopped_mid_estimate_keeps_the_finished_trials(setup, tmp_path):
    import threading

    model, base, cal, eval_ids = setup
    space = search_space(base, cal.model, given={"keep": list(range(1, 40))}, fields=[])
    settings = SearchSettings(trials=20, seed=0, windows=3)
    study = _study(f"sqlite:///{tmp_path}/x.db", cal, space, settings, eval_ids)
    stop = threading.Event()

    def progress(event):
        if event["stage"] == "search" and event["done"] == 2:
            stop.set()
    records = search(study, cal, space, settings, eval_ids, SEQLEN, progress=progress, cancel=stop)
    assert len(records) == 2 and len(trial_records(study)) == 2


# --- many workers, one study ---------------------------------------------------------------------------------------

def test_a_trial_left_running_by_a_killed_worker_is_failed_by_the_next_worker(setup, tmp_path):
    import optuna
    from optuna.trial import TrialState

    model, base, cal, eval_ids = setup
    space = _small_space(base, cal)
    settings = SearchSettings(trials=1, seed=0, windows=1)
    ident = study_identity(cal.key, space, settings, evaluation_key(eval_ids, SEQLEN, settings.windows, estimate))
    url = f"sqlite:///{tmp_path}/stale.db"
    dead = open_study(open_storage(url, heartbeat_s=1, grace_s=2), "s", ident, settings, model="tiny")
    with pytest.warns(UserWarning, match="Heartbeat of storage"):  # Optuna's, for an ask outside optimize
        orphan = dead.ask()  # a worker asked, beat once, and was killed before it told the result
    dead._storage.record_heartbeat(orphan._trial_id)
    time.sleep(3.5)  # past the grace period (the storage keeps heartbeats to the second)
    alive = open_study(open_storage(url, heartbeat_s=1, grace_s=2), "s", ident, settings, model="tiny")
    assert alive.trials[orphan.number].state == TrialState.RUNNING  # nothing has looked yet
    records = search(alive, cal, space, settings, eval_ids, SEQLEN)
    states = [t.state for t in optuna.load_study(study_name="s", storage=open_storage(url)).trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE] and len(records) == 1


def test_a_long_trial_keeps_beating_so_no_other_worker_fails_it(setup, tmp_path):
    from optuna.trial import TrialState

    from engine.explore import split_search

    model, base, cal, eval_ids = setup
    space = _small_space(base, cal)
    settings = SearchSettings(trials=1, seed=0, windows=1)
    ident = study_identity(cal.key, space, settings, evaluation_key(eval_ids, SEQLEN, settings.windows, estimate))
    url = f"sqlite:///{tmp_path}/beat.db"
    seen = []

    def slow_estimate(*args, **kw):  # longer than the grace period; meanwhile another worker looks for stale trials
        time.sleep(3.5)
        other = open_study(open_storage(url, heartbeat_s=1, grace_s=2), "s", ident, settings, model="tiny")
        split_search.fail_stale_trials(other)
        seen.append(other.trials[0].state)
        return estimate(*args, **kw)
    study = open_study(open_storage(url, heartbeat_s=1, grace_s=2), "s", ident, settings, model="tiny")
    records = search(study, cal, space, settings, eval_ids, SEQLEN, estimate_fn=slow_estimate)
    assert seen == [TrialState.RUNNING] and len(records) == 1 and study.trials[0].state == TrialState.COMPLETE


WORKER = textwrap.dedent("""
    import sys, torch
    sys.path[:0] = [sys.argv[3], sys.argv[4]]
    from test_search import _model, _ids, _small_space, _study, SEQLEN
    from engine.explore import calibrate
    from engine.explore.split_search import SearchSettings, search
    from engine.spec import PruneSpec
    torch.set_num_threads(1)
    model = _model()
    base = PruneSpec(method="wanda", pattern="three_tier", nsamples=4, seqlen=SEQLEN, tier_scope="model")
    cal = calibrate(model, base, _ids((4, SEQLEN), 1), data="random")
    eval_ids = _ids((1, 4 * SEQLEN), 2)
    space = _small_space(base, cal)
    settings = SearchSettings(trials=int(sys.argv[2]), windows=2)
    search(_study(sys.argv[1], cal, space, settings, eval_ids, name="shared"), cal, space, settings, eval_ids, SEQLEN)
""")


def _two_workers(url, tmp_path, trials=4):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    here = os.path.dirname(__file__)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), url, str(trials), here, os.path.dirname(here)], env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]


def _check_shared(url, setup, trials=4):
    """No trial lost or duplicated; the front of the shared study is the one a single process finds re-planning and
    estimating the same splits."""
    import optuna
    model, base, cal, eval_ids = setup
    study = optuna.load_study(study_name="shared", storage=open_storage(url))
    records = trial_records(study)
    assert sorted(r["number"] for r in records) == list(range(2 * trials)) == [t.number for t in study.trials]
    assert len({r["worker"] for r in records}) == 2
    again = []
    for r in records:
        spec = PruneSpec.from_dict(r["spec"])
        plan = replan(cal, spec)
        again.append(dict(r, ppl=estimate(model, plan, eval_ids, SEQLEN, windows=2).ppl, sparsity=plan.sparsity))
    assert [(r["number"], r["ppl"]) for r in pareto_front(records, "sparsity")] == \
        pytest.approx([(r["number"], r["ppl"]) for r in pareto_front(again, "sparsity")], rel=1e-6)


@pytest.mark.slow
def test_two_worker_processes_share_one_sqlite_study(setup, tmp_path):
    url = f"sqlite:///{tmp_path}/shared.db"
    _two_workers(url, tmp_path)
    _check_shared(url, setup)


@pytest.fixture
def postgres():
    """A real PostgreSQL server from a temporary data directory, run as the postgres user (it refuses root)."""
    pg = sorted((p for p in ("/usr/lib/postgresql",) if os.path.isdir(p)), reverse=True)
    bins = sorted(os.path.join(pg[0], v, "bin") for v in os.listdir(pg[0])) if pg else []
    if not bins or not os.path.exists(os.path.join(bins[-1], "pg_ctl")):
        pytest.skip("no PostgreSQL server installed (Debian: apt-get install postgresql)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 missing: pip install psycopg2-binary")
    bin_dir = bins[-1]
    top = Path(tempfile.mkdtemp(prefix="search-pg-"))  # not under pytest's tmp: the postgres user must reach it
    data = top / "pgdata"
    data.mkdir()
    as_postgres = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
    if as_postgres:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as its own user")
        shutil.chown(top, "postgres")
        shutil.chown(data, "postgres")
    with socket.socket() as probe:  # a free port now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def run(*cmd):
        return subprocess.run(as_postgres + list(cmd), capture_output=True, text=True, timeout=120)
    try:
        init = run(f"{bin_dir}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres")
        if init.returncode != 0:
            pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
        start = run(f"{bin_dir}/pg_ctl", "-D", str(data), "-o", f"-p {port} -k {top} -c listen_addresses=127.0.0.1",
                    "-l", str(top / "pg.log"), "-w", "start")
        if start.returncode != 0:
            log = (top / "pg.log").read_text() if (top / "pg.log").exists() else ""
            pytest.skip(f"PostgreSQL did not start: {(start.stderr + log).strip()[-300:]}")
        try:
            yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
        finally:
            run(f"{bin_dir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop")
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.slow
def test_two_worker_processes_share_one_postgresql_study(setup, tmp_path, postgres):
    _two_workers(postgres, tmp_path)
    _check_shared(postgres, setup)


# --- the command line ----------------------------------------------------------------------------------------------

QUICK = ["--calib_dataset", "pydoc", "--eval_dataset", "pydoc", "--nsamples", "4", "--seqlen", "64", "--quiet",
         "--eval_windows", "2"]


def _cli(tiny_llama_dir, url, *extra):
    from engine.cli.prune_cli import main
    return main(["--model", str(tiny_llama_dir), "--sparsity_type", "three_tier", "--tier_scope", "model", "--search",
                 "--storage", url, "--study", "cli", *QUICK, *extra])


@pytest.mark.slow
def test_search_command_end_to_end_and_resumed(tiny_llama_dir, tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/cli.db"
    space = ["--search_space", "keep=4,16,64", "ratios=0.5/0.3/0.2,0.2/0.4/0.4"]
    assert _cli(tiny_llama_dir, url, "--trials", "3", "--search_seed", "0", "--save", str(tmp_path / "out"),
                *space) == 0
    out = capsys.readouterr().out
    assert "study cli in sqlite:///" in out
    assert "searching block, keep, ratios, tier_scope, assignment, within_block (" in out
    assert [line.split(" | ")[0] for line in out.splitlines() if line.startswith("trial ")] == \
        ["trial 0", "trial 1", "trial 2"]
    assert "| trial | split | sparsity | bits/weight | ppl estimate |" in out
    saved = json.loads((tmp_path / "out" / "search.json").read_text())
    assert saved["added"] == [0, 1, 2] and len(saved["trials"]) == 3 and saved["front"]
    assert saved["identity"]["calibration"]["spec"]["method"] == "wanda"
    assert _cli(tiny_llama_dir, url, "--trials", "2", *space) == 0  # the same command resumes the study
    out = capsys.readouterr().out
    assert "3 finished trials" in out and "2 trials added by this process, 5 in the study" in out
    from engine.cli.prune_cli import main
    assert main(["--list_searches", "--storage", url]) == 0
    assert "| cli | " in capsys.readouterr().out
    assert main(["--export_search", str(tmp_path / "t.csv"), "--storage", url, "--study", "cli"]) == 0
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 6


@pytest.fixture(scope="module")
def one_trial_study(tiny_llama_dir, tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('bad')}/bad.db"
    assert _cli(tiny_llama_dir, url, "--trials", "1", "--search_seed", "0") == 0
    return url


@pytest.mark.parametrize("extra, words", [
    (["--trials", "0"], "error: search trials must be a whole number in [1, 100000], got 0"),
    (["--minutes", "0"], "error: search minutes must lie in (0,"),
    ([], "error: a search needs a budget: a number of trials, minutes, or both"),
    (["--trials", "2", "--target_sparsity", "1.5"], "error: sparsity band must be two numbers 0 <= low <= high <= 1"),
    (["--trials", "2", "--target_sparsity", "0.6", "0.4"], "error: sparsity band must be two numbers"),
    (["--trials", "2", "--objective", "speed"], "error: unknown search objective 'speed'; choose one of sparsity, "
                                                "storage"),
    (["--trials", "2", "--search_space", "sparsity=0.5"], "error: three_tier has no parameter 'sparsity' to search"),
    (["--trials", "2", "--storage", "postgresql://u:pw@127.0.0.1:1/db"],
     "error: cannot open the study storage postgresql://u:***@127.0.0.1:1/db: "),
    (["--trials", "2", "--seed", "3"], "error: study 'cli' belongs to another calibration (differs in spec, windows)"),
])
def test_bad_search_settings_are_one_line_and_lose_nothing(tiny_llama_dir, one_trial_study, capsys, extra, words):
    url = one_trial_study
    args = [a for a in extra]
    if "--storage" not in args:
        args += ["--storage", url]
    from engine.cli.prune_cli import main
    rc = main(["--model", str(tiny_llama_dir), "--sparsity_type", "three_tier", "--tier_scope", "model", "--search",
               "--study", "cli", *QUICK, *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(words) and "\n" not in err and "pw" not in err
    import optuna
    assert len(trial_records(optuna.load_study(study_name="cli", storage=open_storage(url)))) == 1


def test_a_recipe_that_updates_weights_is_searched_with_the_update(tmp_path):
    """The objective of a recipe with the OBS update is the estimate with that update (from the calibration's
    Hessians), the same number `estimate(update_from=...)` gives for the split; its study is not a masks-only one."""
    model = _model(1)
    base = PruneSpec(method="wanda", pattern="three_tier", nsamples=4, seqlen=SEQLEN, reconstruct=True)
    cal = calibrate(model, base, _ids((4, SEQLEN), 1), data="random", hessians=True)
    eval_ids = _ids((1, 4 * SEQLEN), 2)
    space = search_space(base, cal.model, given={"ratios": RATIOS[:2], "keep": KEEPS[:1]}, fields=[])
    settings = SearchSettings(trials=2, seed=0, windows=2)
    ident = study_identity(cal.key, space, settings, evaluation_key(eval_ids, SEQLEN, 2, estimate, True))
    assert ident != study_identity(cal.key, space, settings, evaluation_key(eval_ids, SEQLEN, 2, estimate))
    study = open_study(open_storage(f"sqlite:///{tmp_path}/u.db"), "u", ident, settings, model="tiny")
    records = [r for r in search(study, cal, space, settings, eval_ids, SEQLEN) if r["status"] == "estimated"]
    assert records and all(r["estimate_kind"] == "with update" for r in records)
    assert not any(NO_UPDATE_NOTE in r["notes"] for r in records)  # the trial's number is not masks only
    for r in records:
        plan = replan(cal, PruneSpec.from_dict(r["requested"]))
        assert r["ppl"] == estimate(model, plan, eval_ids, SEQLEN, windows=2, update_from=cal).ppl
        assert r["ppl"] != estimate(model, plan, eval_ids, SEQLEN, windows=2).ppl  # not the masks-only number
