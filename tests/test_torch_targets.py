"""PyTorch targets, run in-process: each agrees with the reference under its declared conventions."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from bncheck.cases import case_from_dict  # noqa: E402
from bncheck.compare import compare, missing_quantities  # noqa: E402
from bncheck.inputs import make_inputs  # noqa: E402
from bncheck.judging import expected_values  # noqa: E402
from bncheck.targets.torch_targets import TorchFunctional, TorchModule, TorchModuleChannelsLast  # noqa: E402

TARGETS = [TorchModule, TorchModuleChannelsLast, TorchFunctional]
CASES = [
    {"shape": [8, 4, 5, 5], "grad": True},
    {"shape": [8, 4, 5, 5], "grad": True, "layout": "channels_last"},
    {"shape": [16, 3], "grad": True},
    {"shape": [4, 3, 7], "grad": True, "dtype": "float16"},
    {"shape": [4, 3, 7], "grad": True, "dtype": "bfloat16"},
    {"shape": [4, 3, 4, 4, 4], "grad": True, "dtype": "float64", "mode": "trajectory", "steps": 3},
    {"shape": [8, 4, 5, 5], "grad": True, "mode": "eval"},
    {"shape": [8, 4, 5, 5], "grad": True, "mode": "trajectory", "steps": 3, "momentum": 0.3},
    {"shape": [8, 4, 5, 5], "grad": True, "affine": False, "track_running_stats": False, "mode": "trajectory", "steps": 2},
    {"shape": [8, 4, 5, 5], "grad": True, "dtype": "float16", "param_dtype": "float16"},
    {"shape": [8, 4, 5, 5], "grad": True, "regime": {"name": "offset", "x": {"dist": "normal", "loc": 1e4, "scale": 1.0}}},
]


def _verdicts(target, spec):
    case = case_from_dict(spec)
    inputs = make_inputs(case)
    expected = expected_values(case, inputs)
    refs, bounds = expected.references, expected.bounds
    obs = target.run(case, inputs)
    return case, obs, refs, compare(case, obs, refs, bounds, target.conventions)


@pytest.mark.parametrize("cls", TARGETS, ids=lambda c: c.family)
@pytest.mark.parametrize("spec", CASES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items() if k != "regime"))
def test_torch_target_agrees_with_reference(cls, spec):
    """Every observed quantity is within its bound, and the declared quantities are all observed."""
    target = cls("cpu")
    case = case_from_dict(spec)
    if target.supports(case):
        pytest.skip(target.supports(case))
    case, obs, refs, verdicts = _verdicts(target, spec)
    bad = [(v.key, v.ratio, v.note) for v in verdicts if not v.passed]
    assert not bad
    assert not missing_quantities(obs, refs["unbiased"], target.conventions)
    assert f"{case.phases[0]}.y" in obs


def test_running_variance_follows_the_unbiased_convention():
    """torch's running_var matches the unbiased update and not the biased one."""
    _, _, _, verdicts = _verdicts(TorchModule("cpu"), {"shape": [4, 3, 2]})
    rv = next(v for v in verdicts if v.key == "train0.running_var")
    assert rv.passed and rv.matches == ["unbiased"]


def test_batch_statistics_are_observed_from_the_kernel():
    """The saved mean and inverse std of the native kernel are reported in training."""
    _, obs, _, verdicts = _verdicts(TorchFunctional("cpu"), {"shape": [8, 4, 5, 5]})
    assert {"train0.batch_mean", "train0.batch_invstd"} <= set(obs)
    assert all(v.passed for v in verdicts if v.quantity.startswith("batch_"))


def test_inputs_are_not_mutated():
    """Running a target leaves the input arrays untouched (torch updates running statistics in place)."""
    case = case_from_dict({"shape": [8, 4, 5], "mode": "trajectory", "steps": 2})
    inputs = make_inputs(case)
    before = {k: v.copy() for k, v in inputs.items()}
    TorchFunctional("cpu").run(case, inputs)
    assert all((inputs[k] == before[k]).all() for k in inputs)


@pytest.mark.parametrize("cls, spec, words", [
    (TorchModuleChannelsLast, {"shape": [8, 4, 5]}, "rank 3"),
    (TorchModule, {"shape": [8, 4, 5], "dtype": "float32", "param_dtype": "float16"}, "not accepted"),
])
def test_unsupported_cases_say_why(cls, spec, words):
    """Cases the torch adapters cannot express are rejected in the parent with a reason."""
    reason = cls("cpu").supports(case_from_dict(spec))
    assert reason and words in reason


@pytest.mark.parametrize("spec, condition", [
    ({"shape": [8, 4, 5], "eps": 0.0}, "eps-zero-in-training"),
    ({"shape": [1, 6]}, "one-value-per-channel-in-training"),
    ({"shape": [1, 6, 1], "track_running_stats": False, "mode": "eval"}, "one-value-per-channel-in-training"),
])
@pytest.mark.parametrize("cls", TARGETS)
def test_documented_refusals_are_run_and_recorded_as_refused(cls, spec, condition):
    """eps = 0 and one value per channel are not predicted: torch runs them, raises, and the error its record
    documents becomes 'refused' with torch's own message."""
    from bncheck.refusals import classify, matching_refusal

    case = case_from_dict(spec)
    target = cls("cpu")
    if target.supports(case):
        pytest.skip(target.supports(case))
    with pytest.raises(ValueError) as raised:
        target.run(case, make_inputs(case))
    message = f"ValueError: {raised.value}"
    refusal = matching_refusal(case, cls.conventions, message)
    assert refusal is not None and refusal.condition == condition
    assert classify(case, cls.conventions, "error", message) == ("refused", message)
    assert classify(case, cls.conventions, "error", "RuntimeError: something else") == ("error", "RuntimeError: something else")


def test_eval_with_eps_zero_runs():
    """eps = 0 is refused by torch only in training: eval with running statistics runs, and is judged."""
    case = case_from_dict({"shape": [8, 4, 5], "eps": 0.0, "mode": "eval"})
    assert TorchModule("cpu").supports(case) is None
    obs = TorchModule("cpu").run(case, make_inputs(case))
    assert "eval.y" in obs
