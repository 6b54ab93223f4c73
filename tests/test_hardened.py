"""The surfaces attacked as a stranger would (Explore, Recover, --sweep, finetune.py, the run store): each section
names the failure it guards against; each test failed on the code before the fix (commit 754ddd5)."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import tiny_config
from engine.cli import main as cli_main
from engine.errors import UserError
from engine.explore import calibrate, replan, sweep
from engine.spec import PruneSpec

QUICK = ["--calib_dataset", "pydoc", "--eval_dataset", "pydoc", "--nsamples", "2", "--seqlen", "32", "--quiet",
         "--device", "cpu"]


def _model(layers=1, seed=0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config("llama", layers=layers)).eval()


def _windows(n=2, seqlen=32, seed=1):
    return torch.randint(0, 384, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _one_line(rc, err, fragment):
    assert rc == 2 and err.startswith("error: ") and fragment in err, (rc, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


# -- 1. a block or N:M group wider than the matrices, in every path that builds masks ------------------------------
# (the tiny LLaMA's narrowest matrices, k_proj and v_proj, are [32, 64])

@pytest.mark.parametrize("change, message", [
    (dict(pattern="three_tier", block=64), "block size 64 is larger than matrix"),
    (dict(pattern="block", block=2048, sparsity=0.5), "block size 2048 is larger than matrix"),
    (dict(pattern="nm", n=1, m=128), "M=128 is wider than matrix"),
])
def test_a_replan_and_a_sweep_refuse_what_the_exact_walk_refuses(change, message):
    model = _model()
    cal = calibrate(model, PruneSpec(method="wanda", nsamples=2, seqlen=32), _windows())
    spec = PruneSpec(method="wanda", nsamples=2, seqlen=32, **change)
    with pytest.raises(UserError, match=message):
        replan(cal, spec)
    with pytest.raises(UserError, match=message):
        sweep(model, cal, [spec], _windows(n=1, seqlen=200), 32, windows=1)


def test_a_sweep_of_a_block_wider_than_the_matrices_is_one_line(tiny_llama_dir, capsys):
    rc = cli_main(["--model", str(tiny_llama_dir), "--sparsity_type", "three_tier", "--block_size", "256",
                   "--sweep", "0.35 0.45 0.2", *QUICK])
    _one_line(rc, capsys.readouterr().err, "block size 256 is larger than matrix")
