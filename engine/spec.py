"""What to prune and how: one validated object, checked once at the edge (CLI, dashboard, API)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from .errors import SpecError

METHODS = ("magnitude", "wanda", "sparsegpt", "fisher", "fisher_wanda")
# block, block_topk, threshold_hybrid: the block modes of the Wanda hybrid fork (engine/block_patterns.py)
PATTERNS = {"three_tier": "Three-tier blocks", "unstructured": "Unstructured", "nm": "N:M",
            "block": "Whole blocks removed", "block_topk": "Blocks removed, top-K kept",
            "threshold_hybrid": "Threshold hybrid (dense / 2:4 by score kept, rest top-K)"}  # name: title
BLOCK_PATTERNS = ("three_tier", "block", "block_topk", "threshold_hybrid")  # the ones cut into B x B blocks
BLOCK_RULES = ("exact", "original")
TIER_SCOPES = ("matrix", "layer", "model")
WITHIN_BLOCK = ("score", "magnitude", "obs")
GROUPS = ("row", "matrix")
ASSIGNMENTS = ("importance", "cost")
TIER_NAMES = ("dense", "2:4", "topk")  # tier ids 0, 1, 2 in every tier map
MAX_SEED = 2**32 - 1    # numpy and torch seeds; larger overflow only after the model and data are loaded
MAX_GROUP = 65536       # N:M group width M and block side B: above any matrix width; checked per matrix too
THREE_TIER_RATIOS = (0.35, 0.45, 0.20)  # the split the fork's model list documents (--sparsity_ratios 0.35 0.45 0.2)
ORIGINAL_URL = "https://github.com/Jiajun-Ji/wanda"
# Named three-tier recipes (bench/HYBRID.md). ORIGINAL: the three-tier rule of the Wanda hybrid fork
# (ORIGINAL_URL, main_block_three_tier.py) with its defaults, mask for mask; BEST: the best variant measured.
ORIGINAL_RECIPE = dict(method="wanda", tier_scope="matrix", assignment="importance", within_block="magnitude",
                       reconstruct=False, block_rule="original", ratios=(0.4, 0.4, 0.2), keep=10)
BEST_THREE_TIER = dict(method="fisher_wanda", tier_scope="model", assignment="cost", within_block="obs",
                       reconstruct=True, block_rule="exact", ratios=THREE_TIER_RATIOS, keep=15)
RECIPES = {"original": ORIGINAL_RECIPE, "best": BEST_THREE_TIER}
# The parameters each pattern reads: PruneSpec.canonical leaves out the ones only other patterns read.
PATTERN_FIELDS = {"unstructured": ("sparsity", "group", "use_variant"), "nm": ("n", "m"),
                  "three_tier": ("ratios", "block", "keep", "tier_scope", "within_block", "assignment", "block_rule"),
                  "block": ("sparsity", "block", "keep", "within_block", "block_rule"),
                  "block_topk": ("sparsity", "block", "keep", "within_block", "block_rule"),
                  "threshold_hybrid": ("block", "keep", "within_block", "block_rule", "top_blocks_ratio",
                                       "score_threshold")}


@dataclass(frozen=True)
class PruneSpec:
    """A pruning run's recipe. Build with `PruneSpec(...)`; invalid values raise SpecError at once.

    method      how important each weight is: magnitude |W|, wanda |W|*||X||, sparsegpt (OBS, updates weights),
                fisher |W|*sqrt(F) with F the empirical Fisher of the model's loss (one backward pass per
                calibration window; loss units, so blocks compare across matrices and layers as they are),
                fisher_wanda Wanda with each output row weighted by its loss sensitivity sqrt(G_i) from the same
                gradients: Wanda inside a row, loss units across rows, matrices and layers
    pattern     which weights may stay: unstructured (`sparsity`), nm (`n` of every `m`), three_tier
                block (whole B x B blocks removed), block_topk (those keep K), threshold_hybrid (see below)
    sparsity    unstructured: share of weights pruned; block, block_topk: share of blocks pruned
    ratios      three-tier split of 16x16 blocks into (dense, 2:4, top-K); must sum to 1
    block, keep block side B and weights K kept in each top-K block (0 <= K <= B*B)
    top_blocks_ratio, score_threshold  threshold_hybrid: the int(n * top_blocks_ratio) most important blocks take
                2:4 where it keeps >= score_threshold of their score, else stay dense; the rest keep K
    block_rule  "exact": blocks ranked by summed score, floor(r*n) per tier, exactly K per top-K block, edge blocks
                padded; "original": the Wanda hybrid fork's arithmetic (engine/block_patterns.py): mean score,
                int(n*r) counts, ties with the K-th kept, edge blocks clipped and flattened row by row.
                block, block_topk and threshold_hybrid always follow the fork.
    tier_scope  where blocks compete for tiers: each matrix (the original rule), a decoder layer, the whole model
    within_block weights chosen inside 2:4 / top-K blocks by the method's score, by |W| (the original rule), or "obs":
                with an OBS update, by the OBS saliency of the weights as updated so far, column block by
                column block as SparseGPT chooses N:M (needs reconstruct or sparsegpt)
    assignment  how blocks get tiers: "importance" (most important dense, next 2:4: the original rule) or
                "cost" (keep the squared score mass lost by 2:4 / top-K small under the same counts)
    group       unstructured comparison group; None = the paper's (wanda/sparsegpt: row, magnitude: matrix)
    reconstruct OBS weight update for masks chosen by magnitude/wanda (None = off; sparsegpt always updates)
    use_variant Wanda's variant for unstructured: per row, prune where the sorted scores' running sum stays under
                alpha x the row total, alpha bisected to reach `sparsity` (engine/variant.py)
    """

    method: str = "wanda"
    pattern: str = "unstructured"
    sparsity: float = 0.5
    n: int = 2
    m: int = 4
    ratios: tuple[float, float, float] = THREE_TIER_RATIOS
    block: int = 16
    keep: int = 15
    top_blocks_ratio: float = 0.6
    score_threshold: float = 0.8
    block_rule: str = "exact"
    tier_scope: str = "matrix"
    within_block: str = "score"
    assignment: str = "importance"
    group: str | None = None
    reconstruct: bool = False
    nsamples: int = 128
    seqlen: int | None = None
    seed: int = 0
    damp: float = 0.01
    obs_blocksize: int = 128
    prune_router: bool = False
    use_variant: bool = False

    def __post_init__(self):
        object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))
        _check(self.method in METHODS, f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        _check(self.pattern in PATTERNS, f"unknown pattern {self.pattern!r}; choose one of {', '.join(PATTERNS)}")
        _check(isinstance(self.nsamples, int) and self.nsamples >= 1,
               f"nsamples must be a whole number >= 1, got {self.nsamples!r}")
        _check(self.nsamples <= 100_000, f"nsamples {self.nsamples} is absurdly large (at most 100000)")
        _check(self.seqlen is None or (isinstance(self.seqlen, int) and 1 <= self.seqlen <= 1_048_576),
               f"seqlen must be a whole number >= 1, got {self.seqlen!r}")
        _check(isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed <= MAX_SEED,
               f"seed must be a whole number in [0, {MAX_SEED}], got {str(self.seed)[:24]}")
        _check(0.0 < self.damp < 1.0, f"damp must lie in (0, 1), got {self.damp}")
        _check(self.obs_blocksize >= 1, f"obs_blocksize must be >= 1, got {self.obs_blocksize}")
        if self.pattern == "unstructured":
            _check(_finite(self.sparsity) and 0.0 <= self.sparsity < 1.0,
                   f"sparsity ratio must lie in [0, 1), got {self.sparsity}")
            _check(self.group in (None,) + GROUPS, f"group must be one of {', '.join(GROUPS)}, got {self.group!r}")
        _check(not self.use_variant or self.pattern == "unstructured",
               f"the Wanda variant (use_variant) is for unstructured sparsity, not {self.sparsity_type}")
        _check(not self.use_variant or self.method != "sparsegpt",
               "the Wanda variant (use_variant) chooses a mask from scores; SparseGPT chooses its own, use wanda or magnitude")
        _check(not self.use_variant or self.group != "matrix",
               "the Wanda variant (use_variant) prunes per row; it cannot be combined with group 'matrix'")
        if self.pattern == "nm":
            _check(isinstance(self.n, int) and isinstance(self.m, int) and self.m >= 1 and 0 <= self.n < self.m,
                   f"N:M needs 0 <= N < M, got {str(self.n)[:24]}:{str(self.m)[:24]}")
            _check(self.m <= MAX_GROUP, f"M must be at most {MAX_GROUP} (and at most a matrix's width), got {self.m}")
        if self.pattern in ("block", "block_topk"):
            _check(_finite(self.sparsity) and 0.0 <= self.sparsity <= 1.0,
                   f"share of blocks pruned (sparsity ratio) must lie in [0, 1], got {self.sparsity}")
        if self.pattern == "threshold_hybrid":
            _check(_finite(self.top_blocks_ratio) and 0.0 <= self.top_blocks_ratio <= 1.0,
                   f"top blocks ratio must lie in [0, 1], got {self.top_blocks_ratio}")
            _check(_finite(self.score_threshold), f"score threshold must be a number, got {self.score_threshold}")
        if self.pattern in BLOCK_PATTERNS:
            _check(isinstance(self.block, int) and 4 <= self.block <= MAX_GROUP and self.block % 4 == 0,
                   f"block size must be a multiple of 4 (so 2:4 groups never straddle blocks) and in [4, {MAX_GROUP}], got {self.block}")
            _check(isinstance(self.keep, int) and 0 <= self.keep <= self.block * self.block,
                   f"K (weights kept per top-K block) must lie in [0, {self.block * self.block}] for {self.block}x{self.block} blocks, got {self.keep}")
            _check(self.within_block in ("score", "magnitude") or self.pattern in ("three_tier", "block"),
                   f"{self.pattern} keeps weights inside blocks by score or magnitude (|W|), not {self.within_block!r}")
            _check(self.block_rule in BLOCK_RULES, f"block rule must be one of {', '.join(BLOCK_RULES)}, "
                   f"got {self.block_rule!r}")
        if self.pattern == "three_tier":
            r = self.ratios
            _check(len(r) == 3, f"three-tier needs three ratios (dense, 2:4, top-K), got {len(r)}")
            _check(all(_finite(x) for x in r), f"tier ratios must be numbers, got {r}")
            _check(all(x >= 0 for x in r), f"tier ratios must be non-negative, got {r}")
            _check(abs(sum(r) - 1.0) <= 1e-6, f"tier ratios must sum to 1, got {' + '.join(f'{x:g}' for x in r)} = {sum(r):g}")
            _check(self.tier_scope in TIER_SCOPES, f"tier scope must be one of {', '.join(TIER_SCOPES)}, got {self.tier_scope!r}")
            _check(self.within_block in WITHIN_BLOCK, f"within-block choice must be one of {', '.join(WITHIN_BLOCK)}")
            _check(self.within_block != "obs" or self.updates_weights,
                   "within-block choice 'obs' picks weights while the OBS update runs: turn on reconstruct "
                   "(or use sparsegpt)")
            _check(self.assignment in ASSIGNMENTS, f"tier assignment must be one of {', '.join(ASSIGNMENTS)}, "
                   f"got {self.assignment!r}")
            _check(self.block_rule == "exact" or (self.tier_scope == "matrix" and self.assignment == "importance"
                                                  and self.within_block != "obs"),
                   "the original block rule ranks blocks per matrix by importance and keeps weights by score or |W|: "
                   "use tier scope matrix, assignment importance, within-block score or magnitude (or block rule exact)")

    # -- derived ------------------------------------------------------------------------------------
    @property
    def uses_calibration(self) -> bool:
        return self.method != "magnitude" or self.reconstruct

    @property
    def needs_layer_stats(self) -> bool:
        """Whether the layer walk must collect input statistics (Wanda norms, OBS Hessians)."""
        return self.method in ("wanda", "sparsegpt", "fisher_wanda") or self.reconstruct

    @property
    def loss_units(self) -> bool:
        """Scores from the model's loss gradients, in its units: blocks of different matrices compare as they are."""
        return self.method in ("fisher", "fisher_wanda")

    @property
    def updates_weights(self) -> bool:
        return self.method == "sparsegpt" or self.reconstruct

    @property
    def uses_blocks(self) -> bool:
        """Cut into B x B blocks with a tier grid per matrix (three-tier and the fork's block modes)."""
        return self.pattern in BLOCK_PATTERNS

    @property
    def unstructured_group(self) -> str:
        return self.group or ("matrix" if self.method == "magnitude" else "row")

    @property
    def sparsity_type(self) -> str:
        """The Wanda-script name of the pattern: unstructured, 2:4, three_tier ..."""
        return {"nm": f"{self.n}:{self.m}", "threshold_hybrid": "hybrid_2_4"}.get(self.pattern, self.pattern)

    def nominal_sparsity(self) -> float:
        """The sparsity the pattern aims at, before rounding of counts per matrix."""
        if self.pattern == "unstructured":
            return self.sparsity
        if self.pattern == "nm":
            return 1 - self.n / self.m
        top_k_share = 1 - self.keep / self.block ** 2
        if self.pattern == "block":
            return self.sparsity
        if self.pattern == "block_topk":
            return self.sparsity * top_k_share
        if self.pattern == "threshold_hybrid":  # its top-K blocks only: how many top blocks take 2:4 depends on the data
            return (1 - self.top_blocks_ratio) * top_k_share
        _, r24, rtop = self.ratios
        return r24 / 2 + rtop * (1 - self.keep / self.block ** 2)

    def label(self) -> str:
        if self.pattern == "three_tier":
            d, s, t = self.ratios
            extra = "".join([", by cost" if self.assignment == "cost" else "", ", +OBS" if self.reconstruct else "",
                             ", kept by OBS saliency" if self.within_block == "obs" else ""])
            rule = ", original rule" if self.block_rule == "original" else ""
            return f"{self.method} three-tier {d:g}/{s:g}/{t:g} K={self.keep} ({self.tier_scope}{extra}{rule})"
        if self.pattern == "block":
            return f"{self.method} block {self.sparsity:g} of {self.block}x{self.block} blocks"
        if self.pattern == "block_topk":
            return f"{self.method} block + top-K {self.sparsity:g} of blocks, K={self.keep}"
        if self.pattern == "threshold_hybrid":
            return (f"{self.method} threshold hybrid top {self.top_blocks_ratio:g}, threshold {self.score_threshold:g}, "
                    f"K={self.keep}")
        if self.pattern == "nm":
            return f"{self.method} {self.n}:{self.m}"
        return f"{self.method} unstructured {self.sparsity:g}" + (" (variant)" if self.use_variant else "")

    def canonical(self) -> dict:
        """The fields that decide this spec's result, resolved: the identity of its masks and weights in every
        cache key. Derived from all fields, less the parameters of other patterns and those a spec of this kind
        never reads (calibration for magnitude masks, OBS settings without an update), so a field added later
        is part of every key until someone proves it inert here."""
        d = asdict(self)
        d["ratios"] = list(self.ratios)
        others = {name for names in PATTERN_FIELDS.values() for name in names} - set(PATTERN_FIELDS[self.pattern])
        for name in others:
            d.pop(name)
        if self.pattern == "unstructured":
            d["group"] = self.unstructured_group
        if not self.uses_calibration:
            for name in ("nsamples", "seqlen", "seed"):
                d.pop(name)
        if not self.updates_weights and self.method != "sparsegpt":
            for name in ("damp", "obs_blocksize"):
                d.pop(name)
        return d

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ratios"] = list(self.ratios)
        d["sparsity_type"] = self.sparsity_type
        d["nominal_sparsity"] = self.nominal_sparsity()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PruneSpec":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "ratios" in known:
            known["ratios"] = tuple(known["ratios"])
        return cls(**known)

    def replace(self, **changes) -> "PruneSpec":
        return replace(self, **changes)


def parse_sparsity_type(text: str) -> dict:
    """A pattern name, 'N:M' (e.g. '2:4'), or the fork's 'hybrid_2_4' -> PruneSpec keyword arguments."""
    t = text.strip().lower().replace("-", "_")
    if t in ("threetier", "hybrid"):
        return {"pattern": "three_tier"}
    if t == "hybrid_2_4":
        return {"pattern": "threshold_hybrid"}
    if t in PATTERNS and t != "nm":
        return {"pattern": t}
    parts = t.split(":")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        _check(all(len(p) <= 9 for p in parts), f"N:M needs N < M <= {MAX_GROUP}, got {text[:24]!r}")
        n, m = int(parts[0]), int(parts[1])
        _check(0 <= n < m, f"N:M needs N < M, got {n}:{m}")
        return {"pattern": "nm", "n": n, "m": m}
    names = [p for p in PATTERNS if p not in ("nm", "threshold_hybrid")]
    raise SpecError(f"unknown sparsity type {text[:40]!r}; use N:M (e.g. 2:4, 4:8), hybrid_2_4 or one of {', '.join(names)}")


def tier_counts(n_blocks: int, ratios) -> tuple[int, int, int]:
    """Block counts of the exact rule: dense = floor(r_d*n), 2:4 = floor(r_24*n), top-K = the rest.
    (The original rule's int() counts: block_patterns.int_tier_counts.)"""
    n_dense = math.floor(ratios[0] * n_blocks + 1e-9)
    n_24 = math.floor(ratios[1] * n_blocks + 1e-9)
    n_24 = min(n_24, n_blocks - n_dense)
    return n_dense, n_24, n_blocks - n_dense - n_24


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SpecError(message)
