"""The compact save (engine/io/compact.py): exact encodings on hand-made tensors, bit-identical round trips for every
pattern on tiny models of each kind of matrix (Linear, GPT-2 Conv1D, fused experts), --decompress to a normal
folder, one `error:` line for a damaged file, and the bytes on the real embedded model."""
import json
import math

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from conftest import tiny_config
from engine.cli.prune_cli import main
from engine.io.compact import (
    COMPACT_FILE,
    decode_matrix,
    encode_blocks,
    encode_matrix,
    encode_slots,
    load_compact,
    measured_storage,
    pack_bits,
    save_compact,
    unpack_bits,
)
from engine.io.save import save_pretrained_atomic
from engine.patterns.registry import PATTERNS
from engine.spec import PruneSpec
from engine.walk.layer_walk import prune_model
from engine.walk.prune_matrix import prune_matrix

QUICK = ["--calib_dataset", "pydoc", "--eval_dataset", "pydoc", "--nsamples", "4", "--seqlen", "64",
         "--eval_windows", "2", "--quiet"]


def bits_of(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8) if t.dtype.is_floating_point else t


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(bits_of(sa[k]), bits_of(sb[k])), k


# --- hand-made tensors ----------------------------------------------------------------------------------------

def test_bits_pack_least_significant_first_and_unpack():
    # codes 1, 3, 0, 2 at 2 bits: stream 1 0 | 1 1 | 0 0 | 0 1 -> 1 + 4 + 8 + 128
    assert pack_bits(torch.tensor([1, 3, 0, 2]), 2).tolist() == [141]
    assert pack_bits(torch.tensor([5]), 3).tolist() == [5]  # padded to a whole byte
    codes = torch.randint(0, 256, (1001,))
    assert torch.equal(unpack_bits(pack_bits(codes, 8), 8, 1001), codes)
    codes = torch.randint(0, 1024, (77,))
    assert torch.equal(unpack_bits(pack_bits(codes, 10), 10, 77), codes)


def test_slots_keep_each_groups_nonzeros_then_its_lowest_free_positions():
    groups = torch.tensor([[0., 3., 0., 4.], [5., 0., 0., 0.], [0., 0., 0., 0.], [0., -0.0, 7., 0.]])
    values, positions = encode_slots(groups)
    assert positions.tolist() == [[1, 3], [0, 1], [0, 1], [1, 2]]  # -0.0 is a value: its sign must come back
    assert bits_of(values).tolist() == bits_of(torch.tensor([[3., 4.], [5., 0.], [0., 0.], [-0.0, 7.]])).tolist()


def test_a_two_four_matrix_is_two_values_and_two_bit_positions_per_group():
    W = torch.tensor([[0, 0, 3, 4, 0, 6, 0, 8], [1, 0, 0, 2, 0, 5, 7, 0]], dtype=torch.bfloat16)
    layout, params, tensors, parts = encode_matrix(W, {"pattern": "nm", "n": 2, "m": 4})
    assert layout == "groups" and params == {"group": 4} and parts == {"groups": 2}
    assert tensors["groups.values"].tolist() == [[3, 4], [6, 8], [1, 2], [5, 7]]
    # positions 2 3 | 1 3 | 0 3 | 1 2 at 2 bits each: 16 bits in two bytes, as 2:4 hardware stores them
    assert unpack_bits(tensors["groups.positions"], 2, 8).tolist() == [2, 3, 1, 3, 0, 3, 1, 2]
    assert tensors["groups.positions"].numel() == 2


def test_three_tier_blocks_store_dense_values_two_four_pairs_and_top_k():
    torch.manual_seed(0)
    W = torch.randn(8, 8)
    tiers = torch.tensor([[0, 1], [2, 2]], dtype=torch.int8)  # B = 4: dense, 2:4, top-K, top-K
    W[0:4, 6:8] = 0                                              # 2:4 block: two of each four kept
    W[4:8, :] = 0
    W[4, 1], W[7, 2], W[5, 6] = 1., 2., 3.                       # top-K blocks: at most 2 weights each
    tensors, parts = encode_blocks(W, tiers, 4)
    assert parts == {"dense": 16, "2:4": 2, "topk": 2} and torch.equal(tensors["tiers"], tiers)
    assert torch.equal(tensors["dense.values"], W[:4, :4].reshape(1, 16))
    assert tensors["topk.values"].tolist() == [[1., 2.], [0., 3.]]
    # in-block positions, ascending: (0, 1) -> 1, (3, 2) -> 14; the lowest free slot 0 (padding), (1, 2) -> 6
    assert unpack_bits(tensors["topk.positions"], 4, 4).tolist() == [1, 14, 0, 6]
    entry = {"layout": "blocks", "block": 4, "parts": parts, "shape": [8, 8], "dtype": "float32"}
    assert torch.equal(decode_matrix(lambda s: tensors[s], entry), W)
    # a 2:4 block's values: its rows' groups of four, two each
    assert tensors["2:4.values"].tolist() == W[0:4, 4:6].tolist()


def test_top_k_blocks_keeping_96_of_256_take_an_in_block_mask():
    """96 positions of 8 bits cost 768 bits a block, a mask 256: the mask is stored, and storage_estimate agrees."""
    from engine.explore import Replan, matrix_mask, storage_estimate
    from engine.patterns.three_tier import three_tier_mask
    W = torch.randn(32, 32)
    tiers = torch.full((2, 2), 2, dtype=torch.int8)
    keep = three_tier_mask(W.abs(), tiers, 16, 96)
    W = W.masked_fill(~keep, 0)
    tensors, parts = encode_blocks(W, tiers, 16)
    assert parts["topk"] == "mask" and tensors["topk.mask"].numel() == 4 * 256 // 8
    entry = {"layout": "blocks", "block": 16, "parts": parts, "shape": [32, 32], "dtype": "float32"}
    assert torch.equal(decode_matrix(lambda s: tensors[s], entry), W)
    spec = PruneSpec(pattern="three_tier", block=16, keep=96)
    plan = Replan(spec, spec, [], "", {(0, "m"): matrix_mask(keep, tiers)})
    assert storage_estimate(plan)["bytes"] == 4 * (96 * 16 + 256) / 8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_any_matrix_round_trips_bit_for_bit_even_off_its_pattern(dtype):
    """Odd shapes, -0.0, NaN, and a 2:4 group with three weights: the smallest layout that holds it exactly."""
    torch.manual_seed(1)
    W = torch.randn(19, 37).to(dtype)
    W[W.abs() < 0.7] = 0
    W[0, 0], W[1, 1], W[2, 2] = -0.0, float("nan"), float("inf")
    tiers = torch.randint(0, 3, (2, 3), dtype=torch.int8)
    for spec, grid in [({"pattern": "three_tier", "block": 16}, tiers), ({"pattern": "nm", "n": 2, "m": 4}, None),
                       ({"pattern": "unstructured"}, None)]:
        layout, params, tensors, parts = encode_matrix(W, spec, grid)
        entry = {"layout": layout, **params, "parts": parts, "shape": list(W.shape), "dtype": str(dtype)[6:]}
        assert torch.equal(bits_of(decode_matrix(lambda s: tensors[s], entry)), bits_of(W)), (spec, layout)


def test_unstructured_takes_the_bitmask_at_half_and_column_positions_when_very_sparse():
    W = torch.zeros(4, 64)
    W[:, ::2] = 1.0
    assert encode_matrix(W, {"pattern": "unstructured"})[0] == "bitmask"
    W = torch.zeros(4, 64)
    W[1, 3] = 2.0
    layout, _, tensors, _ = encode_matrix(W, {"pattern": "unstructured"})
    assert layout == "positions" and tensors["row_counts"].tolist() == [0, 1, 0, 0]


def test_masks_only_pruning_writes_positive_zeros():
    """A pruned weight is +0.0 bit for bit (W * mask left -0.0 where W < 0: a dense save and a compact one would
    differ in sign bits, and the compact save would pay for every negative pruned weight)."""
    W = torch.tensor([[-1.0, -2.0, 3.0, -4.0]])
    res = prune_matrix(W, None, PruneSpec(method="magnitude", pattern="unstructured", sparsity=0.5))
    assert res.W.tolist() == [[0.0, 0.0, 3.0, -4.0]]
    assert not torch.signbit(res.W[~res.keep]).any()


# --- tiny models: every pattern x every kind of matrix --------------------------------------------------------

PATTERN_SPECS = {name: PruneSpec(method="magnitude", pattern=name, block=16) for name in PATTERNS}
PATTERN_SPECS["original three_tier"] = PruneSpec(method="magnitude", pattern="three_tier", block=16, keep=10,
                                                 block_rule="original", within_block="magnitude")
FAMILIES = ["llama", "gpt2", "mixtral"]  # nn.Linear, GPT-2 Conv1D, fused 3-D experts


def _pruned(family, spec, windows=None):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family)).eval()
    result = prune_model(model, spec, windows)
    assert result.status == "completed"
    return model, {"spec": spec.to_dict(), "matrices": result.matrices}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pattern", list(PATTERN_SPECS))
def test_compact_save_loads_bit_identical_to_the_dense_save(family, pattern, tmp_path):
    model, record = _pruned(family, PATTERN_SPECS[pattern])
    measured = save_compact(model, None, tmp_path / "compact", record)
    save_pretrained_atomic(model, None, tmp_path / "dense")
    loaded, _ = load_compact(tmp_path / "compact")
    assert_same_weights(loaded, AutoModelForCausalLM.from_pretrained(tmp_path / "dense"))
    assert measured["compact_bytes"] == (tmp_path / "compact" / COMPACT_FILE).stat().st_size
    assert measured["compact_bytes"] < 0.9 * measured["pruned_dense_bytes"]


def test_weights_updated_by_sparsegpt_round_trip(tmp_path):
    windows = torch.randint(0, 384, (4, 32), generator=torch.Generator().manual_seed(0))
    model, record = _pruned("llama", PruneSpec(method="sparsegpt", pattern="three_tier", block=16,
                                               nsamples=4, seqlen=32), windows)
    save_compact(model, None, tmp_path / "c", record)
    assert_same_weights(load_compact(tmp_path / "c")[0], model)
    with safe_open(tmp_path / "c" / COMPACT_FILE, "pt") as f:
        layouts = {m["layout"] for m in json.loads(f.metadata()["manifest"])["matrices"]}
    assert layouts == {"blocks"}


def test_record_storage_sits_beside_the_estimate(tmp_path):
    model, record = _pruned("llama", PruneSpec(method="magnitude", pattern="nm", n=2, m=4))
    storage = measured_storage(model, record, save_compact(model, None, tmp_path / "c", record))
    # 2:4 at 32 bits: 17 bits per weight in values and positions, as storage_estimate predicts; the header apart
    assert storage["per_tier"]["all"] == storage["estimate_bytes"] == storage["pruned_dense_bytes"] * 17 / 32
    assert 0 < storage["estimate_gap"] < 0.05 and storage["bytes"] == sum(storage["per_tier"].values())


# --- the command line: --save_format compact, --decompress, damaged files -------------------------------------

@pytest.fixture(scope="module")
def compact_run(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("compact") / "run"
    rc = main(["--model", str(tiny_llama_dir), "--sparsity_type", "three_tier", "--save", str(out),
               "--save_format", "compact", *QUICK])
    assert rc == 0
    return out


def test_cli_compact_save_records_measured_bytes_and_decompresses_to_the_same_logits(compact_run, tmp_path, capsys):
    res = json.loads((compact_run / "results.json").read_text())
    storage = res["storage"]
    assert storage["format"] == "compact" and set(storage["per_tier"]) == {"dense", "2:4", "topk", "tiers", "header"}
    assert storage["bytes"] == (compact_run / COMPACT_FILE).stat().st_size
    assert abs(storage["estimate_gap"]) < 0.1 and storage["dense_save_bytes"] > storage["compact_save_bytes"]
    assert res["timings"]["save_s"] > 0
    assert main(["--decompress", str(compact_run), str(tmp_path / "plain")]) == 0
    assert "decompressed" in capsys.readouterr().out
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")  # plain transformers, nothing of ours
    compact, tok = load_compact(compact_run)
    assert tok is not None and (tmp_path / "plain" / "README.md").exists()
    ids = torch.randint(0, 384, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, compact(ids).logits)
    assert_same_weights(plain, compact)


def test_the_dashboard_overview_shows_the_measured_bytes_beside_the_estimate(compact_run):
    from components.tables import overview_html
    record = json.loads((compact_run / "results.json").read_text())
    storage = record["storage"]
    page = overview_html(record)
    assert "compact save (measured)" in page and f"{storage['bytes'] / 1e6:,.2f} MB" in page
    assert f"estimate {storage['estimate_bytes'] / 1e6:,.2f}" in page
    assert f"topk {storage['per_tier']['topk'] / 1e6:,.2f}" in page and f"{storage['estimate_gap']:+.2%}" in page
    assert "compact save" not in overview_html({k: v for k, v in record.items() if k != "storage"})


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def _one_error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_truncated_compact_file_is_one_error_line(compact_run, tmp_path, capsys):
    bad = _copy(compact_run, tmp_path / "bad")
    data = (bad / COMPACT_FILE).read_bytes()
    (bad / COMPACT_FILE).write_bytes(data[: len(data) - 1000])
    assert "compact" in _one_error_line(capsys, ["--decompress", str(bad), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_an_edited_weight_in_a_compact_file_is_one_error_line(compact_run, tmp_path, capsys):
    bad = _copy(compact_run, tmp_path / "bad")
    path = bad / COMPACT_FILE
    with safe_open(path, "pt") as f:
        first = json.loads(f.metadata()["manifest"])["matrices"][0]["name"]
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    offset = json.loads(data[8:header])[f"{first}.dense.values"]["data_offsets"][0]
    data[header + offset + 2] ^= 0x40  # one bit of one stored value
    path.write_bytes(bytes(data))
    line = _one_error_line(capsys, ["--decompress", str(bad), str(tmp_path / "out")])
    assert "checksum" in line and first in line


def _edit_manifest(folder, edit):
    from safetensors.torch import save_file
    path = folder / COMPACT_FILE
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    manifest = json.loads(meta["manifest"])
    edit(manifest["matrices"])
    save_file(tensors, path, metadata={**meta, "manifest": json.dumps(manifest)})


def test_a_compact_file_missing_a_matrix_is_refused(compact_run, tmp_path, capsys):
    """A compact file from another save (fewer matrices) never leaves random weights in the model."""
    bad = _copy(compact_run, tmp_path / "bad")
    _edit_manifest(bad, lambda matrices: matrices.pop(0))
    assert "missing" in _one_error_line(capsys, ["--decompress", str(bad), str(tmp_path / "out")])


@pytest.mark.parametrize("field, value, message", [("shape", [10**6, 10**6], "does not fit"),
                                                    ("dtype", "garbage", "manifest is unreadable"),
                                                    ("layout", "nope", "manifest is unreadable")])
def test_an_edited_manifest_is_one_error_line_before_any_allocation(compact_run, tmp_path, capsys, field, value,
                                                                    message):
    bad = _copy(compact_run, tmp_path / "bad")
    _edit_manifest(bad, lambda matrices: matrices[0].update({field: value}))
    assert message in _one_error_line(capsys, ["--decompress", str(bad), str(tmp_path / "out")])


def test_decompress_of_a_dense_folder_is_one_error_line(tiny_llama_dir, tmp_path, capsys):
    assert "not a compact save" in _one_error_line(capsys, ["--decompress", str(tiny_llama_dir), str(tmp_path / "o")])


# --- the real embedded model ----------------------------------------------------------------------------------

def test_smollm2_two_four_compact_is_at_most_0_6_of_its_dense_bytes(smollm2, tmp_path):
    lm = smollm2.loaded
    spec = PruneSpec(method="magnitude", pattern="nm", n=2, m=4)
    try:
        result = prune_model(lm.model, spec, None)
        record = {"spec": spec.to_dict(), "matrices": result.matrices}
        storage = measured_storage(lm.model, record, save_compact(lm.model, None, tmp_path / "c", record))
    finally:
        smollm2.restore()
    bits = storage["value_bits"]
    assert storage["bytes"] <= 0.6 * storage["pruned_dense_bytes"]
    assert storage["ratio"] == pytest.approx((bits / 2 + 1) / bits, abs=0.005)  # v/2 + 1 bits per weight
    assert math.isclose(storage["bytes"], storage["estimate_bytes"], rel_tol=0.02)
