"""The layer-by-layer walk: find the decoder layers and their matrices (discovery.py), capture the first layer's
inputs and re-run layers with statistics hooks (capture.py, input_stats.py), the loss-gradient pass (fisher.py),
one matrix pruned (prune_matrix.py) and the exact prune of a whole model (layer_walk.py)."""
from engine import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "prune_model": "layer_walk",
    "walk_layers": "capture", "gradient_pass": "capture", "targets_per_layer": "capture",
    "capture_layer_inputs": "capture", "run_layer": "capture",
    "find_decoder_layers": "discovery", "find_targets": "discovery",
    "LinearStats": "input_stats",
    "fisher_diagonal": "fisher",
    "prune_matrix": "prune_matrix", "matrix_scores": "prune_matrix",
})
