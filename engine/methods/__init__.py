"""How important each weight is: the method registry (registry.py: METHODS, one entry a method), the score
functions (scores.py), SparseGPT's column loop (sparsegpt.py) and Wanda's variant (wanda_variant.py)."""
from engine import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "METHODS": "registry", "Method": "registry", "ScoreInputs": "registry",
    "obs_scores": "scores", "ria_scores": "scores", "fisher_scores": "scores", "fisher_wanda_scores": "scores",
    "sparsegpt_prune": "sparsegpt", "n_of_m": "sparsegpt", "adaptive": "sparsegpt",
    "wanda_variant_mask": "wanda_variant",
})
