"""Public mode (a Space, `--public`, SPARSITY_PUBLIC=1): the policy on its own (components/policy.py), then the
same refusals through a dashboard built in public mode and called over HTTP, and the guards behind it."""
from __future__ import annotations

import json

import pytest
import torch

from components import policy, tables
from components.policy import PUBLIC_LIMITS, check_request, validate_request
from components.session import config_param_count, size_guard
from engine.errors import ModelLoadError, UserError
from engine.io.models import load_model
from engine.run import ModelCache, RunRequest

pytestmark = [pytest.mark.slow,  # end to end through the served dashboard
              pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")]  # raised inside gradio's queue

# A complete, allowed public form (the dashboard's field names); each case below changes one thing.
GOOD = dict(model="embedded", model_path="HuggingFaceTB/SmolLM2-135M-Instruct", calib="pydoc", calib_path="",
            eval_source="wikitext2", eval_path="", save_dir="", nsamples=128, seqlen=2048, eval_windows=64)
NO_DISK = dict(exists=lambda path: False)  # the policy without its one look at the disk

REFUSED = [
    (dict(model_path="../../etc"), "looks like a path"),
    (dict(model_path="/etc/passwd"), "looks like a path"),
    (dict(model_path="a/b/../c"), "looks like a path"),
    (dict(model_path="~/models/llama"), "looks like a path"),
    (dict(model_path="./llama"), "looks like a path"),
    (dict(model_path="owner\\..\\name"), "looks like a path"),
    (dict(model_path="a/b/c"), "not a hub id"),
    (dict(model_path="llama"), "not a hub id"),
    (dict(model_path="owner/na me"), "not a hub id"),
    (dict(model_path="-x/y"), "not a hub id"),
    (dict(model_path="owner/naｍe"), "not a hub id"),  # a full-width letter: ASCII ids only
    (dict(model_path="owner/model.Q4.gguf"), ".gguf"),
    (dict(model="/srv/models/secret", model_path=""), "looks like a path"),
    (dict(save_dir="out/model"), "saving"),
    (dict(calib="path", calib_path="/etc/passwd"), "calibration text"),
    (dict(calib_path="/etc/passwd"), "calibration text"),
    (dict(eval_source="path", eval_path="data/"), "evaluation text"),
    (dict(eval_path="~/.ssh/id_rsa"), "evaluation text"),
    (dict(nsamples=129), "at most 128"),
    (dict(seqlen=4096), "at most 2048"),
    (dict(eval_windows=65), "at most 64"),
    (dict(eval_windows=None), "blank means every window"),
]
NOT_OVER_HTTP = [(dict(nsamples=float("nan")), "at most 128")]  # JSON cannot carry it


def form(**changes) -> dict:
    return {**GOOD, **changes}


def test_an_allowed_public_request_passes():
    assert validate_request(GOOD, public=True, **NO_DISK) == []
    assert validate_request(form(model_path="", model="Qwen/Qwen2.5-0.5B", eval_source="none", eval_windows=None,
                                 seqlen=None), public=True, **NO_DISK) == []
    assert validate_request(form(model_path=""), public=True, **NO_DISK) == []  # the embedded model


@pytest.mark.parametrize("changes, message", REFUSED + NOT_OVER_HTTP)
def test_the_policy_refuses(changes, message):
    problems = validate_request(form(**changes), public=True, **NO_DISK)
    assert len(problems) == 1 and message in problems[0], problems
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        check_request(form(**changes), public=True, **NO_DISK)
    assert validate_request(form(**changes), public=False) == []  # local use: the engine's own checks only


def test_every_problem_is_named_at_once_and_a_local_folder_never_passes_as_a_hub_id():
    problems = validate_request(form(model_path="/etc", save_dir="x", nsamples=1000), public=True, **NO_DISK)
    assert len(problems) == 3
    # "owner/name" that is also a folder under the server's working directory: the engine would load the folder
    assert "not a hub id" in validate_request(form(model_path="tests/fixtures"), True, exists=lambda p: True)[0]


def test_sweeps_model_size_and_switches():
    policy.check_sweep(16, public=True)
    with pytest.raises(UserError, match="at most 16"):
        policy.check_sweep(17, public=True)
    policy.check_sweep(100, public=False)
    policy.check_model_size(PUBLIC_LIMITS.max_params, PUBLIC_LIMITS.max_params)
    with pytest.raises(UserError, match="7.00B parameters"):
        policy.check_model_size(7_000_000_000, PUBLIC_LIMITS.max_params, "meta-llama/Llama-2-7b-hf")
    assert policy.public_from_env({"SPARSITY_PUBLIC": "1"}) and policy.public_from_env({"SPACE_ID": "me/app"})
    assert not policy.public_from_env({}) and not policy.public_from_env({"SPACE_ID": "me/app", "SPARSITY_PUBLIC": "0"})
    assert not policy.trust_remote_code_from_env({}) and policy.trust_remote_code_from_env(
        {"SPARSITY_TRUST_REMOTE_CODE": "1"})


def test_only_runs_without_local_paths_are_shared_and_the_owner_is_redacted():
    hub = {"run_id": "20260101-000000-aaaaaaaa", "model": {"name": "Qwen/Qwen2.5-0.5B"}, "saved_model": None,
           "request": {"calib": "auto", "eval": None}, "owner": {"pid": 1, "host": "box"}}
    assert policy.shareable(hub) and policy.shareable(dict(hub, model={"name": None}))
    assert not policy.shareable(dict(hub, model={"name": "/home/me/llama"}))
    assert not policy.shareable(dict(hub, request={"calib": "/data/private.txt", "eval": None}))
    assert not policy.shareable(dict(hub, saved_model="/home/me/out"))
    assert "owner" not in policy.redact(hub)


def test_export_file_names_are_generated_never_taken_from_a_record(tmp_path):
    path = tables.write_record_json({"run_id": "../../../tmp/evil", "status": "completed"})
    assert path.endswith("run-unknown.json") and path.startswith(tables.export_dir())
    paths = tables.write_tables_csv([], {"run_id": "x/../../y\n", "matrices": []})
    assert all(p.startswith(tables.export_dir()) for p in paths) and paths[-1].endswith("matrices-unknown.csv")


# -- the guards behind the policy ------------------------------------------------------------------------------------

def test_model_size_from_the_config_before_loading_and_from_the_weights_after(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    n = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_llama_dir).parameters())
    assert config_param_count(str(tiny_llama_dir)) == n  # counted on the meta device, no weights read
    request = RunRequest(model=str(tiny_llama_dir), device="cpu")
    with pytest.raises(UserError, match="parameters"):
        size_guard(request, print, max_params=n - 1, models=ModelCache())
    # a model whose config cannot be counted beforehand (e.g. a GGUF file) is measured once loaded, and unloaded
    models = ModelCache()
    models.get(request)
    guarded = size_guard(RunRequest(model="x.gguf"), lambda event: None, max_params=n - 1, models=models)
    guarded({"stage": "load"})  # not loaded yet: nothing to measure
    with pytest.raises(UserError, match="parameters"):
        guarded({"stage": "calibration"})
    assert models.loaded is None
    assert size_guard(request, print, max_params=None, models=models) is print  # no cap, no check


def test_safetensors_only_refuses_pickled_weights(tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from tests.conftest import tiny_config

    model = AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=len(tiny_tokenizer)))
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle: may run code when loaded
    tiny_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(str(tmp_path), "cpu", safetensors_only=True)
    assert load_model(str(tmp_path), "cpu").model is not None  # locally, still allowed


# -- through a dashboard built in public mode ------------------------------------------------------------------------

gradio_client = pytest.importorskip("gradio_client")
from gradio_client.exceptions import AppError  # noqa: E402

from app import Settings  # noqa: E402
from tests.test_app import serving  # noqa: E402


@pytest.fixture(scope="module")
def public_runs(tmp_path_factory):
    return tmp_path_factory.mktemp("public-runs")


@pytest.fixture(scope="module")
def public_app(public_runs):
    with serving(Settings.from_env(env={}, public=True, runs_dir=str(public_runs))) as pair:
        yield pair


def test_settings_follow_the_flag_and_the_environment():
    assert Settings.from_env(env={"SPACE_ID": "me/space"}).public
    assert Settings.from_env(env={"SPARSITY_PUBLIC": "1"}).limits == PUBLIC_LIMITS == Settings(public=True).limits
    local = Settings.from_env(env={})
    assert not local.public and local.limits is None and not local.trust_remote_code and local.queue_size == 64
    assert Settings(public=True).queue_size == 16
    assert Settings.from_env(env={"SPARSITY_TRUST_REMOTE_CODE": "1"}, public=True).trust_remote_code


def test_the_public_page_has_no_save_no_paths_no_remote_code_and_a_bounded_queue(public_app):
    dash, url = public_app
    assert not dash.form["save_dir"].visible and not dash.form["overwrite"].visible
    assert not dash.form["save_format"].visible
    for name in ("calib", "eval_source"):
        assert "path" not in [v for _, v in dash.form[name].choices]
    assert not any("7b" in v.lower() for _, v in dash.form["model"].choices)
    assert dash.demo._queue.max_size == 16
    params = {p["parameter_name"] for p in gradio_client.Client(url, verbose=False).view_api(
        print_info=False, return_format="dict")["named_endpoints"]["/run"]["parameters"]}
    assert "model_path" in params and "trust_remote_code" not in params


@pytest.mark.parametrize("changes, message", REFUSED)
def test_the_public_app_refuses_over_http(public_app, changes, message):
    dash, url = public_app
    c = gradio_client.Client(url, verbose=False)
    with pytest.raises(AppError) as err:
        c.predict(**{**GOOD, **changes}, api_name="/run")
    text = str(err.value)  # the policy's line, or Gradio's own when the value is not even a choice on this page
    assert message in text or ("not in the list of choices" in text and ("calib" in changes or "eval_source"
                                                                          in changes or "model" in changes)), text


def test_a_local_model_and_an_over_long_sweep_are_refused_and_nothing_ran(public_app, public_runs, tiny_llama_dir):
    dash, url = public_app
    c = gradio_client.Client(url, verbose=False)
    with pytest.raises(AppError, match="looks like a path"):
        c.predict(model_path=str(tiny_llama_dir), calib="pydoc", nsamples=2, seqlen=32, eval_source="none",
                  api_name="/run")
    with pytest.raises(AppError, match="at most 16"):
        c.predict(splits="\n".join(["0.35/0.45/0.20"] * 17), calib="pydoc", eval_source="none", api_name="/sweep")
    assert not list(public_runs.glob("*.json"))  # no request above reached the engine


def test_a_public_page_lists_only_shareable_past_runs(public_app, public_runs):
    dash, url = public_app
    base = {"status": "completed", "spec": {"method": "wanda", "pattern": "unstructured", "sparsity": 0.5},
            "saved_model": None, "request": {"calib": "pydoc", "eval": None}, "owner": {"pid": 1, "host": "box"}}
    shared = dict(base, run_id="20260101-000000-aaaaaaaa", model={"name": "Qwen/Qwen2.5-0.5B"})
    private = dict(base, run_id="20260101-000000-bbbbbbbb", model={"name": "/home/me/secret-model"})
    for record in (shared, private):
        (public_runs / f"{record['run_id']}.json").write_text(json.dumps(record))
    try:
        c = gradio_client.Client(url, verbose=False)
        table, _ = c.predict(api_name="/past_runs")
        assert [row[-1] for row in table["data"]] == [shared["run_id"]]
        with pytest.raises(AppError):
            c.predict(private["run_id"], api_name="/open_run")
        with pytest.raises(UserError, match="no stored run"):  # behind the page's own list
            dash.history.open(private["run_id"])
        c.predict(shared["run_id"], api_name="/open_run")
        files = c.predict(shared["run_id"], api_name="/export_json")
        with open(files[0] if isinstance(files[0], str) else files[0]["path"]) as f:
            assert "owner" not in json.load(f)
    finally:
        for record in (shared, private):
            (public_runs / f"{record['run_id']}.json").unlink()
