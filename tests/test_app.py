"""The dashboard driven like a client would: launched in-process, called over HTTP with gradio_client.

Uses the real engine on tiny random models saved to disk (tests/conftest.py) and the offline "pydoc" text.
"""
from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client.exceptions import AppError  # noqa: E402

from components.session import grid_splits, nominal_text, parse_splits, rebalance  # noqa: E402
from engine.errors import UserError  # noqa: E402
from engine.spec import PruneSpec  # noqa: E402
from tests.conftest import save_tiny_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")  # raised inside gradio's queue
FAST = dict(calib="pydoc", eval_source="pydoc", nsamples=4, seqlen=64, eval_windows=4)


# -- the form's helpers, without a server --------------------------------------------------------------------------

@pytest.mark.parametrize("changed, values", [(0, (0.5, 0.45, 0.2)), (1, (0.35, 0.9, 0.2)), (2, (0.35, 0.45, 1.0)),
                                             (0, (0.2, 0.0, 0.0)), (1, (0.3, 0.33, 0.3))])
def test_rebalance_keeps_the_moved_ratio_and_sums_to_one(changed, values):
    out = rebalance(changed, values)
    assert sum(out) == pytest.approx(1, abs=1e-9)
    assert out[changed] == pytest.approx(round(values[changed], 2))
    assert all(0 <= x <= 1 for x in out)


def test_rebalance_rescales_the_other_two_in_proportion():
    assert rebalance(0, (0.6, 0.45, 0.2)) == pytest.approx((0.6, 0.28, 0.12))  # 0.45:0.2 of the remaining 0.4
    assert rebalance(2, (0.0, 0.0, 0.5)) == pytest.approx((0.25, 0.25, 0.5))   # nothing to scale: split evenly


def test_nominal_text_uses_the_spec_and_reports_its_complaint():
    text = nominal_text("three_tier", 0.5, 2, 4, 0.35, 0.45, 0.2, 16, 15)
    assert f"{PruneSpec(pattern='three_tier').nominal_sparsity():.1%}" in text
    assert "sum to 1" in nominal_text("three_tier", 0.5, 2, 4, 0.5, 0.5, 0.5, 16, 15)
    assert "50.0%" in nominal_text("nm", 0.5, 2, 4, 0.35, 0.45, 0.2, 16, 15)


def test_sweep_splits_parse_and_refuse_readably():
    assert parse_splits("0.35/0.45/0.20\n# comment\n0.5, 0.3, 0.2\n") == [(0.35, 0.45, 0.2), (0.5, 0.3, 0.2)]
    with pytest.raises(UserError, match="line 2.*sums to 1.1"):
        parse_splits("0.35/0.45/0.20\n0.5/0.4/0.2")
    with pytest.raises(UserError, match="not three numbers"):
        parse_splits("dense heavy")
    grid = parse_splits(grid_splits(0.25))
    assert len(grid) == 15 and (1.0, 0.0, 0.0) in grid and (0.25, 0.5, 0.25) in grid


# -- the app over HTTP -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app_module(tmp_path_factory):
    import os
    os.environ["SPARSITY_CACHE"] = str(tmp_path_factory.mktemp("baseline-cache"))  # never the user's cache
    import app
    return app


@pytest.fixture(scope="module")
def server(app_module):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app_module.demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app_module.demo.close()


@pytest.fixture(scope="module")
def deep_llama_dir(tmp_path_factory, tiny_tokenizer):
    """16 tiny decoder layers: a SparseGPT run long enough (~0.7 s a layer) to be stopped halfway."""
    return save_tiny_model(tmp_path_factory.mktemp("deep-llama"), tiny_tokenizer, "llama", layers=16)


def client(url):
    return gradio_client.Client(url, verbose=False)


def out(app, result, component):
    return result[app.JOB_OUTPUTS.index(component)]


def plot_json(value) -> dict:
    return json.loads(value["plot"])


def z_of(trace) -> np.ndarray:
    z = trace["z"]
    if isinstance(z, dict):  # plotly sends numpy arrays as base64 typed arrays
        import base64
        return np.frombuffer(base64.b64decode(z["bdata"]), dtype=np.dtype(z["dtype"])).reshape(
            [int(x) for x in str(z["shape"]).split(",")])
    return np.array(z, dtype=float)


def test_a_run_streams_progress_and_returns_heatmap_and_tier_map(app_module, server, tiny_llama_dir):
    app = app_module
    c = client(server)
    job = c.submit(model_path=str(tiny_llama_dir), **FAST, api_name="/run")
    result = job.result(timeout=60)
    assert "Done" in out(app, result, app.status), out(app, result, app.status)
    assert len(job.outputs()) >= 2  # streamed (per-layer updates are checked on a longer run below)
    assert "2 of 2 decoder layers pruned" in out(app, result, app.progress)

    heat = plot_json(out(app, result, app.heatmap))["data"][0]
    z = z_of(heat)
    assert z.shape == (2, 7) and np.isfinite(z).all() and (z > 0.3).all()  # 2 layers x 7 LLaMA matrices
    assert heat["x"][0] == "self_attn.q_proj" and heat["x"][-1] == "mlp.down_proj"

    tier = plot_json(out(app, result, app.tiermap))
    maps = [t for t in tier["data"] if t["type"] == "heatmap"]
    assert [t["name"] for t in maps] == ["dense", "2:4", "top-K"]
    drawn = sum(np.isfinite(z_of(t)) for t in maps)
    assert drawn.shape == (4, 4) and (drawn == 1).all()  # q_proj [64, 64]: 4 x 4 blocks, each in one tier
    assert "layer 0" in tier["layout"]["title"]["text"]

    assert "perplexity" in out(app, result, app.overview)
    runs = out(app, result, app.runs_df)
    assert len(runs["data"]) == 1 and runs["data"][0][1] == "completed"

    # choosing another matrix in the dropdowns redraws the tier map for it
    fig, note = c.predict(1, "mlp.down_proj", api_name="/tier_map")
    assert "layer 1 · mlp.down_proj" in plot_json(fig)["layout"]["title"]["text"]
    assert "4 × 8 blocks" in note  # [64, 128] in 16 x 16 blocks

    # export: the record as JSON
    files = c.predict(0, api_name="/export_json")
    with open(files[0] if isinstance(files[0], str) else files[0]["path"]) as f:
        record = json.load(f)
    assert record["status"] == "completed" and len(record["matrices"]) == 14


def wait_for_layer(job, timeout: float = 60):
    """Until the run's progress bar shows a finished decoder layer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(o and o[1] and "decoder layer" in o[1] for o in job.outputs()):
            return
        time.sleep(0.1)
    pytest.fail("the run never reported a decoder layer")


DEEP_RUN = dict(method="sparsegpt", calib="pydoc", nsamples=8, seqlen=64, eval_source="none")


def test_stop_interrupts_a_long_run_between_layers(app_module, server, deep_llama_dir):
    app = app_module
    c = client(server)
    job = c.submit(model_path=str(deep_llama_dir), **DEEP_RUN, api_name="/run")
    wait_for_layer(job)
    t_stop = time.monotonic()
    c.predict(api_name="/stop")
    result = job.result(timeout=60)
    assert time.monotonic() - t_stop < 10, "Stop must land between layers, not at the end"
    text = out(app, result, app.status)
    assert "Stopped" in text and "restored to dense weights" in text, text
    runs = out(app, result, app.runs_df)["data"]
    assert runs[-1][1] == "cancelled"
    heat = z_of(plot_json(out(app, result, app.heatmap))["data"][0])
    assert heat.shape[0] == 16
    done = np.isfinite(heat).all(axis=1)
    assert 1 <= done.sum() < 16 and not done[-1]  # the first layers pruned, the rest untouched


def test_one_heavy_job_at_a_time_the_next_waits_in_the_queue(app_module, server, deep_llama_dir, tiny_llama_dir):
    from gradio_client.utils import Status

    app = app_module
    first, second = client(server), client(server)  # two browser tabs
    job1 = first.submit(model_path=str(deep_llama_dir), **DEEP_RUN, api_name="/run")
    wait_for_layer(job1)
    job2 = second.submit(model_path=str(tiny_llama_dir), **FAST, api_name="/run")
    time.sleep(1.0)
    assert job2.status().code == Status.IN_QUEUE and not job1.done()
    second.predict(api_name="/stop")  # another tab's Stop leaves this run alone
    time.sleep(0.5)
    assert not job1.done()
    first.predict(api_name="/stop")
    assert "Stopped" in out(app, job1.result(timeout=60), app.status)
    assert "Done" in out(app, job2.result(timeout=60), app.status)


@pytest.mark.parametrize("kwargs, message", [
    (dict(ratio_dense=0.5, ratio_24=0.5, ratio_topk=0.5), "sum to 1"),
    (dict(pattern="nm", n=4, m=4), "N < M"),
    (dict(model_path="/no/such/model-dir"), "no/such/model-dir"),
    (dict(calib="path", calib_path=""), "calibration"),
])
def test_bad_input_comes_back_as_one_readable_line(server, tiny_llama_dir, kwargs, message):
    c = client(server)
    args = dict(model_path=str(tiny_llama_dir), **FAST)
    args.update(kwargs)
    with pytest.raises(AppError) as err:
        c.predict(**args, api_name="/run")
    text = str(err.value)
    assert message in text, text
    assert "Traceback" not in text and "\n" not in text.strip()


def test_sweep_runs_each_split_and_fills_the_triangle(app_module, server, tiny_llama_dir):
    app = app_module
    c = client(server)
    result = c.predict(splits="0.35/0.45/0.20\n0.6/0.2/0.2", model_path=str(tiny_llama_dir), method="magnitude",
                       **FAST, api_name="/sweep")
    assert "2 split(s)" in out(app, result, app.status)
    tern = plot_json(out(app, result, app.ternary))
    (points,) = [t for t in tern["data"] if t.get("name") == "runs"]
    a = points["a"] if isinstance(points["a"], list) else z_of({"z": points["a"]}).tolist()
    assert sorted(np.round(a, 2).tolist()) == [0.35, 0.6]
    assert len(out(app, result, app.runs_df)["data"]) == 2  # this client's session only
