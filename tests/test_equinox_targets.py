"""equinox.nn.BatchNorm in mode "ema" and mode "batch", run in-process against the reference: the running statistics
after several steps, evaluation after training, and the two modes' own designs (measured, left visible)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, Iterator

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("equinox")

from bncheck.cases import Case, case_from_dict  # noqa: E402
from bncheck.compare import Verdict, compare, missing_quantities  # noqa: E402
from bncheck.inputs import make_inputs  # noqa: E402
from bncheck.judging import expected_values  # noqa: E402
from bncheck.targets.base import Target  # noqa: E402
from bncheck.targets.equinox_targets import EquinoxBatch, EquinoxEma, probe  # noqa: E402

_INSTANCES: dict[type[Target], Target] = {}


@pytest.fixture(scope="module", autouse=True)
def _restore_x64() -> Iterator[None]:
    """The path switches jax_enable_x64 on (as the worker must); restore the process's setting afterwards."""
    import jax

    before = bool(jax.config.read("jax_enable_x64"))
    yield
    jax.config.update("jax_enable_x64", before)


def _run(cls: type[Target], spec: dict[str, Any]) -> tuple[Case, dict[str, np.ndarray], dict[str, Verdict]]:
    """Run one case (one instance per family, so compilations are reused as in a worker); verdicts by key."""
    target = _INSTANCES.setdefault(cls, cls("cpu"))
    case = case_from_dict(spec)
    inputs = make_inputs(case)
    expected = expected_values(case, inputs)
    obs = target.run(case, inputs)
    assert not missing_quantities(obs, expected.references[cls.conventions.running_var], cls.conventions)
    return case, obs, {v.key: v for v in compare(case, obs, expected.references, expected.bounds, cls.conventions)}


def _bad(verdicts: dict[str, Verdict]) -> list[tuple[str, float]]:
    return [(k, v.ratio) for k, v in verdicts.items() if not v.passed]


def _normalise(case: Case, x: np.ndarray, mean: np.ndarray, var: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """float64 (x - mean) / sqrt(var + eps) * gamma + beta with per-channel statistics, channels first."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + case.eps)
    return y * inputs["gamma"].astype(np.float64).reshape(shape) + inputs["beta"].astype(np.float64).reshape(shape)


BENIGN_BOTH = [
    {"shape": [8, 4, 5, 5], "grad": True, "mode": "eval"},
    {"shape": [8, 4, 5, 5], "grad": True, "layout": "channels_last", "mode": "eval", "dtype": "float64"},
    {"shape": [8, 4, 5, 5], "grad": True, "affine": False, "track_running_stats": False, "mode": "trajectory", "steps": 2},
    {"shape": [4, 3, 7], "grad": True, "track_running_stats": False, "layout": "channels_last"},
    {"shape": [8, 4, 5, 5], "grad": True, "dtype": "float16", "mode": "eval"},
]


@pytest.mark.parametrize("spec", BENIGN_BOTH, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("cls", [EquinoxEma, EquinoxBatch], ids=lambda c: c.family)
def test_evaluation_and_batch_statistics_agree(cls: type[Target], spec: dict[str, Any]) -> None:
    """Evaluation with loaded statistics and every phase without running statistics pass in both modes."""
    _, _, verdicts = _run(cls, spec)
    assert not _bad(verdicts)


@pytest.mark.parametrize("spec", [
    {"shape": [8, 4, 5, 5], "grad": True},
    {"shape": [4, 3, 7], "grad": True, "layout": "channels_last"},
    {"shape": [4, 3, 4, 4, 4], "grad": True, "dtype": "float64"},
    {"shape": [8, 4, 5, 5], "regime": {"name": "offset1e4", "x": {"dist": "normal", "loc": 1e4, "scale": 1.0}}},
], ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items() if k != "regime"))
def test_batch_mode_training_agrees(spec: dict[str, Any]) -> None:
    """mode='batch' trains like PyTorch/Flax: batch statistics, the biased variance into the (old-form) running pair."""
    _, _, verdicts = _run(EquinoxBatch, spec)
    assert not _bad(verdicts)
    assert verdicts["train0.running_var"].matches == ["biased"]


def test_ema_mode_normalises_training_with_the_blended_statistics() -> None:
    """REAL (equinox's design): mode='ema' stores (1 - m) * batch + m * running and normalises training y with it,
    the biased variance blended. Running statistics after each of 3 steps and evaluation after training pass; each
    training y deviates from the batch-statistics reference (ratio ~1e5, measured) and equals the blended one."""
    case, obs, verdicts = _run(EquinoxEma, {"shape": [16, 3], "grad": True, "mode": "trajectory", "steps": 3})
    inputs = make_inputs(case)
    rm, rv = inputs["running_mean"].astype(np.float64), inputs["running_var"].astype(np.float64)
    m = case.momentum
    for i in range(3):
        assert verdicts[f"train{i}.running_mean"].passed and verdicts[f"train{i}.running_var"].passed
        assert verdicts[f"train{i}.running_var"].matches == ["biased"]
        assert not verdicts[f"train{i}.y"].passed and verdicts[f"train{i}.y"].ratio > 1e3
        x = inputs[f"train{i}.x"].astype(np.float64)
        rm, rv = (1 - m) * rm + m * x.mean(axis=0), (1 - m) * rv + m * x.var(axis=0)
        np.testing.assert_allclose(obs[f"train{i}.y"], _normalise(case, x, rm, rv, inputs), rtol=1e-5, atol=1e-5)
    assert verdicts["eval.y"].passed


def test_batch_mode_evaluation_divides_by_the_zero_debias_factor() -> None:
    """REAL (equinox's design): after k training steps mode='batch' evaluates with hidden / (1 - momentum**k),
    momentum being equinox's 1 - 0.1: the stored pair (which passes) divided by 1 - 0.9**3 = 0.271."""
    case, obs, verdicts = _run(EquinoxBatch, {"shape": [16, 3], "grad": True, "mode": "trajectory", "steps": 3})
    inputs = make_inputs(case)
    assert all(verdicts[f"train{i}.{q}"].passed for i in range(3) for q in ("y", "running_mean", "running_var"))
    assert not verdicts["eval.y"].passed
    scale = 1 - (1 - case.momentum) ** 3
    expected = _normalise(case, inputs["eval.x"].astype(np.float64), obs["train2.running_mean"] / scale,
                          obs["train2.running_var"] / scale, inputs)
    np.testing.assert_allclose(obs["eval.y"], expected, rtol=1e-5, atol=1e-5)


def test_a_fresh_batch_mode_layer_evaluates_with_variance_99_plus_v_after_one_step() -> None:
    """REAL: equinox's own fresh state starts the hidden variance at 1, which the zero-debiasing also divides: after
    one training step at the default momentum 0.99 evaluation uses mean = batch mean and var = 99 + batch var."""
    import equinox as eqx
    import jax

    bn, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch", mode="batch", dtype=np.float64)
    x = np.random.default_rng(0).normal(2.0, 1.5, size=(32, 3))
    run = lambda inference: jax.vmap(lambda v, s: bn(v, s, inference=inference), axis_name="batch",  # noqa: E731
                                     in_axes=(0, None), out_axes=(0, None))
    _, state = run(False)(x, state)
    y, _ = run(True)(x, state)
    expected = (x - x.mean(axis=0)) / np.sqrt(99 + x.var(axis=0) + 1e-5)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-10)


def test_ema_mode_raises_on_half_input_with_float32_parameters() -> None:
    """REAL: mode='ema' training with float16 input and float32 parameters raises inside equinox (lax.select of the
    float16 batch statistics against the float32 blended ones); recorded as an error, not hidden."""
    case = case_from_dict({"shape": [8, 4, 5, 5], "dtype": "float16"})
    assert EquinoxEma("cpu").supports(case) is None
    with pytest.raises(TypeError, match="lax.select requires arguments to have the same dtypes"):
        EquinoxEma("cpu").run(case, make_inputs(case))


def test_compiled_steps_are_reused_across_cases() -> None:
    """One layer and one pair of compiled steps per configuration: a second case of it adds no cache entry."""
    target = EquinoxBatch("cpu")
    for seed in (1, 2):
        case = case_from_dict({"shape": [8, 4, 5, 5], "grad": True, "mode": "trajectory", "steps": 2, "seed": seed})
        target.run(case, make_inputs(case))
    assert len(target._cache) == 1
    case = case_from_dict({"shape": [8, 4, 5, 5], "grad": True, "mode": "trajectory", "steps": 2, "eps": 1e-3})
    target.run(case, make_inputs(case))
    assert len(target._cache) == 2


def test_probe_and_records() -> None:
    """probe() reports equinox and jax with x64 on; both families are compiled paths in the equinox group."""
    info = probe()
    assert info["version"] and "cpu" in info["devices"] and info["details"]["x64"] is True
    for cls in (EquinoxEma, EquinoxBatch):
        assert cls.framework == "equinox" and cls.path_kind == "compiled" and cls.source_family is None
        assert cls.conventions.momentum == "old" and cls.conventions.running_var == "biased"
        assert any("test_equinox_targets.py" in s for s in cls.conventions.sources)


def test_import_does_not_import_jax() -> None:
    """Importing the adapter module leaves jax and equinox unimported."""
    code = ("import sys; import bncheck.targets.equinox_targets as m; m.EquinoxEma('cpu').info(); "
            "bad = [n for n in ('jax', 'equinox') if n in sys.modules]; assert not bad, bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
