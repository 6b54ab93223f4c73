"""Validation at the edge: every bad spec is refused once, with a message a person can act on."""
import math

import pytest

from engine.errors import SpecError
from engine.patterns.three_tier import tier_counts
from engine.spec import PruneSpec, parse_sparsity_type

BAD = [
    (dict(method="obs"), "unknown method"),
    (dict(pattern="blocky"), "unknown pattern"),
    (dict(sparsity=1.0), "sparsity ratio must lie in [0, 1)"),
    (dict(sparsity=-0.1), "sparsity ratio must lie in [0, 1)"),
    (dict(sparsity=math.nan), "sparsity ratio must lie in [0, 1)"),
    (dict(pattern="nm", n=4, m=4), "N:M needs 0 <= N < M"),
    (dict(pattern="nm", n=5, m=4), "N:M needs 0 <= N < M"),
    (dict(pattern="three_tier", ratios=(0.5, 0.5, 0.5)), "must sum to 1"),
    (dict(pattern="three_tier", ratios=(-0.2, 0.7, 0.5)), "non-negative"),
    (dict(pattern="three_tier", ratios=(math.nan, 0.5, 0.5)), "must be numbers"),
    (dict(pattern="three_tier", keep=257), "K (weights kept per top-K block) must lie in [0, 256]"),
    (dict(pattern="three_tier", keep=-1), "must lie in [0, 256]"),
    (dict(pattern="three_tier", block=0), "block size must be a multiple of 4"),
    (dict(pattern="three_tier", block=10), "block size must be a multiple of 4"),
    (dict(pattern="three_tier", tier_scope="galaxy"), "tier scope"),
    (dict(nsamples=0), "nsamples must be a whole number >= 1"),
    (dict(nsamples=10**9), "absurdly large"),
    (dict(seqlen=0), "seqlen must be a whole number >= 1"),
    (dict(group="column"), "group must be one of"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[m for _, m in BAD])
def test_bad_spec_refused_with_message(kwargs, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        PruneSpec(**kwargs)


def test_ratios_within_tolerance_accepted():
    PruneSpec(pattern="three_tier", ratios=(0.35, 0.45, 0.2 + 5e-7))


@pytest.mark.parametrize("text,expected", [("unstructured", {"pattern": "unstructured"}),
                                           ("2:4", {"pattern": "nm", "n": 2, "m": 4}),
                                           ("4:8", {"pattern": "nm", "n": 4, "m": 8}),
                                           ("three_tier", {"pattern": "three_tier"})])
def test_parse_sparsity_type(text, expected):
    assert parse_sparsity_type(text) == expected


@pytest.mark.parametrize("text", ["4:2", "2-4x", "dense", "4:4"])
def test_parse_sparsity_type_refuses(text):
    with pytest.raises(SpecError):
        parse_sparsity_type(text)


def test_tier_counts_exact_rule():
    assert tier_counts(1296, (0.35, 0.45, 0.20)) == (453, 583, 260)
    assert tier_counts(10, (0.3, 0.3, 0.4)) == (3, 3, 4)  # 0.3*10 is 2.9999999999999996 in floats: still 3


def test_spec_round_trips_through_dict():
    spec = PruneSpec(method="sparsegpt", pattern="three_tier", ratios=(0.2, 0.3, 0.5), tier_scope="layer")
    assert PruneSpec.from_dict(spec.to_dict()) == spec
