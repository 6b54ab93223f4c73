"""The Explore tab through its own functions (components/explore_tab.py), on the real engine and a tiny random model:
calibrate once (a second press is served from the cache), a moved slider re-plans and redraws, a newer split stops
the running estimate and leaves the model dense bit for bit, the Pareto view lists every point, Run exact lands
beside the estimate, bad input is one line."""
from __future__ import annotations

import contextlib
import html
import json
import threading
import time

import gradio as gr
import pytest
import torch

from app import Page, Settings
from components import explore_session, explore_tab, figures, runner
from components.explore_session import ExploreState
from components.session import Session
from engine.explore import evaluate_windows
from engine.methods.registry import METHODS
from engine.spec import PruneSpec
from engine.walk.layer_walk import prune_model

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")]
FAST = dict(calib="pydoc", eval_source="pydoc", nsamples=4, seqlen=64, eval_windows=2, baselines=False,
            method="wanda", reconstruct=False, within_block="score", tier_scope="layer", assignment="importance")
WINDOWS, TOKENS = 2, 32


@pytest.fixture(scope="module")
def dash(tmp_path_factory):
    return Page(Settings(runs_dir=str(tmp_path_factory.mktemp("runs"))))


def form_values(dash, **changes) -> list:
    values = {name: c.value for name, c in dash.form.items()}
    values.update(changes)
    return [values[name] for name in dash.form]


def drain(gen) -> list[dict]:
    return list(gen)


def last(outs: list[dict], component):
    return next((o[component] for o in reversed(outs) if component in o), None)


@contextlib.contextmanager
def a_long_estimate(dash, xs, dense: float, two_four: float):
    """A split whose estimate of 64 slowed windows (~0.1 s each) is streaming: (its stream, its job); the windows
    are slowed until the block ends."""
    hook = xs.setup.calibration.model.model.layers[0].register_forward_pre_hook(lambda *a: time.sleep(0.05))
    try:
        old = move(dash, xs, dense=dense, two_four=two_four, windows=explore_tab.MAX_WINDOWS)
        for out in old:
            if "of 64 windows" in (out.get(dash.explore.estimate) or ""):
                break
        yield old, xs.job
    finally:
        hook.remove()


def until_maps(dash, gen) -> None:
    """Advance a stream up to the update that carries a plan's maps, and leave it there (not resumed)."""
    while dash.explore.heatmap not in next(gen):
        pass


def params(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def bit_equal(model, saved) -> bool:
    return all(torch.equal(p.detach().reshape(-1).view(torch.uint8), saved[n].reshape(-1).view(torch.uint8))
               for n, p in model.named_parameters())


def move(dash, xs, dense=0.35, two_four=0.45, sparsity=0.5, keep=15, block=16, scope="layer",
         assignment="importance", windows=WINDOWS, tokens=TOKENS):
    replan = dict(tier_scope=scope, assignment=assignment, block=block, keep=keep)
    return explore_tab.move(dash, xs, dense, two_four, sparsity, *(replan[n] for n in explore_session.replan_params()),
                            windows, tokens, "sparsity")


@pytest.fixture(scope="module")
def calibrated(dash, tiny_llama_dir):
    xs = ExploreState()
    values = form_values(dash, model_path=str(tiny_llama_dir), **FAST)
    outs = drain(explore_tab.calibrate(dash, *values, xs, WINDOWS, TOKENS, "sparsity"))
    return xs, values, outs


def test_calibrate_then_a_slider_replans_the_maps(dash, calibrated):
    xs, values, outs = calibrated
    assert xs.setup is not None and xs.plan is not None
    assert "wanda" in last(outs, dash.explore.calib_note) and "MiB of statistics" in last(outs, dash.explore.calib_note)
    assert len(xs.points) == 1 and xs.points[0]["ppl"] > 1  # the form's split, estimated at once
    before = json.loads(last(outs, dash.explore.heatmap).to_json())["data"][0]["z"]

    outs = drain(move(dash, xs, dense=0.1, two_four=0.3))
    assert xs.plan.spec.ratios == pytest.approx((0.1, 0.3, 0.6))
    after = json.loads(last(outs, dash.explore.heatmap).to_json())["data"][0]["z"]
    assert after != before  # more top-K blocks: the map changed, without a Run
    assert "sparsity" in last(outs, dash.explore.summary) and "storage" in last(outs, dash.explore.summary)
    assert "top-K blocks: **0.60**" in last(outs, dash.explore.topk_note)
    assert "of 2 windows" in last(outs, dash.explore.estimate)
    assert "masks only" in last(outs, dash.explore.summary)


def test_a_second_press_with_the_same_settings_is_served_from_the_cache(dash, calibrated):
    xs, values, _ = calibrated
    cal = xs.setup.calibration
    t = time.perf_counter()
    drain(explore_tab.calibrate(dash, *values, xs, None, TOKENS, "sparsity"))  # no estimate: the press alone
    assert xs.setup.calibration is cal and xs.setup.cached
    assert time.perf_counter() - t < max(5.0, cal.seconds)


def test_a_new_split_stops_the_running_estimate_and_the_model_is_left_dense(dash, calibrated):
    xs, _, _ = calibrated
    model = xs.setup.calibration.model
    dense = params(model)
    with a_long_estimate(dash, xs, dense=0.5, two_four=0.3) as (old, old_job):
        new = drain(move(dash, xs, dense=0.2, two_four=0.4))
        assert old_job.done.wait(10)
        assert drain(old) == []  # superseded: the old stream ends without a word
        ended = [e["estimate"] for e in old_job.events if e.get("stage") == "estimated"]
        assert ended and ended[0].status == "cancelled" and ended[0].windows < 64
        assert "of 2 windows" in last(new, dash.explore.estimate)
    assert bit_equal(model, dense)
    assert not any(p["label"].startswith("wanda three-tier 0.5/0.3") for p in xs.points)  # not a finished point


def test_a_release_during_an_estimate_draws_its_maps_before_the_old_estimate_lets_go(dash, calibrated, monkeypatch):
    """A split whose ratios moved is re-planned from the calibration's kept block choices while the superseded
    estimate is still stopping and putting the dense weights back (held here until the new maps are out); before,
    the new maps waited for the old job to let go of the engine (0.3-0.7 s of a 2 s release in the browser)."""
    from engine.explore import estimates
    xs, _, _ = calibrated
    model = xs.setup.calibration.model
    dense = params(model)
    let_go, real_undo = threading.Event(), estimates._undo
    monkeypatch.setattr(estimates, "_undo", lambda removed: (let_go.wait(5), real_undo(removed)))
    with a_long_estimate(dash, xs, dense=0.45, two_four=0.3) as (old, old_job):
        try:
            new = move(dash, xs, dense=0.15, two_four=0.4)
            until_maps(dash, new)
            assert old_job.running  # still letting go of the engine: the maps did not wait for it
            assert xs.plan.spec.ratios == pytest.approx((0.15, 0.4, 0.45))
        finally:
            let_go.set()
        rest = drain(new)
        assert old_job.done.wait(10) and drain(old) == []
        assert "of 2 windows" in last(rest, dash.explore.estimate)
    assert bit_equal(model, dense)


def test_the_estimate_waits_until_the_maps_were_sent(dash, calibrated, monkeypatch):
    """The maps go to the page before the estimate's forward passes take the cores: the job holds its estimate until
    the stream resumes after yielding the maps (Gradio resumes it once it has sent them), at most MAPS_FIRST_S."""
    xs, _, _ = calibrated
    monkeypatch.setattr(explore_session, "MAPS_FIRST_S", 30.0)
    gen = move(dash, xs, dense=0.3, two_four=0.3)
    until_maps(dash, gen)
    time.sleep(0.5)  # the maps are out, not yet sent: the stream has not resumed
    job = xs.job
    assert not any(e.get("stage") in ("estimate", "estimated") for e in job.events)
    rest = drain(gen)  # resumed: the maps were sent
    assert job.done.wait(30)
    assert any(e.get("stage") == "estimated" for e in job.events)
    assert "of 2 windows" in last(rest, dash.explore.estimate)


def test_the_estimate_starts_anyway_when_the_page_never_takes_the_maps(dash, calibrated, monkeypatch):
    xs, _, _ = calibrated
    monkeypatch.setattr(explore_session, "MAPS_FIRST_S", 0.2)
    gen = move(dash, xs, dense=0.25, two_four=0.35)
    until_maps(dash, gen)
    job = xs.job
    assert job.done.wait(30)  # the stream is never resumed: the estimate ran after 0.2 s
    assert [e["estimate"].status for e in job.events if e.get("stage") == "estimated"] == ["completed"]
    gen.close()


def test_the_pareto_view_lists_every_explored_point(dash, calibrated):
    xs, _, _ = calibrated
    drain(move(dash, xs, dense=0.6, two_four=0.2))
    drain(explore_tab.references(dash, xs, WINDOWS, TOKENS, "sparsity"))
    labels = [p["label"] for p in xs.points]
    assert len(labels) == len(set(labels)) >= 4
    assert [p["kind"] for p in xs.points].count("reference") == 2
    rows = explore_session.points_table(xs.points)
    assert [r[0] for r in rows] == [p["n"] for p in xs.points]
    assert any(r[-1] == "✓" for r in rows)
    for axis in ("sparsity", "storage"):
        fig = json.loads(figures.pareto_figure(xs.points, axis).to_json())
        drawn = [t for tr in fig["data"] if tr.get("mode") == "markers+text" for t in tr["text"]]
        assert sorted(drawn) == sorted(f"#{p['n']}" for p in xs.points)
    # a point re-opens its maps
    outs = drain(explore_tab.open_point(dash, xs, xs.points[0]["n"], "sparsity"))
    assert xs.plan.spec.label() == xs.points[0]["label"] and last(outs, dash.explore.heatmap) is not None


def test_sparsegpt_references_are_pruned_for_real_on_the_estimate_windows_and_leave_the_model_dense(dash,
                                                                                                     calibrated):
    xs, _, _ = calibrated
    model = xs.setup.calibration.model
    dense = params(model)
    outs = drain(explore_tab.strongest_references(dash, xs, WINDOWS, TOKENS, "sparsity"))
    assert bit_equal(model, dense)
    refs = [p for p in xs.points if p["kind"] == explore_session.EXACT_REFERENCE]
    assert [p["label"] for p in refs] == [s.label() for s in explore_session.strongest_specs(xs.setup.spec)]
    assert [p["label"].split()[0] for p in refs] == ["sparsegpt", "sparsegpt"]
    assert [p["sparsity"] for p in refs] == [0.5, 0.5] and all(p["windows"] == WINDOWS for p in refs)
    assert "exact walk" in last(outs, dash.explore.status)
    # the number is the pruned model's perplexity on the estimate's windows
    spec = explore_session.strongest_specs(xs.setup.spec)[0]
    prune_model(model, spec, xs.setup.windows)
    try:
        want = evaluate_windows(model, xs.setup.eval_ids, TOKENS, windows=WINDOWS).ppl
    finally:
        runner.MODELS.restore()
    assert refs[0]["ppl"] == pytest.approx(want, rel=1e-6)
    fig = json.loads(figures.pareto_figure(xs.points).to_json())
    drawn = next(t for t in fig["data"] if t.get("name", "").startswith("SparseGPT reference"))
    assert sorted(drawn["text"]) == sorted(f"#{p['n']}" for p in refs)


def test_strongest_specs_keep_the_calibration_data_and_take_the_method_that_chooses_while_updating():
    base = PruneSpec(method="fisher_wanda", pattern="three_tier", nsamples=8, seqlen=128, seed=3)
    two_four, unstructured = explore_session.strongest_specs(base)
    assert METHODS[two_four.method].chooses_while_updating and two_four.method == unstructured.method
    assert (two_four.pattern, two_four.n, two_four.m) == ("nm", 2, 4)
    assert (unstructured.pattern, unstructured.sparsity) == ("unstructured", 0.5)
    assert all((s.nsamples, s.seqlen, s.seed) == (8, 128, 3) for s in (two_four, unstructured))


def test_pareto_front_is_the_points_nothing_beats():
    x, y = [0.3, 0.5, 0.5, 0.6, 0.4], [10.0, 12.0, 15.0, 30.0, 11.0]
    assert explore_session.pareto_front(x, y) == [0, 4, 1, 3]
    assert explore_session.pareto_front(x, y, more_x_is_better=False) == [0]


def test_run_exact_lands_beside_the_estimate(dash, calibrated):
    xs, values, _ = calibrated
    drain(move(dash, xs, dense=0.35, two_four=0.45))
    s = Session()
    outs = drain(explore_tab.run_exact(dash, *values, xs, s))
    assert s.runs and s.runs[-1]["status"] == "completed"
    assert s.runs[-1]["spec"]["ratios"] == [0.35, 0.45, 0.2]
    point = next(p for p in xs.points if p["label"] == xs.plan.spec.label())
    assert point["exact"] == pytest.approx(s.runs[-1]["ppl"]["pruned"])
    assert "Exact run" in last(outs, dash.explore.status)
    # the next split finds the model pruned by that run and puts the dense weights back first
    drain(move(dash, xs, dense=0.3, two_four=0.5))
    assert runner.MODELS.holds_run is None and xs.points[-1]["ppl"] > 1


def test_bad_input_is_one_line(dash, calibrated, tiny_llama_dir):
    xs, values, _ = calibrated
    outs = drain(move(dash, xs, keep=300))
    status = last(outs, dash.explore.status)
    assert "err" in status and "\n" not in status and "Traceback" not in status
    outs = drain(move(dash, xs, windows=0))
    assert "estimate windows must be between 1" in last(outs, dash.explore.status)
    assert "Press Calibrate first" in last(drain(move(dash, ExploreState())), dash.explore.status)
    bad = form_values(dash, model_path=str(tiny_llama_dir / "missing"), **FAST)
    with pytest.raises(gr.Error) as err:
        drain(explore_tab.calibrate(dash, *bad, ExploreState(), WINDOWS, TOKENS, "sparsity"))
    assert "\n" not in str(err.value.message) and "Traceback" not in str(err.value.message)


def test_a_recipe_with_the_update_is_estimated_masks_only_then_with_the_update(dash, tiny_llama_dir):
    xs = ExploreState()
    values = form_values(dash, model_path=str(tiny_llama_dir), **{**FAST, "reconstruct": True})
    outs = drain(explore_tab.calibrate(dash, *values, xs, WINDOWS, TOKENS, "sparsity"))
    model = xs.setup.calibration.model
    dense = params(model)
    assert "MiB of Hessians" in last(outs, dash.explore.calib_note)
    outs = drain(move(dash, xs, dense=0.2, two_four=0.4))
    boxes = [o[dash.explore.estimate] for o in outs if dash.explore.estimate in o]
    assert "with update" in boxes[-1]  # the masks-only box may be drawn over in the same update: the events say
    kinds = [e["estimate"].kind for e in xs.job.events if e.get("stage") == "estimated"]
    assert kinds == ["masks only", "with update"]
    assert "with update" in last(outs, dash.explore.status)
    point = next(p for p in xs.points if p["label"] == xs.plan.spec.label())
    assert point["estimate"] == "with update" and point["masks_only"] > 0 and point["ppl"] != point["masks_only"]
    assert explore_session.points_table(xs.points)[point["n"] - 1][2] == "split, with update"
    fig = json.loads(figures.pareto_figure(xs.points).to_json())
    assert "explored split (estimate, with update)" in {t.get("name") for t in fig["data"]}
    assert bit_equal(model, dense)


def test_calibrate_streams_first_maps_from_a_few_windows_then_replans_on_all(dash, tiny_llama_dir):
    xs = ExploreState()
    values = form_values(dash, model_path=str(tiny_llama_dir), **{**FAST, "nsamples": explore_session.FIRST_WINDOWS + 4,
                                                                  "seed": 7})
    outs = drain(explore_tab.calibrate(dash, *values, xs, WINDOWS, TOKENS, "sparsity"))
    notes = [o[dash.explore.calib_note] for o in outs if dash.explore.calib_note in o]
    first = explore_session.FIRST_WINDOWS
    assert f"first maps from {first} of {first + 4} calibration windows" in notes[0]
    boxes = [o[dash.explore.estimate] for o in outs if dash.explore.estimate in o]
    assert any(f"from {explore_session.FIRST_WINDOWS} calibration windows" in b for b in boxes)
    first_maps = next(i for i, o in enumerate(outs) if dash.explore.heatmap in o)
    landed = next(i for i, o in enumerate(outs) if "first maps" not in o.get(dash.explore.calib_note, "first maps"))
    assert first_maps < landed  # maps drawn before the full calibration landed
    assert xs.setup.calibration.windows == explore_session.FIRST_WINDOWS + 4 and "first maps" not in notes[-1]
    assert len(xs.points) == 1  # the split of the full calibration; the first estimate is shown, not kept


def hold_the_rest(monkeypatch) -> threading.Event:
    """A progressive calibration whose other windows start only once the returned event is set (at most 30 s):
    the first windows' maps come, the rest waits for the test."""
    held, real = threading.Event(), explore_session.calibrate_progressively

    def rest_held(*args, **kwargs):
        gen = real(*args, **kwargs)
        yield next(gen)
        held.wait(30)
        yield from gen
    monkeypatch.setattr(explore_session, "calibrate_progressively", rest_held)
    return held

def test_a_split_moved_while_the_rest_calibrates_keeps_the_calibration_going_and_is_replanned_when_it_lands(
        dash, tiny_llama_dir, monkeypatch):
    """A slider released after the first maps, while the other calibration windows run, stops the first split's
    estimate but not the calibration (it stopped it: the tab went on from the first windows alone, its note still
    saying the rest were coming); the moved split is drawn at once and planned again on all windows when they land.
    A search or the SparseGPT references wait for the landing (one line)."""
    held = hold_the_rest(monkeypatch)
    xs, first = ExploreState(), explore_session.FIRST_WINDOWS
    values = form_values(dash, model_path=str(tiny_llama_dir), **{**FAST, "nsamples": first + 4, "seed": 11})
    calibrating = explore_tab.calibrate(dash, *values, xs, WINDOWS, TOKENS, "sparsity")
    try:
        until_maps(dash, calibrating)
        assert xs.setup.calibration.windows == first
        moved = move(dash, xs, dense=0.1, two_four=0.3, keep=xs.setup.spec.keep)  # the ratios moved: drawn at once
        seen = []  # its maps at once; its estimate waits for the calibration, and says so
        while not (any(dash.explore.heatmap in o for o in seen) and any(
                html.escape(explore_tab.WAITING_FOR_CALIBRATION) in str(o.get(dash.explore.status)) for o in seen)):
            seen.append(next(moved))
        assert xs.plan.spec.ratios == pytest.approx((0.1, 0.3, 0.6)) and not held.is_set()
        searched = drain(explore_tab.start_search(dash, xs, "sparsity", 0.4, 0.6, None, 2, None, None, None,
                                                  WINDOWS, TOKENS, "sparsity"))
        strongest = drain(explore_tab.strongest_references(dash, xs, WINDOWS, TOKENS, "sparsity"))
    finally:
        held.set()
    outs = drain(calibrating)  # the page resumes the calibration's stream at once: the moved split's job waits
    assert drain(moved) == [] and xs.job.done.wait(10)  # superseded by the landing
    assert xs.setup.calibration.windows == first + 4  # the rest landed
    landed = next(i for i, o in enumerate(outs) if "first maps" not in o.get(dash.explore.calib_note, "first maps"))
    assert any(dash.explore.heatmap in o for o in outs[landed:])  # the moved split re-planned on all windows
    assert xs.plan.spec.ratios == pytest.approx((0.1, 0.3, 0.6))
    assert "banner ok" in last(outs, dash.explore.status) and "of 2 windows" in last(outs, dash.explore.estimate)
    assert [p["label"] for p in xs.points] == [xs.plan.spec.label()]  # estimated once, on all windows
    assert last(outs, dash.explore.dense) is None  # the sliders stay where the user left them
    assert "still running" in last(searched, dash.explore.search.status)
    assert "still running" in last(strongest, dash.explore.status)


def test_a_split_moved_before_the_first_maps_is_drawn_from_the_first_windows_once_it_can_be(dash, tiny_llama_dir,
                                                                                            monkeypatch):
    """Released before the first split's maps (its block choices still being made, so nothing to plan it from
    ahead), the moved split is drawn from the first windows as soon as they exist, not the form's split."""
    gate, real_replan = threading.Event(), explore_session.replan

    def gated_replan(*args):  # the first split's plan (and its block choices) waits for the test's release
        gate.wait(30)
        return real_replan(*args)
    monkeypatch.setattr(explore_session, "replan", gated_replan)
    held = hold_the_rest(monkeypatch)
    xs = ExploreState()
    values = form_values(dash, model_path=str(tiny_llama_dir), **{**FAST, "nsamples": explore_session.FIRST_WINDOWS
                                                                  + 4, "seed": 13})
    calibrating = explore_tab.calibrate(dash, *values, xs, WINDOWS, TOKENS, "sparsity")
    try:
        while xs.first_stop is None:  # up to the first windows' calibration, before its split is planned
            next(calibrating)
        moved = move(dash, xs, dense=0.1, two_four=0.3, keep=xs.setup.spec.keep)
        while html.escape(explore_tab.WAITING_FOR_CALIBRATION) not in str(next(moved).get(dash.explore.status)):
            pass  # no maps ahead: they wait
        assert xs.plan is None
        gate.set()
        drawn = next(o for o in calibrating if dash.explore.heatmap in o)
        assert explore_tab.WAITING_NOTE in drawn[dash.explore.estimate]  # its estimate waits for the landing
        assert xs.plan.spec.ratios == pytest.approx((0.1, 0.3, 0.6))
        assert xs.setup.calibration.windows == explore_session.FIRST_WINDOWS  # drawn from the first windows
    finally:
        gate.set()
        held.set()
    outs = drain(calibrating)
    assert drain(moved) == [] and xs.setup.calibration.windows == explore_session.FIRST_WINDOWS + 4
    assert xs.plan.spec.ratios == pytest.approx((0.1, 0.3, 0.6)) and "banner ok" in last(outs, dash.explore.status)
