"""Figure builders on hand-made run records: shapes, values, colours, and pooling of big tier maps."""
from __future__ import annotations

import numpy as np
import pytest

from components import figures
from components.figures import MAX_TIER_CELLS, TIER_COLORS, pool_factor, pool_tiers, tier_map_figure
from engine.io.record import encode_array, encode_tier_map
from engine.patterns.registry import PATTERNS
from engine.spec import PruneSpec, spec_label

MODULES = [("self_attn.q_proj", 64, 64), ("self_attn.k_proj", 32, 64), ("mlp.down_proj", 64, 128)]


def matrix_entry(layer: int, module: str, tiers: np.ndarray, block: int = 16, keep: int = 15, importance=None) -> dict:
    """A record matrix entry laid out as engine/io/record.py says, with the sparsity the tiers imply."""
    out, inp = tiers.shape[0] * block, tiers.shape[1] * block
    census = {"dense": int((tiers == 0).sum()), "2:4": int((tiers == 1).sum()), "topk": int((tiers == 2).sum())}
    zeros = census["2:4"] * block * block // 2 + census["topk"] * (block * block - keep)
    if importance is None:
        importance = np.arange(tiers.size, dtype=np.float32).reshape(tiers.shape)
    return {"layer": layer, "module": module, "shape": [out, inp], "numel": out * inp, "zeros": zeros,
            "sparsity": zeros / (out * inp), "tiers": census, "tier_map": encode_tier_map(tiers),
            "block_importance": encode_array(importance)}


def make_record(n_layers: int = 3, layers_done: int | None = None, ratios=(0.35, 0.45, 0.20), seed: int = 0,
                ppl=(30.0, 20.0, 400.0), method: str = "wanda") -> dict:
    rng = np.random.default_rng(seed)
    spec = PruneSpec(method=method, pattern="three_tier", ratios=ratios)
    layers_done = n_layers if layers_done is None else layers_done
    matrices = [matrix_entry(i, name, rng.integers(0, 3, (out // 16, inp // 16)).astype(np.int8))
                for i in range(layers_done) for name, out, inp in MODULES]
    zeros, numel = sum(m["zeros"] for m in matrices), sum(m["numel"] for m in matrices)
    return {"record_version": 1, "run_id": f"test-{seed}", "status": "completed", "message": None,
            "spec": spec.to_dict(), "model": {"name": "tiny", "model_type": "llama", "n_layers": n_layers},
            "data": {"calibration": "pydoc", "evaluation": "pydoc"}, "timings": {"total_s": 1.5},
            "layers_done": layers_done, "n_layers": n_layers, "sparsity": zeros / max(numel, 1),
            "nominal_sparsity": spec.nominal_sparsity(),
            "ppl": {"pruned": ppl[0], "dense": ppl[1], "magnitude": ppl[2]}, "matrices": matrices}


def heatmaps(fig):
    return [t for t in fig.data if t.type == "heatmap"]


# -- layers x modules ----------------------------------------------------------------------------------------------

def test_layer_heatmap_is_layers_by_modules_of_realised_sparsity():
    record = make_record(n_layers=3)
    fig = figures.layer_heatmap(record)
    (hm,) = heatmaps(fig)
    z = np.asarray(hm.z, dtype=float)
    assert z.shape == (3, 3)
    assert list(hm.x) == [name for name, _, _ in MODULES]  # the architecture's own names, in its order
    for m in record["matrices"]:
        assert z[m["layer"], list(hm.x).index(m["module"])] == pytest.approx(m["sparsity"])
    assert fig.layout.yaxis.autorange == "reversed"  # layer 0 at the top


def test_layer_heatmap_leaves_unfinished_layers_blank():
    fig = figures.layer_heatmap(make_record(n_layers=4, layers_done=1))
    z = np.asarray(heatmaps(fig)[0].z, dtype=float)
    assert z.shape == (4, 3)
    assert np.isfinite(z[0]).all() and np.isnan(z[1:]).all()


def test_tier_shares_are_one_panel_per_tier_summing_to_one():
    record = make_record(n_layers=2)
    fig = figures.tier_share_heatmaps(record)
    panels = heatmaps(fig)
    assert len(panels) == 3
    total = sum(np.asarray(p.z, dtype=float) for p in panels)
    assert np.allclose(total, 1.0)
    m = record["matrices"][0]
    blocks = sum(m["tiers"].values())
    assert np.asarray(panels[1].z, dtype=float)[0, 0] == pytest.approx(m["tiers"]["2:4"] / blocks)
    assert [p.colorscale[-1][1] for p in panels] == [TIER_COLORS[t] for t in ("dense", "2:4", "topk")]


def test_empty_and_unstructured_records_give_a_message_not_an_error():
    assert figures.layer_heatmap(None).layout.annotations
    unstructured = make_record()
    for m in unstructured["matrices"]:
        m.update(tiers=None, tier_map=None, block_importance=None)
    assert "three-tier" in figures.tier_share_heatmaps(unstructured).layout.annotations[0].text
    fig, note = tier_map_figure(unstructured["matrices"][0])
    assert "not a three-tier run" in fig.layout.annotations[0].text and note == ""


# -- one matrix's tier map -----------------------------------------------------------------------------------------

def test_tier_map_draws_each_tier_in_its_fixed_colour_exactly_where_it_is():
    tiers = np.array([[0, 1, 2, 2], [1, 1, 0, 2]], dtype=np.int8)
    imp = np.array([[9, 5, 1, 2], [6, 7, 8, 0.5]], dtype=np.float32)
    fig, note = tier_map_figure(matrix_entry(0, "mlp.down_proj", tiers, importance=imp))
    layers = heatmaps(fig)
    assert [t.name for t in layers] == ["dense", "2:4", "top-K"]
    for tier_id, trace in enumerate(layers):
        z = np.asarray(trace.z, dtype=float)
        assert z.shape == tiers.shape
        assert np.array_equal(np.isfinite(z), tiers == tier_id)
        assert np.allclose(z[tiers == tier_id], imp[tiers == tier_id], rtol=1e-3)  # hover shows importance
        assert trace.colorscale[0][1] == trace.colorscale[1][1] == list(TIER_COLORS.values())[tier_id]
    legend = [t for t in fig.data if t.type == "scatter" and t.showlegend is not False]
    assert [t.name for t in legend] == ["dense", "2:4", "top-K"]
    assert [t.marker.color for t in legend] == list(TIER_COLORS.values())
    assert "every block drawn" in note


def test_tier_map_axes_are_weight_coordinates():
    tiers = np.zeros((4, 8), dtype=np.int8)  # a [64, 128] matrix
    fig, _ = tier_map_figure(matrix_entry(0, "mlp.down_proj", tiers))
    assert fig.layout.xaxis.title.text == "input column" and fig.layout.yaxis.title.text == "output row"
    assert fig.layout.xaxis.ticktext[0] == "0" and fig.layout.xaxis.ticktext[-1] == "128"
    assert fig.layout.yaxis.ticktext[-1] == "64"
    # a tick labelled w sits on the edge between block w/B - 1 and block w/B
    for value, label in zip(fig.layout.xaxis.tickvals, fig.layout.xaxis.ticktext):
        assert value == pytest.approx(int(label.replace(",", "")) / 16 - 0.5)
    assert tuple(fig.layout.yaxis.range) == (3.5, -0.5)  # output row 0 at the top, like the matrix


def test_pool_tiers_takes_the_majority_and_counts_shares_exactly():
    tiers = np.array([[0, 0, 2, 2, 1],
                      [0, 1, 2, 1, 1],
                      [1, 1, 0, 2, 2],
                      [1, 2, 1, 0, 2],
                      [2, 2, 0, 0, 0]], dtype=np.int8)
    imp = np.arange(25, dtype=np.float64).reshape(5, 5)
    majority, shares, mean_imp = pool_tiers(tiers, imp, 2)
    assert majority.tolist() == [[0, 2, 1],
                                 [1, 0, 2],
                                 [2, 0, 0]]
    assert shares[0, 0].tolist() == [0.75, 0.25, 0.0]
    assert shares[0, 2].tolist() == [0.0, 1.0, 0.0]      # edge super-block holds two blocks, both 2:4
    assert shares[1, 0].tolist() == [0.0, 0.75, 0.25]
    assert shares[2, 2].tolist() == [1.0, 0.0, 0.0]      # corner holds one block
    assert mean_imp[0, 0] == pytest.approx((0 + 1 + 5 + 6) / 4)
    assert mean_imp[2, 2] == pytest.approx(24)
    tie = np.array([[1, 2], [2, 1]], dtype=np.int8)
    assert pool_tiers(tie, None, 2)[0].tolist() == [[1]]  # a tie goes to the denser tier


def test_big_tier_map_is_pooled_under_the_cap_and_says_so():
    # 8192 x 28672 weights in 16 x 16 blocks: 512 x 1792 blocks, far more than a plot has pixels for.
    R, C = 512, 1792
    f = pool_factor((R, C))
    assert f > 1
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 3, (-(-R // f), -(-C // f))).astype(np.int8)
    tiers = np.kron(coarse, np.ones((f, f), dtype=np.int8))[:R, :C]  # constant per super-block: pooling keeps it
    tiers[0, 0] = (coarse[0, 0] + 1) % 3                              # one dissenting block does not win
    entry = matrix_entry(5, "mlp.down_proj", tiers, importance=np.ones(tiers.shape, np.float32))
    fig, note = tier_map_figure(entry)  # its speed (~0.1 s) is a benchmark matter, never a test's: see bench/
    layers = heatmaps(fig)
    shape = np.asarray(layers[0].z).shape
    assert shape == coarse.shape and shape[0] * shape[1] <= MAX_TIER_CELLS
    drawn = np.full(shape, -1)
    for t, trace in enumerate(layers):
        drawn[np.isfinite(np.asarray(trace.z, dtype=float))] = t
    assert np.array_equal(drawn, coarse)
    shares = np.asarray(layers[coarse[0, 0]].customdata)[0, 0]  # hover: percent of each tier in the super-block
    assert shares[coarse[0, 0]] == round(100 * (f * f - 1) / (f * f)) and shares.sum() in (99, 100, 101)
    assert "512 × 1,792 blocks" in note and "super-blocks" in note and f"{f} × {f} blocks" in note
    assert fig.layout.xaxis.ticktext[0] == "0"
    assert max(int(t.replace(",", "")) for t in fig.layout.xaxis.ticktext) <= 28672


def test_pool_factor_respects_any_cap():
    for shape in [(1, 1), (36, 96), (256, 256), (512, 1792), (1000, 3)]:
        for cap in (10, 1000, MAX_TIER_CELLS):
            f = pool_factor(shape, cap)
            assert -(-shape[0] // f) * -(-shape[1] // f) <= cap
            assert f == 1 or -(-shape[0] // (f - 1)) * -(-shape[1] // (f - 1)) > cap  # the smallest such f


def test_find_matrix():
    record = make_record(n_layers=2)
    assert figures.find_matrix(record, 1, "mlp.down_proj")["shape"] == [64, 128]
    assert figures.find_matrix(record, "1", "mlp.down_proj") is not None
    assert figures.find_matrix(record, 7, "mlp.down_proj") is None
    assert figures.find_matrix(None, 0, "x") is None


# -- results across runs -----------------------------------------------------------------------------------------

def test_ppl_bars_show_dense_magnitude_and_run_in_their_colours():
    fig = figures.ppl_bars(make_record(ppl=(30.0, 20.0, 400.0)))
    (bars,) = fig.data
    assert list(bars.y) == [20.0, 400.0, 30.0]
    assert list(bars.marker.color) == [figures.BASELINE_COLORS[k] for k in ("dense", "magnitude", "pruned")]
    assert fig.layout.yaxis.type == "log"  # 400 vs 20: a linear axis would flatten the interesting bars
    fig = figures.ppl_bars(make_record(ppl=(22.0, 20.0, None)))
    assert list(fig.data[0].y) == [20.0, 22.0] and fig.layout.yaxis.type == "linear"


def test_ppl_vs_sparsity_has_a_point_per_evaluated_run_and_the_dense_line():
    runs = [make_record(seed=i, ppl=(25.0 + i, 20.0, 300.0), method=m)
            for i, m in enumerate(["wanda", "sparsegpt", "wanda"])]
    runs.append(dict(make_record(seed=9), ppl={"pruned": None, "dense": None, "magnitude": None}))
    fig = figures.ppl_vs_sparsity(runs)
    points = [(x, y) for t in fig.data for x, y in zip(t.x, t.y)]
    assert sorted(y for _, y in points) == [25.0, 26.0, 27.0]
    assert {t.name for t in fig.data} == {"wanda", "sparsegpt"}
    assert any(s.y0 == 20.0 for s in fig.layout.shapes)


def test_ternary_places_runs_by_their_split_and_colours_by_perplexity():
    splits = [(0.35, 0.45, 0.20), (0.6, 0.2, 0.2), (0.2, 0.2, 0.6)]
    runs = [make_record(ratios=r, ppl=(p, 20.0, 300.0)) for r, p in zip(splits, (30.0, 24.0, 80.0))]
    fig = figures.ternary_sweep(runs)
    (points,) = [t for t in fig.data if t.name == "runs"]
    assert list(zip(points.a, points.b, points.c)) == splits
    assert np.allclose(points.marker.color, np.log10([30.0, 24.0, 80.0]))
    lines = [t for t in fig.data if t.mode == "lines"]
    assert lines, "iso-sparsity lines"
    q = 1 - 15 / 256
    for line in lines:  # every point of a line has the same nominal sparsity b/2 + c(1 - K/B^2)
        s = np.asarray(line.b) / 2 + np.asarray(line.c) * q
        assert np.ptp(s) < 1e-9
        assert np.allclose(np.asarray(line.a) + line.b + line.c, 1)


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_every_pattern_is_labelled_by_its_spec_in_the_runs_table_past_runs_and_run_pickers(pattern, tmp_path):
    from components.history import History
    from components.session import Session
    from components.tables import overview_html, runs_table
    from engine.io.run_store import RunStore
    spec = PruneSpec(method="magnitude", pattern=pattern)
    record = dict(make_record(), run_id=f"20260101-000000-{list(PATTERNS).index(pattern):08x}", spec=spec.to_dict())
    assert runs_table([record])["spec"].tolist() == [spec.label()]
    assert spec.label() in overview_html(record)
    store = RunStore(tmp_path)
    store.save(record)
    assert [s["spec"] for s in History(store).summaries()] == [spec.label()]
    session = Session()
    session.add(record)
    assert session.run_choices()[0][0] == f"#1 {spec.label()} · completed"


def test_a_stored_spec_that_no_longer_validates_is_labelled_by_its_method_and_pattern():
    assert spec_label({"method": "wanda", "pattern": "nm", "n": 4, "m": 4}) == "wanda nm"
    assert spec_label(None) == spec_label({}) == "?"


def test_a_tier_map_is_encoded_as_one_digit_string_per_row_and_decodes_back():
    from engine.io.record import decode_tier_map
    tiers = np.array([[0, 1, 2], [2, 2, 0]], dtype=np.int8)
    assert encode_tier_map(tiers) == {"shape": [2, 3], "rows": ["012", "220"]}
    assert encode_tier_map(tiers.T) == {"shape": [3, 2], "rows": ["02", "12", "20"]}  # a strided view
    assert encode_tier_map(np.zeros((2, 0), np.int8)) == {"shape": [2, 0], "rows": ["", ""]}
    assert encode_tier_map(np.zeros((0, 4), np.int8)) == {"shape": [0, 4], "rows": []}
    big = np.random.default_rng(0).integers(0, 3, (96, 36)).astype(np.int8)
    assert np.array_equal(decode_tier_map(encode_tier_map(big)), big)
