"""Every registered pattern reaches every surface from its one entry (engine/patterns/registry.py): its parameters
are spec fields and CLI flags with their help, its --sparsity_type round-trips, its records read back, Explore moves it
along its axis. The form (tests/test_app.py) and the labels of the runs table, Past runs and the run pickers
(tests/test_figures.py) are checked for every pattern beside their own tests."""
from __future__ import annotations

import dataclasses

import pytest

from components.explore_session import replan_params, split_spec
from engine.cli.prune_cli import build_parser, spec_from_args
from engine.patterns.registry import PATTERNS, pattern_params
from engine.spec import PruneSpec, parse_sparsity_type, spec_label


def default_spec(name: str) -> PruneSpec:
    return PruneSpec(method="magnitude", pattern=name)


def sparsity_type(spec: PruneSpec) -> str:
    return spec.sparsity_type


@pytest.mark.parametrize("name", list(PATTERNS))
def test_each_parameter_is_a_spec_field_and_a_cli_flag_with_its_help(name):
    fields = {f.name: f for f in dataclasses.fields(PruneSpec)}
    help_text = " ".join(build_parser().format_help().split())
    for param in PATTERNS[name].params:
        assert fields[param.name].default == param.default
        if param.flag is not None:
            flag = param.flag or f"--{param.name}"
            assert flag in help_text
            assert " ".join(param.help.split())[:40] in help_text


@pytest.mark.parametrize("name", list(PATTERNS))
def test_the_cli_builds_the_pattern_from_its_sparsity_type_and_flags(name):
    spec = default_spec(name)
    args = build_parser().parse_args(["--prune_method", "magnitude", "--sparsity_type", spec.sparsity_type])
    assert parse_sparsity_type(spec.sparsity_type)["pattern"] == name
    assert spec_from_args(args) == spec


@pytest.mark.parametrize("name", list(PATTERNS))
def test_a_record_of_the_pattern_reads_back_with_its_label(name):
    spec = default_spec(name)
    record_spec = spec.to_dict()
    assert PruneSpec.from_dict(record_spec) == spec
    assert spec_label(record_spec) == spec.label() and spec.label().startswith("magnitude ")
    assert set(PATTERNS[name].fields) <= set(spec.canonical())
    others = set(pattern_params()) - set(PATTERNS[name].fields)
    assert not others & set(spec.canonical())  # another pattern's parameters never split a cache key


@pytest.mark.parametrize("name", list(PATTERNS))
def test_explore_moves_the_pattern_along_its_axis(name):
    pattern, spec = PATTERNS[name], default_spec(name)
    point = pattern.point(spec)
    assert len(point) == len(pattern.axis)
    replan = {n: getattr(spec, n) for n in replan_params()}
    dense, two_four = (point[0], point[1]) if len(point) == 3 else (0.0, 0.0)
    sparsity = point[0] if len(point) == 1 else 0.0
    assert split_spec(spec, dense, two_four, sparsity, replan) == spec
    bits = pattern.storage_bits(spec, [64, 128], 4096, 16)
    assert bits > 0 or pattern.blocks
