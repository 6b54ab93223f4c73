"""`from lib.prune import check_sparsity`, as the Wanda fork's documentation writes it: the engine's check."""
from engine.eval.sparsity_check import check_sparsity

__all__ = ["check_sparsity"]
