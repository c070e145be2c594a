"""Keras 2 (tf_keras) BatchNormalization, fused=True and fused=False, each run in the tf-keras worker.

tf.keras is Keras 2 only in a process that set TF_USE_LEGACY_KERAS before importing tensorflow, so every case runs
in a `bncheck.worker` of the tf-keras group (started as the pool starts it) and is judged here; this process
imports no framework. Skipped when tensorflow or tf-keras is not installed (package metadata).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bncheck.cases import Case, case_from_dict
from bncheck.compare import Verdict, compare, missing_quantities
from bncheck.diagnose import diagnose
from bncheck.inputs import make_inputs
from bncheck.judging import expected_values
from bncheck.pool import WorkerHandle
from bncheck.targets import family_class, framework_status, frameworks

SRC = Path(__file__).resolve().parents[1] / "src"
TIMEOUT = 180.0
FAMILIES = ["tf_keras.fused", "tf_keras.unfused"]
CASES: list[dict[str, Any]] = [
    {"shape": [8, 4, 5, 5], "grad": True},
    {"shape": [8, 4, 5, 5], "grad": True, "layout": "channels_last", "mode": "trajectory", "steps": 2},
    {"shape": [16, 3], "grad": True, "mode": "trajectory", "steps": 2},
    {"shape": [2, 3, 2, 2, 2], "grad": True, "mode": "trajectory", "steps": 3, "momentum": 0.3},
    {"shape": [8, 4, 5, 5], "grad": True, "affine": False, "mode": "eval"},
    {"shape": [8, 4, 5, 5], "grad": True, "dtype": "float16"},
    {"shape": [8, 4, 5, 5], "grad": True, "dtype": "bfloat16", "param_dtype": "bfloat16", "layout": "channels_last"},
]


@pytest.fixture(scope="module")
def worker(workers: dict[str, WorkerHandle]) -> WorkerHandle:
    """The tf-keras worker, started with its framework record's environment (TF_USE_LEGACY_KERAS=1)."""
    fw = frameworks()["tf-keras"]
    installed, _, reason = framework_status(fw)
    if not installed:
        pytest.skip(reason)
    if "tf-keras" not in workers:
        workers["tf-keras"] = WorkerHandle("tf-keras", env=dict(fw.env))
    return workers["tf-keras"]


def _observe(worker: WorkerHandle, family: str, spec: dict[str, Any]) -> tuple[Case, dict[str, Any], Any, dict[str, Verdict]]:
    """Run a case in the worker; (case, observation, expected values, verdicts by key) judged here."""
    cls = family_class(family)
    case = case_from_dict(spec)
    inputs = make_inputs(case)
    out = worker.request({"op": "run", "family": family, "device": "cpu", "case": case.to_dict(), "inputs": inputs}, TIMEOUT)
    assert out.status == "ok", f"{out.status}: {out.message}\n{out.stderr_tail}"
    obs = out.reply["observation"]
    expected = expected_values(case, inputs)
    assert not missing_quantities(obs, expected.references[cls.conventions.running_var], cls.conventions)
    verdicts = compare(case, obs, expected.references, expected.bounds, cls.conventions)
    return case, obs, expected, {v.key: v for v in verdicts}


def test_the_worker_runs_keras_2(worker: WorkerHandle) -> None:
    """The tf-keras worker's tf.keras is tf_keras 2.x (its BatchNormalization from tf_keras.src), observed by running."""
    out = worker.request({"op": "probe"}, TIMEOUT)
    assert out.status == "ok", out.message
    probe = out.reply["probe"]
    assert probe["version"].startswith("2.")
    assert probe["details"]["batch_normalization"].startswith("tf_keras.src.")
    assert probe["details"]["tf.keras"] == "tf_keras.api._v2.keras"


@pytest.mark.parametrize("spec", CASES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("family", FAMILIES)
def test_keras_2_agrees_with_reference(worker: WorkerHandle, family: str, spec: dict[str, Any]) -> None:
    """Every observed quantity is within its bound under the declared conventions."""
    reason = family_class(family)("cpu").supports(case_from_dict(spec))
    if reason:
        pytest.skip(reason)
    _, _, _, verdicts = _observe(worker, family, spec)
    assert not [(k, v.ratio) for k, v in verdicts.items() if not v.passed]


def test_fused_and_unfused_disagree_on_the_running_variance(worker: WorkerHandle) -> None:
    """fused=True feeds FusedBatchNormV3's Bessel-corrected variance to the moving variance, fused=False the biased
    one: with n = 8 values per channel the two differ by 8/7, and each matches only its declared convention."""
    spec = {"shape": [2, 3, 2, 2], "mode": "trajectory", "steps": 2}
    _, fused, _, fv = _observe(worker, "tf_keras.fused", spec)
    _, unfused, _, uv = _observe(worker, "tf_keras.unfused", spec)
    assert fv["train0.running_var"].matches == ["unbiased"] and uv["train0.running_var"].matches == ["biased"]
    assert fv["train0.y"].passed and uv["train0.y"].passed  # both normalise with the biased variance
    assert not (abs(fused["train0.running_var"] - unfused["train0.running_var"]) < 1e-3).all()


def test_unfused_float64_updates_with_a_float32_momentum(worker: WorkerHandle) -> None:
    """REAL: fused=False in float64 converts 1 - momentum to a float32 tensor before casting it to float64, so the
    moving mean is updated with the weight 0.10000000149 for 0.1: far outside the float64 bound (ratio ~1e6,
    measured) while y passes. The oracle explains it (residual <= 1) by its float32-computation hypothesis: its
    params-float32 hypothesis rounds the old-form momentum (0.9), not the new-batch weight (0.1) Keras 2 rounds."""
    cls = family_class("tf_keras.unfused")
    spec = {"shape": [8, 4, 5, 5], "dtype": "float64"}
    case, obs, expected, verdicts = _observe(worker, "tf_keras.unfused", spec)
    assert not verdicts["train0.running_mean"].passed and verdicts["train0.running_mean"].ratio > 1e3
    assert verdicts["train0.y"].passed
    inputs = make_inputs(case)
    rm, mean = inputs["running_mean"], inputs["train0.x"].mean(axis=(0, 2, 3))
    w32 = float(np.float32(1.0 - (1.0 - case.momentum)))  # the decay tensor's float32 value, cast back
    got = obs["train0.running_mean"]
    assert np.abs(got - (rm - (rm - mean) * w32)).max() < 1e-14
    assert np.abs(got - ((1 - case.momentum) * rm + case.momentum * mean)).max() > 1e-10
    d = diagnose(case, inputs, obs, expected.references, cls.conventions, list(verdicts.values()), cls.family,
                 expected.bounds)
    assert d is not None and d.residual is not None and d.residual <= 1.0, d


_REFUSALS = """
from bncheck.cases import case_from_dict
from bncheck.inputs import make_inputs
from bncheck.targets.paths.tf_keras_bn import tf_keras_bn
for spec in ({"shape": [4, 3, 7]}, {"shape": [4, 3, 2, 2], "dtype": "float64"}):
    case = case_from_dict(spec)
    try:
        tf_keras_bn(case.to_dict(), make_inputs(case), list(case.phases), "cpu", {}, fused=True)
        print("RAN", spec)
    except ValueError as e:
        print("REFUSED", str(e).replace(chr(10), " "))
"""


def test_the_layer_itself_refuses_what_fused_supports_refuses(worker: WorkerHandle) -> None:
    """supports() refuses rank 3 and float64 for fused=True because the layer raises for them (run past supports)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    res = subprocess.run([sys.executable, "-c", _REFUSALS], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [line for line in res.stdout.splitlines() if line.startswith(("RAN", "REFUSED"))]
    assert len(lines) == 2 and all(line.startswith("REFUSED") for line in lines), lines
    assert "4D or 5D" in lines[0] and "float16, bfloat16, or float32" in lines[1]
    target = family_class("tf_keras.fused")("cpu")
    assert "4-D or 5-D" in target.supports(case_from_dict({"shape": [4, 3, 7]}))
    assert "float64" in target.supports(case_from_dict({"shape": [4, 3, 2, 2], "dtype": "float64"}))


def test_families_are_eager_keras_2_paths() -> None:
    """Both run in the tf-keras worker group, whose record sets TF_USE_LEGACY_KERAS; both cite their experiments."""
    env = dict(frameworks()["tf-keras"].env)
    assert env.get("TF_USE_LEGACY_KERAS") == "1"
    for family in FAMILIES:
        cls = family_class(family)
        assert cls.framework == "tf-keras" and cls.path_kind == "eager" and cls.source_family is None
        assert any("test_tf_keras_targets.py" in s for s in cls.conventions.sources)
    assert family_class("tf_keras.fused").conventions.running_var == "unbiased"
    assert family_class("tf_keras.unfused").conventions.running_var == "biased"
