"""A compact save: every pruned matrix stored by its pattern, everything else as in a normal save.

    save_compact(model, tokenizer, path, record)   write a compact folder (all or nothing, as engine/io/save.py)
    load_compact(path)                             -> (model, tokenizer): a normal transformers model, weights
                                                   bit-identical to the dense save of the same run
    decompress(path, out)                          write a normal folder AutoModelForCausalLM.from_pretrained loads

The folder is a normal `save_pretrained` folder (config, generation config, tokenizer, model card) whose
`model.safetensors` lacks the pruned matrices, plus one file `compact.safetensors` holding them. The pruned
matrices' parameters are the ones `from_pretrained(folder)` reports missing; load_compact refuses a folder where
the two sets differ. Format of `compact.safetensors` (version 1):

  metadata  "format": "sparsity-compact", "version": "1", "manifest": JSON {"matrices": [entry, ...]}, one entry
            per pruned matrix W [out, in] (a GPT-2 Conv1D weight is stored as its transpose, one expert of a fused
            3-D parameter [E, ...] as its slice):
              name        tensor-name prefix, "<layer>.<module inside the layer>"
              parameter   the model's parameter name; expert (slice index or null); transposed (bool)
              shape       [out, in]; dtype (torch name of the values, the parameter's dtype)
              layout      how the matrix is stored (below); block (B) or group (M) where the layout has one
              parts       {part: k}: values kept per group/block slot (see "slots")
              sha256      of W's bytes, row-major, as the dense save stores them: a loader checks it
  "nonzero" means a nonzero bit pattern (so -0.0 and NaN round-trip exactly; pruned weights are +0.0).

  slots     a part cut into G groups of S weights (row-major) keeps k = the largest nonzero count of any group:
            `<name>.<part>.values` [G, k] (the group's nonzeros in order, padded with zeros) and
            `<name>.<part>.positions` uint8: G*k positions in [0, S), ascending per group (padding slots take the
            lowest unused positions), each ceil(log2 S) bits, packed into a bit stream least significant bit
            first (bit j of the stream is bit j % 8 of byte j // 8). Where S < k * ceil(log2 S) (top-K with
            K = 96 of 256) the part is a mask instead, k = "mask": `<name>.<part>.mask` G*S bits packed as above,
            `<name>.<part>.values` [nnz] the nonzeros in order.
  layouts
    blocks     block patterns. W zero-padded to multiples of B, cut into B x B blocks, blocks in row-major order
               of the grid, each block row-major. `<name>.tiers` int8 [R, C] (0 dense, 1 2:4, 2 top-K).
               part "dense": `<name>.dense.values` [n_dense, B*B]; part "2:4": slots with S = 4 over each block's
               rows cut into groups of 4 columns (the 2-bit positions); part "topk": slots with S = B*B over whole
               blocks (K values + their in-block positions).
    groups     N:M: W zero-padded to a multiple of M columns, each row cut into groups of M; part "groups": slots
               with S = M.
    bitmask    `<name>.mask` uint8: one bit per weight of W row-major, packed as above; `<name>.values` [nnz]: the
               nonzeros in row-major order.
    positions  `<name>.row_counts` int32 [out], `<name>.columns` uint8: each nonzero's column, ceil(log2 in) bits
               packed as above, row-major; `<name>.values` [nnz].
  Each matrix is written in the cheapest of the layouts its pattern allows (`layouts_for`); bitmask is always
  allowed, so a matrix that does not obey its tier map still round-trips exactly.

Bytes: a 2:4 matrix at v value bits takes v/2 + 1 bits per weight (0.53 of dense in float32, 0.56 in bf16); a
three-tier block as storage_estimate (engine/explore/storage.py) counts it, plus one byte per block for the tier grid.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from engine.errors import UserError, excerpt
from engine.explore import held_masks, storage_estimate
from engine.io.record import decode_tier_map
from engine.io.save import MODEL_FILES, save_pretrained_atomic
from engine.patterns.masks import from_blocks, to_blocks
from engine.patterns.registry import PATTERNS
from engine.patterns.three_tier import DENSE, TOPK, TWO_FOUR
from engine.spec import PruneSpec
from engine.walk.discovery import find_decoder_layers, find_targets

FORMAT, VERSION = "sparsity-compact", "1"
COMPACT_FILE = "compact.safetensors"
TIER_PARTS = {DENSE: "dense", TWO_FOUR: "2:4", TOPK: "topk"}
VALUE_DTYPES = ("float32", "bfloat16", "float16", "float64")
_BYTE_SHIFTS = torch.arange(8, dtype=torch.uint8)
_INT_OF = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


# --- pure tensor functions: bits, slots ---------------------------------------------------------------------------

def nonzero_bits(x: torch.Tensor) -> torch.Tensor:
    """bool, same shape: the bit pattern is not all zero (-0.0 counts as a value, as it must to round-trip)."""
    return x.view(_INT_OF[x.element_size()]) != 0


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Non-negative integer codes [n] (each < 2**bits) -> uint8 [ceil(n * bits / 8)], least significant bit first."""
    if bits == 1:  # a mask: one byte per weight on the way, never eight
        stream = codes.reshape(-1).to(torch.uint8)
    else:
        stream = ((codes.to(torch.int32).reshape(-1, 1) >> torch.arange(bits, dtype=torch.int32)) & 1).reshape(-1)
        stream = stream.to(torch.uint8)
    stream = torch.nn.functional.pad(stream, (0, -stream.numel() % 8))
    return (stream.view(-1, 8) << _BYTE_SHIFTS).sum(dim=1, dtype=torch.uint8)  # distinct bits: the sum is an OR


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of pack_bits -> int64 [n]."""
    stream = ((packed.reshape(-1, 1) >> _BYTE_SHIFTS) & 1).reshape(-1)[: n * bits]
    if bits == 1:
        return stream.long()
    return (stream.view(n, bits).to(torch.int64) << torch.arange(bits)).sum(dim=1)


def position_bits(slots: int) -> int:
    return max(1, math.ceil(math.log2(slots)))


def encode_slots(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """groups [G, S] -> (values [G, k], positions int64 [G, k]) with k the largest nonzero count of a group:
    each group's nonzeros in order, then padding slots at its lowest unused positions (value zero)."""
    nz = nonzero_bits(groups)
    count = nz.sum(dim=1, keepdim=True)
    k = int(count.max()) if groups.numel() else 0
    # every nonzero, and the (k - count) lowest zeros of its group: exactly k per group, read back in order
    chosen = nz | ((~nz).cumsum(dim=1) <= k - count)
    positions = chosen.nonzero()[:, 1].view(groups.shape[0], k)
    return groups.gather(1, positions), positions


def decode_slots(values: torch.Tensor, positions: torch.Tensor, slots: int) -> torch.Tensor:
    """(values [G, k], positions [G, k]) -> groups [G, S]."""
    return torch.zeros(values.shape[0], slots, dtype=values.dtype).scatter_(1, positions, values)


# --- layouts: encode W [out, in] -> {tensor name: tensor}, parts; decode back ---------------------------------------

@dataclass(frozen=True)
class Layout:
    encode: Callable[..., tuple[dict, dict]]   # (W, **params) -> ({suffix: tensor}, {part: k})
    decode: Callable[..., torch.Tensor]        # (get(suffix) -> tensor, shape, dtype, parts, **params) -> W
    size: Callable[..., int] | None = None     # (W, **params) -> its bytes, without encoding (where cheap)


def _slots_tensors(part: str, groups: torch.Tensor) -> tuple[dict, int | str]:
    """A part's tensors and its k; "mask" where S bits per group are fewer than k positions (top-K with K = 96)."""
    slots = groups.shape[1]
    nz = nonzero_bits(groups)
    k = int(nz.sum(dim=1).max()) if groups.numel() else 0
    if slots < k * position_bits(slots):
        return {f"{part}.mask": pack_bits(nz.reshape(-1), 1), f"{part}.values": groups[nz]}, "mask"
    values, positions = encode_slots(groups)
    return {f"{part}.values": values, f"{part}.positions": pack_bits(positions.reshape(-1), position_bits(slots))}, k


def _slots_from(get, part: str, n_groups: int, k: int | str, slots: int, dtype) -> torch.Tensor:
    if k == "mask":
        nz = unpack_bits(get(f"{part}.mask"), 1, n_groups * slots).bool().view(n_groups, slots)
        groups = torch.zeros(n_groups, slots, dtype=dtype)
        groups[nz] = get(f"{part}.values").to(dtype)
        return groups
    values = get(f"{part}.values").reshape(n_groups, k)
    positions = unpack_bits(get(f"{part}.positions"), position_bits(slots), n_groups * k).view(n_groups, k)
    if k and int(positions.max()) >= slots:
        raise ValueError("a position lies outside its group")
    return decode_slots(values.to(dtype), positions, slots)


def encode_blocks(W: torch.Tensor, tiers: torch.Tensor, block: int) -> tuple[dict, dict]:
    blocks = to_blocks(W, block).flatten(0, 1)                          # [R*C, B*B]
    tier = tiers.flatten()
    tensors, parts = {"tiers": tiers.to(torch.int8).contiguous()}, {}
    tensors["dense.values"] = blocks[tier == DENSE].contiguous()
    parts["dense"] = block * block
    out, k = _slots_tensors("2:4", blocks[tier == TWO_FOUR].reshape(-1, 4))
    tensors.update(out)
    parts["2:4"] = k
    out, k = _slots_tensors("topk", blocks[tier == TOPK])
    tensors.update(out)
    parts["topk"] = k
    return tensors, parts


def decode_blocks(get, shape, dtype, parts, block: int) -> torch.Tensor:
    tiers = get("tiers").long()
    R, C = -(-shape[0] // block), -(-shape[1] // block)
    if tuple(tiers.shape) != (R, C) or bool(((tiers < 0) | (tiers > 2)).any()):
        raise ValueError("tier grid does not fit the matrix")
    tier = tiers.flatten()
    blocks = torch.zeros(R * C, block * block, dtype=dtype)
    blocks[tier == DENSE] = get("dense.values").to(dtype).reshape(-1, block * block)
    n24 = int((tier == TWO_FOUR).sum())
    blocks[tier == TWO_FOUR] = _slots_from(get, "2:4", n24 * block * block // 4, parts["2:4"], 4,
                                           dtype).view(n24, block * block)
    blocks[tier == TOPK] = _slots_from(get, "topk", int((tier == TOPK).sum()), parts["topk"], block * block, dtype)
    return from_blocks(blocks.view(R, C, -1), block, shape).contiguous()


def encode_groups(W: torch.Tensor, group: int) -> tuple[dict, dict]:
    padded = torch.nn.functional.pad(W, (0, -W.shape[1] % group))
    tensors, k = _slots_tensors("groups", padded.reshape(-1, group))
    return tensors, {"groups": k}


def decode_groups(get, shape, dtype, parts, group: int) -> torch.Tensor:
    width = shape[1] + (-shape[1] % group)
    groups = _slots_from(get, "groups", shape[0] * width // group, parts["groups"], group, dtype)
    return groups.view(shape[0], width)[:, : shape[1]].contiguous()


def bitmask_size(W: torch.Tensor) -> int:
    return math.ceil(W.numel() / 8) + int(nonzero_bits(W).sum()) * W.element_size()


def encode_bitmask(W: torch.Tensor) -> tuple[dict, dict]:
    nz = nonzero_bits(W)
    return {"mask": pack_bits(nz.reshape(-1), 1), "values": W[nz]}, {}


def decode_bitmask(get, shape, dtype, parts) -> torch.Tensor:
    nz = unpack_bits(get("mask"), 1, shape[0] * shape[1]).bool().view(shape)
    W = torch.zeros(shape, dtype=dtype)
    W[nz] = get("values").to(dtype)
    return W


def encode_positions(W: torch.Tensor) -> tuple[dict, dict]:
    nz = nonzero_bits(W)
    columns = nz.nonzero()[:, 1]
    return {"row_counts": nz.sum(dim=1).to(torch.int32), "columns": pack_bits(columns, position_bits(W.shape[1])),
            "values": W[nz]}, {}


def positions_size(W: torch.Tensor) -> int:
    nnz = int(nonzero_bits(W).sum())
    return 4 * W.shape[0] + math.ceil(nnz * position_bits(W.shape[1]) / 8) + nnz * W.element_size()


def decode_positions(get, shape, dtype, parts) -> torch.Tensor:
    counts = get("row_counts").long()
    values = get("values").to(dtype)
    if counts.shape != (shape[0],) or bool((counts < 0).any()) or int(counts.sum()) != values.numel():
        raise ValueError("row counts do not fit the matrix")
    columns = unpack_bits(get("columns"), position_bits(shape[1]), values.numel())
    if values.numel() and int(columns.max()) >= shape[1]:
        raise ValueError("a column lies outside the matrix")
    rows = torch.repeat_interleave(torch.arange(shape[0]), counts)
    W = torch.zeros(shape, dtype=dtype)
    W[rows, columns] = values
    return W


LAYOUTS = {"blocks": Layout(encode_blocks, decode_blocks), "groups": Layout(encode_groups, decode_groups),
           "bitmask": Layout(encode_bitmask, decode_bitmask, bitmask_size),
           "positions": Layout(encode_positions, decode_positions, positions_size)}


def layouts_for(spec: dict, tiers: torch.Tensor | None) -> dict[str, dict]:
    """{layout: its parameters} a matrix of this spec may be stored in, from the pattern's registry entry: blocks
    for block patterns (with their tier grid), groups of M for N:M, always bitmask and positions."""
    pattern = PATTERNS[spec["pattern"]]
    allowed = {}  # the pattern's own layout first: it wins a tie
    if pattern.blocks and tiers is not None:
        allowed["blocks"] = {"block": spec["block"], "tiers": tiers}
    if (group := pattern.group(PruneSpec.from_dict(spec))) is not None:
        allowed["groups"] = {"group": group}
    return {**allowed, "bitmask": {}, "positions": {}}


def encode_matrix(W: torch.Tensor, spec: dict, tiers: torch.Tensor | None = None) -> tuple[str, dict, dict, dict]:
    """W [out, in] -> (layout, its parameters, {suffix: tensor}, parts) of the smallest layout the pattern allows."""
    best = None
    for name, params in layouts_for(spec, tiers).items():
        layout = LAYOUTS[name]
        if best is not None and layout.size is not None and layout.size(W, **params) >= best[0]:
            continue  # cannot win: not encoded
        tensors, parts = layout.encode(W, **params)
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if best is None or size < best[0]:
            best = (size, name, {k: v for k, v in params.items() if k != "tiers"}, tensors, parts)
    return best[1:]


def decode_matrix(get, entry: dict) -> torch.Tensor:
    """One manifest entry and get(suffix) -> W [out, in]."""
    params = {k: entry[k] for k in ("block", "group") if k in entry}
    return LAYOUTS[entry["layout"]].decode(get, tuple(entry["shape"]), getattr(torch, entry["dtype"]), entry["parts"],
                                           **params)


def matrix_sha256(W: torch.Tensor) -> str:
    return hashlib.sha256(W.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def tier_of(suffix: str) -> str:
    """The tier a tensor's bytes belong to: dense, 2:4, topk, "tiers" (the grid), "all" (layouts without tiers)."""
    head = suffix.split(".", 1)[0]
    return head if head in TIER_PARTS.values() else ("tiers" if head == "tiers" else "all")


# --- the folder ---------------------------------------------------------------------------------------------------

def _pruned_targets(model, spec: dict):
    """[(layer index, Target, parameter name)] of every matrix a run of `spec` prunes."""
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    _, layers = find_decoder_layers(model)
    return [(i, t, names[id(t.parameter)]) for i, layer in enumerate(layers)
            for t in find_targets(layer, spec.get("prune_router", False))]


@torch.no_grad()
def save_compact(model, tokenizer, path, record: dict, overwrite: bool = False,
                 extra_files: dict[str, str] | None = None) -> dict:
    """Write a compact folder of a pruned model (`record`: its run record, for the spec and the tier maps).
    All or nothing, as save_pretrained_atomic. Returns the measured bytes (compact_bytes)."""
    spec = record["spec"]
    tier_maps = {(m["layer"], m["module"]): m.get("tier_map") for m in record.get("matrices") or ()}
    targets = _pruned_targets(model, spec)
    measured: dict = {}

    def write(tmp: Path) -> None:
        covered = {p for _, _, p in targets}
        rest = {k: v for k, v in model.state_dict().items() if k not in covered}
        model.save_pretrained(tmp, state_dict=rest, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        tensors, manifest = {}, []
        for i, t, pname in targets:
            W = t.weight().detach().cpu().contiguous()
            tier_map = tier_maps.get((i, t.name))
            tiers = None if tier_map is None else torch.from_numpy(decode_tier_map(tier_map))
            layout, params, parts_tensors, parts = encode_matrix(W, spec, tiers)
            name = f"{i}.{t.name}"
            tensors.update({f"{name}.{s}": v.contiguous() for s, v in parts_tensors.items()})
            manifest.append({"name": name, "parameter": pname, "expert": t.expert, "transposed": t.transposed,
                             "shape": list(W.shape), "dtype": str(W.dtype).removeprefix("torch."), "layout": layout,
                             **params, "parts": parts, "sha256": matrix_sha256(W)})
        save_file(tensors, tmp / COMPACT_FILE, metadata={"format": FORMAT, "version": VERSION,
                                                          "manifest": json.dumps({"matrices": manifest})})
        measured.update(compact_bytes(tmp))

    save_pretrained_atomic(model, tokenizer, path, overwrite=overwrite, extra_files=extra_files, write=write)
    return measured


def compact_bytes(folder) -> dict:
    """Measured bytes of a compact folder: the compact file in total and per tier (the tensors' bytes; "tiers" the
    tier grids, "all" every tensor of a layout without tiers, "header" the safetensors header), the rest of the
    weights (model*.safetensors), and what the pruned matrices take in a dense save."""
    path = Path(folder) / COMPACT_FILE
    entries = read_manifest(path)["matrices"]
    names = {m["name"] for m in entries}
    per_tier: dict[str, int] = {}
    with safe_open(path, "pt") as f:
        for key in f.keys():
            sl = f.get_slice(key)
            tier = tier_of(_suffix(key, names))
            per_tier[tier] = per_tier.get(tier, 0) + math.prod(sl.get_shape()) * _DTYPE_BYTES[sl.get_dtype()]
    size = path.stat().st_size
    per_tier["header"] = size - sum(per_tier.values())
    dense = sum(math.prod(m["shape"]) * getattr(torch, m["dtype"]).itemsize for m in entries)
    rest = sum(p.stat().st_size for p in Path(folder).glob("model*.safetensors"))
    return {"compact_bytes": size, "per_tier": per_tier, "pruned_dense_bytes": dense, "rest_bytes": rest,
            "ratio": size / dense if dense else 0.0}


def measured_storage(model, record: dict, measured: dict) -> dict:
    """The record's "storage": the compact save's measured bytes (total, per tier) beside storage_estimate's
    prediction for the same weights (masks = W != 0, the run's tier grids, v = the weights' bits) and the bytes the
    pruned matrices and the whole weights take in a dense save."""
    spec = PruneSpec.from_dict(record["spec"])
    plan = held_masks(model, spec)
    for m in record.get("matrices") or ():
        if m.get("tier_map") is not None:
            plan.matrices[(m["layer"], m["module"])].tiers = torch.from_numpy(decode_tier_map(m["tier_map"]))
    bits = 8 * next(iter(model.parameters())).element_size()
    estimate = storage_estimate(plan, value_bits=bits)
    total = measured["compact_bytes"]
    return {"format": "compact", "bytes": total, "per_tier": measured["per_tier"],
            "estimate_bytes": estimate["bytes"], "estimate_gap": total / estimate["bytes"] - 1 if estimate["bytes"]
            else None, "value_bits": bits, "pruned_dense_bytes": measured["pruned_dense_bytes"],
            "ratio": measured["ratio"], "rest_bytes": measured["rest_bytes"],
            "dense_save_bytes": measured["rest_bytes"] + measured["pruned_dense_bytes"],
            "compact_save_bytes": measured["rest_bytes"] + total}


_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "F16": 2, "BF16": 2, "I32": 4, "F32": 4, "I64": 8, "F64": 8}


def _suffix(key: str, names: set[str]) -> str:
    """A tensor's name after its matrix's name (matrix names hold dots: the longest that is a prefix)."""
    head = key
    while head not in names and "." in head:
        head = head.rsplit(".", 1)[0]
    return key[len(head) + 1:]


def read_manifest(path: Path) -> dict:
    """The manifest of a compact file, checked for its format and version; one UserError line otherwise."""
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is not a readable compact file ({excerpt(str(e), 120)})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise UserError(f"{path} is not a {FORMAT} version {VERSION} file")
    try:
        manifest = json.loads(meta["manifest"])
        ok = isinstance(manifest["matrices"], list) and all(
            isinstance(m, dict) and m.get("dtype") in VALUE_DTYPES and m.get("layout") in LAYOUTS
            and isinstance(m.get("name"), str) and isinstance(m.get("shape"), list) for m in manifest["matrices"])
    except (KeyError, ValueError, TypeError):
        ok = False
    if not ok:
        raise UserError(f"{path}: its manifest is unreadable")
    return manifest


@torch.no_grad()
def load_compact(folder, device: str = "cpu"):
    """A compact folder -> (model, tokenizer), in the dtype it was saved in. The rest of the weights load as
    transformers loads them, then each pruned matrix is decoded, checked against its sha256 and copied into its
    parameter, one at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder = Path(folder).expanduser()
    path = folder / COMPACT_FILE
    if not path.is_file():
        raise UserError(f"{folder} holds no {COMPACT_FILE}: not a compact save")
    manifest = read_manifest(path)
    entries = manifest["matrices"]
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the pruned matrices are "missing" from model.safetensors by design
    try:
        dtype = getattr(torch, entries[0]["dtype"]) if entries else None
        model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True, dtype=dtype)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise UserError(f"could not load the dense part of {folder}: {excerpt(str(e), 160)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = set(info.get("missing_keys") or ())
    stored = {m["parameter"] for m in entries}
    if missing != stored:
        raise UserError(f"{folder}: the compact file's matrices ({len(stored)} parameters) are not the ones missing "
                        f"from model.safetensors ({len(missing)}); the folder is not one compact save")
    params = dict(model.named_parameters(remove_duplicate=False))
    entry: dict = {}
    try:
        with safe_open(path, "pt") as f:
            for entry in entries:
                target = _target(params[entry["parameter"]], entry)  # shape and dtype checked before decoding
                W = decode_matrix(lambda suffix, n=entry["name"]: f.get_tensor(f"{n}.{suffix}"), entry)
                if matrix_sha256(W) != entry["sha256"]:
                    raise ValueError("its weights do not match their checksum")
                target.copy_(W.T if entry["transposed"] else W)
    except (SafetensorError, ValueError, RuntimeError, KeyError, IndexError, TypeError, AttributeError) as e:
        name = entry.get("name", "?") if isinstance(entry, dict) else "?"
        raise UserError(f"{path} is damaged at matrix {excerpt(str(name), 80)}: {excerpt(str(e), 120)}") from None
    tokenizer = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError):
        pass
    return model.to(device).eval(), tokenizer


def _target(param: torch.nn.Parameter, entry: dict) -> torch.Tensor:
    """The slice of `param` an entry fills, once its shape and dtype are those of the model (so a hand-edited shape
    never allocates more than the matrix it names)."""
    target = param[entry["expert"]] if entry["expert"] is not None else param
    shape = tuple(target.shape[::-1] if entry["transposed"] else target.shape)
    if tuple(entry["shape"]) != shape or entry["dtype"] != str(param.dtype).removeprefix("torch."):
        raise ValueError(f"shape {entry['shape']} {entry['dtype']} does not fit parameter {entry['parameter']}")
    return target


def decompress(folder, out, overwrite: bool = False) -> Path:
    """A compact folder -> a normal save in `out` (the compact folder's other files, e.g. the model card, carried)."""
    folder = Path(folder).expanduser()
    model, tokenizer = load_compact(folder)
    extra = {p.name: p.read_text() for p in folder.iterdir()
             if p.is_file() and p.suffix in (".md", ".json") and not _is_model_file(p.name)}
    return save_pretrained_atomic(model, tokenizer, out, overwrite=overwrite, extra_files=extra)


def _is_model_file(name: str) -> bool:
    return bool(MODEL_FILES.fullmatch(name)) or name == COMPACT_FILE
