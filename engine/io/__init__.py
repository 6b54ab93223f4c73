"""What comes in and goes out: text sources -> token windows (text.py), models (models.py), the run record
(record.py) and its store (run_store.py), saving dense (save.py) or compact (compact.py), the model card, cached
baselines and the dense snapshot that restores a model."""
from engine import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "resolve_text": "text", "calibration_windows": "text", "evaluation_ids": "text",
    "load_model": "models",
    "RunRecord": "record",
    "RunStore": "run_store",
    "save_pretrained_atomic": "save",
    "save_compact": "compact", "load_compact": "compact", "decompress": "compact",
    "model_card": "model_card",
    "BaselineCache": "baselines",
    "DenseWeights": "snapshot",
})
