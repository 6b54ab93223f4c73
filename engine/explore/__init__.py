"""Calibrate once, re-plan many: what the tier decision needs, measured once on the dense model, then masks for any
split in well under a second and a quick perplexity estimate of them.

    calibrate(model, spec, windows)      one forward pass over the dense model (plus the gradient pass for methods
                                         that read the loss) -> Calibration: vectors per matrix, not scores
    replan(calibration, spec)            masks and tier grids of every matrix for any ratios, K, block size, tier
                                         scope or assignment, from the cache: no forward pass -> Replan
    replan_kept(calibration, spec)       the same without reading the model, when only the ratios or the scope of a
                                         three-tier split planned before moved (None otherwise) -> Replan | None
    estimate(model, replan, eval_ids)    apply the masks, evaluate a few windows (running perplexity +- spread
                                         streamed), put the dense weights back bit for bit -> Estimate
    sweep(...)                           one calibration, then re-plan + estimate per split -> one record each
    storage_estimate(replan)             bytes of the pruned weights in a sparse format (formula below)
    search(study, calibration, space, …) trials of re-plan + estimate over the pattern's parameters (Optuna)

One module a stage: calibration.py (calibrate, Calibration, CalibrationCache, the cache key), replanning.py (replan,
replan_kept, Replan, per-block choices), storage.py (storage_estimate), estimates.py (estimate, apply_masks,
apply_update, evaluate_windows, held_masks), sweeps.py (sweep, sweep_spec), split_search.py (the search and its
studies).

Masks only: the OBS update is per matrix and expensive, so a re-plan never runs it. A spec that asks for it (a
method that chooses while updating, `reconstruct`, within_block "obs") is planned as its masks-only twin, and the
Replan's `notes` say what was replaced. Statistics are those of the dense model (every layer sees dense inputs),
as the model-wide ranking reads them; the exact walk re-measures each layer after the layers upstream are pruned,
which is the gap bench/quality/explore.py publishes.

What the cache keeps per matrix W [out, in] (float32), by the method's `needs` (engine/methods/registry.py):

    activations    ||X_j||, the input norms                [in]
    hessian        diag((H + damp)^-1), the OBS saliency's [in]  (the Hessian itself is dropped at once)
    gradient_rows  sum_j F_ij, the Fisher row sums          [out]
    gradients      the Fisher diagonal F                   [out, in]  (fisher only: a full float32 tensor)

The scores are recomputed from these and the weights, which stay in the model, dense: for LLaMA-7B (32 layers x 7
matrices, 6.5e9 weights) the vectors take about 4.6 MB (wanda, ria), 9 MB (sparsegpt), 10 MB (fisher_wanda);
fisher keeps F, 26 GB, as much as a float32 copy of the weights (the walk holds it too). A Replan holds one bool
per weight (6.5 GB at 7B, 106 MB for SmolLM2-135M) plus the tier grids (one int8 per 16x16 block).
"""
from engine import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "calibrate": "calibration", "calibrate_progressively": "calibration", "Calibration": "calibration",
    "calibration_key": "calibration", "CalibrationCache": "calibration", "DEFAULT_ESTIMATE_WINDOWS": "calibration",
    "FIRST_WINDOWS": "calibration", "hessian_bytes": "calibration", "masks_only": "calibration",
    "block_choices": "replanning", "check_fresh": "replanning", "keep_from_choices": "replanning",
    "matrix_entries": "replanning", "matrix_mask": "replanning", "Replan": "replanning", "replan": "replanning",
    "replan_kept": "replanning",
    "storage_estimate": "storage",
    "apply_masks": "estimates", "apply_update": "estimates", "Estimate": "estimates", "estimate": "estimates",
    "evaluate_windows": "estimates", "held_masks": "estimates",
    "sweep": "sweeps", "sweep_spec": "sweeps",
    "export_study": "split_search", "list_studies": "split_search", "open_storage": "split_search",
    "open_study": "split_search", "pareto_front": "split_search", "search": "split_search",
    "search_space": "split_search", "SearchSettings": "split_search", "trial_records": "split_search",
})
