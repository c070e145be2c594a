"""tf.nn.xla and tf.keras.xla: TensorFlow's tf.nn path and Keras 3's layer traced into tf.function(jit_compile=True).

Each runs in the tensorflow worker, as the pool starts it (Keras 3 on the TensorFlow backend), and is judged here
against the reference; this process imports no framework. The experiments that the conventions records cite are
here: the declared conventions pass benign cases, XLA's reductions pass the large-offset float32 batch on which
the eager paths deviate, and tf.nn.xla keeps tf.nn's half-precision forward.
"""

from __future__ import annotations

from typing import Any

import pytest

from bncheck.cases import Case, case_from_dict
from bncheck.compare import Verdict, compare, missing_quantities
from bncheck.inputs import make_inputs
from bncheck.judging import expected_values
from bncheck.pool import WorkerHandle
from bncheck.targets import family_class, framework_status, frameworks

TIMEOUT = 180.0
OFFSET_1E4 = {"name": "offset1e4", "x": {"dist": "normal", "loc": 1e4, "scale": 1.0}}
XLA = ["tf.nn.xla", "tf.keras.xla"]

# benign cases, few shapes on purpose (each new signature is one XLA compilation, 0.2-0.9 s here)
CASES: list[dict[str, Any]] = [
    {"shape": [8, 4, 5, 5], "grad": True},
    {"shape": [8, 4, 5, 5], "grad": True, "layout": "channels_last", "mode": "trajectory", "steps": 2},
    {"shape": [16, 3], "grad": True, "mode": "eval"},
    {"shape": [8, 4, 5, 5], "grad": True, "affine": False, "track_running_stats": False, "mode": "trajectory", "steps": 2},
    {"shape": [8, 4, 5, 5], "grad": True, "dtype": "float64", "mode": "trajectory", "steps": 2},
    {"shape": [8, 4, 5, 5], "grad": True, "dtype": "bfloat16", "mode": "eval"},
]


@pytest.fixture(scope="module")
def tf_worker(workers: dict[str, WorkerHandle]) -> WorkerHandle:
    """The tensorflow worker (Keras 3 on the TensorFlow backend), skipping the module without tensorflow/keras."""
    fw = frameworks()["tensorflow"]
    installed, _, reason = framework_status(fw)
    if not installed:
        pytest.skip(reason)
    if "tensorflow" not in workers:
        workers["tensorflow"] = WorkerHandle("tensorflow", env=dict(fw.env))
    return workers["tensorflow"]


def _observe(worker: WorkerHandle, family: str, spec: dict[str, Any]) -> tuple[Case, dict[str, Any], dict[str, Verdict]]:
    """Run one case on a family in the worker and judge it here under the family's declared conventions."""
    cls = family_class(family)
    case = case_from_dict(spec)
    inputs = make_inputs(case)
    out = worker.request({"op": "run", "family": family, "device": "cpu", "case": case.to_dict(), "inputs": inputs}, TIMEOUT)
    assert out.status == "ok", f"{out.status}: {out.message}\n{out.stderr_tail}"
    obs = out.reply["observation"]
    expected = expected_values(case, inputs)
    verdicts = compare(case, obs, expected.references, expected.bounds, cls.conventions)
    assert not missing_quantities(obs, expected.references[cls.conventions.running_var], cls.conventions)
    return case, obs, {v.key: v for v in verdicts}


@pytest.mark.parametrize("spec", CASES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("family", XLA)
def test_xla_paths_agree_with_reference(tf_worker: WorkerHandle, family: str, spec: dict[str, Any]) -> None:
    """Every observed quantity is within its bound under the declared conventions (the records' first experiment)."""
    reason = family_class(family)("cpu").supports(case_from_dict(spec))
    if reason:
        pytest.skip(reason)
    if family == "tf.nn.xla" and spec.get("dtype") in ("float16", "bfloat16"):
        pytest.skip("tf.nn's half-precision forward deviates for real: see test_tf_nn_xla_keeps_the_half_precision_forward")
    _, _, verdicts = _observe(tf_worker, family, spec)
    assert not [(k, v.ratio) for k, v in verdicts.items() if not v.passed]


@pytest.mark.parametrize("eager, xla, keys", [
    ("tf.nn", "tf.nn.xla", ("train0.batch_mean", "train0.batch_var")),
    ("tf.keras", "tf.keras.xla", ("train0.running_mean", "train0.running_var")),
])
def test_xla_reductions_pass_where_eager_sequential_sums_deviate(tf_worker: WorkerHandle, eager: str, xla: str,
                                                                 keys: tuple[str, ...]) -> None:
    """REAL: 65536 float32 values of 1e4 + N(0, 1) per channel: TensorFlow's eager CPU reduction adds row after row
    (the batch mean off by ratio 3.3, the variance by 5.3, measured); the XLA-compiled path passes (worst 0.0103)."""
    spec = {"shape": [64, 4, 32, 32], "layout": "channels_last", "regime": OFFSET_1E4}
    _, _, eager_v = _observe(tf_worker, eager, spec)
    assert all(not eager_v[k].passed and eager_v[k].ratio > 2 for k in keys), {k: eager_v[k].ratio for k in keys}
    _, _, xla_v = _observe(tf_worker, xla, spec)
    assert all(v.passed for v in xla_v.values()), {k: v.ratio for k, v in xla_v.items() if not v.passed}


def test_tf_nn_xla_keeps_the_half_precision_forward_but_not_the_gradient_loss(tf_worker: WorkerHandle) -> None:
    """REAL: float16 with float32 parameters: tf.nn.xla's y and batch_var deviate exactly as much as tf.nn's (the
    traced ops round the moments and the folded coefficients to float16); its compiled dbeta loses far less
    (measured ratios: y 13.7 and batch_var 64.8 on both; dbeta 72.7 eager, 9.9 under XLA)."""
    spec = {"shape": [8, 4, 5, 5], "grad": True, "dtype": "float16"}
    _, eager_obs, eager_v = _observe(tf_worker, "tf.nn", spec)
    _, xla_obs, xla_v = _observe(tf_worker, "tf.nn.xla", spec)
    for k in ("train0.y", "train0.batch_var"):
        assert not xla_v[k].passed and xla_v[k].ratio == pytest.approx(eager_v[k].ratio, rel=0.05), k
    assert (xla_obs["train0.batch_var"] == eager_obs["train0.batch_var"]).all()
    assert xla_v["train0.dbeta"].ratio < eager_v["train0.dbeta"].ratio / 3


def test_a_reused_trace_gives_what_a_fresh_one_gives(tf_worker: WorkerHandle) -> None:
    """Two cases of one signature share a traced function in the worker; the second case's values equal those of a
    fresh trace in a new worker (a cached artefact never changes a result)."""
    reused, fresh = {}, {}
    specs = {f: {"shape": [8, 4, 5, 5], "grad": True, "mode": "trajectory", "steps": 2, "seed": 1,
                 "track_running_stats": f == "tf.keras.xla"} for f in XLA}
    for family, first in specs.items():
        _observe(tf_worker, family, first)
        reused[family] = _observe(tf_worker, family, {**first, "seed": 2})[1]
    fresh_worker = WorkerHandle("tensorflow", env=dict(frameworks()["tensorflow"].env))
    try:
        for family, first in specs.items():
            fresh[family] = _observe(fresh_worker, family, {**first, "seed": 2})[1]
    finally:
        fresh_worker.stop()
    for family in XLA:
        assert sorted(reused[family]) == sorted(fresh[family])
        assert all(reused[family][k].tobytes() == fresh[family][k].tobytes() for k in reused[family]), family


def test_xla_families_are_compiled_paths_with_their_sources() -> None:
    """path_kind 'compiled', no source family; the records cite the experiments above."""
    for family in XLA:
        cls = family_class(family)
        assert cls.path_kind == "compiled" and cls.source_family is None and cls.framework == "tensorflow"
        assert any("test_tf_xla_targets.py" in s for s in cls.conventions.sources)
        assert cls("cpu").path_options()["jit_compile"] is True
