"""The sparsity patterns: one entry per pattern, owning its parameters, their validation, its nominal sparsity,
its label and its mask builder (and, where it has one, the chooser SparseGPT's update loop calls). Nothing else
in the engine, the CLI or the dashboard asks which pattern a spec has.

A mask builder `select(W, scores, spec, plan) -> Selection` sees the weight W [out, in], `scores()` (the method's
importance, computed on first call: a pattern that lets SparseGPT choose never pays for it) and the plan the
planning stage made for this matrix (engine/patterns/tier_plan.py). It returns a fixed keep-mask or a chooser, never
both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from engine.errors import SpecError, UserError
from engine.methods.registry import METHODS
from engine.methods.sparsegpt import Choose, adaptive, n_of_m
from engine.methods.wanda_variant import wanda_variant_mask
from engine.patterns.block_rules import (
    block_prune_mask,
    block_topk_mask,
    int_tier_counts,
    mean_block_importance,
    original_three_tier_mask,
    original_tiers,
    threshold_hybrid_mask,
)
from engine.patterns.masks import nm_mask, unstructured_mask
from engine.patterns.three_tier import (
    block_importance,
    three_tier_chooser,
    three_tier_mask,
)
from engine.patterns.tier_plan import MatrixPlan, place_tiers, ranking_input
from engine.patterns.vnm import KEPT_COLUMNS, vnm_mask
from engine.walk.discovery import find_targets

MAX_GROUP = 65536       # N:M group width M and block side B: above any matrix width; checked per matrix too
# The choices of the block patterns' fields: {value: what it means} (CLI choices, dashboard titles).
GROUPS = {"row": "each output row (Wanda, SparseGPT)", "matrix": "the whole matrix (magnitude)"}
BLOCK_RULES = {"exact": "exact: summed score, exactly K kept, edge blocks padded",
               "original": "original: the arithmetic of the Wanda hybrid of Ji et al. (mean score, int() counts, "
                           "ties with the K-th kept)"}
TIER_SCOPES = {"matrix": "each matrix (original rule)", "layer": "each decoder layer", "model": "whole model"}
WITHIN_BLOCK = {"score": "method's score", "magnitude": "|W| (original rule)",
                "obs": "OBS saliency during the update (SparseGPT-style; needs the OBS update)"}
ASSIGNMENTS = {"importance": "importance: most important dense, next 2:4 (original rule)",
               "cost": "cost: by the squared score mass each tier would drop"}


@dataclass
class Selection:
    """What a pattern decided for one matrix: a fixed mask, or a chooser run inside the OBS update."""
    keep: torch.Tensor | None = None        # bool [out, in], True = keep
    choose: Choose | None = None
    tiers: torch.Tensor | None = None       # int8 [rows/B, cols/B] tier grid (block patterns)
    importance: torch.Tensor | None = None  # float [rows/B, cols/B]: what the blocks were ranked by


Scores = Callable[[], torch.Tensor]


def csr_bits(shape, n_kept: int, v: int) -> int:
    """Unstructured (CSR): a column index per kept value, a 32-bit offset per row."""
    return n_kept * (v + math.ceil(math.log2(max(shape[-1], 2)))) + 32 * shape[0]


@dataclass(frozen=True)
class Param:
    """One parameter a pattern reads, declared once: it is a PruneSpec field (engine/spec.py), a CLI flag
    (engine/cli/prune_cli.py) and a dashboard widget (components/setup_form.py), all derived from this entry."""
    name: str                            # the PruneSpec field
    type: type                           # float | int | str | bool | tuple (the three-tier ratios)
    default: object
    help: str                            # the flag's help and the spec's docstring
    label: str = ""                      # the widget's label (default: the name)
    low: float | None = None             # the widget's range (the spec's validation is the entry's validate)
    high: float | None = None
    step: float | None = None
    choices: dict | None = None          # {value: title}: a radio, and the flag's choices
    flag: str | None = ""                # the CLI flag: "" = --name, None = set through --sparsity_type
    row: str | None = None               # widgets sharing a row name sit side by side
    replan: bool = False                 # a re-plan may move it without calibrating again (the Explore tab)
    info: str | None = None              # a line under the widget
    form: bool = True                    # a dashboard widget (False: the spec's default there)
    parts: tuple = ()                    # a tuple parameter's elements: (form field, label) each
    noun: str = ""                       # its name in a message (default: the name)

    @property
    def called(self) -> str:
        return self.noun or self.name

    @property
    def dest(self) -> str:
        return (self.flag or f"--{self.name}").lstrip("-")


@dataclass(frozen=True)
class Pattern:
    name: str
    title: str
    params: tuple[Param, ...]                                # what it reads beyond the method and the calibration
    select: Callable[[torch.Tensor, Scores, object, MatrixPlan], Selection]
    nominal_sparsity: Callable[[object], float]              # before rounding of counts per matrix
    describe: Callable[[object], str]                        # the label after the method's name
    validate: Callable[[object], None] = lambda spec: None   # raises SpecError
    too_wide: Callable[[str, list, object], str | None] = lambda matrix, shape, spec: None  # why it cannot fit
    blocks: bool = False                                     # cut into B x B blocks with a tier grid per matrix
    scope: Callable[[object], str] = lambda spec: "matrix"   # where blocks compete for tiers (tier_plan.py)
    sparsity_type: Callable[[object], str] | None = None     # the Wanda-script name (default: the pattern's name)
    aliases: tuple[str, ...] = ()                            # other names --sparsity_type accepts
    marker: str = "circle"                                   # its Plotly marker symbol in plots over runs
    parse: Callable[[str], dict | None] = lambda text: None  # a --sparsity_type of its own syntax -> spec fields
    syntax: str = ""                                         # that syntax, for help and errors ("N:M (2:4, 4:8 ...)")
    # Its sweep axis: the names of the numbers of one sweep point (three-tier: its three ratios; others: one
    # sparsity; () = none); where a spec sits on it; the spec at a point (snap: round to the nearest point the
    # pattern reaches, else refuse one it cannot).
    axis: tuple[str, ...] = ("sparsity",)
    point: Callable[[object], tuple] = lambda spec: (spec.sparsity,)
    at: Callable[[object, tuple, bool], object] = lambda spec, values, snap: spec.replace(sparsity=values[0])
    storage_bits: Callable[[object, list, int, int], int] = lambda spec, shape, n_kept, v: csr_bits(shape, n_kept, v)
    group: Callable[[object], int | None] = lambda spec: None  # the width of the groups of input columns each row
    #                                                      keeps a few of (N:M's M): a compact save stores those groups
    # (spec, shape [out, in], n_kept, v bits a value) -> bits of a kept-mask pattern's sparse format (block
    # patterns are counted per tier from their grids, engine/explore/)
    storage_note: str = "unstructured (CSR) n_kept·(v + ⌈log₂ in⌉) + 32 bits per row"  # storage_bits in words
    explain: Callable[[object], str] = lambda spec: f"Nominal sparsity **{spec.nominal_sparsity():.1%}**"
    notes: Callable[[object], str | None] = lambda spec: None  # a model card's line on where the rule comes from
    fixed_grid: Callable[[object], bool] = lambda spec: False  # its masks follow from a tier grid its axis moves and
    # per-block choices made once (engine/explore/ re-plans those without scoring again)

    @property
    def fields(self) -> tuple[str, ...]:
        """The PruneSpec fields it reads."""
        return tuple(p.name for p in self.params)


def check(ok: bool, message: str) -> None:
    if not ok:
        raise SpecError(message)


def finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def check_spec_fits(spec, layers) -> None:
    """Refuse `spec` when its N:M group or B x B block is wider than a matrix of the decoder `layers` (every layer:
    an MoE stack may mix shapes). The one check every path that builds masks asks before it builds any (the exact
    walk, a re-plan, a sweep, a search trial): a block padded to B x B over a narrower matrix is memory for
    nothing, and an "estimate" of it is noise. Raises UserError naming the first matrix that does not fit."""
    too_wide = PATTERNS[spec.pattern].too_wide
    seen = set()
    for layer in layers:
        for target in find_targets(layer, spec.prune_router):
            shape = tuple(target.shape)
            if (target.name, shape) in seen:
                continue
            seen.add((target.name, shape))
            if (why := too_wide(f"matrix {target.name} {list(shape)}", shape, spec)):
                raise UserError(why)


def chooses_while_updating(spec) -> bool:
    return METHODS[spec.method].chooses_while_updating


# --- unstructured -------------------------------------------------------------------------------------------

def _unstructured_select(W, scores, spec, plan):
    if chooses_while_updating(spec):
        return Selection(choose=adaptive(spec.sparsity))
    if spec.use_variant:
        return Selection(keep=wanda_variant_mask(scores(), spec.sparsity)[0])
    return Selection(keep=unstructured_mask(scores(), spec.sparsity, spec.unstructured_group))


def _unstructured_validate(spec):
    check(finite(spec.sparsity) and 0.0 <= spec.sparsity < 1.0,
          f"sparsity ratio must lie in [0, 1), got {spec.sparsity}")
    check(spec.group is None or spec.group in GROUPS, f"group must be one of {', '.join(GROUPS)}, got {spec.group!r}")
    check(not spec.use_variant or not chooses_while_updating(spec),
          "the Wanda variant (use_variant) chooses a mask from scores; "
          f"{METHODS[spec.method].label} chooses its own, use wanda or magnitude")
    check(not spec.use_variant or spec.group != "matrix",
          "the Wanda variant (use_variant) prunes per row; it cannot be combined with group 'matrix'")


# --- N:M ----------------------------------------------------------------------------------------------------

def _nm_select(W, scores, spec, plan):
    if chooses_while_updating(spec):
        return Selection(choose=n_of_m(spec.n, spec.m))
    return Selection(keep=nm_mask(scores(), spec.n, spec.m))


def _nm_validate(spec):
    check(isinstance(spec.n, int) and isinstance(spec.m, int) and spec.m >= 1 and 0 <= spec.n < spec.m,
          f"N:M needs 0 <= N < M, got {str(spec.n)[:24]}:{str(spec.m)[:24]}")
    check(spec.m <= MAX_GROUP, f"M must be at most {MAX_GROUP} (and at most a matrix's width), got {spec.m}")


def _nm_too_wide(matrix, shape, spec):
    if shape[-1] < spec.m:
        return f"M={spec.m} is wider than {matrix}; choose M of at most {shape[-1]}"
    return None


# --- B x B blocks: three-tier and the fork's block modes ----------------------------------------------------

def _block_validate(spec):
    check(isinstance(spec.block, int) and 4 <= spec.block <= MAX_GROUP and spec.block % 4 == 0,
          f"block size must be a multiple of 4 (so 2:4 groups never straddle blocks) and in [4, {MAX_GROUP}], "
          f"got {spec.block}")
    check(isinstance(spec.keep, int) and 0 <= spec.keep <= spec.block * spec.block,
          f"K (weights kept per top-K block) must lie in [0, {spec.block * spec.block}] for "
          f"{spec.block}x{spec.block} blocks, got {spec.keep}")
    check(spec.block_rule in BLOCK_RULES,
          f"block rule must be one of {', '.join(BLOCK_RULES)}, got {spec.block_rule!r}")


def _block_too_wide(matrix, shape, spec):
    if min(shape) < spec.block:
        return f"block size {spec.block} is larger than {matrix}; choose a block size of at most {min(shape)}"
    return None


def _within_score_or_magnitude(spec):
    check(spec.within_block in ("score", "magnitude"),
          f"{spec.pattern} keeps weights inside blocks by score or magnitude (|W|), not {spec.within_block!r}")


def _block_share_validate(spec):
    check(finite(spec.sparsity) and 0.0 <= spec.sparsity <= 1.0,
          f"share of blocks pruned (sparsity ratio) must lie in [0, 1], got {spec.sparsity}")


def _top_k_share(spec) -> float:
    return 1 - spec.keep / spec.block ** 2


def _inside(W, scores, spec):
    """What weights inside a block are chosen by: the method's score, or |W| (the original rule)."""
    return scores() if spec.within_block == "score" else W.abs()


def _three_tier_select(W, scores, spec, plan):
    if spec.block_rule == "original":  # the fork's three-tier arithmetic, per matrix
        importance = mean_block_importance(scores(), spec.block)
        tiers = original_tiers(importance, int_tier_counts(importance.numel(), spec.ratios))
        return Selection(keep=original_three_tier_mask(_inside(W, scores, spec), tiers, spec.block, spec.keep),
                         tiers=tiers, importance=importance)
    importance = block_importance(scores(), spec.block)
    ranking = importance if spec.assignment == "importance" else ranking_input(scores(), spec)
    tiers = place_tiers(plan, importance, ranking, spec)
    if spec.within_block == "obs":  # chosen inside the blocks while the weights are updated, as SparseGPT's N:M
        return Selection(choose=three_tier_chooser(tiers, spec.block, spec.keep), tiers=tiers, importance=importance)
    return Selection(keep=three_tier_mask(_inside(W, scores, spec), tiers, spec.block, spec.keep), tiers=tiers,
                     importance=importance)


def _three_tier_validate(spec):
    r = spec.ratios
    check(len(r) == 3, f"three-tier needs three ratios (dense, 2:4, top-K), got {len(r)}")
    check(all(finite(x) for x in r), f"tier ratios must be numbers, got {r}")
    check(all(x >= 0 for x in r), f"tier ratios must be non-negative, got {r}")
    check(abs(sum(r) - 1.0) <= 1e-6, f"tier ratios must sum to 1, got {' + '.join(f'{x:g}' for x in r)} = {sum(r):g}")
    check(spec.tier_scope in TIER_SCOPES,
          f"tier scope must be one of {', '.join(TIER_SCOPES)}, got {spec.tier_scope!r}")
    check(spec.within_block in WITHIN_BLOCK, f"within-block choice must be one of {', '.join(WITHIN_BLOCK)}")
    check(spec.within_block != "obs" or spec.updates_weights,
          "within-block choice 'obs' picks weights while the OBS update runs: turn on reconstruct (or use sparsegpt)")
    check(spec.assignment in ASSIGNMENTS,
          f"tier assignment must be one of {', '.join(ASSIGNMENTS)}, got {spec.assignment!r}")
    check(spec.block_rule == "exact" or (spec.tier_scope == "matrix" and spec.assignment == "importance"
                                         and spec.within_block != "obs"),
          "the original block rule ranks blocks per matrix by importance and keeps weights by score or |W|: "
          "use tier scope matrix, assignment importance, within-block score or magnitude (or block rule exact)")


def _three_tier_describe(spec):
    d, s, t = spec.ratios
    extra = "".join([", by cost" if spec.assignment == "cost" else "", ", +OBS" if spec.reconstruct else "",
                     ", kept by OBS saliency" if spec.within_block == "obs" else ""])
    rule = ", original rule" if spec.block_rule == "original" else ""
    return f"three-tier {d:g}/{s:g}/{t:g} K={spec.keep} ({spec.tier_scope}{extra}{rule})"


def _block_select(W, scores, spec, plan):
    importance = mean_block_importance(scores(), spec.block)
    keep, tiers = block_prune_mask(importance, spec.sparsity, spec.block, W.shape)
    return Selection(keep=keep, tiers=tiers, importance=importance)


def _block_topk_select(W, scores, spec, plan):
    importance = mean_block_importance(scores(), spec.block)
    keep, tiers = block_topk_mask(_inside(W, scores, spec), importance, spec.sparsity, spec.block, spec.keep)
    return Selection(keep=keep, tiers=tiers, importance=importance)


def _threshold_hybrid_select(W, scores, spec, plan):
    keep, tiers = threshold_hybrid_mask(scores(), _inside(W, scores, spec), spec.block, spec.keep,
                                        spec.top_blocks_ratio, spec.score_threshold)
    return Selection(keep=keep, tiers=tiers, importance=mean_block_importance(scores(), spec.block))


def _threshold_hybrid_validate(spec):
    check(finite(spec.top_blocks_ratio) and 0.0 <= spec.top_blocks_ratio <= 1.0,
          f"top blocks ratio must lie in [0, 1], got {spec.top_blocks_ratio}")
    check(finite(spec.score_threshold), f"score threshold must be a number, got {spec.score_threshold}")


def _all(*checks):
    def validate(spec):
        for c in checks:
            c(spec)
    return validate


# --- the parameters, each declared once (several patterns may read one) --------------------------------------

THREE_TIER_RATIOS = (0.35, 0.45, 0.20)  # the split the Wanda hybrid's model list documents
ORIGINAL_URL = "https://github.com/Jiajun-Ji/wanda"  # the Wanda hybrid of Ji et al.: the block rules it defines
TIER_AXIS = ("dense", "2:4", "top-K")  # the sweep axis of a three-tier split: its three ratios
RATIO_PARTS = (("ratio_dense", "dense blocks (all kept)"), ("ratio_24", "2:4 blocks (half kept)"),
               ("ratio_topk", "top-K blocks (K kept)"))  # the three ratios' form fields and labels
SPARSITY = Param("sparsity", float, 0.5, "share of weights pruned (unstructured), of blocks pruned (block, "
                 "block_topk) (default 0.5)", "Sparsity", 0, 0.95, 0.01, flag="--sparsity_ratio",
                 info="block patterns: the share of blocks pruned")
GROUP = Param("group", str, None, "comparison group (default: row for wanda/sparsegpt, matrix for "
              "magnitude)", choices=GROUPS, form=False)
USE_VARIANT = Param("use_variant", bool, False, "Wanda's variant: per row, prune while the sorted "
                    "scores' running sum stays under alpha x the row total, alpha bisected to the target sparsity",
                    "Wanda's variant (alpha bisected per row)")
N = Param("n", int, 2, "weights kept in every group of M (from --sparsity_type N:M)", "N (kept)", 0, flag=None,
          row="nm", noun="N")
M = Param("m", int, 4, "the group width (from --sparsity_type N:M)", "M (group)", 1, flag=None, row="nm",
          noun="M")
RATIOS = Param("ratios", tuple, THREE_TIER_RATIOS, "share of 16x16 blocks kept dense, made 2:4, and top-K; sum to 1 "
               "(default: the recipe's, else " + " ".join(f"{r:g}" for r in THREE_TIER_RATIOS) + ")",
               flag="--sparsity_ratios", parts=RATIO_PARTS,
               noun="tier ratio")
TIER_SCOPE = Param("tier_scope", str, "matrix", "where blocks compete for tiers: each matrix (the original rule), "
                   "each decoder layer, the whole model (default matrix)", "Rank blocks across",
                   choices=TIER_SCOPES, replan=True)
ASSIGNMENT = Param("assignment", str, "importance", "which blocks get which tier: by summed importance (the original "
                   "rule) or by the squared score mass each tier would drop (default importance)",
                   "Give blocks their tier by", choices=ASSIGNMENTS, flag="--tier_assignment", replan=True)
BLOCK_RULE = Param("block_rule", str, "exact", "three-tier arithmetic: exact (summed score, floor counts, exactly K "
                   "per top-K block, edge blocks padded) or original (the Wanda hybrid's: mean score, int() counts, "
                   "ties with the K-th kept, edge blocks clipped; ratios normalised) (default exact)",
                   "Block arithmetic", choices=BLOCK_RULES)
BLOCK = Param("block", int, 16, "block side B (default 16)", "Block size B", 4, step=4, flag="--block_size",
              row="block", replan=True, noun="block size")
KEEP = Param("keep", int, 15, "weights K kept in each top-K block (default 15)", "K per top-K block", 0,
             flag="--topk_per_block", row="block", replan=True, noun="K")
WITHIN = Param("within_block", str, "score", "pick weights inside 2:4 and top-K blocks by the method's score, by |W| "
               "(the original rule), or obs: by the OBS saliency while the weights are updated, as SparseGPT picks "
               "N:M (needs --reconstruct or sparsegpt) (default score)", "Inside 2:4 / top-K blocks keep by",
               choices=WITHIN_BLOCK)
TOP_BLOCKS = Param("top_blocks_ratio", float, 0.6, "share of blocks that try 2:4 (else dense); the rest "
                   "keep K (default 0.6)", "top blocks (try 2:4, else dense)", 0, 1, 0.01)
SCORE_THRESHOLD = Param("score_threshold", float, 0.8, "a top block takes 2:4 when it keeps this share "
                        "of its score (default 0.8)", "2:4 taken if it keeps this share of the block's score",
                        0, 1, 0.01)
BLOCK_PARAMS = (BLOCK, KEEP, WITHIN, BLOCK_RULE)
BLOCK_STORAGE = ("blocks: dense n·v; 2:4 n_kept·(v + 2) (a 2-bit position in each group of 4); top-K "
                 "n_kept·(v + ⌈log₂ B²⌉) (8 bits for B = 16)")


def _nominal_three_tier(s) -> str:
    d, h, t = s.ratios
    return (f"Nominal sparsity **{s.nominal_sparsity():.1%}** = 2:4 share {h:.2f} × ½ + top-K share {t:.2f} × "
            f"(1 − {s.keep}/{s.block}²) · dense blocks {d:.0%}")


def _three_tier_notes(s) -> str | None:
    if s.block_rule != "original":
        return None
    return (f"Block rule `original`: the three-tier rule of the [Wanda hybrid of Ji et al.]({ORIGINAL_URL}) "
            "(main_block_three_tier.py), mask for mask.")


def _nm_parse(text: str) -> dict | None:
    """'N:M' (e.g. '2:4') -> {n, m}; None for anything else."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    check(all(len(p) <= 9 for p in parts), f"N:M needs N < M <= {MAX_GROUP}, got {text[:24]!r}")
    n, m = int(parts[0]), int(parts[1])
    check(0 <= n < m, f"N:M needs N < M, got {n}:{m}")
    return {"n": n, "m": m}


def _nm_at(spec, values, snap):
    """The N:M of this M nearest a sparsity (snap), or exactly at it (0.25 of 2:4 -> 3:4)."""
    x = float(values[0])
    n = round(spec.m * (1 - x))
    if not snap and (not math.isfinite(x) or abs(1 - n / spec.m - x) > 1e-9):
        raise SpecError(f"sparsity {x:g} is no N:{spec.m} pattern; use a multiple of 1/{spec.m}")
    return spec.replace(n=n)


VNM_V = Param("v", int, 64, "rows V of each V x M block; the block's rows keep the same 4 of its M columns "
              "(default 64; --sparsity_type V:N:M sets all three)", "V (rows per block)", 1, flag="--vnm_rows")


def _vnm_parse(text: str) -> dict | None:
    """'V:N:M' (e.g. '64:2:8') -> {v, n, m}; None for anything else."""
    parts = text.split(":")
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 9 for p in parts):
        return None
    return dict(zip(("v", "n", "m"), map(int, parts)))


def _vnm_validate(spec):
    check(isinstance(spec.v, int) and 1 <= spec.v <= MAX_GROUP, f"V must lie in [1, {MAX_GROUP}], got {spec.v}")
    check(isinstance(spec.m, int) and KEPT_COLUMNS <= spec.m <= MAX_GROUP,
          f"V:N:M needs M in [{KEPT_COLUMNS}, {MAX_GROUP}] (each block keeps {KEPT_COLUMNS} of its M columns), "
          f"got {spec.m}")
    check(isinstance(spec.n, int) and 0 <= spec.n <= KEPT_COLUMNS and spec.n < spec.m,
          f"V:N:M needs 0 <= N <= {KEPT_COLUMNS} and N < M, got {spec.n}:{spec.m}")


def _vnm_too_wide(matrix, shape, spec):
    """M wider than the matrix cannot group it; a matrix of fewer than V rows is one block high (vnm_mask pads)."""
    if shape[-1] < spec.m:
        return f"M={spec.m} is wider than {matrix}; choose M of at most {shape[-1]}"
    return None


def _vnm_bits(spec, shape, n_kept, v):
    """A 2-bit position among the block's 4 columns per kept value, and the 4 column indices of every block."""
    blocks = -(-shape[0] // spec.v) * -(-shape[-1] // spec.m)
    return n_kept * (v + 2) + blocks * KEPT_COLUMNS * math.ceil(math.log2(spec.m))


PATTERNS: dict[str, Pattern] = {p.name: p for p in (
    Pattern("three_tier", "Three-tier blocks", (RATIOS, TIER_SCOPE, ASSIGNMENT) + BLOCK_PARAMS,
            _three_tier_select, lambda s: s.ratios[1] / 2 + s.ratios[2] * _top_k_share(s), _three_tier_describe,
            _all(_block_validate, _three_tier_validate), _block_too_wide, blocks=True, scope=lambda s: s.tier_scope,
            storage_note=BLOCK_STORAGE,
            aliases=("threetier", "hybrid"), axis=TIER_AXIS, marker="diamond", point=lambda s: tuple(s.ratios),
            at=lambda s, values, snap: s.replace(ratios=tuple(values)), notes=_three_tier_notes,
            fixed_grid=lambda s: s.block_rule == "exact" and s.within_block != "obs", explain=_nominal_three_tier),
    Pattern("unstructured", "Unstructured", (SPARSITY, GROUP, USE_VARIANT), _unstructured_select,
            lambda s: s.sparsity, lambda s: f"unstructured {s.sparsity:g}" + (" (variant)" if s.use_variant else ""),
            _unstructured_validate),
    Pattern("nm", "N:M", (N, M), _nm_select, lambda s: 1 - s.n / s.m, lambda s: f"{s.n}:{s.m}", _nm_validate,
            _nm_too_wide, sparsity_type=lambda s: f"{s.n}:{s.m}", point=lambda s: (1 - s.n / s.m,), at=_nm_at,
            parse=_nm_parse, marker="square", storage_note="N:M n_kept·(v + ⌈log₂ M⌉)",
            syntax="N:M (2:4, 4:8 ...)",
            storage_bits=lambda s, shape, kept, v: kept * (v + math.ceil(math.log2(s.m))), group=lambda s: s.m),
    Pattern("block", "Whole blocks removed", (SPARSITY,) + BLOCK_PARAMS, _block_select, lambda s: s.sparsity,
            lambda s: f"block {s.sparsity:g} of {s.block}x{s.block} blocks",
            _all(_block_validate, _block_share_validate), _block_too_wide, blocks=True, storage_note=BLOCK_STORAGE),
    Pattern("block_topk", "Blocks removed, top-K kept", (SPARSITY,) + BLOCK_PARAMS, _block_topk_select,
            lambda s: s.sparsity * _top_k_share(s), lambda s: f"block + top-K {s.sparsity:g} of blocks, K={s.keep}",
            _all(_block_validate, _block_share_validate, _within_score_or_magnitude), _block_too_wide, blocks=True,
            storage_note=BLOCK_STORAGE),
    Pattern("threshold_hybrid", "Threshold hybrid (dense / 2:4 by score kept, rest top-K)",
            BLOCK_PARAMS + (TOP_BLOCKS, SCORE_THRESHOLD), _threshold_hybrid_select,
            # its top-K blocks only: how many top blocks take 2:4 depends on the data
            lambda s: (1 - s.top_blocks_ratio) * _top_k_share(s),
            lambda s: f"threshold hybrid top {s.top_blocks_ratio:g}, threshold {s.score_threshold:g}, K={s.keep}",
            _all(_block_validate, _threshold_hybrid_validate, _within_score_or_magnitude), _block_too_wide,
            blocks=True, sparsity_type=lambda s: "hybrid_2_4", aliases=("hybrid_2_4", "threshold_hybrid"), axis=(),
            storage_note=BLOCK_STORAGE,
            syntax="hybrid_2_4 (the threshold hybrid)",
            point=lambda s: (), explain=lambda s: f"Nominal sparsity at least **{s.nominal_sparsity():.1%}** (top-K "
            "blocks; each top block that takes 2:4 adds more)"),
    Pattern("vnm", "V:N:M (V x M blocks keep 4 columns, then N of them per row)", (VNM_V, N, M),
            lambda W, scores, spec, plan: Selection(keep=vnm_mask(scores(), spec.v, spec.n, spec.m)),
            lambda s: 1 - s.n / s.m, lambda s: f"V:N:M {s.v}:{s.n}:{s.m}", _vnm_validate, _vnm_too_wide,
            sparsity_type=lambda s: f"{s.v}:{s.n}:{s.m}", point=lambda s: (1 - s.n / s.m,), at=_nm_at,
            parse=_vnm_parse, syntax="V:N:M (64:2:8 ...)", storage_bits=_vnm_bits,
            storage_note="V:N:M n_kept·(v + 2) + 4·⌈log₂ M⌉ per V x M block", group=lambda s: s.m),
)}


def pattern_params() -> dict[str, Param]:
    """Every pattern's parameters by name, in the order the patterns declare them (a PruneSpec field each)."""
    params: dict[str, Param] = {}
    for pattern in PATTERNS.values():
        for param in pattern.params:
            if params.setdefault(param.name, param) is not param:
                raise TypeError(f"two patterns declare parameter {param.name!r} differently: declare it once")
    return params
