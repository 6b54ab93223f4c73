"""V:N:M (engine/patterns/vnm.py): exact masks on hand-made scores, its invariants on random ones, a tiny model end
to end."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from engine.errors import SpecError
from engine.patterns.vnm import vnm_mask
from engine.spec import PruneSpec, parse_sparsity_type
from engine.walk.layer_walk import prune_model


def test_a_block_keeps_its_four_best_columns_then_n_per_row():
    scores = torch.tensor([[1., 0, 5, 0, 2, 0, 0, 3],
                           [1., 0, 1, 0, 2, 9, 0, 3]])  # column sums 2 0 6 0 4 9 0 6: columns 2, 4, 5, 7 kept
    assert vnm_mask(scores, 2, 2, 8).int().tolist() == [[0, 0, 1, 0, 0, 0, 0, 1],
                                                        [0, 0, 0, 0, 0, 1, 0, 1]]


def test_every_block_uses_at_most_four_columns_and_every_row_keeps_n_of_m():
    torch.manual_seed(0)
    v, n, m = 16, 2, 8
    keep = vnm_mask(torch.rand(48, 40), v, n, m)
    blocks = keep.view(48 // v, v, 40 // m, m)
    assert (blocks.any(dim=1).sum(dim=-1) <= 4).all()   # the block's rows share 4 columns
    assert (blocks.sum(dim=-1) == n).all()              # N of every M in each row
    assert keep.float().mean().item() == n / m


def test_edge_blocks_keep_only_real_weights():
    torch.manual_seed(1)
    keep = vnm_mask(torch.rand(20, 13), 8, 2, 8)
    assert keep.shape == (20, 13)
    assert (keep[:, :8].sum(dim=1) == 2).all() and (keep[:, 8:].sum(dim=1) == 2).all()  # 5 real columns: 2 kept


def test_the_spec_reads_v_n_m_and_refuses_what_the_hardware_cannot_run():
    spec = PruneSpec(**parse_sparsity_type("64:2:8"))
    assert (spec.v, spec.n, spec.m, spec.nominal_sparsity(), spec.sparsity_type) == (64, 2, 8, 0.75, "64:2:8")
    assert spec.label() == "wanda V:N:M 64:2:8"
    with pytest.raises(SpecError, match="N <= 4"):
        PruneSpec(pattern="vnm", n=5, m=8)
    with pytest.raises(SpecError, match="M in"):
        PruneSpec(pattern="vnm", n=1, m=2)


def test_a_tiny_model_pruned_v_n_m_is_exactly_n_over_m_dense():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    result = prune_model(model, PruneSpec(method="magnitude", pattern="vnm", v=16, n=2, m=8), None)
    assert result.matrices and all(e["zeros"] == e["numel"] * 3 // 4 for e in result.matrices)
    W = model.model.layers[0].mlp.up_proj.weight  # [96, 64]: 6 x 8 blocks of 16 x 8
    assert ((W != 0).view(6, 16, 8, 8).any(dim=1).sum(dim=-1) <= 4).all()
