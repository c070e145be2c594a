"""compare() judges finite quantities together on flat arrays; its verdicts must equal judge()'s, key by key.

judge() is the definition of a verdict. The spec below is compare() as it was before the bulk path: one
judge() per observed quantity, plus one per other running-variance convention for quantities that depend
on it. Observations are built from the shipped suites' references with errors of every size, NaN and Inf
patterns, wrong shapes, missing and extra quantities.
"""

from __future__ import annotations

import numpy as np
import pytest

from bncheck.cases import load_cases
from bncheck.compare import Verdict, compare, judge
from bncheck.dtypes import round_as_float64
from bncheck.inputs import make_inputs
from bncheck.judging import expected_values
from bncheck.reference import RUNNING_VAR_CONVENTIONS, phase_of
from bncheck.targets.base import Conventions
from bncheck.tolerance import output_dtype


def compare_one_by_one(case, observation, references, bounds, conventions, dependent) -> list[Verdict]:
    """The specification: judge() per quantity, and per other convention for convention-dependent ones."""
    declared = conventions.running_var
    ref = references[declared]
    phases = case.phases
    out = []
    for key in sorted(observation, key=lambda k: (phases.index(phase_of(k)) if phase_of(k) in phases else 99, k)):
        if key not in ref.values:
            continue
        v = judge(case, key, observation[key], ref.values[key], bounds[declared][key])
        if key in dependent:
            v.convention = declared
            for c in RUNNING_VAR_CONVENTIONS:
                if c in references and (v.passed if c == declared else
                                        judge(case, key, observation[key], references[c].values[key], bounds[c][key]).passed):
                    v.matches.append(c)
            if not v.passed and v.matches:
                v.note = (v.note + "; " if v.note else "") + f"matches the {'/'.join(v.matches)} running-variance convention instead of the declared {declared}"
        out.append(v)
    return out


def observations(case, expected, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """Observations of every kind: exact, within and beyond the bounds, non-finite, misshapen, partial, extra keys."""
    ref = expected.references["unbiased"].values
    bounds = expected.bounds["unbiased"]
    exact = {k: round_as_float64(v, output_dtype(case, k.split(".", 1)[1])) for k, v in ref.items()}
    out = [exact]
    for scale in (0.5, 3.0, 1e6):  # errors of about half, three times and a million times the bound
        with np.errstate(invalid="ignore"):  # inf bounds and NaN references stay as they are
            out.append({k: v + scale * np.broadcast_to(bounds[k], v.shape) * rng.uniform(-1, 1, v.shape) for k, v in ref.items()})
    biased = {k: round_as_float64(v, output_dtype(case, k.split(".", 1)[1]))
              for k, v in expected.references["biased"].values.items()}
    out.append(biased)
    odd = {k: v.copy() for k, v in exact.items()}
    keys = sorted(odd)
    for i, k in enumerate(keys):
        flat = odd[k].reshape(-1)
        if i % 4 == 0:
            flat[rng.integers(flat.size)] = np.nan
        elif i % 4 == 1:
            flat[rng.integers(flat.size)] = -np.inf
        elif i % 4 == 2:
            odd[k] = odd[k].reshape(-1)[:-1] if flat.size > 1 else np.zeros((2, 2))
    odd["train0.unknown"] = np.zeros(3)
    out.append(odd)
    out.append({k: v for i, (k, v) in enumerate(sorted(exact.items())) if i % 2})  # half the quantities
    return out


SUITES = ["smoke", "default", "hazards", "trajectories"]


@pytest.mark.parametrize("suite", SUITES)
def test_bulk_verdicts_equal_judge_key_by_key(suite: str) -> None:
    """Every verdict compare() gives equals the spec's, field by field (the JSON-ready form, so NaN compares)."""
    rng = np.random.default_rng(7)
    checked = deviating = nonfinite = 0
    for case in load_cases([suite]):
        inputs = make_inputs(case)
        expected = expected_values(case, inputs)
        for obs in observations(case, expected, rng):
            for declared in RUNNING_VAR_CONVENTIONS:
                conventions = Conventions(momentum="new", running_var=declared)
                want = compare_one_by_one(case, obs, expected.references, expected.bounds, conventions, expected.dependent)
                got = compare(case, obs, expected.references, expected.bounds, conventions, expected.dependent,
                              plans=expected.plans)
                assert [v.to_dict() for v in got] == [v.to_dict() for v in want], (case.case_id, declared)
                assert [v.ratio for v in got] == pytest.approx([v.ratio for v in want], nan_ok=True)
                checked += len(got)
                deviating += sum(not v.passed for v in got)
                nonfinite += sum(v.nonfinite_mismatch > 0 for v in got)
    assert checked > 100 and deviating > 10 and nonfinite > 10, (checked, deviating, nonfinite)


def test_plans_are_reused_per_case_and_key_set() -> None:
    """A plan is built once per declared convention of a case; each observed key set adds only its gather indices."""
    case = load_cases(["smoke"])[0]
    inputs = make_inputs(case)
    expected = expected_values(case, inputs)
    obs = {k: v.copy() for k, v in expected.references["unbiased"].values.items()}
    conventions = Conventions(momentum="new", running_var="unbiased")
    first = compare(case, obs, expected.references, expected.bounds, conventions, expected.dependent, plans=expected.plans)
    assert len(expected.plans) == 1
    again = compare(case, obs, expected.references, expected.bounds, conventions, expected.dependent, plans=expected.plans)
    assert len(expected.plans) == 1
    assert [v.to_dict() for v in again] == [v.to_dict() for v in first]
    compare(case, dict(list(obs.items())[:2]), expected.references, expected.bounds, conventions, expected.dependent,
            plans=expected.plans)
    assert len(expected.plans) == 1 and len(expected.plans["unbiased"].subsets) == 2
