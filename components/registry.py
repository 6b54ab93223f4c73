"""The one place the dashboard reads the engine's registries (engine/methods/registry.py, engine/patterns/registry.py):
which methods and patterns exist, their labels and colours, the spec fields each pattern reads, the titles of the block
fields' choices, and the spec's defaults. Everything the page lists is derived from here, so a method or a pattern
registered in the engine appears in the form and the figures with no UI edit.
"""
from __future__ import annotations

from engine.methods.registry import METHODS
from engine.patterns.registry import PATTERNS, TIER_AXIS, Param, pattern_params
from engine.recover.masked_finetune import FinetuneSpec
from engine.spec import BEST_THREE_TIER, RECIPE_PATTERN, PruneSpec

# The form opens on the best three-tier recipe found, with calibration small enough for a CPU: every other
# widget default is the spec's own.
FORM_SPEC = PruneSpec(pattern=RECIPE_PATTERN, nsamples=32, seqlen=512, **BEST_THREE_TIER)
FINETUNE_DEFAULTS = FinetuneSpec()


def form_params() -> dict[str, Param]:
    """The pattern parameters the form shows, by name, in the patterns' order (engine/patterns/registry.py)."""
    return {name: p for name, p in pattern_params().items() if p.form}


def form_fields(param: Param) -> tuple[str, ...]:
    """The form fields of one parameter: its name, or one per element of a tuple (ratio_dense, ratio_24 ...)."""
    return tuple(field for field, _ in param.parts) if param.parts else (param.name,)


def spec_form_values(spec: PruneSpec) -> dict:
    """The form fields of `spec`'s pattern and its parameters (form field -> value): what sets the form to it."""
    values = {"pattern": spec.pattern}
    for name, param in form_params().items():
        values.update(zip(form_fields(param), getattr(spec, name)) if param.parts else {name: getattr(spec, name)})
    return values


def method_choices() -> list[tuple[str, str]]:
    """(label, name) of every registered method, for a radio."""
    return [(m.label, name) for name, m in METHODS.items()]


def method_colours() -> dict[str, str]:
    """name -> the colour every figure draws that method in."""
    return {name: m.colour for name, m in METHODS.items()}


def pattern_choices() -> list[tuple[str, str]]:
    """(title, name) of every registered pattern, for a radio."""
    return [(p.title, name) for name, p in PATTERNS.items()]


def pattern_fields(pattern: str) -> tuple[str, ...]:
    """The PruneSpec fields `pattern` reads (the form shows only these); () for an unknown pattern."""
    return tuple(PATTERNS[pattern].fields) if pattern in PATTERNS else ()


def pattern_marker(pattern: str) -> str:
    """The marker symbol runs of `pattern` are drawn with."""
    return PATTERNS[pattern].marker if pattern in PATTERNS else "circle"


def tier_split(pattern: str) -> bool:
    """Whether `pattern` is placed by a three-tier split (dense, 2:4, top-K): the Sweep tab's triangle."""
    return pattern in PATTERNS and PATTERNS[pattern].axis == TIER_AXIS


def block_pattern(pattern: str) -> bool:
    """Cut into B x B blocks with a tier map per matrix."""
    return pattern in PATTERNS and PATTERNS[pattern].blocks


def field_choices(name: str) -> list[tuple[str, str]]:
    """(title, value) of a pattern parameter's choices (tier_scope, within_block ...), for a radio."""
    return [(title, value) for value, title in pattern_params()[name].choices.items()]


def uses_calibration(method: str, reconstruct: bool) -> bool:
    """Whether the form's calibration settings matter for this method (the spec decides)."""
    try:
        return PruneSpec(method=method, reconstruct=bool(reconstruct)).uses_calibration
    except ValueError:
        return True
