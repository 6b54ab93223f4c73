"""After the prune: masked fine-tuning with the zeros held (masked_finetune.py), recovery of a run end to end
(pipeline.py) and the progressive three-tier schedule (progressive.py)."""
from engine import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "FinetuneSpec": "masked_finetune", "finetune": "masked_finetune", "pruned_masks": "masked_finetune",
    "recover": "pipeline",
    "parse_schedule": "progressive", "run_progressive": "progressive",
})
