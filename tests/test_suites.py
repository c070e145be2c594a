"""The shipped suites: valid, reproducible from their definitions, and covering what the audit promises."""

from __future__ import annotations

from bncheck.cases import load_case_file, resolve_case_source
from bncheck.generate import SUITES


def test_shipped_suites_match_their_definitions():
    """The shipped suites (src/bncheck/suites/*.jsonl) are exactly what bncheck.generate produces (regenerate with
    `bncheck generate suites`)."""
    for name, build in SUITES.items():
        shipped = [c.case_id for c in load_case_file(resolve_case_source(name))]
        assert shipped == [c.case_id for c in build()], f"suites/{name}.jsonl is stale"


def test_default_suite_covers_the_case_space():
    """The audit suite spans every rank, dtype, mode, layout and flag."""
    cases = load_case_file(resolve_case_source("default"))
    assert {len(c.shape) for c in cases} == {2, 3, 4, 5}
    assert {c.dtype for c in cases} == {"float16", "bfloat16", "float32", "float64"}
    assert {c.mode for c in cases} == {"train", "eval", "trajectory"}
    assert {c.layout for c in cases} == {"channels_first", "channels_last"}
    assert any(not c.affine for c in cases) and any(not c.track_running_stats for c in cases)
    assert any(c.grad for c in cases) and len({c.regime_name for c in cases}) >= 5
    assert {0.0, 1.0} <= {c.momentum for c in cases} and 0.0 in {c.eps for c in cases}


def test_smoke_suite_is_small():
    """The CI suite stays small."""
    assert len(load_case_file(resolve_case_source("smoke"))) <= 20
