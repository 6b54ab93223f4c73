"""What to prune and how: one validated object, checked once at the edge (CLI, dashboard, API)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from .errors import SpecError

METHODS = ("magnitude", "wanda", "sparsegpt", "fisher", "fisher_wanda")
PATTERNS = ("unstructured", "nm", "three_tier")
TIER_SCOPES = ("matrix", "layer", "model")
WITHIN_BLOCK = ("score", "magnitude", "obs")
GROUPS = ("row", "matrix")
ASSIGNMENTS = ("importance", "cost")
TIER_NAMES = ("dense", "2:4", "topk")  # tier ids 0, 1, 2 in every tier map
SEED_RATIOS = (0.35, 0.45, 0.20)
MAX_SEED = 2**32 - 1    # numpy and torch seeds; larger overflow only after the model and data are loaded
MAX_GROUP = 65536       # N:M group width M and block side B: above any matrix width; checked per matrix too
# Named three-tier recipes (issue 6, bench/HYBRID.md): the seed's rule, and the best variant measured.
SEED_RULE = dict(method="wanda", tier_scope="matrix", assignment="importance", within_block="score", reconstruct=False)
BEST_THREE_TIER = dict(method="fisher_wanda", tier_scope="model", assignment="cost", within_block="obs", reconstruct=True)


@dataclass(frozen=True)
class PruneSpec:
    """A pruning run's recipe. Build with `PruneSpec(...)`; invalid values raise SpecError at once.

    method      how important each weight is: magnitude |W|, wanda |W|*||X||, sparsegpt (OBS, updates weights),
                fisher |W|*sqrt(F) with F the empirical Fisher of the model's loss (one backward pass per
                calibration window; loss units, so blocks compare across matrices and layers as they are),
                fisher_wanda Wanda with each output row weighted by its loss sensitivity sqrt(G_i) from the same
                gradients: Wanda inside a row, loss units across rows, matrices and layers
    pattern     which weights may stay: unstructured (`sparsity`), nm (`n` of every `m`), three_tier
    ratios      three-tier split of 16x16 blocks into (dense, 2:4, top-K); must sum to 1
    block, keep three-tier block side B and weights K kept in each top-K block (0 <= K <= B*B)
    tier_scope  where blocks compete for tiers: each matrix (the seed's rule), a decoder layer, the whole model
    within_block weights chosen inside 2:4 / top-K blocks by the method's score, by |W| (the seed), or "obs":
                with an OBS update, by the OBS saliency of the weights as updated so far, column block by
                column block as SparseGPT chooses N:M (needs reconstruct or sparsegpt)
    assignment  how blocks get tiers: "importance" (most important dense, next 2:4: the seed's rule) or
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
    ratios: tuple[float, float, float] = SEED_RATIOS
    block: int = 16
    keep: int = 15
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
        if self.pattern == "three_tier":
            r = self.ratios
            _check(len(r) == 3, f"three-tier needs three ratios (dense, 2:4, top-K), got {len(r)}")
            _check(all(_finite(x) for x in r), f"tier ratios must be numbers, got {r}")
            _check(all(x >= 0 for x in r), f"tier ratios must be non-negative, got {r}")
            _check(abs(sum(r) - 1.0) <= 1e-6, f"tier ratios must sum to 1, got {' + '.join(f'{x:g}' for x in r)} = {sum(r):g}")
            _check(isinstance(self.block, int) and 4 <= self.block <= MAX_GROUP and self.block % 4 == 0,
                   f"block size must be a multiple of 4 (so 2:4 groups never straddle blocks) and in [4, {MAX_GROUP}], got {self.block}")
            _check(isinstance(self.keep, int) and 0 <= self.keep <= self.block * self.block,
                   f"K (weights kept per top-K block) must lie in [0, {self.block * self.block}] for {self.block}x{self.block} blocks, got {self.keep}")
            _check(self.tier_scope in TIER_SCOPES, f"tier scope must be one of {', '.join(TIER_SCOPES)}, got {self.tier_scope!r}")
            _check(self.within_block in WITHIN_BLOCK, f"within-block choice must be one of {', '.join(WITHIN_BLOCK)}")
            _check(self.within_block != "obs" or self.updates_weights,
                   "within-block choice 'obs' picks weights while the OBS update runs: turn on reconstruct "
                   "(or use sparsegpt)")
            _check(self.assignment in ASSIGNMENTS, f"tier assignment must be one of {', '.join(ASSIGNMENTS)}, "
                   f"got {self.assignment!r}")

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
    def unstructured_group(self) -> str:
        return self.group or ("matrix" if self.method == "magnitude" else "row")

    @property
    def sparsity_type(self) -> str:
        """The Wanda-script name of the pattern: unstructured, 2:4, three_tier ..."""
        return {"unstructured": "unstructured", "nm": f"{self.n}:{self.m}", "three_tier": "three_tier"}[self.pattern]

    def nominal_sparsity(self) -> float:
        """The sparsity the pattern aims at, before rounding of counts per matrix."""
        if self.pattern == "unstructured":
            return self.sparsity
        if self.pattern == "nm":
            return 1 - self.n / self.m
        _, r24, rtop = self.ratios
        return r24 / 2 + rtop * (1 - self.keep / self.block ** 2)

    def label(self) -> str:
        if self.pattern == "three_tier":
            d, s, t = self.ratios
            extra = "".join([", by cost" if self.assignment == "cost" else "", ", +OBS" if self.reconstruct else "",
                             ", kept by OBS saliency" if self.within_block == "obs" else ""])
            return f"{self.method} three-tier {d:g}/{s:g}/{t:g} K={self.keep} ({self.tier_scope}{extra})"
        if self.pattern == "nm":
            return f"{self.method} {self.n}:{self.m}"
        return f"{self.method} unstructured {self.sparsity:g}" + (" (variant)" if self.use_variant else "")

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
    """'unstructured' | 'three_tier' | 'N:M' (e.g. '2:4') -> PruneSpec keyword arguments."""
    t = text.strip().lower().replace("-", "_")
    if t in ("unstructured", "three_tier", "threetier", "hybrid"):
        return {"pattern": "unstructured" if t == "unstructured" else "three_tier"}
    parts = t.split(":")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        _check(all(len(p) <= 9 for p in parts), f"N:M needs N < M <= {MAX_GROUP}, got {text[:24]!r}")
        n, m = int(parts[0]), int(parts[1])
        _check(0 <= n < m, f"N:M needs N < M, got {n}:{m}")
        return {"pattern": "nm", "n": n, "m": m}
    raise SpecError(f"unknown sparsity type {text[:40]!r}; use unstructured, N:M (e.g. 2:4, 4:8) or three_tier")


def tier_counts(n_blocks: int, ratios) -> tuple[int, int, int]:
    """The seed's rule: dense = floor(r_d*n), 2:4 = floor(r_24*n), top-K = the rest."""
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
