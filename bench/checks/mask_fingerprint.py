"""A refactor guard: the hash of every weight after pruning a tiny seeded LLaMA with 195 specs (every method of
the original five x every pattern, scope, assignment, within-block choice and update), plus the hash of each run's
per-matrix record entries and block importances. Run it on two commits and compare the JSON files:

    python bench/checks/mask_fingerprint.py before.json   # on the old commit
    python bench/checks/mask_fingerprint.py after.json    # on the new one
    python bench/checks/mask_fingerprint.py --compare before.json after.json

About 30 s on 2 idle cores. The tiny model has dead input columns and 1/8-quantized weights (exact ties)."""
import hashlib
import itertools
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from engine.spec import PruneSpec  # noqa: E402
from engine.walk.layer_walk import prune_model  # noqa: E402


def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    m = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # some dead inputs and exact ties
        m.model.layers[0].mlp.down_proj.weight[:, :3] = 0
        m.model.layers[1].self_attn.q_proj.weight.mul_(8).round_().div_(8)
    return m

def compare(a_path: str, b_path: str) -> int:
    a, b = json.loads(Path(a_path).read_text()), json.loads(Path(b_path).read_text())
    differ = [k for k in a if a[k] != b.get(k)]
    for k in differ:
        print("differs:", k)
    print(f"{len(differ)} of {len(a)} specs differ")
    return 1 if differ else 0


if sys.argv[1:2] == ["--compare"]:
    sys.exit(compare(*sys.argv[2:4]))

specs = []
for method in ("magnitude", "wanda", "sparsegpt", "fisher", "fisher_wanda"):
    specs += [dict(method=method, pattern="unstructured", sparsity=0.5), dict(method=method, pattern="nm"),
              dict(method=method, pattern="unstructured", sparsity=0.6, group="matrix"),
              dict(method=method, pattern="block", sparsity=0.3),
              dict(method=method, pattern="block_topk", sparsity=0.4, keep=40),
              dict(method=method, pattern="threshold_hybrid", keep=30)]
    if method in ("magnitude", "wanda"):
        specs += [dict(method=method, pattern="unstructured", sparsity=0.5, use_variant=True),
                  dict(method=method, pattern="nm", reconstruct=True)]
    for scope, assign, within, rec in itertools.product(("matrix", "layer", "model"), ("importance", "cost"),
                                                        ("score", "magnitude", "obs"), (False, True)):
        if within == "obs" and not (rec or method == "sparsegpt"):
            continue
        specs.append(dict(method=method, pattern="three_tier", tier_scope=scope, assignment=assign, within_block=within,
                          reconstruct=rec, keep=20))
    specs.append(dict(method=method, pattern="three_tier", block_rule="original", ratios=(0.4, 0.4, 0.2), keep=10,
                      within_block="magnitude"))
out = {}
torch.manual_seed(1)
windows = torch.randint(0, 96, (4, 32))
for kw in specs:
    kw = dict(kw, nsamples=4, seqlen=32, block=16)
    spec = PruneSpec(**kw)
    m = model()
    res = prune_model(m, spec, windows)
    h = hashlib.sha256()
    for n, p in m.named_parameters():
        h.update(p.detach().numpy().tobytes())
    entries = json.dumps([{k: v for k, v in e.items() if k != "block_importance"} for e in res.matrices],
                         sort_keys=True, default=str)
    importances = json.dumps([e["block_importance"] for e in res.matrices], default=str)
    out[json.dumps(kw, sort_keys=True, default=str)] = [
        h.hexdigest()[:16], hashlib.sha256(entries.encode()).hexdigest()[:16],
        hashlib.sha256(importances.encode()).hexdigest()[:16]]
Path(sys.argv[1]).write_text(json.dumps(out, indent=0))
print(len(out), "specs")
