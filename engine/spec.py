"""What to prune and how: one validated object, checked once at the edge (CLI, dashboard, API)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from engine.errors import SpecError
from engine.methods.registry import METHODS
from engine.patterns.registry import (
    ORIGINAL_URL as ORIGINAL_URL,  # re-exported: recipes and the CLI name them from here
)
from engine.patterns.registry import PATTERNS, pattern_params
from engine.patterns.registry import THREE_TIER_RATIOS as THREE_TIER_RATIOS
from engine.patterns.registry import check as _check

TIER_NAMES = ("dense", "2:4", "topk")  # tier ids 0, 1, 2 in every tier map
MAX_SEED = 2**32 - 1    # numpy and torch seeds; larger overflow only after the model and data are loaded
# Named three-tier recipes. ORIGINAL: the three-tier rule of the Wanda hybrid of Ji et al. (ORIGINAL_URL,
# main_block_three_tier.py) with its defaults, mask for mask. BEST: the best split and recipe measured on SmolLM2
# (bench/RESULTS.md "Which split beats 2:4?": a search of the ratio triangle, K and B on one calibration, the best
# splits then walked exactly): Fisher-weighted Wanda ranks blocks model-wide by cost, the mask is fixed, the OBS
# update reconstructs the kept weights; 15% dense, 25% 2:4, 60% top-96 of 16 x 16 blocks = 50% sparsity.
ORIGINAL_RECIPE = dict(method="wanda", tier_scope="matrix", assignment="importance", within_block="magnitude",
                       reconstruct=False, block_rule="original", ratios=(0.4, 0.4, 0.2), keep=10)
BEST_THREE_TIER = dict(method="fisher_wanda", tier_scope="model", assignment="cost", within_block="score",
                       reconstruct=True, block_rule="exact", ratios=(0.15, 0.25, 0.60), keep=96)
RECIPES = {"original": ORIGINAL_RECIPE, "best": BEST_THREE_TIER}
RECIPE_PATTERN = "three_tier"  # the pattern the named recipes (and the Sweep tab's tier splits) are for


def _with_pattern_params(cls):
    """Each pattern parameter (engine/patterns/registry.py) a field of `cls` with its declared default, after `pattern`:
    a pattern with a new parameter needs no edit here."""
    own = dict(cls.__annotations__)
    cls.__annotations__ = {}
    for name, kind in own.items():
        cls.__annotations__[name] = kind
        if name == "pattern":
            for param in pattern_params().values():
                cls.__annotations__[param.name] = param.type
                setattr(cls, param.name, field(default=param.default))
    cls.__doc__ += "\n    Pattern parameters (engine/patterns/registry.py):\n" + "".join(
        f"    {param.name:<11} ({', '.join(n for n, p in PATTERNS.items() if param in p.params)}) {param.help}\n"
        for param in pattern_params().values())
    return dataclass(frozen=True)(cls)


_TUPLES = [name for name, param in pattern_params().items() if param.type is tuple]


@_with_pattern_params
class PruneSpec:
    """A pruning run's recipe. Build with `PruneSpec(...)`; invalid values raise SpecError at once.

    method      how important each weight is: magnitude |W|, wanda |W|*||X||, sparsegpt (OBS, updates weights),
                fisher |W|*sqrt(F) with F the empirical Fisher of the model's loss (one backward pass per
                calibration window; loss units, so blocks compare across matrices and layers as they are),
                fisher_wanda Wanda with each output row weighted by its loss sensitivity sqrt(G_i) from the same
                gradients: Wanda inside a row, loss units across rows, matrices and layers
    pattern     which weights may stay: a name of engine/patterns/registry.py's registry; each pattern's parameters
                (sparsity, n, m, ratios, block, keep, tier_scope, v ...) are fields too, listed below as
                their entries declare them
    reconstruct OBS weight update for masks chosen by magnitude/wanda (None = off; sparsegpt always updates)
    """

    method: str = "wanda"
    pattern: str = "unstructured"
    # ... then every pattern's parameters (sparsity, n, m, ratios, block, keep ...: engine/patterns/registry.py)
    reconstruct: bool = False
    nsamples: int = 128
    seqlen: int | None = None
    seed: int = 0
    damp: float = 0.01
    obs_blocksize: int = 128
    prune_router: bool = False

    def __post_init__(self):
        for name in _TUPLES:  # a list from JSON or a form -> the tuple of numbers the spec holds
            try:
                object.__setattr__(self, name, tuple(float(r) for r in getattr(self, name)))
            except (TypeError, ValueError):
                raise SpecError(f"{name} must be numbers, got {str(getattr(self, name))[:40]}") from None
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
        reads = PATTERNS[self.pattern].fields
        for name, param in pattern_params().items():  # a switch of another pattern is never silently ignored
            _check(param.type is not bool or name in reads or not getattr(self, name),
                   f"{name} is for {', '.join(n for n, p in PATTERNS.items() if name in p.fields)}, "
                   f"not {self.sparsity_type}")
        PATTERNS[self.pattern].validate(self)

    # -- derived (from the method's and the pattern's registry entries) ---------------------------------
    @property
    def uses_calibration(self) -> bool:
        return METHODS[self.method].uses_calibration or self.reconstruct

    @property
    def needs_layer_stats(self) -> bool:
        """Whether the layer walk must collect input statistics (activation norms, OBS Hessians)."""
        return bool(METHODS[self.method].needs & {"activations", "hessian"}) or self.reconstruct

    @property
    def loss_units(self) -> bool:
        """Scores from the model's loss gradients, in its units: blocks of different matrices compare as they are."""
        return METHODS[self.method].loss_units

    @property
    def updates_weights(self) -> bool:
        return METHODS[self.method].updates_weights or self.reconstruct

    @property
    def uses_blocks(self) -> bool:
        """Cut into B x B blocks with a tier grid per matrix (three-tier and the fork's block modes)."""
        return PATTERNS[self.pattern].blocks

    @property
    def unstructured_group(self) -> str:
        return self.group or METHODS[self.method].unstructured_group

    @property
    def sparsity_type(self) -> str:
        """The Wanda-script name of the pattern: unstructured, 2:4, three_tier ..."""
        named = PATTERNS[self.pattern].sparsity_type
        return named(self) if named else self.pattern

    def nominal_sparsity(self) -> float:
        """The sparsity the pattern aims at, before rounding of counts per matrix."""
        return PATTERNS[self.pattern].nominal_sparsity(self)

    def label(self) -> str:
        return f"{self.method} {PATTERNS[self.pattern].describe(self)}"

    def canonical(self) -> dict:
        """The fields that decide this spec's result, resolved: the identity of its masks and weights in every
        cache key. Derived from all fields, less the parameters of other patterns and those a spec of this kind
        never reads (calibration for magnitude masks, OBS settings without an update), so a field added later
        is part of every key until someone proves it inert here."""
        d = self._as_json()
        others = {name for p in PATTERNS.values() for name in p.fields} - set(PATTERNS[self.pattern].fields)
        for name in others:
            d.pop(name)
        if "group" in d:
            d["group"] = self.unstructured_group
        if not self.uses_calibration:
            for name in ("nsamples", "seqlen", "seed"):
                d.pop(name)
        if not self.updates_weights:
            for name in ("damp", "obs_blocksize"):
                d.pop(name)
        return d

    def to_dict(self) -> dict:
        d = self._as_json()
        d["sparsity_type"] = self.sparsity_type
        d["nominal_sparsity"] = self.nominal_sparsity()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PruneSpec":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def _as_json(self) -> dict:
        d = asdict(self)
        d.update({name: list(d[name]) for name in _TUPLES})
        return d

    def replace(self, **changes) -> "PruneSpec":
        return replace(self, **changes)


def parse_sparsity_type(text: str) -> dict:
    """A pattern name (or one of its aliases) or a pattern's own syntax ('N:M', e.g. '2:4') -> PruneSpec keyword
    arguments."""
    t = text.strip().lower().replace("-", "_")
    for name, p in PATTERNS.items():
        if t in p.aliases or (t == name and p.sparsity_type is None):
            return {"pattern": name}
    for name, p in PATTERNS.items():
        fields = p.parse(t)
        if fields is not None:
            return {"pattern": name, **fields}
    raise SpecError(f"unknown sparsity type {text[:40]!r}; use {' or '.join(sparsity_type_names())}")


def sparsity_type_names() -> list[str]:
    """What --sparsity_type accepts: the patterns' syntaxes, then their names."""
    syntaxes = [p.syntax for p in PATTERNS.values() if p.syntax]
    return [*syntaxes, " | ".join(name for name, p in PATTERNS.items() if p.sparsity_type is None)]


def spec_label(spec: dict | None) -> str:
    """The label of a record's spec (PruneSpec.label()); the method and pattern names where the stored spec no
    longer validates (a record written by another version); "?" for a record without one."""
    if not isinstance(spec, dict) or "pattern" not in spec:
        return "?"
    try:
        return PruneSpec.from_dict(spec).label()
    except (SpecError, TypeError, ValueError):
        return f"{spec.get('method', '?')} {spec.get('pattern', '?')}"
