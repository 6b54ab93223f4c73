"""bench/speed/kernels.py --smoke: the three-tier matrix splits into parts that sum to it exactly, and every kernel that
runs here gives the dense product; the kernels that need CUDA say so instead of a number."""
import torch

from bench.speed.kernels import main, three_tier_parts, two_four


def test_three_tier_parts_hold_each_tier_and_sum_to_the_matrix():
    W = torch.randn(64, 128)
    parts = three_tier_parts(W)
    assert torch.equal(parts["dense blocks"] + parts["2:4"] + parts["top-K"], parts["pruned"])
    blocks = parts["top-K"].view(4, 16, 8, 16).permute(0, 2, 1, 3).reshape(32, 256)
    assert set((blocks != 0).sum(dim=1).tolist()) <= {0, 15}      # top-K blocks keep exactly K = 15
    assert ((parts["2:4"].view(-1, 4) != 0).sum(dim=1) <= 2).all()  # a valid 2:4 matrix
    assert ((two_four(W).view(-1, 4) != 0).sum(dim=1) == 2).all()


def test_kernels_smoke_checks_every_product_against_dense(capsys):
    result = main(["--smoke"])
    assert result["parts_sum_to_the_matrix"] and len(result["rows"]) == 12
    for row in result["rows"]:
        if "skipped" in row:
            assert not torch.cuda.is_available() and "CUDA" in row["skipped"]
        else:
            assert row["matches_dense"], row
    ran = {r["case"] for r in result["rows"] if "skipped" not in r}
    assert {"dense", "three-tier: dense-block part (BSR)", "three-tier: top-K part (BSR)"} <= ran
    assert not any("ms" in r or "ratio_to_dense" in r for r in result["rows"])  # no speed claims from a smoke run
