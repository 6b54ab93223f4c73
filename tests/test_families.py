"""Every method x pattern on tiny random models of many families: one code path, discovered, never special-cased."""
import threading

import pytest
import torch

from conftest import tiny_model, token_windows
from engine.patterns.three_tier import tier_counts
from engine.spec import PruneSpec
from engine.walk.capture import capture_layer_inputs, run_layer
from engine.walk.discovery import find_decoder_layers, find_targets
from engine.walk.layer_walk import prune_model

FAMILIES = ["llama", "mistral", "mixtral", "qwen2", "gemma", "phi", "opt", "bloom", "gpt_neox", "gpt2", "falcon"]
SPECS = {
    "unstructured": dict(pattern="unstructured", sparsity=0.5),
    "2:4": dict(pattern="nm", n=2, m=4),
    "4:8": dict(pattern="nm", n=4, m=8),
    "three_tier": dict(pattern="three_tier", block=16, keep=15),
}


_model = tiny_model
_windows = token_windows


@pytest.fixture(scope="module")
def models():
    return {}


@pytest.mark.parametrize("family", FAMILIES)
def test_walk_reproduces_the_models_own_hidden_states(family):
    """Captured args/kwargs (masks, rotary tables, alibi...) are complete: re-running the layers one by one
    gives exactly the hidden states the model computes itself."""
    model = _model(family)
    _, layers = find_decoder_layers(model)
    ids = _windows(2, 24)
    inputs = capture_layer_inputs(model, layers, ids)
    with torch.no_grad():
        for i, layer in enumerate(layers[:-1]):
            inputs.hidden = run_layer(layer, inputs)
            expected = [model(r.unsqueeze(0), output_hidden_states=True).hidden_states[i + 1] for r in ids]
            for got, want in zip(inputs.hidden, expected):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_discovery_finds_layers_and_skips_embeddings_and_head(family):
    model = _model(family)
    _, layers = find_decoder_layers(model)
    assert len(layers) == 2
    names = [t.name for t in find_targets(layers[0])]
    assert len(names) >= 4
    assert not any("embed" in n or "lm_head" in n or n.endswith(".gate") for n in names)


@pytest.mark.slow
@pytest.mark.parametrize("pattern", list(SPECS))
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "fisher", "fisher_wanda"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_and_pattern(family, method, pattern):
    model = _model(family)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    spec = PruneSpec(method=method, nsamples=4, seqlen=32, **SPECS[pattern])
    result = prune_model(model, spec, _windows())
    assert result.status == "completed" and result.layers_done == 2
    _, layers = find_decoder_layers(model)
    for entry, target in zip(result.matrices, [t for layer in layers for t in find_targets(layer)]):
        W = target.weight()
        zeros = int((W == 0).sum())
        assert zeros >= entry["zeros"]  # the weights the mask drops really are zero (a kept weight may be 0 too)
        out_f, in_f = W.shape
        if pattern == "unstructured":
            assert entry["zeros"] == (out_f * int(in_f * 0.5) if method != "magnitude" else int(W.numel() * 0.5))
        elif pattern == "2:4":
            assert entry["zeros"] == out_f * (in_f // 4) * 2
        elif pattern == "4:8":
            assert entry["zeros"] == out_f * (in_f // 8) * 4
        else:
            n_dense, n_24, n_top = tier_counts(entry["tier_map"]["shape"][0] * entry["tier_map"]["shape"][1],
                                               spec.ratios)
            assert (entry["tiers"]["dense"], entry["tiers"]["2:4"], entry["tiers"]["topk"]) == (n_dense, n_24, n_top)
    # nothing outside the decoder layers' target matrices changes: embeddings, head, norms, routers, biases
    pruned = {f"{path}.{i}.{t.module_name}" for path, i, t in _target_params(model)}
    for name, p in model.named_parameters():
        if name not in pruned:
            assert torch.equal(p, before[name]), f"{name} changed"
    with torch.no_grad():
        assert torch.isfinite(model(_windows(1, 16)).logits).all()


def _target_params(model):
    path, layers = find_decoder_layers(model)
    for i, layer in enumerate(layers):
        for t in find_targets(layer):
            t.module_name = f"{t.name.rsplit('.', 2)[0]}.{t.param}" if t.kind == "expert" else f"{t.name}.{t.param}"
            yield path, i, t


def test_conv1d_is_pruned_per_output_row():
    """GPT-2 stores Conv1D weights as [in, out]: Wanda's per-output comparison must run along the right axis."""
    model = _model("gpt2")
    prune_model(model, PruneSpec(method="wanda", nsamples=4), _windows())
    w = model.transformer.h[0].attn.c_attn.weight  # [in=64, out=192]
    per_output = (w == 0).sum(dim=0)
    assert (per_output == 32).all()


def test_mixture_of_experts_prunes_every_expert_not_the_router():
    model = _model("mixtral")
    router = model.model.layers[0].mlp.gate.weight.detach().clone()
    result = prune_model(model, PruneSpec(method="wanda", nsamples=4), _windows())
    names = {e["module"] for e in result.matrices if e["layer"] == 0}
    assert {f"mlp.experts.{e}.{p}" for e in range(4) for p in ("gate_up_proj", "down_proj")} <= names
    experts = model.model.layers[0].mlp.experts
    for e in range(4):
        assert (experts.gate_up_proj[e] == 0).sum(dim=1).eq(32).all()
    assert torch.equal(model.model.layers[0].mlp.gate.weight, router)


def test_cancel_between_layers_leaves_consistent_state():
    model = _model("llama")
    second = {n: p.detach().clone() for n, p in model.model.layers[1].named_parameters()}
    cancel = threading.Event()

    def progress(event):
        if event.get("stage") == "prune":
            cancel.set()
    result = prune_model(model, PruneSpec(method="wanda", nsamples=4), _windows(), progress=progress, cancel=cancel)
    assert result.status == "cancelled" and result.layers_done == 1
    assert {e["layer"] for e in result.matrices} == {0}
    assert (model.model.layers[0].self_attn.q_proj.weight == 0).float().mean() == 0.5
    for n, p in model.model.layers[1].named_parameters():
        assert torch.equal(p, second[n])


@pytest.mark.parametrize("method", ["wanda", "fisher"])
@pytest.mark.parametrize("scope", ["layer", "model"])
def test_three_tier_joint_scopes_keep_global_counts(scope, method):
    model = _model("llama")
    spec = PruneSpec(method=method, pattern="three_tier", tier_scope=scope, nsamples=4)
    result = prune_model(model, spec, _windows())
    groups = {}
    for e in result.matrices:
        groups.setdefault(e["layer"] if scope == "layer" else 0, []).append(e)
    for entries in groups.values():
        total = sum(e["tier_map"]["shape"][0] * e["tier_map"]["shape"][1] for e in entries)
        got = tuple(sum(e["tiers"][k] for e in entries) for k in ("dense", "2:4", "topk"))
        assert got == tier_counts(total, spec.ratios)
    assert len({tuple(e["tiers"].values()) for e in result.matrices}) > 1  # allocation really differs per matrix
