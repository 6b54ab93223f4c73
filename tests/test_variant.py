"""Wanda's variant (--use_variant): exact masks on hand-made scores, bit-for-bit parity with Wanda's own loop,
the bounded bisection, the spec's validation, and a whole run on a tiny model."""
import pytest
import torch

from engine.cli.prune_cli import build_parser, spec_from_args
from engine.errors import SpecError
from engine.methods.wanda_variant import wanda_variant_mask
from engine.run import RunRequest, run
from engine.spec import PruneSpec
from engine.walk.prune_matrix import prune_matrix


def wanda_reference(W_metric: torch.Tensor, sparsity_ratio: float):
    """locuslab/wanda lib/prune.py, `return_given_alpha` and the `use_variant` loop, transcribed as it is."""
    def return_given_alpha(alpha, sort_res, W_metric, tmp_metric, sum_before):
        thres_cumsum = sum_before * alpha
        sort_mask = tmp_metric <= thres_cumsum.reshape((-1, 1))
        thres = torch.gather(sort_res[0], dim=1, index=sort_mask.sum(dim=1, keepdims=True) - 1)
        W_mask = (W_metric <= thres)
        cur_sparsity = (W_mask == True).sum() / W_mask.numel()  # noqa: E712
        return W_mask, cur_sparsity

    sort_res = torch.sort(W_metric, dim=-1, stable=True)
    tmp_metric = torch.cumsum(sort_res[0], dim=1)
    sum_before = W_metric.sum(dim=1)
    alpha = 0.4
    alpha_hist = [0., 0.8]
    W_mask, cur_sparsity = return_given_alpha(alpha, sort_res, W_metric, tmp_metric, sum_before)
    while (torch.abs(cur_sparsity - sparsity_ratio) > 0.001) and (alpha_hist[1] - alpha_hist[0] >= 0.001):
        if cur_sparsity > sparsity_ratio:
            alpha_new = (alpha + alpha_hist[0]) / 2.0
            alpha_hist[1] = alpha
        else:
            alpha_new = (alpha + alpha_hist[1]) / 2.0
            alpha_hist[0] = alpha
        alpha = alpha_new
        W_mask, cur_sparsity = return_given_alpha(alpha, sort_res, W_metric, tmp_metric, sum_before)
    return ~W_mask, alpha


# -- exact masks ---------------------------------------------------------------------------------------------------

def test_spread_row_loses_less_than_a_peaked_row():
    # row 0 spreads its importance (sum 10), row 1 is one big score and a tail (sum 100); columns scrambled.
    scores = torch.tensor([[3.0, 1.0, 4.0, 2.0],
                           [95.5, 2.0, 1.0, 1.5]])
    keep, alpha = wanda_variant_mask(scores, 0.5)
    # alpha 0.4 prunes 2 + 3 = 5 of 8 (too many); alpha 0.2: row 0 only the 1 (cumsum 1 <= 2), row 1 its
    # whole tail (cumsum 4.5 <= 20): 4 of 8, the target.
    assert alpha == pytest.approx(0.2)
    assert keep.tolist() == [[True, False, True, True],
                             [True, False, False, False]]


def test_first_guess_that_hits_the_target_is_kept():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0]])  # cumsum 1, 3, 6, 10: alpha 0.4 -> threshold 4 -> prune 1 and 2
    keep, alpha = wanda_variant_mask(scores, 0.5)
    assert alpha == 0.4 and keep.tolist() == [[True, False, True, False]]


def test_ties_at_the_threshold_are_pruned_together_as_in_wanda():
    scores = torch.tensor([[1.0, 1.0, 1.0, 7.0]])  # cumsum 1, 2, 3, 10: alpha 0.1 -> threshold 1 -> the three 1s
    keep, _ = wanda_variant_mask(scores, 0.75)
    assert keep.tolist() == [[False, False, False, True]]


def test_row_where_nothing_fits_keeps_every_weight():
    # row 0: the smallest score 5 is already over 0.4 * 10 (Wanda's gather at index -1 would fail here)
    scores = torch.tensor([[5.0, 5.0], [1.0, 9.0]])
    keep, alpha = wanda_variant_mask(scores, 0.25)
    assert alpha == 0.4 and keep.tolist() == [[True, True], [False, True]]


def test_zero_sparsity_keeps_everything():
    keep, alpha = wanda_variant_mask(torch.rand(3, 8), 0.0)
    assert keep.all() and alpha == 0.0


# -- the bisection -------------------------------------------------------------------------------------------------

def test_unreachable_target_stops_after_max_steps():
    # one row of 4 weights can only be 0, 25, 50, 75 or 100 % sparse: 10 % is never within 0.001
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    # 0.4 (50 %) -> 0.2 (25 %) -> 0.1 (25 %) -> 0.05 (0 %) -> then up towards 0.1 from below, never reaching 25 %:
    # alpha_k = 0.1 - 0.05 / 2**(k - 3) after k steps; Wanda's own loop would crash at 0.05 (gather at index -1)
    keep, alpha = wanda_variant_mask(scores, 0.10)
    assert alpha == pytest.approx(0.1 - 0.05 / 2 ** 7) and keep.all()
    keep0, alpha0 = wanda_variant_mask(scores, 0.10, max_steps=0)
    assert alpha0 == 0.4 and (~keep0).sum() == 2  # no step taken: the first guess
    keep3, alpha3 = wanda_variant_mask(scores, 0.10, max_steps=3)
    assert alpha3 == pytest.approx(0.05) and keep3.all()


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7, 0.9])
def test_same_masks_as_wandas_loop_on_random_scores(sparsity):
    torch.manual_seed(int(sparsity * 10))
    W, x_norm = torch.randn(96, 160), torch.rand(160) * 3  # Wanda's |W| * ||X|| shape of scores
    scores = W.abs() * x_norm
    keep, alpha = wanda_variant_mask(scores, sparsity)
    ref_keep, ref_alpha = wanda_reference(scores, sparsity)
    assert torch.equal(keep, ref_keep) and alpha == pytest.approx(ref_alpha)


@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.8])
def test_each_matrix_reaches_the_target_within_tolerance(sparsity):
    torch.manual_seed(1)
    scores = torch.randn(256, 512).abs() * (torch.rand(512) * 4)
    keep, _ = wanda_variant_mask(scores, sparsity)
    assert abs((1 - keep.float().mean().item()) - sparsity) <= 0.001
    pruned_per_row = (~keep).sum(dim=1)
    assert pruned_per_row.min() < pruned_per_row.max()  # rows differ: not a fixed count per row


# -- spec, matrix routing, CLI, a whole run ------------------------------------------------------------------------

def test_spec_accepts_the_variant_only_where_it_means_something():
    assert PruneSpec(method="wanda", use_variant=True).label() == "wanda unstructured 0.5 (variant)"
    PruneSpec(method="magnitude", use_variant=True)  # a rule over scores: composes with |W| too
    with pytest.raises(SpecError, match="unstructured"):
        PruneSpec(pattern="nm", use_variant=True)
    with pytest.raises(SpecError, match="unstructured"):
        PruneSpec(pattern="three_tier", use_variant=True)
    with pytest.raises(SpecError, match="SparseGPT"):
        PruneSpec(method="sparsegpt", use_variant=True)
    with pytest.raises(SpecError, match="per row"):
        PruneSpec(use_variant=True, group="matrix")
    assert PruneSpec.from_dict(PruneSpec(use_variant=True).to_dict()).use_variant
    assert not PruneSpec.from_dict({"method": "wanda"}).use_variant  # records written before the flag existed


def test_prune_matrix_routes_to_the_variant():
    torch.manual_seed(0)
    W = torch.randn(32, 48)
    res = prune_matrix(W, None, PruneSpec(method="magnitude", sparsity=0.5, use_variant=True))
    keep, _ = wanda_variant_mask(W.abs(), 0.5)
    assert torch.equal(res.keep, keep) and torch.equal(res.W, W * keep)
    plain = prune_matrix(W, None, PruneSpec(method="magnitude", sparsity=0.5, group="row"))
    assert not torch.equal(plain.keep, keep)


def test_cli_flag_sets_the_spec():
    parser = build_parser()
    assert spec_from_args(parser.parse_args(["--use_variant"])).use_variant
    assert not spec_from_args(parser.parse_args([])).use_variant


def test_run_with_the_variant_on_a_tiny_model(tiny_llama_dir):
    spec = PruneSpec(method="wanda", sparsity=0.5, use_variant=True, nsamples=2, seqlen=32)
    record = run(RunRequest(model=str(tiny_llama_dir), spec=spec, calib="pydoc", eval=None, baselines=False,
                            device="cpu"))
    assert record["status"] == "completed" and record["spec"]["use_variant"] is True
    assert all(abs(m["sparsity"] - 0.5) <= 0.01 for m in record["matrices"])  # 64x64 / 64x128 matrices
    assert any(m["sparsity"] != 0.5 for m in record["matrices"])  # plain Wanda gives exactly 0.5 everywhere
