"""onnx.reference targets, run in-process against the float64 reference: the experiments their conventions cite."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnx.reference")

from bncheck.cases import case_from_dict  # noqa: E402
from bncheck.inputs import make_inputs  # noqa: E402
from bncheck.reference import compute_reference  # noqa: E402
from bncheck.targets.onnx_reference_targets import (  # noqa: E402
    OnnxReferenceOpset9, OnnxReferenceOpset14, OnnxReferenceOpset15, probe)


def _run(target, d):
    case = case_from_dict(d)
    assert target.supports(case) is None, target.supports(case)
    inputs = make_inputs(case)
    return case, inputs, target.run(case, inputs)


@pytest.mark.parametrize("cls", [OnnxReferenceOpset15, OnnxReferenceOpset14])
def test_training_follows_the_biased_variance_and_old_form_momentum(cls):
    """float32 trajectory: y and running statistics match the biased-convention reference at float32 rounding,
    and the running variance is far from the unbiased one (n = 8 per channel)."""
    case, inputs, out = _run(cls(), {"shape": [4, 3, 2], "mode": "trajectory", "steps": 2, "momentum": 0.3})
    biased = compute_reference(case, inputs, running_var="biased").values
    unbiased = compute_reference(case, inputs, running_var="unbiased").values
    assert set(out) == {"train0.y", "train0.running_mean", "train0.running_var", "train1.y", "train1.running_mean",
                        "train1.running_var", "eval.y"}
    for k, v in out.items():
        np.testing.assert_allclose(v, biased[k], rtol=1e-5, atol=1e-5, err_msg=k)
    assert not np.allclose(out["train0.running_var"], unbiased["train0.running_var"], rtol=1e-3, atol=1e-3)


def test_float64_running_statistics_carry_the_float32_momentum():
    """float64: y at float64 rounding, running statistics off by ~1e-8 (float32(0.9) = 0.89999997615...)."""
    case, inputs, out = _run(OnnxReferenceOpset15(), {"shape": [8, 4, 5, 5], "dtype": "float64", "mode": "trajectory"})
    ref = compute_reference(case, inputs, running_var="biased").values
    assert np.max(np.abs(out["train0.y"] - ref["train0.y"])) < 1e-11
    err = np.max(np.abs(out["train0.running_mean"] - ref["train0.running_mean"]))
    assert 1e-10 < err < 1e-6, err  # measured 1.3e-8


def test_opset9_inference_normalises_with_blended_statistics():
    """The evaluator's BatchNormalization_9 with a momentum attribute normalises with m * given + (1 - m) * batch
    statistics instead of the given ones (the specification's inference): shown against both formulas."""
    case, inputs, out = _run(OnnxReferenceOpset9(), {"shape": [8, 4, 5], "mode": "eval", "dtype": "float64",
                                                     "param_dtype": "float64"})
    x, m = inputs["eval.x"].astype(np.float64), np.float64(np.float32(0.9))
    g, b = inputs["gamma"][None, :, None], inputs["beta"][None, :, None]
    mean = m * inputs["running_mean"] + (1 - m) * x.mean(axis=(0, 2))
    var = m * inputs["running_var"] + (1 - m) * x.var(axis=(0, 2))
    eps = np.float64(np.float32(case.eps))
    blended = g * (x - mean[None, :, None]) / np.sqrt(var[None, :, None] + eps) + b
    np.testing.assert_allclose(out["eval.y"], blended, rtol=1e-12, atol=1e-12)
    specified = compute_reference(case, inputs, running_var="biased").values["eval.y"]
    assert np.max(np.abs(out["eval.y"] - specified)) > 1e-3


def test_opset9_refuses_training_and_opset14_mixed_dtypes():
    assert "train" in OnnxReferenceOpset9().supports(case_from_dict({"shape": [4, 3, 5]}))
    reason = OnnxReferenceOpset14().supports(case_from_dict({"shape": [4, 3, 5], "dtype": "float16"}))
    assert reason and "float16" in reason


def test_probe_reports_onnx_on_cpu():
    info = probe()
    assert info["version"] and info["devices"] == ["cpu"]
