"""RIA (Relative Importance and Activations, Zhang et al., ICLR 2024): exact scores on hand-made tensors, its
masks, and the method end to end through the command line and the dashboard's choices (from the registry)."""
import json

import pytest
import torch

from engine.cli.prune_cli import main
from engine.methods.registry import METHODS
from engine.methods.scores import ria_scores
from engine.patterns.masks import nm_mask
from engine.spec import PruneSpec
from engine.walk.input_stats import LinearStats
from engine.walk.prune_matrix import prune_matrix

QUICK = ["--nsamples", "4", "--seqlen", "32", "--eval_windows", "2", "--calib_dataset", "pydoc",
         "--eval_dataset", "pydoc", "--quiet"]


def stats_with_norms(norms) -> LinearStats:
    """LinearStats whose input_norm() is `norms` exactly (one token per channel's value)."""
    s = LinearStats(len(norms), "cpu", hessian=False)
    s.add(torch.tensor([norms], dtype=torch.float32))
    return s


def test_scores_by_hand():
    # |W| = [[1, 2], [3, 0]]: column sums 4, 2; row sums 3, 3; ||X|| = [1, 4] -> ||X||^0.5 = [1, 2]
    W = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    got = ria_scores(W, stats_with_norms([1.0, 4.0]))
    want = torch.tensor([[(1 / 4 + 1 / 3) * 1, (2 / 2 + 2 / 3) * 2],
                         [(3 / 4 + 3 / 3) * 1, (0 / 2 + 0 / 3) * 2]])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_an_all_zero_row_or_column_scores_zero_not_nan():
    W = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 2.0]])
    got = ria_scores(W, stats_with_norms([1.0, 1.0, 1.0]))
    assert torch.isfinite(got).all() and (got[0] == 0).all() and (got[:, 0] == 0).all()


def test_same_as_the_papers_formula_on_random_weights():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(24, 40, generator=g)
    X = torch.randn(64, 40, generator=g)
    stats = LinearStats(40, "cpu", hessian=False)
    stats.add(X)
    scaler_row = (X ** 2).sum(0) / 64  # the paper's code: |W|/sum(|W|, dim=0) + |W|/sum(|W|, dim=1) times sqrt(.)^a
    ref = (W.abs() / W.abs().sum(dim=0) + W.abs() / W.abs().sum(dim=1).reshape(-1, 1)) * scaler_row.sqrt() ** 0.5
    torch.testing.assert_close(ria_scores(W, stats), ref, rtol=1e-5, atol=0)


def test_masks_follow_the_scores_with_the_papers_unstructured_group():
    # RIA compares weights across the whole matrix for unstructured sparsity (its code's default, not per row)
    assert METHODS["ria"].unstructured_group == "matrix" and PruneSpec(method="ria").unstructured_group == "matrix"
    W = torch.tensor([[4.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    stats = stats_with_norms([1.0, 1.0, 1.0, 1.0])
    scores = ria_scores(W, stats)
    res = prune_matrix(W, stats, PruneSpec(method="ria", sparsity=0.5))
    assert int(res.keep.sum()) == 4 and res.keep[0, 0]
    assert torch.equal(prune_matrix(W, stats, PruneSpec(method="ria", pattern="nm")).keep, nm_mask(scores, 2, 4))


@pytest.mark.slow
@pytest.mark.parametrize("sparsity_type", ["unstructured", "2:4"])
def test_command_line_run_and_record(tiny_llama_dir, tmp_path, sparsity_type):
    out = tmp_path / sparsity_type.replace(":", "-")
    rc = main(["--model", str(tiny_llama_dir), "--prune_method", "ria", "--sparsity_type", sparsity_type,
               "--save", str(out), "--no_save_model", *QUICK])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "completed" and res["spec"]["method"] == "ria" and res["actual_sparsity"] == 0.5
    assert not any(m.get("errors") for m in res["matrices"])


def test_dashboard_offers_it_from_the_registry():
    from components.registry import method_choices

    assert (METHODS["ria"].label, "ria") in method_choices()
