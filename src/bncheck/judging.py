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
    eps_placement: str = "inside_sqrt"
    others: dict[str, "Expected"] = field(default_factory=dict)  # the same case under another eps placement
    case: Case | None = None
    inputs: Inputs | None = None

    def for_conventions(self, conventions: Conventions) -> "Expected":
        """The expected values under the eps placement `conventions` declares (computed on first use, then kept)."""
        placement = str(conventions.eps_placement)
        if placement == self.eps_placement:
            return self
        if placement not in self.others:
            if self.case is None or self.inputs is None:
                raise ValueError("these expected values do not know their case: call expected_values(case, inputs)")
            self.others[placement] = expected_values(self.case, self.inputs, placement)
        return self.others[placement]


def expected_values(case: Case, inputs: Inputs, eps_placement: str = "inside_sqrt") -> Expected:
    """References and bounds for both running-variance conventions; shared when the convention cannot matter.

    `eps_placement`: where eps enters the normalisation (a target's declared placement; see Expected.for_conventions).
    """
    refs = compute_references(case, inputs, eps_placement)
    names = list(refs)
    keep = {"eps_placement": eps_placement, "case": case, "inputs": inputs}
    if not convention_matters(case):
        shared = compute_bounds(case, inputs, refs[names[0]])
        return Expected(refs, {c: shared for c in names}, frozenset(), **keep)
    first_bounds = compute_bounds(case, inputs, refs[names[0]])
    bounds = {c: first_bounds if c == names[0] else compute_bounds(case, inputs, r, reuse=first_bounds)
              for c, r in refs.items()}
    first, *others = (refs[c].values for c in names)
    dependent = frozenset(
        k for k, v in first.items()
        if any(k in o and not np.array_equal(o[k], v, equal_nan=True) for o in others)
    )
    return Expected(refs, bounds, dependent, **keep)


def judge_execution(case: Case, inputs: Inputs, observation: Observation, conventions: Conventions, family: str,
                    expected: Expected | None = None) -> tuple[list[Verdict], Diagnosis | None]:
    """Verdicts for every observed quantity and, when something deviates, the diagnosis."""
    expected = (expected or expected_values(case, inputs)).for_conventions(conventions)
    verdicts = compare(case, observation, expected.references, expected.bounds, conventions, expected.dependent,
                       plans=expected.plans)
    if all(v.passed for v in verdicts):
        return verdicts, None
    return verdicts, diagnose(case, inputs, observation, expected.references, conventions, verdicts, family,
                              bounds=expected.bounds, memo=expected.hypotheses)
