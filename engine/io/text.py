"""Text sources -> token windows: where calibration and evaluation text comes from, the Wanda way.

    resolve_text(source, split)   "wikitext2" | "c4" | "gsm8k" | "pydoc" | "auto" | a local path  ->  TextSource
    calibration_windows(...)      random windows of seqlen tokens, seeded   ->  LongTensor [nsamples, seqlen]
    evaluation_ids(...)           the whole evaluation text tokenized once  ->  LongTensor [1, T]

Fidelity to the Wanda code (locuslab/wanda, lib/data.py), so published numbers are comparable:
- WikiText rows are joined with " " for calibration (train) and "\\n\\n" for evaluation (test).
- C4 calibration samples documents longer than seqlen; C4 evaluation joins the first 1100 validation
  documents with " " (Wanda also cuts it to 256 windows: pass max_windows=256 to perplexity()).
- Tokenization is the tokenizer's default call, so BOS is added exactly where that call adds it: once at the
  start of a joined text (LLaMA-style tokenizers), per document for C4, never for tokenizers without it.
- GSM8K calibration as the Wanda hybrid fork (github.com/Jiajun-Ji/wanda, lib/data.py) builds it: each window is
  one random training example "Question: ...\nAnswer: ...", cut to seqlen tokens and padded with token id 0.
- Sampling uses random.Random(seed).randint exactly as Wanda's random.seed(seed); random.randint, so the
  same random seed picks the same windows, without touching the global RNG.
"""
from __future__ import annotations

import json
import os
import random
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import DataError, UserError, excerpt

SPLITS = ("calibration", "evaluation")

WIKITEXT_HUB = ("Salesforce/wikitext", "wikitext-2-raw-v1")
C4_HUB = "allenai/c4"
C4_FILES = {"calibration": ("train", "en/c4-train.00000-of-01024.json.gz"),
            "evaluation": ("validation", "en/c4-validation.00000-of-00008.json.gz")}
GSM8K_HUB = ("openai/gsm8k", "main")  # the fork's load_dataset('gsm8k', 'main'): the same dataset, since renamed
C4_EVAL_DOCUMENTS = 1100  # Wanda: ' '.join(valdata[:1100]['text'])

# Files of a WikiText folder, in order of preference. Calibration prefers train, then valid.
WIKITEXT_FILES = {
    "calibration": ("train.txt", "wiki.train.raw", "wiki.train.tokens",
                    "valid.txt", "wiki.valid.raw", "wiki.valid.tokens"),
    "evaluation": ("test.txt", "wiki.test.raw", "wiki.test.tokens"),
}
# Wanda joins WikiText rows with " " for train and "\n\n" for test.
WIKITEXT_JOIN = {"calibration": " ", "evaluation": "\n\n"}

MAX_DOC_TRIES_PER_SAMPLE = 100  # bound on Wanda's "find a document longer than seqlen" loop


@dataclass
class TextSource:
    """Text really used. `name` is one line for records and logs; `detail` says how it was built.

    documents: for document collections (c4, .jsonl, .parquet) the separate documents, sampled the way Wanda
    samples C4 for calibration; None for a single running text. For c4 calibration `text` is "" (the shard
    is only read document by document). calibration_windows() appends to `detail` when it has to fall back.
    examples: the documents are short examples, one per calibration window, cut and zero-padded (gsm8k).
    """

    name: str
    text: str
    detail: str
    documents: Sequence[str] | None = None
    examples: bool = False


# --------------------------------------------------------------------------------------------- sources

def resolve_text(source: str, split: str) -> TextSource:
    """A named source ("wikitext2", "c4", "pydoc", "auto") or a local path -> the text for `split`."""
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    source = str(source).strip()
    if not source:
        raise DataError("no text source given; use wikitext2, c4, pydoc, auto or a local path")
    if source in _NAMED:
        return _NAMED[source](split)
    if len(source) > 4096 or "\x00" in source:  # PATH_MAX; the OS would answer with an OSError, not a message
        raise DataError(f"text source {excerpt(source, 240)} is neither a named source nor a path")
    return _local(Path(source).expanduser(), split)


def _auto(split: str) -> TextSource:
    """The paper's choice: calibrate on C4, evaluate on WikiText-2. Offline: the pydoc text, at once."""
    if not hub_reachable():
        return _pydoc(split, why="offline fallback, ")
    return _c4(split) if split == "calibration" else _wikitext2(split)


def _wikitext2(split: str) -> TextSource:
    _require_hub("wikitext2")
    hub_split = "train" if split == "calibration" else "test"
    rows = _load_hub_dataset(WIKITEXT_HUB[0], WIKITEXT_HUB[1], split=hub_split)["text"]
    sep = WIKITEXT_JOIN[split]
    return TextSource(name=f"wikitext2 (hub: {WIKITEXT_HUB[0]} {WIKITEXT_HUB[1]}, {hub_split})",
                      text=sep.join(rows),
                      detail=f"{len(rows)} rows of the {hub_split} split joined with {sep!r} as in Wanda")


def _c4(split: str) -> TextSource:
    _require_hub("c4")
    hub_split, data_file = C4_FILES[split]
    ds = _load_hub_dataset(C4_HUB, data_files={hub_split: data_file}, split=hub_split)
    name = f"c4 (hub: {C4_HUB} {data_file})"
    if split == "evaluation":
        docs = ds[:C4_EVAL_DOCUMENTS]["text"]
        return TextSource(name=name, text=" ".join(docs),
                          detail=f"first {len(docs)} validation documents joined with ' ' as in Wanda")
    return TextSource(name=name, text="", documents=_Column(ds, "text"),
                      detail=f"{len(ds)} training documents, windows sampled from documents as in Wanda")


def _gsm8k(split: str) -> TextSource:
    """GSM8K question + answer pairs for calibration; evaluation stays WikiText-2 (as in the fork)."""
    if split == "evaluation":
        return _wikitext2(split)
    _require_hub("gsm8k")
    ds = _load_hub_dataset(*GSM8K_HUB, split="train")
    return TextSource(name=f"gsm8k (hub: {GSM8K_HUB[0]} {GSM8K_HUB[1]}, train)", text="",
                      documents=_QuestionAnswer(ds), examples=True,
                      detail=f"{len(ds)} training examples as 'Question: ...\nAnswer: ...', one per window, "
                             "cut to seqlen and padded with token id 0 as in the Wanda hybrid fork")


class _QuestionAnswer(Sequence):
    """GSM8K rows as the fork's calibration text."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        row = self.dataset[i]
        return f"Question: {row['question']}\nAnswer: {row['answer']}"


class _Column(Sequence):
    """One column of a datasets.Dataset read row by row: a C4 shard is never held in memory as a list."""

    def __init__(self, dataset, column: str):
        self.dataset, self.column = dataset, column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i][self.column]


def _load_hub_dataset(*args, **kwargs):
    import datasets

    try:
        return datasets.load_dataset(*args, **kwargs)
    except Exception as err:  # the hub client raises many types; the user needs one line
        raise DataError(f"could not load {args[0]} from the Hugging Face hub ({type(err).__name__}: "
                        f"{_first_line(err)}); pass a local path or use pydoc") from err


def pydoc_topics(split: str) -> list[str]:
    """The pydoc_data topic keys of one half: sorted keys cut where half the characters are reached, so the
    calibration half and the evaluation half share no topic and are about the same size."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    sizes = [len(topics[k]) for k in keys]
    half, total, cut = sum(sizes) / 2, 0, 0
    while cut < len(keys) - 1 and total + sizes[cut] <= half:
        total += sizes[cut]
        cut += 1
    cut = max(cut, 1)
    return keys[:cut] if split == "calibration" else keys[cut:]


def _pydoc(split: str, why: str = "") -> TextSource:
    """Python's own documentation (pydoc_data.topics): always installed, so the tool works offline."""
    from pydoc_data.topics import topics

    chosen = pydoc_topics(split)
    which = "calibration half" if split == "calibration" else "eval half"
    return TextSource(name=f"pydoc ({why}{which})", text="\n\n".join(topics[k] for k in chosen),
                      detail=f"{len(chosen)} of {len(topics)} pydoc_data topics "
                             f"({chosen[0]!r}..{chosen[-1]!r}) joined with '\\n\\n'")


_NAMED = {"wikitext2": _wikitext2, "c4": _c4, "gsm8k": _gsm8k, "pydoc": _pydoc, "auto": _auto}
NAMED_SOURCES = tuple(_NAMED)


# ------------------------------------------------------------------------------------------ local files

def _local(path: Path, split: str) -> TextSource:
    if not path.exists():
        raise DataError(f"text source {excerpt(path, 240)} does not exist; pass a .txt/.jsonl/.parquet file, "
                        f"a WikiText folder (e.g. ../shared/data/wikitext-2-v1), or one of "
                        f"{', '.join(NAMED_SOURCES)}")
    if path.is_dir():
        return _wikitext_folder(path, split)
    if not path.is_file():
        raise DataError(f"{path} is not a regular file; pass a text, .jsonl or .parquet file or a WikiText folder")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        docs = _read_jsonl(path)
    elif suffix == ".parquet":
        docs = _read_parquet(path)
    else:  # .txt, .raw, .tokens, .md, ...: any UTF-8 text file, used whole
        text = _read_text(path)
        return TextSource(name=f"local:{path.resolve()}", text=text,
                          detail=f"{len(text)} characters, the whole file (used as is for {split})")
    if not docs:
        raise DataError(f"{path} has no non-empty 'text' values")
    return TextSource(name=f"local:{path.resolve()}", text="\n\n".join(docs), documents=docs,
                      detail=f"{len(docs)} documents from the 'text' column (joined with '\\n\\n' for evaluation)")


def _wikitext_folder(folder: Path, split: str) -> TextSource:
    found = next((folder / f for f in WIKITEXT_FILES[split] if (folder / f).is_file()), None)
    if found is None:
        raise DataError(f"folder {folder} holds no WikiText file for {split} (looked for "
                        f"{', '.join(WIKITEXT_FILES[split])}); pass a file instead")
    rows = wikitext_rows(_read_text(found))
    sep = WIKITEXT_JOIN[split]
    return TextSource(name=f"local:{found.resolve()}", text=sep.join(rows),
                      detail=f"{len(rows)} WikiText rows (lines) joined with {sep!r} as Wanda joins "
                             f"the hub dataset's rows")


def wikitext_rows(text: str) -> list[str]:
    """A WikiText file's lines as the hub dataset's rows: each line with its newline, blank lines as ""."""
    return [line if line.strip() else "" for line in text.splitlines(keepends=True)]


MAX_TEXT_BYTES = 2 << 30  # a local text file is read whole: refuse more than 2 GiB instead of reading without bound
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _read_bytes(path: Path) -> bytes:
    """A regular file's bytes, at most MAX_TEXT_BYTES (a device such as /dev/zero, a FIFO or a socket is refused)."""
    if not path.is_file():
        raise DataError(f"{path} is not a regular file; pass a text, .jsonl or .parquet file or a WikiText folder")
    with open(path, "rb") as f:
        data = f.read(MAX_TEXT_BYTES + 1)
    if len(data) > MAX_TEXT_BYTES:
        raise DataError(f"{path} is larger than {MAX_TEXT_BYTES >> 30} GiB; pass a smaller text")
    return data


def _utf16(data: bytes) -> str | None:
    """UTF-16 text (as Windows tools write it): with a byte-order mark, or mostly-ASCII text whose every other byte
    is NUL. None when `data` is not that."""
    if data.startswith(UTF16_BOMS):
        encoding = "utf-16"
    elif len(data) >= 2 and len(data) % 2 == 0 and data[1::2].count(0) > 0.9 * (len(data) // 2) and 0 not in data[::2]:
        encoding = "utf-16-le"
    elif len(data) >= 2 and len(data) % 2 == 0 and data[::2].count(0) > 0.9 * (len(data) // 2) and 0 not in data[1::2]:
        encoding = "utf-16-be"
    else:
        return None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        return None


def _read_text(path: Path) -> str:
    data = _read_bytes(path)
    text = _utf16(data)
    if text is None and b"\x00" in data:
        raise DataError(f"{path} looks binary (it contains NUL bytes); pass a UTF-8 or UTF-16 text, .jsonl or "
                        f".parquet file")
    if text is None:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise DataError(f"{path} is not UTF-8 text (bad byte at offset {err.start}); "
                            f"pass a UTF-8 text, .jsonl or .parquet file") from err
    if not text.strip():
        raise DataError(f"{path} is empty")
    return text


def _read_jsonl(path: Path) -> list[str]:
    docs = []
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {n} is not valid JSON ({err.msg})") from err
        if not isinstance(row, dict) or "text" not in row:
            keys = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
            raise DataError(f"{path} line {n} has no 'text' field (found: {keys}); "
                            f"each line must be an object with a 'text' string")
        if isinstance(row["text"], str) and row["text"].strip():
            docs.append(row["text"])
    return docs


def _read_parquet(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        columns = pq.read_schema(path).names
        if "text" not in columns:
            raise DataError(f"{path} has no 'text' column (columns: {', '.join(columns)})")
        values = pq.read_table(path, columns=["text"]).column("text").to_pylist()
    except DataError:
        raise
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
        raise DataError(f"{path} is not a readable parquet file ({_first_line(err)})") from err
    return [v for v in values if isinstance(v, str) and v.strip()]


# ------------------------------------------------------------------------------------------------- hub

_hub_answer: bool | None = None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can the Hugging Face hub be reached? Decided within `timeout` seconds, cached for the process.

    HF_HUB_OFFLINE=1 answers False at once (checked on every call, never cached). Otherwise one HEAD request
    to the hub endpoint (honouring HF_ENDPOINT and proxy variables) in a daemon thread, so that a slow DNS
    lookup cannot hold us longer than `timeout`: the hub client itself retries for ~25 s when offline.
    """
    global _hub_answer
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if _hub_answer is None:
        _hub_answer = _probe(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout)
    return _hub_answer


def _probe(url: str, timeout: float) -> bool:
    answer = [False]

    def head():
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            answer[0] = True
        except urllib.error.HTTPError:  # the server answered, even if with an error: it is reachable
            answer[0] = True
        except Exception:
            pass

    thread = threading.Thread(target=head, daemon=True)
    thread.start()
    thread.join(timeout)
    return answer[0]


def _require_hub(source: str) -> None:
    if not hub_reachable():
        raise DataError(f"{source} needs the Hugging Face hub, which is unreachable (offline?); pass a local "
                        f"path such as ../shared/data/wikitext-2-v1 or use pydoc")


# ---------------------------------------------------------------------------------------------- tokens

def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Token ids [T] of one text, by the tokenizer's default call (Wanda's), without the too-long warning."""
    return tokenizer(text, return_tensors="pt", verbose=False).input_ids[0]


def evaluation_ids(tokenizer, source: TextSource) -> torch.Tensor:
    """The whole evaluation text tokenized once, as the Wanda protocol does: LongTensor [1, T]."""
    if not source.text.strip():
        raise DataError(f"{source.name} has no evaluation text")
    return tokenize(tokenizer, source.text).unsqueeze(0)


def calibration_windows(tokenizer, source: TextSource, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """Wanda's calibration set: `nsamples` random windows of `seqlen` tokens -> LongTensor [nsamples, seqlen].

    A running text is tokenized once and window starts are drawn from it. A document collection is sampled
    like Wanda's C4: draw a document, keep it if it has more than seqlen tokens, draw a start inside it. That
    search is bounded (MAX_DOC_TRIES_PER_SAMPLE x nsamples documents); past it the remaining windows come from
    documents concatenated in a seeded random order, and `source.detail` says so.
    """
    if nsamples < 1 or seqlen < 1:
        raise UserError(f"nsamples and seqlen must be positive, got nsamples={nsamples}, seqlen={seqlen}")
    rng = random.Random(seed)
    if source.examples:
        return torch.stack([_padded_example(tokenizer, source.documents[rng.randint(0, len(source.documents) - 1)],
                                            seqlen) for _ in range(nsamples)])
    if source.documents is None:
        return _windows_from_ids(tokenize(tokenizer, source.text), nsamples, seqlen, rng, "calibration text")

    docs, windows, tries = source.documents, [], 0
    while len(windows) < nsamples and tries < MAX_DOC_TRIES_PER_SAMPLE * nsamples and len(docs):
        tries += 1
        ids = tokenize(tokenizer, docs[rng.randint(0, len(docs) - 1)])
        if ids.numel() > seqlen:
            start = rng.randint(0, ids.numel() - seqlen - 1)
            windows.append(ids[start:start + seqlen])
    missing = nsamples - len(windows)
    if missing:
        ids = _concatenated_ids(tokenizer, docs, missing * seqlen + 1, rng)
        windows.extend(_windows_from_ids(ids, missing, seqlen, rng, "concatenated calibration documents"))
        source.detail += (f"; {missing} of {nsamples} windows taken from concatenated documents "
                          f"(too few documents longer than seqlen={seqlen})")
    return torch.stack(windows)


def _padded_example(tokenizer, text: str, seqlen: int) -> torch.Tensor:
    """One example -> [seqlen] token ids: truncated to seqlen as the tokenizer truncates, then padded with id 0."""
    ids = tokenizer(text, return_tensors="pt", max_length=seqlen, truncation=True).input_ids[0]
    return torch.nn.functional.pad(ids, (0, seqlen - ids.numel()), value=0)


def _windows_from_ids(ids: torch.Tensor, nsamples: int, seqlen: int, rng: random.Random, what: str) -> torch.Tensor:
    """Wanda's sampler on one token stream [T]: start = randint(0, T - seqlen - 1) -> [nsamples, seqlen]."""
    if ids.numel() < seqlen + 1:
        raise DataError(f"{what} has {ids.numel()} tokens, fewer than one window of seqlen={seqlen}; "
                        f"lower --seqlen or use a longer source")
    starts = torch.tensor([rng.randint(0, ids.numel() - seqlen - 1) for _ in range(nsamples)])
    return ids[starts[:, None] + torch.arange(seqlen)]


def _concatenated_ids(tokenizer, docs: Sequence[str], want: int, rng: random.Random) -> torch.Tensor:
    """Documents in a seeded random order, tokenized and concatenated until `want` tokens (or all used)."""
    order = list(range(len(docs)))
    rng.shuffle(order)
    parts, have = [], 0
    for i in order:
        parts.append(tokenize(tokenizer, docs[i]))
        have += parts[-1].numel()
        if have >= want:
            break
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def default_seqlen(model_config, requested: int | None) -> int:
    """Window length: `requested` if given, else the model's context capped at 2048 (Wanda's seqlen).

    A 32k-128k context is never used by default: one window would cost more than the whole evaluation.
    """
    if requested is not None:
        if int(requested) < 2:
            raise UserError(f"seqlen must be at least 2 tokens, got {requested}")
        return int(requested)
    context = model_context(model_config)
    return min(context, 2048) if context is not None else 2048


def model_context(model_config) -> int | None:
    """The model's context length in tokens, if its config says."""
    config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    for attr in ("max_position_embeddings", "n_positions", "seq_length", "max_seq_len"):
        context = getattr(config, attr, None)
        if isinstance(context, int) and context > 0:
            return context
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
