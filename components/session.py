"""Per-browser-session state and the translation of the set-up form into engine arguments.

Validation is the engine's (PruneSpec checks itself); this module only turns widget values into the types the
engine expects and says in one line what is wrong when it cannot.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from engine.errors import UserError
from engine.run import RunRequest
from engine.spec import SEED_RATIOS, PruneSpec

from .jobs import Job

EMBEDDED = "embedded"
MODEL_PRESETS = [
    ("SmolLM2-135M-Instruct · embedded, offline", EMBEDDED),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    ("HuggingFaceTB/SmolLM2-360M", "HuggingFaceTB/SmolLM2-360M"),
    ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B"),
    ("facebook/opt-125m", "facebook/opt-125m"),
    ("EleutherAI/pythia-160m", "EleutherAI/pythia-160m"),
    ("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf"),
    ("mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-v0.1"),
]
METHOD_CHOICES = [("Magnitude |W|", "magnitude"), ("Wanda |W|·‖X‖", "wanda"), ("SparseGPT (OBS update)", "sparsegpt")]
PATTERN_CHOICES = [("Three-tier blocks", "three_tier"), ("Unstructured", "unstructured"), ("N:M", "nm")]
SCOPE_CHOICES = [("each matrix (seed)", "matrix"), ("each decoder layer", "layer"), ("whole model", "model")]
WITHIN_CHOICES = [("method's score", "score"), ("|W| (seed's rule)", "magnitude")]
SOURCE_CHOICES = [("auto (paper: C4 calibration, WikiText-2 evaluation; offline: Python docs)", "auto"), ("WikiText-2", "wikitext2"), ("C4", "c4"),
                  ("Python docs (offline)", "pydoc"), ("local file / folder ↓", "path")]
EVAL_CHOICES = SOURCE_CHOICES[:-1] + [("local file / folder ↓", "path"), ("skip evaluation", "none")]
DEVICE_CHOICES = ["auto", "cpu", "cuda", "mps"]
DTYPE_CHOICES = ["auto", "float32", "bfloat16", "float16"]


@dataclass
class Session:
    """What one browser tab owns: its runs, its running job, the record the Results tab shows."""
    runs: list[dict] = field(default_factory=list)
    job: Job | None = None
    shown: dict | None = None          # the record the Results tab shows (a growing one while a run streams)
    shown_layer: int | None = None     # the tier map chosen there
    shown_module: str | None = None
    view: str = "realised sparsity"    # what colours the layer map

    def run_choices(self) -> list[tuple[str, int]]:
        from .figures import run_label
        return [(f"#{i} {run_label(r)} · {r.get('status')}", i - 1) for i, r in enumerate(self.runs, 1)]

    def get(self, index) -> dict | None:
        if index is None or not self.runs:
            return None
        i = int(index)
        return self.runs[i] if 0 <= i < len(self.runs) else None


def rebalance(changed: int, values) -> tuple[float, float, float]:
    """Set ratio `changed` to its new value and rescale the other two in proportion, so the three sum to 1.

    Values are kept on a 0.01 grid; if the other two are both zero they share the rest equally.
    """
    v = [min(max(float(x or 0), 0.0), 1.0) for x in values]
    rest = round(1 - v[changed], 2)
    others = [i for i in range(3) if i != changed]
    a, b = v[others[0]], v[others[1]]
    first = round(rest * a / (a + b), 2) if a + b > 0 else round(rest / 2, 2)
    v[others[0]], v[others[1]] = first, round(rest - first, 2)
    v[changed] = round(v[changed], 2)
    return tuple(v)


def _int(value, name: str, allow_none: bool = False) -> int | None:
    if value is None or value == "":
        if allow_none:
            return None
        raise UserError(f"{name} is empty; enter a whole number")
    f = float(value)
    if f != int(f):
        raise UserError(f"{name} must be a whole number, got {value}")
    return int(f)


def spec_from_form(method, pattern, sparsity, n, m, r_dense, r_24, r_topk, block, keep, tier_scope, within_block,
                   nsamples, seqlen, reconstruct=False, seed=0) -> PruneSpec:
    """Widget values -> a validated PruneSpec (raises SpecError with the engine's message)."""
    seqlen = _int(seqlen, "sequence length", allow_none=True)
    return PruneSpec(method=method, pattern=pattern, sparsity=float(sparsity), n=_int(n, "N"), m=_int(m, "M"),
                     ratios=(float(r_dense), float(r_24), float(r_topk)), block=_int(block, "block size"),
                     keep=_int(keep, "K"), tier_scope=tier_scope, within_block=within_block,
                     nsamples=_int(nsamples, "calibration samples"), seqlen=seqlen or None,
                     reconstruct=bool(reconstruct), seed=_int(seed, "seed"))


def source_from_form(choice: str, path: str, what: str) -> str | None:
    if choice == "none":
        return None
    if choice == "path":
        path = (path or "").strip()
        if not path:
            raise UserError(f"{what}: choose a source or enter the path of a .txt, .jsonl or .parquet file or a WikiText folder")
        return path
    return choice


def model_from_form(preset: str, custom: str) -> str | None:
    """The free field wins over the preset; the embedded model is None for the engine."""
    custom = (custom or "").strip()
    if custom:
        return custom
    return None if preset in (EMBEDDED, None, "") else preset


def request_from_form(*, model, model_path, device, dtype, method, pattern, sparsity, n, m, ratio_dense, ratio_24,
                      ratio_topk, block, keep, tier_scope, within_block, calib, calib_path, nsamples, seqlen,
                      eval_source, eval_path, eval_windows, baselines, reconstruct, seed, trust_remote_code,
                      save_dir, overwrite) -> RunRequest:
    """The whole set-up form -> a RunRequest, checked as far as can be without loading anything."""
    spec = spec_from_form(method, pattern, sparsity, n, m, ratio_dense, ratio_24, ratio_topk, block, keep,
                          tier_scope, within_block, nsamples, seqlen, reconstruct, seed)
    windows = _int(eval_windows, "evaluation windows", allow_none=True) or None
    request = RunRequest(
        model=model_from_form(model, model_path), spec=spec,
        calib=source_from_form(calib, calib_path, "calibration") if spec.uses_calibration else "auto",
        eval=source_from_form(eval_source, eval_path, "evaluation"), eval_windows=windows,
        baselines=bool(baselines), device=device or "auto", dtype=dtype or "auto",
        save_dir=(save_dir or "").strip() or None, overwrite=bool(overwrite), trust_remote_code=bool(trust_remote_code))
    request.validate()
    return request


def nominal_text(pattern, sparsity, n, m, r_dense, r_24, r_topk, block, keep) -> str:
    """The sparsity a set-up aims at, as one line of Markdown (or the spec's complaint)."""
    try:
        spec = PruneSpec(pattern=pattern, sparsity=float(sparsity), n=_int(n, "N"), m=_int(m, "M"),
                         ratios=(float(r_dense), float(r_24), float(r_topk)), block=_int(block, "block size"),
                         keep=_int(keep, "K"))
    except (UserError, TypeError, ValueError) as err:
        return f"<span class='bad'>⚠ {err}</span>"
    s = spec.nominal_sparsity()
    if pattern == "three_tier":
        d, h, t = spec.ratios
        return (f"Nominal sparsity **{s:.1%}** = 2:4 share {h:.2f} × ½ + top-K share {t:.2f} × "
                f"(1 − {spec.keep}/{spec.block}²) · dense blocks {d:.0%}")
    return f"Nominal sparsity **{s:.1%}**"


SPLIT_LINE = re.compile(r"^\s*([0-9.]+)\s*[/,;\s]\s*([0-9.]+)\s*[/,;\s]\s*([0-9.]+)\s*$")


def parse_splits(text: str) -> list[tuple[float, float, float]]:
    """'0.35/0.45/0.20' per line (commas or spaces work too) -> list of (dense, 2:4, top-K)."""
    splits = []
    for i, line in enumerate((text or "").splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        match = SPLIT_LINE.match(line)
        if not match:
            raise UserError(f"sweep line {i}: {line!r} is not three numbers like 0.35/0.45/0.20")
        r = tuple(float(x) for x in match.groups())
        if abs(sum(r) - 1) > 1e-6:
            raise UserError(f"sweep line {i}: {line!r} sums to {sum(r):g}, not 1")
        splits.append(r)
    if not splits:
        raise UserError("the sweep list is empty: one split per line, e.g. 0.35/0.45/0.20")
    return splits


def grid_splits(step: float) -> str:
    """Every split on a grid of the triangle, one per line (the text the sweep box takes)."""
    k = round(1 / step)
    lines = []
    for i in range(k + 1):
        for j in range(k + 1 - i):
            lines.append(f"{i / k:.2f}/{j / k:.2f}/{(k - i - j) / k:.2f}")
    return "\n".join(lines)


def seed_preset() -> tuple[float, float, float]:
    return SEED_RATIOS
