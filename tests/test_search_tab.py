"""The Explore tab's Search panel through its own functions (components/explore_tab.py) on the real engine and a
tiny random model: trials stream into the points as they finish, Stop keeps every finished trial, a restarted
server lists the search and reopens its front, a trial opens its maps, bad settings are one line."""
from __future__ import annotations

import optuna
import pytest

from app import Page, Settings
from components import explore_session, explore_tab
from components.explore_session import ExploreState
from conftest import slow_down_estimates
from engine.explore.split_search import open_storage, trial_records
from engine.spec import PruneSpec

pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")
FAST = dict(calib="pydoc", eval_source="pydoc", nsamples=4, seqlen=64, eval_windows=2, baselines=False,
            method="wanda", reconstruct=False, within_block="score", tier_scope="layer", assignment="importance",
            pattern="three_tier")
WINDOWS, TOKENS = 2, 32


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return str(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def dash(runs):
    return Page(Settings(runs_dir=runs))


def form_values(dash, **changes) -> list:
    values = {name: c.value for name, c in dash.form.items()}
    values.update(changes)
    return [values[name] for name in dash.form]


def last(outs, component):
    return next((o[component] for o in reversed(outs) if component in o), None)


@pytest.fixture(scope="module")
def calibrated(dash, tiny_llama_dir):
    xs = ExploreState()
    list(explore_tab.calibrate(dash, *form_values(dash, model_path=str(tiny_llama_dir), **FAST), xs, WINDOWS, TOKENS,
                               "sparsity"))
    assert xs.setup is not None
    return xs


def start(dash, xs, trials=6, low=0.0, high=1.0, objective="sparsity", minutes=None, max_bits=None):
    return explore_tab.start_search(dash, xs, objective, low, high, max_bits, trials, minutes, "", "", WINDOWS,
                                    TOKENS, "sparsity")


@pytest.fixture
def slow_estimates(monkeypatch):
    """Each estimate 0.4 s longer: a Stop between trials must not depend on the machine's speed."""
    slow_down_estimates(monkeypatch, 0.4)


def test_a_search_streams_its_trials_and_stop_keeps_the_finished_ones(dash, calibrated, runs, slow_estimates):
    xs, panel = calibrated, dash.explore.search
    outs, seen = [], []
    for out in start(dash, xs):
        outs.append(out)
        if dash.explore.points in out:
            seen.append(sum(p["kind"] == explore_session.SEARCH for p in xs.points))
        if "(2 of 6)" in str(out.get(panel.status, "")):
            xs.job.stop()
    final = last(outs, panel.status)
    assert "stopped: 2 trials added, all kept in the study" in final
    assert seen[-1] >= 1 and seen == sorted(seen)  # points arrived one trial at a time
    [name] = [s for s in optuna.get_all_study_names(open_storage(f"sqlite:///{runs}/searches.sqlite3"))]
    study = optuna.load_study(study_name=name, storage=open_storage(f"sqlite:///{runs}/searches.sqlite3"))
    assert len(trial_records(study)) == 2
    assert last(outs, panel.past).constructor_args["choices"][0][1] == name
    # "then Run exact on the front's best" is for a search that used its budget, not one stopped
    assert xs.search_ended == "stopped"
    from components.session import Session
    s = Session()
    assert list(explore_tab.exact_after_search(dash, *form_values(dash), xs, s, "sparsity", True)) == []
    assert s.runs == []


def test_a_restarted_server_lists_the_search_and_reopens_its_front(dash, calibrated, runs):
    list(start(dash, calibrated, trials=2))  # the same calibration and settings: the study resumes (or starts)
    storage = open_storage(f"sqlite:///{runs}/searches.sqlite3")
    [name] = optuna.get_all_study_names(storage)
    n = len(trial_records(optuna.load_study(study_name=name, storage=storage)))
    assert n >= 2
    again = Page(Settings(runs_dir=runs))
    [(title, listed)] = again.explore.search.past.choices
    assert listed == name and f"{n} trials" in title
    xs = ExploreState()
    outs = list(explore_tab.open_search(again, xs, name, "", "sparsity"))
    status = last(outs, again.explore.search.status)
    assert f"{n} trials" in status and "on the front; best" in status
    trials = [p for p in xs.points if p["kind"] == explore_session.SEARCH]
    assert trials and all(p["ppl"] > 1 for p in trials)
    rows = last(outs, again.explore.points)
    assert any(r[-1] == "✓" for r in rows)
    # a click on a trial opens its maps, re-planned from the calibration it was searched on
    shown = calibrated.plan.spec.label()
    point = next(p for p in calibrated.points if p["kind"] == explore_session.SEARCH and p["label"] != shown)
    list(explore_tab.open_point(dash, calibrated, point["n"], "sparsity"))
    assert calibrated.plan.spec.label() == point["label"]
    outs = list(explore_tab.open_point(dash, xs, trials[0]["n"], "sparsity"))  # no calibration here
    assert "Press Calibrate first" in str(last(outs, dash.explore.status))


@pytest.mark.slow
def test_run_exact_on_the_fronts_best_after_a_search_puts_exact_numbers_by_estimates(dash, calibrated, tiny_llama_dir):
    from components.session import Session

    xs = calibrated
    list(start(dash, xs, trials=3))
    trials = [p for p in xs.points if p["kind"] == explore_session.SEARCH]
    front = sorted((trials[i] for i in explore_session.pareto_front([p["sparsity"] for p in trials],
                                                            [p["ppl"] for p in trials])), key=lambda p: p["ppl"])[:3]
    assert xs.search_ended == "finished"
    s = Session()
    values = form_values(dash, model_path=str(tiny_llama_dir), **FAST)
    assert list(explore_tab.exact_after_search(dash, *values, xs, s, "sparsity", False)) == []  # not asked
    list(explore_tab.exact_after_search(dash, *values, xs, s, "sparsity", True))  # the search's end, when asked
    assert len(s.runs) == len(front) and all(r["status"] == "completed" for r in s.runs)
    for p, run in zip(front, s.runs):
        assert run["spec"]["ratios"] == list(PruneSpec.from_dict(p["requested"]).ratios)
        assert p["exact"] == pytest.approx(run["ppl"]["pruned"])


@pytest.mark.parametrize("kw, words", [
    (dict(trials=0), "search trials must be a whole number in [1,"),
    (dict(trials=None), "needs a budget"),
    (dict(low=0.2, high=1.5), "sparsity band must be two numbers"),
    (dict(objective="speed"), "unknown search objective"),
])
def test_bad_search_settings_are_one_line(dash, calibrated, kw, words):
    before = list(calibrated.points)
    outs = list(start(dash, calibrated, **kw))
    status = str(last(outs, dash.explore.search.status))
    assert words in status and status.count("\n") == 0
    assert calibrated.points == before  # nothing lost


def test_an_unreachable_storage_is_one_line(dash, calibrated):
    before = list(calibrated.points)
    outs = list(explore_tab.start_search(dash, calibrated, "sparsity", 0, 1, 0, 2, 0, "postgresql://u:pw@127.0.0.1:1/x",
                                         "", WINDOWS, TOKENS, "sparsity"))
    status = str(last(outs, dash.explore.search.status))
    assert "cannot open the study storage postgresql://u:***@127.0.0.1:1/x" in status and "pw" not in status
    assert calibrated.points == before


def test_a_public_server_bounds_the_search(tmp_path, calibrated):
    public = Page(Settings(runs_dir=str(tmp_path), public=True))
    xs = calibrated
    outs = list(explore_tab.start_search(public, xs, "sparsity", 0, 1, None, 500, 5, "", "", WINDOWS, TOKENS,
                                         "sparsity"))
    assert "adds at most 60 trials" in str(last(outs, public.explore.search.status))
