"""judging.expected_values shares work between the running-variance conventions; the result must not change.

compute_bounds(reuse=...) takes the bounds of batch-statistics phases from the other convention; they must
equal, bit for bit, the bounds computed for each convention on its own, on every shipped suite.
"""

from __future__ import annotations

import numpy as np
import pytest

from bncheck.cases import load_cases
from bncheck.inputs import make_inputs
from bncheck.judging import expected_values
from bncheck.tolerance import compute_bounds


@pytest.mark.parametrize("suite", ["smoke", "default", "hazards", "trajectories", "onnx-conformance"])
def test_shared_bounds_equal_bounds_per_convention(suite: str) -> None:
    """Every bound array of expected_values equals compute_bounds for its convention alone (NaN and Inf included)."""
    compared = 0
    cases = load_cases([suite])
    for case in cases:
        inputs = make_inputs(case)
        e = expected_values(case, inputs)
        for convention, ref in e.references.items():
            alone = compute_bounds(case, inputs, ref)
            assert sorted(alone) == sorted(e.bounds[convention]), case.case_id
            for k, v in alone.items():
                got = e.bounds[convention][k]
                assert got.shape == v.shape and np.array_equal(got, v, equal_nan=True), (case.case_id, convention, k)
                compared += 1
    assert compared > len(cases)
