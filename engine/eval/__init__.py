"""How good a pruned model is: perplexity by the Wanda protocol (perplexity.py, the one window loop), zero-shot
accuracy through lm-evaluation-harness (zeroshot.py), Wanda's sparsity check (sparsity_check.py)."""
from engine import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "perplexity": "perplexity", "window_loop": "perplexity",
    "evaluate_zero_shot": "zeroshot", "resolve_tasks": "zeroshot",
    "check_sparsity": "sparsity_check",
})
