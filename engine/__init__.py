"""Prune any Hugging Face causal LM layer by layer, explore tier splits, save what loads back. The Python API:

    from engine import RunRequest, run, PruneSpec          # one run end to end (engine/run.py)
    record = run(RunRequest(model=None, spec=PruneSpec(method="wanda", pattern="three_tier")), progress=print)

    from engine import prune_model, calibrate, replan, estimate, search, load_compact

The data flows one way, one package a stage:

    io/        text -> windows (text.py), models, the run record and store, saving (dense or compact), snapshots
    walk/      the layer-by-layer walk: decoder layers and their matrices, captured inputs, statistics, the gradient
               pass, one matrix pruned (prune_matrix.py), the exact prune (layer_walk.prune_model)
    methods/   how important each weight is: the method registry, scores, SparseGPT's loop
    patterns/  which weights may stay: the pattern registry, masks, three-tier tiers and their plan
    explore/   calibrate once, re-plan many, estimate, sweep, search the split (Optuna)
    eval/      perplexity (the Wanda protocol), zero-shot accuracy, the sparsity check
    recover/   masked fine-tuning, recovery after a prune, the progressive schedule
    cli/       the command lines (main.py, finetune.py and the Wanda scripts are shims over them)

Names are imported on first use (`lazy_exports`): `import engine` costs nothing, and no package's __init__ pulls in
another package (the walk, the methods and the patterns import each other's modules, never their packages' names).
"""
import importlib


def lazy_exports(package: str, names: dict[str, str]):
    """A package's module __getattr__ (PEP 562): each public name {name: module in the package} is imported from its
    module when first asked for, so `from engine.walk import prune_model` works without eager imports."""
    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
    return __getattr__


__getattr__ = lazy_exports(__name__, {
    "RunRequest": "run", "run": "run", "PruneSpec": "spec", "UserError": "errors",
    "prune_model": "walk.layer_walk", "calibrate": "explore.calibration", "replan": "explore.replanning",
    "estimate": "explore.estimates", "search": "explore.split_search", "perplexity": "eval.perplexity",
    "load_model": "io.models", "save_compact": "io.compact", "load_compact": "io.compact",
})
