"""Text sources and token windows (engine/io/text.py), on tmp files and a byte-level tokenizer built offline."""
import json
import random
import time
import types

import pytest
import torch

from conftest import SHARED_WIKITEXT
from engine.errors import DataError, UserError
from engine.io import text as data
from engine.io.text import (
    TextSource,
    calibration_windows,
    default_seqlen,
    evaluation_ids,
    hub_reachable,
    pydoc_topics,
    resolve_text,
)

WORDS = ("the quick brown fox jumps over the lazy dog while seven wizards quietly hex "
         "a jovial sphinx of black quartz ").split()


@pytest.fixture(scope="module")
def tok():
    """One token per UTF-8 byte (256 ids), no special tokens: built in < 1 s, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    inner = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=inner, model_max_length=64)


def prose(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def ids_of(tok, text: str) -> torch.Tensor:
    return tok(text, return_tensors="pt").input_ids[0]


# ------------------------------------------------------------------------------------------ local formats

def test_txt_file_is_used_whole(tmp_path, tok):
    text = "Line one.\n\nLine two é ü.\n"
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    for split in ("calibration", "evaluation"):
        src = resolve_text(str(path), split)
        assert src.text == text
        assert src.name == f"local:{path.resolve()}"
        assert src.documents is None
    ids = evaluation_ids(tok, src)
    assert ids.shape == (1, len(text.encode("utf-8")))
    assert tok.decode(ids[0]) == text


def test_jsonl_text_column_gives_documents(tmp_path):
    path = tmp_path / "docs.jsonl"
    rows = [{"text": "first doc", "id": 1}, {"text": "  "}, {"text": "second doc"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    src = resolve_text(str(path), "evaluation")
    assert list(src.documents) == ["first doc", "second doc"]
    assert src.text == "first doc\n\nsecond doc"
    assert "2 documents" in src.detail


def test_parquet_text_column_gives_documents(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "docs.parquet"
    pd.DataFrame({"text": ["alpha", None, "beta"], "n": [1, 2, 3]}).to_parquet(path)
    src = resolve_text(str(path), "calibration")
    assert list(src.documents) == ["alpha", "beta"]
    assert src.text == "alpha\n\nbeta"


def test_wikitext_folder_picks_files_per_split_and_joins_like_wanda(tmp_path):
    (tmp_path / "valid.txt").write_text(" = Valid = \n \n valid line one \n valid line two \n")
    (tmp_path / "test.txt").write_text(" = Test = \n \n test line \n")
    cal = resolve_text(str(tmp_path), "calibration")
    ev = resolve_text(str(tmp_path), "evaluation")
    assert cal.name == f"local:{(tmp_path / 'valid.txt').resolve()}"
    assert ev.name == f"local:{(tmp_path / 'test.txt').resolve()}"
    # Hub rows are the file's lines with their newline, blank lines as "": test joined by "\n\n", train by " ".
    assert ev.text == " = Test = \n" + "\n\n" + "" + "\n\n" + " test line \n"
    assert cal.text == " = Valid = \n" + " " + "" + " " + " valid line one \n" + " " + " valid line two \n"

    (tmp_path / "train.txt").write_text(" training text \n")
    assert resolve_text(str(tmp_path), "calibration").name.endswith("train.txt")


def test_wikitext_folder_with_original_release_names(tmp_path):
    (tmp_path / "wiki.train.raw").write_text(" train \n")
    (tmp_path / "wiki.test.tokens").write_text(" test <unk> \n")
    assert resolve_text(str(tmp_path), "calibration").name.endswith("wiki.train.raw")
    assert resolve_text(str(tmp_path), "evaluation").text == " test <unk> \n"


def test_shared_wikitext_folder_resolves():
    if not (SHARED_WIKITEXT / "test.txt").is_file():
        pytest.skip(f"shared WikiText data not found at {SHARED_WIKITEXT}")
    ev = resolve_text(str(SHARED_WIKITEXT), "evaluation")
    cal = resolve_text(str(SHARED_WIKITEXT), "calibration")
    assert ev.name.endswith("test.txt") and cal.name.endswith("valid.txt")
    assert len(ev.text) > 1_000_000 and "Robert <unk>" in ev.text[:200]
    assert "\n\n" in ev.text and ev.text != cal.text


# ---------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", b"", "is empty"),
    ("blank.txt", b"  \n\n\t\n", "is empty"),
    ("nul.txt", b"text\x00more", "binary"),
    ("latin1.txt", "caf\u00e9".encode("latin-1"), "not UTF-8"),
    ("no_text.jsonl", b'{"content": "hi"}\n', "no 'text' field"),
    ("bad.jsonl", b'{"text": "ok"}\n{oops\n', "line 2 is not valid JSON"),
    ("bad.parquet", b"PAR1 not really", "not a readable parquet file"),
])
def test_bad_files_raise_data_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        resolve_text(str(path), "evaluation")
    assert str(path) in str(err.value)


def test_parquet_without_text_column(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "other.parquet"
    pd.DataFrame({"content": ["a"], "n": [1]}).to_parquet(path)
    with pytest.raises(DataError, match=r"no 'text' column \(columns: content, n"):
        resolve_text(str(path), "evaluation")


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist; pass a .txt/.jsonl/.parquet file"):
        resolve_text(str(tmp_path / "nope.txt"), "evaluation")


def test_folder_without_recognised_files(tmp_path):
    (tmp_path / "notes.md").write_text("hello")
    with pytest.raises(DataError, match="holds no WikiText file for evaluation"):
        resolve_text(str(tmp_path), "evaluation")


def test_bad_split():
    with pytest.raises(UserError, match="split must be one of"):
        resolve_text("pydoc", "train")


def test_too_short_for_one_window(tok):
    src = TextSource("tiny", "x" * 50, "")
    with pytest.raises(DataError, match="calibration text has 50 tokens, fewer than one window of seqlen=50"):
        calibration_windows(tok, src, nsamples=2, seqlen=50, seed=0)
    assert calibration_windows(tok, src, nsamples=2, seqlen=49, seed=0).shape == (2, 49)


# ---------------------------------------------------------------------------------------- calibration

def test_calibration_windows_are_reproducible_and_seeded(tok):
    src = TextSource("prose", prose(2000), "")
    state = random.getstate()
    a = calibration_windows(tok, src, nsamples=8, seqlen=32, seed=0)
    b = calibration_windows(tok, src, nsamples=8, seqlen=32, seed=0)
    c = calibration_windows(tok, src, nsamples=8, seqlen=32, seed=1)
    assert random.getstate() == state, "must not touch the global RNG"
    assert a.shape == (8, 32) and a.dtype == torch.long
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("n_chars", [16 + 64, 5000])  # 16 + 64: T - seqlen = 2**6, where an off-by-one shows
def test_calibration_windows_match_wandas_sampler(tok, n_chars):
    """Same windows as Wanda's get_wikitext2: random.seed(seed); i = randint(0, T - seqlen - 1)."""
    src = TextSource("prose", prose(1000)[:n_chars], "")
    ids = ids_of(tok, src.text)
    assert ids.numel() == n_chars
    random.seed(7)
    expected = []
    for _ in range(20):
        i = random.randint(0, ids.numel() - 16 - 1)
        expected.append(ids[i:i + 16])
    assert torch.equal(calibration_windows(tok, src, nsamples=20, seqlen=16, seed=7), torch.stack(expected))


def test_documents_are_sampled_like_wandas_c4(tok):
    docs = ["short"] * 5 + [prose(300, seed=s) for s in range(3)]
    src = TextSource("docs", "", "", documents=docs)
    windows = calibration_windows(tok, src, nsamples=6, seqlen=24, seed=3)
    assert windows.shape == (6, 24)
    streams = [ids_of(tok, d) for d in docs[5:]]
    for w in windows:  # every window is a contiguous slice of one long document
        assert any(torch.equal(s[j:j + 24], w) for s in streams for j in range(s.numel() - 23))
    assert "concatenated" not in src.detail


def test_short_documents_fall_back_to_concatenation(tok):
    docs = [prose(4, seed=s) for s in range(200)]  # each ~25 tokens, all shorter than seqlen
    src = TextSource("docs", "", "200 short documents", documents=docs)
    start = time.perf_counter()
    windows = calibration_windows(tok, src, nsamples=3, seqlen=64, seed=0)
    assert time.perf_counter() - start < 10
    assert windows.shape == (3, 64)
    assert "3 of 3 windows taken from concatenated documents" in src.detail

    too_few = TextSource("docs", "", "", documents=["ab", "cd"])
    with pytest.raises(DataError, match="has 4 tokens, fewer than one window of seqlen=64"):
        calibration_windows(tok, too_few, nsamples=1, seqlen=64, seed=0)


def test_evaluation_ids_is_the_whole_text(tok):
    src = TextSource("prose", prose(500), "")
    ids = evaluation_ids(tok, src)
    assert ids.shape == (1, len(src.text.encode())) and torch.equal(ids[0], ids_of(tok, src.text))
    with pytest.raises(DataError, match="no evaluation text"):
        evaluation_ids(tok, TextSource("empty", " ", ""))


# ------------------------------------------------------------------------------------- pydoc, hub, auto

def test_pydoc_halves_are_disjoint_and_cover_all_topics():
    from pydoc_data.topics import topics

    cal, ev = pydoc_topics("calibration"), pydoc_topics("evaluation")
    assert cal and ev and not set(cal) & set(ev)
    assert sorted(cal + ev) == sorted(topics)
    cal_chars, ev_chars = (sum(len(topics[k]) for k in half) for half in (cal, ev))
    assert 0.3 < cal_chars / (cal_chars + ev_chars) < 0.7
    src = resolve_text("pydoc", "evaluation")
    assert src.name == "pydoc (eval half)" and src.text == "\n\n".join(topics[k] for k in ev)


def test_auto_falls_back_to_pydoc_when_hub_unreachable(monkeypatch):
    monkeypatch.setattr(data, "hub_reachable", lambda timeout=3.0: False)
    src = resolve_text("auto", "evaluation")
    assert src.name == "pydoc (offline fallback, eval half)"
    assert resolve_text("auto", "calibration").name == "pydoc (offline fallback, calibration half)"


@pytest.mark.parametrize("source", ["wikitext2", "c4"])
def test_hub_sources_offline_say_what_to_do(monkeypatch, source):
    monkeypatch.setattr(data, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(DataError, match=f"{source} needs the Hugging Face hub, which is unreachable .*pydoc"):
        resolve_text(source, "evaluation")


def test_hf_hub_offline_answers_false_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(data, "_hub_answer", True)  # even a cached "reachable" must not override the env
    start = time.perf_counter()
    assert hub_reachable() is False
    assert time.perf_counter() - start < 2.0  # at once, not after the 3 s probe (margin for loaded machines)


def test_hub_probe_gives_up_at_its_timeout(monkeypatch):
    def hang(*args, **kwargs):
        time.sleep(5)

    monkeypatch.setattr(data.urllib.request, "urlopen", hang)
    start = time.perf_counter()
    assert data._probe("https://huggingface.co", timeout=0.3) is False
    assert time.perf_counter() - start < 3.0  # long before the 5 s hang ends (margin for loaded machines)


def test_wikitext2_from_hub_joins_rows_like_wanda(monkeypatch):
    calls = []

    def fake_load(*args, **kwargs):
        calls.append((args, kwargs))
        return {"text": [" = A = \n", "", " body \n"]}

    monkeypatch.setattr(data, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(data, "_load_hub_dataset", fake_load)
    ev, cal = resolve_text("wikitext2", "evaluation"), resolve_text("wikitext2", "calibration")
    assert ev.text == " = A = \n\n\n\n\n body \n" and cal.text == " = A = \n   body \n"
    assert ev.name == "wikitext2 (hub: Salesforce/wikitext wikitext-2-raw-v1, test)"
    assert [c[1]["split"] for c in calls] == ["test", "train"]


def test_c4_from_hub_samples_documents(monkeypatch, tok):
    datasets = pytest.importorskip("datasets")
    shard = datasets.Dataset.from_dict({"text": [prose(100, seed=s) for s in range(1200)], "url": ["u"] * 1200})
    monkeypatch.setattr(data, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(data, "_load_hub_dataset", lambda *a, **k: shard)
    ev = resolve_text("c4", "evaluation")
    assert ev.text == " ".join(shard[:1100]["text"])  # Wanda: the first 1100 validation documents
    cal = resolve_text("c4", "calibration")
    assert cal.text == "" and len(cal.documents) == 1200 and cal.documents[5] == shard[5]["text"]
    assert calibration_windows(tok, cal, nsamples=4, seqlen=32, seed=0).shape == (4, 32)


# --------------------------------------------------------------------------------------------- seqlen

def test_default_seqlen():
    from transformers import GPT2Config, LlamaConfig

    assert default_seqlen(LlamaConfig(max_position_embeddings=131072), None) == 2048
    assert default_seqlen(LlamaConfig(max_position_embeddings=256), None) == 256
    assert default_seqlen(LlamaConfig(max_position_embeddings=131072), 512) == 512
    assert default_seqlen(GPT2Config(n_positions=1024), None) == 1024
    assert default_seqlen(types.SimpleNamespace(), None) == 2048
    with pytest.raises(UserError, match="seqlen must be at least 2"):
        default_seqlen(LlamaConfig(), 1)


def test_gsm8k_windows_are_the_forks_examples_cut_and_zero_padded(tok):
    """One example per window, drawn by random.seed(seed); randint(0, n - 1), "Question: ...\\nAnswer: ...",
    truncated to seqlen and padded with id 0 (the Wanda hybrid fork's get_gsm8k)."""
    rows = [{"question": "q" * n, "answer": "a"} for n in (3, 40, 7, 1)]
    source = TextSource("gsm8k (test rows)", "", "", documents=data._QuestionAnswer(rows), examples=True)
    windows = calibration_windows(tok, source, nsamples=6, seqlen=32, seed=3)  # texts of 21 to 60 characters
    rng = random.Random(3)
    for window in windows:
        row = rows[rng.randint(0, len(rows) - 1)]
        ids = tok(f"Question: {row['question']}\nAnswer: {row['answer']}").input_ids[:32]  # full text, then cut
        ids += [0] * (32 - len(ids))
        assert window.tolist() == ids


def test_gsm8k_offline_fails_fast_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(DataError, match="gsm8k needs the Hugging Face hub"):
        data.resolve_text("gsm8k", "calibration")
    assert time.perf_counter() - t < 2
