"""Every input a user can get wrong gives a clear UserError (the CLI prints it as one line; the dashboard shows it),
and disturbs nothing: the cached model stays dense and usable for the next run."""
import math
import shutil

import pytest
import torch

from engine.errors import UserError
from engine.run import ModelCache, RunRequest, run
from engine.spec import PruneSpec


@pytest.fixture(scope="module")
def bad_paths(tmp_path_factory, tiny_llama_dir, tiny_tokenizer):
    root = tmp_path_factory.mktemp("bad")
    corrupt = root / "corrupt-safetensors"
    shutil.copytree(tiny_llama_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00\x01garbage" * 10)
    truncated = root / "truncated-safetensors"
    shutil.copytree(tiny_llama_dir, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    gguf = root / "broken.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 40)
    from transformers import BertConfig, T5Config
    T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=64, vocab_size=100).save_pretrained(root / "t5")
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).save_pretrained(root / "bert")
    (root / "empty.txt").write_text("")
    (root / "binary.txt").write_bytes(bytes(range(256)) * 20)
    (root / "short.txt").write_text("Too short to fill one window.")
    (root / "notmodel").mkdir()
    full = root / "full"
    full.mkdir()
    (full / "keep.txt").write_text("keep")
    return root


def _cases(m, root):
    quick = dict(nsamples=2, seqlen=32)
    return [
        # (request keyword arguments, spec keyword arguments or None, message fragment)
        (dict(model="nobody/definitely-not-a-model"), quick, "hub is unreachable"),
        (dict(model=str(root / "notmodel")), quick, "not a model (no config.json"),
        (dict(model=str(root / "missing-dir")), quick, "neither an existing local path nor a valid hub id"),
        (dict(model=str(root / "corrupt-safetensors")), quick, "could not load"),
        (dict(model=str(root / "truncated-safetensors")), quick, "could not load"),
        (dict(model=str(root / "broken.gguf")), quick, "broken.gguf"),
        (dict(model=str(root / "t5")), quick, "'t5' model, not a causal"),
        (dict(model=str(root / "bert")), quick, "'bert' model, not a causal"),
        (dict(model=m, calib=str(root / "empty.txt")), quick, "empty"),
        (dict(model=m, calib=str(root / "binary.txt")), quick, "binary"),
        (dict(model=m, calib=str(root / "nothing.txt")), quick, "nothing.txt"),
        (dict(model=m, eval=str(root / "short.txt")), quick, "fewer than one window"),
        (dict(model=m, calib="wikitext2"), quick, "unreachable"),
        (dict(model=m, save_dir=str(root / "full")), quick, "exists and is not empty"),
        (dict(model=m, save_dir="/sys/sparsity-out"), quick, "cannot write to"),
        (dict(model=m), dict(quick, pattern="three_tier", block=128), "block size 128 is larger than matrix"),
        (dict(model=m), dict(nsamples=2, seqlen=100_000), "longer than the model's context"),
        (dict(model=m, eval_windows=0), quick, "eval windows must be a whole number >= 1"),
    ]


SPEC_CASES = [
    (dict(pattern="three_tier", ratios=(0.5, 0.6, -0.1)), "non-negative"),
    (dict(pattern="three_tier", ratios=(math.nan, 0.5, 0.5)), "must be numbers"),
    (dict(pattern="three_tier", ratios=(0.3, 0.3, 0.3)), "must sum to 1"),
    (dict(pattern="nm", n=4, m=4), "N:M needs 0 <= N < M"),
    (dict(pattern="three_tier", keep=257), "K (weights kept per top-K block)"),
    (dict(pattern="three_tier", block=0), "block size must be a multiple of 4"),
    (dict(nsamples=0), "nsamples must be a whole number >= 1"),
    (dict(nsamples=10**7), "absurdly large"),
    (dict(seqlen=0), "seqlen must be a whole number >= 1"),
]


@pytest.mark.slow
def test_every_bad_input_gives_its_message_and_disturbs_nothing(tiny_llama_dir, bad_paths, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = ModelCache()
    m = str(tiny_llama_dir)
    first = run(RunRequest(model=m, spec=PruneSpec(nsamples=2, seqlen=32), calib="pydoc", eval=None), models=models)
    models.restore()  # a finished run leaves its pruned model in memory until the next run starts
    dense = {n: p.detach().clone() for n, p in models.loaded.model.named_parameters()}
    tried = 0
    for req_kw, spec_kw, message in _cases(m, bad_paths):
        kw = dict(calib="pydoc", eval=None)
        kw.update(req_kw)
        with pytest.raises(UserError) as err:
            run(RunRequest(spec=PruneSpec(**spec_kw), **kw), models=models)
        assert message in str(err.value), (req_kw, spec_kw, str(err.value))
        assert "\n" not in str(err.value)
        tried += 1
    for spec_kw, message in SPEC_CASES:
        with pytest.raises(UserError, match=None) as err:
            PruneSpec(**spec_kw)
        assert message in str(err.value)
        tried += 1
    assert tried == 27
    # the model still works and a good run after all that starts from the same dense weights
    again = run(RunRequest(model=m, spec=PruneSpec(nsamples=2, seqlen=32), calib="pydoc", eval=None), models=models)
    assert again["sparsity"] == first["sparsity"] == 0.5
    models.restore()
    for n, p in models.loaded.model.named_parameters():
        assert torch.equal(p, dense[n]), n
