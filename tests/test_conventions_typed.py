"""The conventions record is data the oracle reads: change one typed field, and judging or classification follows.

Each test takes one emulated kernel (tests/test_bounds.Kernel) and diagnoses it under two records that differ
in exactly one field; the verdict, the class or `documented` changes with that field alone. Prose in a typed
field is refused with one line that names the field.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from bncheck.targets import family_class, family_names
from bncheck.targets.base import (Accumulation, BesselRule, Conventions, Elementwise, EpsPlacement, ParameterPrecision,
                                  RunningVar, StatisticsDtype, Subnormals, Summation, VarianceAlgorithm)
from test_bounds import Kernel, mk
from test_diagnose import (EPS_OUTSIDE, F64_TRAJ, N1_TRAIN, TRAIN_EPS3, TRAJ, constant_channel, float32_params_new_form,
                           offset, run_diagnosis, spread)

BASE = Conventions(momentum="new", running_var="unbiased")


def with_field(**change: Any) -> Conventions:
    """BASE with one field changed."""
    return dataclasses.replace(BASE, **change)


def outcome(case: Any, observe: Any, conventions: Conventions, drop: tuple[str, ...] = ()) -> tuple[Any, ...]:
    """(hypothesis, classification, documented) of a diagnosis, or None when nothing deviates."""
    d = run_diagnosis(case, observe, conventions, drop)
    return None if d is None else (d.hypothesis, d.classification, d.documented)


# (field, kernel's case, kernel, the value that declares the kernel's behaviour, the one that does not,
#  outcome under the first, outcome under the second)
MUTATIONS = [
    pytest.param("parameter_precision", F64_TRAJ, Kernel(acc=np.float64, float32_eps=True, float32_momentum=True), (),
                 {"momentum": "old", "parameter_precision": ParameterPrecision.FLOAT32_ATTRIBUTES},
                 {"momentum": "old", "parameter_precision": ParameterPrecision.FLOAT64},
                 ("params-float32", "convention", True), ("params-float32", "suspected-bug", False), id="parameter_precision"),
    pytest.param("parameter_precision (input dtype of a float64 case: float64 constants)", F64_TRAJ, float32_params_new_form, (),
                 {"parameter_precision": ParameterPrecision.FLOAT32_ATTRIBUTES},
                 {"parameter_precision": ParameterPrecision.INPUT_DTYPE},
                 ("params-float32", "convention", True), ("params-float32", "suspected-bug", False), id="parameter_precision-input-dtype"),
    pytest.param("bessel", N1_TRAIN, Kernel(), ("batch_var_unbiased",), {"bessel": BesselRule.CLAMPED},
                 {"bessel": BesselRule.N_MINUS_1},
                 ("bessel-clamped", "convention", True), ("bessel-clamped", "suspected-bug", False), id="bessel"),
    pytest.param("eps_placement", TRAIN_EPS3, Kernel(eps_placement="outside"), (), {"eps_placement": EpsPlacement.OUTSIDE},
                 {"eps_placement": EpsPlacement.INSIDE}, None, ("eps-outside-sqrt", "suspected-bug", False), id="eps_placement"),
    pytest.param("eps_placement (the other way)", TRAIN_EPS3, Kernel(), (), {"eps_placement": EpsPlacement.INSIDE},
                 {"eps_placement": EpsPlacement.OUTSIDE}, None, ("eps-inside-sqrt", "suspected-bug", False), id="eps_placement-inside"),
    pytest.param("running_var", TRAJ, Kernel(running_var="biased"), (), {"running_var": RunningVar.BIASED},
                 {"running_var": RunningVar.UNBIASED}, None, ("running-var-biased", "suspected-bug", False), id="running_var"),
    pytest.param("variance_algorithm", offset(1e3), Kernel(variance="one-pass"), (),
                 {"variance_algorithm": VarianceAlgorithm.ONE_PASS}, {"variance_algorithm": VarianceAlgorithm.TWO_PASS},
                 ("one-pass-variance", "precision", True), ("one-pass-variance", "precision", False), id="variance_algorithm"),
    pytest.param("variance_algorithm (clamped)", constant_channel(2.3), Kernel(variance="one-pass-clamped", reciprocal=True), (),
                 {"variance_algorithm": VarianceAlgorithm.ONE_PASS_CLAMPED}, {"variance_algorithm": VarianceAlgorithm.TWO_PASS},
                 ("constant-channel-cancellation", "precision", True), ("constant-channel-cancellation", "precision", False),
                 id="variance_algorithm-clamped"),
    # a record that declares an unclamped one-pass variance: that model explains too, and a declared model comes first
    pytest.param("variance_algorithm (unclamped)", constant_channel(2.3), Kernel(variance="one-pass-clamped", reciprocal=True), (),
                 {"variance_algorithm": VarianceAlgorithm.ONE_PASS}, {"variance_algorithm": VarianceAlgorithm.TWO_PASS},
                 ("one-pass-variance", "precision", True), ("constant-channel-cancellation", "precision", False),
                 id="variance_algorithm-unclamped"),
    pytest.param("accumulation", mk([8, 6, 6, 6], dtype="float64", grad=True), Kernel(acc=np.float32), (),
                 {"accumulation": Accumulation.FLOAT32}, {"accumulation": Accumulation.FLOAT32_OR_WIDER},
                 ("float32-computation", "precision", True), ("float32-computation", "precision", False), id="accumulation"),
    # the format the case must fit: a float32 variance of 4e38 is out of range only where float32 is declared
    pytest.param("accumulation (range)", spread("spread2e19", 2e19), Kernel(), (),
                 {"accumulation": Accumulation.FLOAT32_OR_WIDER}, {"accumulation": Accumulation.FLOAT64},
                 ("variance-overflow", "out-of-range", True), ("unexplained", "suspected-bug", False), id="accumulation-range"),
    pytest.param("summation", mk([16, 2, 64, 64], regime={"name": "offset1e4", "x": {"dist": "normal", "loc": 1e4, "scale": 1.0}}),
                 Kernel(summation="sequential"), (), {"summation": Summation.SEQUENTIAL}, {"summation": Summation.PAIRWISE},
                 ("sequential-accumulation", "precision", True), ("sequential-accumulation", "precision", False), id="summation"),
    pytest.param("subnormals", spread("subnormal", 1e-39, eps=1e-30), Kernel(ftz=True), (),
                 {"subnormals": Subnormals.FLUSHED}, {"subnormals": Subnormals.PRESERVED},
                 ("subnormals-flushed", "precision", True), ("subnormals-flushed", "precision", False), id="subnormals"),
    pytest.param("statistics_dtype", mk([8, 6, 6, 6], dtype="float16", param_dtype="float32", grad=True),
                 Kernel(stats_dtype=np.float16), (), {"statistics_dtype": StatisticsDtype.INPUT},
                 {"statistics_dtype": StatisticsDtype.PARAMETER},
                 ("half-precision-statistics", "precision", True), ("half-precision-statistics", "precision", False),
                 id="statistics_dtype"),
    pytest.param("elementwise", mk([8, 6, 6, 6], dtype="float16", grad=True), Kernel(ew_dtype=np.float16), (),
                 {"elementwise": Elementwise.INPUT_DTYPE}, {"elementwise": Elementwise.ACCUMULATION},
                 ("elementwise-input-dtype", "precision", True), ("elementwise-input-dtype", "precision", False), id="elementwise"),
]


@pytest.mark.parametrize("field, case, kernel, drop, declares, other, expected, otherwise", MUTATIONS)
def test_classification_follows_the_field(field: str, case: Any, kernel: Any, drop: tuple[str, ...], declares: dict[str, Any],
                                          other: dict[str, Any], expected: Any, otherwise: Any) -> None:
    """The same kernel under two records that differ in one field: the outcome follows the field."""
    assert outcome(case, kernel, with_field(**declares), drop) == expected
    assert outcome(case, kernel, with_field(**other), drop) == otherwise


def test_eps_outside_is_judged_with_eps_outside() -> None:
    """A correct kernel with eps outside the root deviates under an 'inside' record and passes under 'outside':
    judging computes the reference (training, eval, running statistics, gradients) with the declared placement."""
    for case in (TRAIN_EPS3, mk([8, 6, 6, 6], eps=1e-3, grad=True, mode="trajectory", steps=2)):
        assert run_diagnosis(case, Kernel(eps_placement="outside"), EPS_OUTSIDE) is None
        assert run_diagnosis(case, Kernel(eps_placement="outside"), BASE) is not None


@pytest.mark.parametrize("field, value", [
    ("parameter_precision", "eps and momentum reach the kernel as float32"),
    ("variance_algorithm", "one-pass E[x^2]-E[x]^2"),
    ("momentum", "newest"),
    ("accumulation", "float32 for float16/bfloat16 inputs"),
])
def test_prose_in_a_typed_field_is_refused_in_one_line(field: str, value: str) -> None:
    """A record that writes prose where a typed value goes fails at once, naming the field and the choices."""
    with pytest.raises(ValueError) as e:
        Conventions(**{"momentum": "new", "running_var": "unbiased", field: value})
    text = str(e.value)
    assert f"conventions.{field}" in text and "\n" not in text and "notes" in text


def test_gradients_and_momentum_defaults_are_checked_against_the_quantities() -> None:
    """`gradients` follows the observed quantities when unset and must agree when set; a record without a
    running update (default_momentum None) cannot observe running statistics."""
    assert Conventions(momentum="new", running_var="unbiased", quantities=("y",)).gradients is False
    with pytest.raises(ValueError, match="conventions.gradients"):
        Conventions(momentum="new", running_var="unbiased", quantities=("y", "dx"), gradients=False)
    with pytest.raises(ValueError, match="default_momentum"):
        Conventions(momentum="new", running_var="unbiased", default_momentum=None, quantities=("y", "running_var"))


@pytest.mark.parametrize("family", family_names())
def test_every_shipped_record_round_trips_through_its_stored_form(family: str) -> None:
    """Every adapter's record is typed (no prose in a typed field), serialises to plain strings and reads back equal."""
    import json

    cv = family_class(family).conventions
    d = json.loads(json.dumps(cv.to_dict()))
    assert Conventions.from_dict(d) == cv
    assert all(isinstance(d[k], str) for k in ("momentum", "running_var", "eps_placement", "variance_algorithm",
                                                "accumulation", "parameter_precision", "bessel", "summation"))
