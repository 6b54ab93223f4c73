"""Which weights may stay: the pattern registry (registry.py: PATTERNS, one entry a pattern with its parameters,
label, storage and mask builder; check_spec_fits), pure mask builders (masks.py, vnm.py), three-tier tiers and
chooser (three_tier.py), the planning stage (tier_plan.py) and the Wanda hybrid's block rules (block_rules.py)."""
from engine import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "PATTERNS": "registry", "Pattern": "registry", "Param": "registry", "check_spec_fits": "registry",
    "pattern_params": "registry",
    "unstructured_mask": "masks", "nm_mask": "masks", "topk_block_mask": "masks", "to_blocks": "masks",
    "vnm_mask": "vnm",
    "three_tier_mask": "three_tier", "tier_census": "three_tier",
    "MatrixPlan": "tier_plan", "plan_jointly": "tier_plan", "plan_model_wide": "tier_plan",
    "place_tiers": "tier_plan",
})
