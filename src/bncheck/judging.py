"""Judge executions of a case: its expected values under each running-variance convention (computed once), verdicts, diagnosis."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cases import Case
from .compare import Verdict, compare
from .diagnose import Diagnosis, HypothesisMemo, diagnose
from .inputs import Inputs
from .reference import Reference, compute_references, convention_matters
from .targets.base import Conventions, Observation
from .tolerance import compute_bounds


@dataclass
class Expected:
    """What one case is judged against: the reference and its error bounds under each running-variance convention."""

    references: dict[str, Reference]
    bounds: dict[str, dict[str, np.ndarray]]
    dependent: frozenset[str]  # keys whose reference value differs between the conventions
    plans: dict[Any, Any] = field(default_factory=dict)  # compare()'s flattened reference, per declared convention
    hypotheses: HypothesisMemo = field(default_factory=HypothesisMemo)  # diagnose()'s, shared by the case's targets


def expected_values(case: Case, inputs: Inputs) -> Expected:
    """References and bounds for both running-variance conventions; shared when the convention cannot matter."""
    refs = compute_references(case, inputs)
    names = list(refs)
    if not convention_matters(case):
        shared = compute_bounds(case, inputs, refs[names[0]])
        return Expected(refs, {c: shared for c in names}, frozenset())
    first_bounds = compute_bounds(case, inputs, refs[names[0]])
    bounds = {c: first_bounds if c == names[0] else compute_bounds(case, inputs, r, reuse=first_bounds)
              for c, r in refs.items()}
    first, *others = (refs[c].values for c in names)
    dependent = frozenset(
        k for k, v in first.items()
        if any(k in o and not np.array_equal(o[k], v, equal_nan=True) for o in others)
    )
    return Expected(refs, bounds, dependent)


def judge_execution(case: Case, inputs: Inputs, observation: Observation, conventions: Conventions, family: str,
                    expected: Expected | None = None) -> tuple[list[Verdict], Diagnosis | None]:
    """Verdicts for every observed quantity and, when something deviates, the diagnosis."""
    expected = expected or expected_values(case, inputs)
    verdicts = compare(case, observation, expected.references, expected.bounds, conventions, expected.dependent,
                       plans=expected.plans)
    if all(v.passed for v in verdicts):
        return verdicts, None
    return verdicts, diagnose(case, inputs, observation, expected.references, conventions, verdicts, family,
                              bounds=expected.bounds, memo=expected.hypotheses)
