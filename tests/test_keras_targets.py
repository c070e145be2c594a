"""Keras 3 BatchNormalization on the TensorFlow, JAX and PyTorch backends, each run in its real worker process.

Keras fixes its backend once per process (KERAS_BACKEND), so every backend runs in a `bncheck.worker`
started the way the pool starts it; the comparison with the reference happens here, in the parent, which
never imports keras or a backend. The module is skipped without keras (checked without importing it:
importing keras here would load its default backend in the parent and would skip the JAX and torch
backends wherever TensorFlow is absent); each backend is skipped when its framework is not installed.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("keras") is None:  # pytest.importorskip("keras") without importing it
    pytest.skip("could not import 'keras': No module named 'keras'", allow_module_level=True)

from bncheck.cases import Case, case_from_dict  # noqa: E402
from bncheck.compare import Verdict, compare, missing_quantities  # noqa: E402
from bncheck.inputs import make_inputs  # noqa: E402
from bncheck.pool import WorkerHandle  # noqa: E402
from bncheck.reference import RUNNING_VAR_CONVENTIONS, Reference, compute_reference  # noqa: E402
from bncheck.targets.keras_targets import KerasOnJax, KerasOnTensorflow, KerasOnTorch  # noqa: E402
from bncheck.tolerance import compute_bounds  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
TIMEOUT = 180.0
# backend -> (target class, worker framework, module that must be installed)
BACKENDS: dict[str, tuple[type, str, str]] = {
    "tensorflow": (KerasOnTensorflow, "tensorflow", "tensorflow"),
    "jax": (KerasOnJax, "keras-jax", "jax"),
    "torch": (KerasOnTorch, "keras-torch", "torch"),
}
OFFSET_1E3 = {"name": "offset1e3", "x": {"dist": "normal", "loc": 1e3, "scale": 1.0}}
# benign cases: shapes are few on purpose (Keras on JAX compiles every op anew for each shape, ~1 s)
CASES: list[dict[str, Any]] = [
    {"shape": [8, 4, 5, 5], "grad": True},
    {"shape": [8, 4, 5, 5], "grad": True, "layout": "channels_last"},
    {"shape": [16, 3], "grad": True},
    {"shape": [4, 3, 7], "grad": True, "layout": "channels_last", "mode": "eval"},
    {"shape": [2, 3, 2, 2, 2], "grad": True, "mode": "trajectory", "steps": 3, "momentum": 0.3},
    {"shape": [8, 4, 5, 5], "grad": True, "affine": False, "mode": "trajectory", "steps": 2},
    {"shape": [8, 4, 5, 5], "eps": 0.0},
    {"shape": [8, 4, 5, 5], "grad": True, "dtype": "float16"},
    {"shape": [8, 4, 5, 5], "grad": True, "dtype": "bfloat16", "layout": "channels_last"},
    {"shape": [8, 4, 5, 5], "grad": True, "dtype": "float16", "param_dtype": "float16", "mode": "trajectory"},
    {"shape": [8, 4, 5, 5], "grad": True, "dtype": "bfloat16", "param_dtype": "bfloat16"},
]


def _worker(workers: dict[str, WorkerHandle], backend: str) -> WorkerHandle:
    """The worker of a backend, skipping the test when the backend framework is not installed."""
    module = BACKENDS[backend][2]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (Keras on {backend})")
    if backend not in workers:
        workers[backend] = WorkerHandle(BACKENDS[backend][1], env={"KERAS_BACKEND": backend})
    return workers[backend]


def _observe(workers: dict[str, WorkerHandle], backend: str, spec: dict[str, Any]
             ) -> tuple[Case, dict[str, Any], dict[str, Reference], list[Verdict], float]:
    """Run one case in the backend's worker and judge it here: (case, observation, references, verdicts, seconds)."""
    cls = BACKENDS[backend][0]
    case = case_from_dict(spec)
    inputs = make_inputs(case)
    out = _worker(workers, backend).request(
        {"op": "run", "family": cls.family, "device": "cpu", "case": case.to_dict(), "inputs": inputs}, TIMEOUT)
    assert out.status == "ok", f"{out.status}: {out.message}\n{out.stderr_tail}"
    obs = out.reply["observation"]
    refs = {c: compute_reference(case, inputs, c) for c in RUNNING_VAR_CONVENTIONS}
    bounds = {c: compute_bounds(case, inputs, r) for c, r in refs.items()}
    return case, obs, refs, compare(case, obs, refs, bounds, cls.conventions), float(out.reply["elapsed"])


def _by_key(verdicts: list[Verdict]) -> dict[str, Verdict]:
    """Verdicts keyed by '<phase>.<quantity>'."""
    return {v.key: v for v in verdicts}


# ---- agreement on benign cases ----------------------------------------------------------------------
@pytest.mark.parametrize("spec", CASES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_keras_agrees_with_reference(workers: dict[str, WorkerHandle], backend: str, spec: dict[str, Any]) -> None:
    """Every observed quantity is within its bound and every declared quantity is observed."""
    case, obs, refs, verdicts, _ = _observe(workers, backend, spec)
    bad = [(v.key, v.ratio, v.max_abs, v.note) for v in verdicts if not v.passed]
    assert not bad
    assert not missing_quantities(obs, refs["biased"], BACKENDS[backend][0].conventions)
    assert not any(k.split(".")[1].startswith("batch_") for k in obs)  # the layer does not expose them


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_running_variance_is_biased(workers: dict[str, WorkerHandle], backend: str) -> None:
    """moving_variance follows the biased (divide by n) batch variance, not the unbiased one."""
    _, _, _, verdicts, _ = _observe(workers, backend, {"shape": [4, 3, 2]})
    rv = _by_key(verdicts)["train0.running_var"]
    assert rv.passed and rv.matches == ["biased"]


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_trajectory_reports_running_statistics_after_every_step(workers: dict[str, WorkerHandle], backend: str) -> None:
    """Each training step reports its own moving statistics, they change step by step, and eval uses them."""
    spec = {"shape": [8, 4, 5, 5], "mode": "trajectory", "steps": 4, "momentum": 0.5}
    case, obs, _, verdicts, _ = _observe(workers, backend, spec)
    v = _by_key(verdicts)
    for i in range(4):
        for q in ("running_mean", "running_var"):
            assert v[f"train{i}.{q}"].passed
            if i:
                assert (obs[f"train{i}.{q}"] != obs[f"train{i - 1}.{q}"]).all()
    assert v["eval.y"].passed and "eval.running_mean" not in obs


# ---- float64 ----------------------------------------------------------------------------------------
F64 = {"shape": [4, 3, 4, 4, 4], "grad": True, "dtype": "float64", "mode": "trajectory", "steps": 2}


def test_float64_on_tensorflow_is_float64(workers: dict[str, WorkerHandle]) -> None:
    """With the TensorFlow backend a float64 layer computes in float64 and agrees to float64 bounds."""
    _, _, _, verdicts, _ = _observe(workers, "tensorflow", F64)
    assert all(v.passed for v in verdicts)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_float64_on_jax_and_torch_is_computed_in_float32(workers: dict[str, WorkerHandle], backend: str) -> None:
    """A real precision property: Keras' result_type maps float64 to float32 off TensorFlow, so a float64 layer
    returns float64 arrays with float32 errors; every quantity is flagged, with float32-sized relative errors."""
    case, obs, _, verdicts, _ = _observe(workers, backend, F64)
    v = _by_key(verdicts)
    for key in ("train0.y", "train0.running_mean", "train0.running_var", "train0.dx", "train0.dgamma", "eval.y"):
        assert not v[key].passed, key
        assert v[key].ratio > 1e4, (key, v[key].ratio)
    assert 1e-8 < v["train0.y"].max_rel < 1e-3  # float32 territory, far above float64's 1.1e-16
    assert 1e-9 < v["train0.running_var"].max_rel < 1e-5


# ---- the one-pass variance of the torch backend ---------------------------------------------------------
def test_torch_backend_one_pass_variance_fails_on_mean_offset(workers: dict[str, WorkerHandle]) -> None:
    """A real precision difference: keras' torch backend takes var = E[x^2] - E[x]^2, which cancels for
    |mean| >> std; with x ~ N(1000, 1) in float32, moving_variance, y and dx are flagged."""
    spec = {"shape": [8, 4, 5, 5], "grad": True, "regime": OFFSET_1E3}
    _, _, _, verdicts, _ = _observe(workers, "torch", spec)
    v = _by_key(verdicts)
    assert not v["train0.running_var"].passed and v["train0.running_var"].ratio > 100
    assert v["train0.running_var"].matches == []  # neither variance convention explains it
    assert not v["train0.y"].passed and not v["train0.dx"].passed
    assert v["train0.running_mean"].passed and v["train0.dbeta"].passed  # the mean itself is fine


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_pass_backends_pass_the_mean_offset_case(workers: dict[str, WorkerHandle], backend: str) -> None:
    """The same offset case passes on the two-pass TensorFlow and JAX backends (the contrast to the test above)."""
    spec = {"shape": [8, 4, 5, 5], "grad": True, "regime": OFFSET_1E3}
    _, _, _, verdicts, _ = _observe(workers, backend, spec)
    assert all(v.passed for v in verdicts)


# ---- probing, wrong backend, supports(), lazy import --------------------------------------------------
@pytest.mark.parametrize("backend, version_key", [("jax", "jax"), ("torch", "torch")])
def test_probe_reports_keras_and_backend(workers: dict[str, WorkerHandle], backend: str, version_key: str) -> None:
    """The keras-jax / keras-torch probe names the Keras version, the backend and its version, and the cpu."""
    out = _worker(workers, backend).request({"op": "probe"}, TIMEOUT)
    assert out.status == "ok", out.message
    p = out.reply["probe"]
    assert p["version"].startswith("3.") and "cpu" in p["devices"]
    assert p["details"]["backend"] == backend and p["details"][version_key]
    if backend == "jax":
        assert p["details"]["x64"] is True


def test_a_family_in_the_wrong_backend_worker_is_unsupported(workers: dict[str, WorkerHandle]) -> None:
    """keras.torch sent to the keras-jax worker answers 'unsupported' naming the backend it needs."""
    case = case_from_dict({"shape": [4, 3, 2]})
    out = _worker(workers, "jax").request({"op": "run", "family": "keras.torch", "device": "cpu",
                                           "case": case.to_dict(), "inputs": make_inputs(case)}, TIMEOUT)
    assert out.status == "unsupported" and "KERAS_BACKEND=torch" in out.message


@pytest.mark.parametrize("cls", [KerasOnTensorflow, KerasOnJax, KerasOnTorch], ids=lambda c: c.family)
@pytest.mark.parametrize("spec, words", [
    ({"shape": [8, 4, 5], "track_running_stats": False}, "track_running_stats"),
    ({"shape": [8, 4, 5], "dtype": "float32", "param_dtype": "float16"}, "not accepted"),
    ({"shape": [8, 4, 5], "dtype": "float64", "param_dtype": "float32"}, "not accepted"),
])
def test_unsupported_cases_say_why(cls: type, spec: dict[str, Any], words: str) -> None:
    """Cases Keras cannot express are rejected in the parent with a reason."""
    reason = cls("cpu").supports(case_from_dict(spec))
    assert reason and words in reason


@pytest.mark.parametrize("cls", [KerasOnTensorflow, KerasOnJax, KerasOnTorch], ids=lambda c: c.family)
def test_declared_conventions(cls: type) -> None:
    """Old-form momentum, biased moving variance, Keras defaults, no batch statistics, no untracked mode."""
    cv = cls.conventions
    assert (cv.momentum, cv.running_var, cv.default_eps, cv.default_momentum) == ("old", "biased", 1e-3, 0.99)
    assert not cv.untracked and cv.gradients and not any(q.startswith("batch_") for q in cv.quantities)
    assert cv.sources and cv.notes


def test_importing_the_adapter_imports_no_framework() -> None:
    """bncheck.targets.keras_targets can be imported without keras or any backend being imported."""
    code = ("import sys, bncheck.targets.keras_targets as m; m.KerasOnJax('cpu').supports; "
            "bad = [f for f in ('keras', 'tensorflow', 'jax', 'torch') if f in sys.modules]; "
            "assert not bad, bad; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
