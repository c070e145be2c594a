"""JAX targets (flax.linen, flax.linen.two_pass, flax.nnx, jax.jit), run in-process against the reference."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, Iterator

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("flax")

from bncheck.cases import Case, case_from_dict  # noqa: E402
from bncheck.compare import Verdict, compare, missing_quantities  # noqa: E402
from bncheck.inputs import Inputs, make_inputs  # noqa: E402
from bncheck.judging import expected_values  # noqa: E402
from bncheck.reference import Reference  # noqa: E402
from bncheck.targets.base import Observation, Target, Unsupported  # noqa: E402
from bncheck.targets.jax_targets import FlaxLinen, FlaxLinenTwoPass, FlaxNnx, JaxJit, probe  # noqa: E402

TARGETS: list[type[Target]] = [FlaxLinen, FlaxLinenTwoPass, FlaxNnx, JaxJit]
_INSTANCES: dict[type[Target], Target] = {}  # shared, so compilations are reused across tests (as in a worker)

BENIGN = [
    {"shape": [8, 4, 5, 5], "grad": True},
    {"shape": [8, 4, 5, 5], "grad": True, "layout": "channels_last"},
    {"shape": [16, 3], "grad": True},
    {"shape": [4, 3, 7], "grad": True, "mode": "trajectory", "steps": 2, "layout": "channels_last"},
    {"shape": [4, 3, 4, 4, 4], "grad": True, "dtype": "float64", "mode": "trajectory", "steps": 3},
    {"shape": [8, 4, 5, 5], "grad": True, "mode": "eval"},
    {"shape": [8, 4, 5, 5], "grad": True, "mode": "eval", "dtype": "float64", "layout": "channels_last"},
    {"shape": [8, 4, 5, 5], "grad": True, "mode": "trajectory", "steps": 3, "momentum": 0.3},
    {"shape": [8, 4, 5, 5], "grad": True, "affine": False, "track_running_stats": False, "mode": "trajectory", "steps": 2},
    {"shape": [8, 4, 5, 5], "grad": True, "mode": "eval", "track_running_stats": False, "layout": "channels_last"},
    {"shape": [8, 4, 5, 5], "mode": "trajectory", "steps": 2, "affine": False, "eps": 1e-3},
]


def _offset(loc: float) -> dict[str, Any]:
    """A regime whose batches have mean `loc` and unit spread."""
    return {"name": "offset", "x": {"dist": "normal", "loc": loc, "scale": 1.0}}


@pytest.fixture(scope="module", autouse=True)
def _restore_x64() -> Iterator[None]:
    """The adapter switches jax_enable_x64 on (as the worker must); restore the process's setting afterwards."""
    import jax

    before = bool(jax.config.read("jax_enable_x64"))
    yield
    jax.config.update("jax_enable_x64", before)


def _target(cls: type[Target]) -> Target:
    """One CPU instance per family for the whole module."""
    if cls not in _INSTANCES:
        _INSTANCES[cls] = cls("cpu")
    return _INSTANCES[cls]


def _run(cls: type[Target], spec: dict[str, Any]) -> tuple[Case, Observation, dict[str, Reference], dict[str, Verdict]]:
    """Run one case on a family; verdicts keyed '<phase>.<quantity>'."""
    target = _target(cls)
    case = case_from_dict(spec)
    inputs = make_inputs(case)
    expected = expected_values(case, inputs)
    refs, bounds = expected.references, expected.bounds
    obs = target.run(case, inputs)
    verdicts = compare(case, obs, refs, bounds, target.conventions)
    return case, obs, refs, {v.key: v for v in verdicts}


def _deviating(verdicts: dict[str, Verdict]) -> dict[str, float]:
    """{key: ratio} of the verdicts that fail."""
    return {k: v.ratio for k, v in verdicts.items() if not v.passed}


@pytest.mark.parametrize("cls", TARGETS, ids=lambda c: c.family)
@pytest.mark.parametrize("spec", BENIGN, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_jax_target_agrees_with_reference(cls: type[Target], spec: dict[str, Any]) -> None:
    """On benign cases every observed quantity is within its bound and every declared quantity is observed."""
    case = case_from_dict(spec)
    assert _target(cls).supports(case) is None
    case, obs, refs, verdicts = _run(cls, spec)
    assert not _deviating(verdicts)
    assert not missing_quantities(obs, refs[cls.conventions.running_var], cls.conventions)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float64 for a in obs.values())
    assert obs[f"{case.phases[0]}.y"].shape == case.physical_shape


@pytest.mark.parametrize("spec", [
    {"shape": [16, 4, 6], "grad": True, "dtype": "float16", "mode": "trajectory"},
    {"shape": [16, 4, 6], "grad": True, "dtype": "bfloat16", "mode": "trajectory", "layout": "channels_last"},
    {"shape": [8, 4, 5, 5], "grad": True, "dtype": "float16", "param_dtype": "float16"},
    {"shape": [8, 4, 5, 5], "grad": True, "dtype": "bfloat16", "param_dtype": "bfloat16", "mode": "trajectory"},
], ids=lambda s: f"{s['dtype']}-{s.get('param_dtype', 'float32')}")
def test_jax_jit_half_precision_agrees(spec: dict[str, Any]) -> None:
    """jax.jit (x cast to float32 once, y cast back once) passes float16/bfloat16 with both parameter dtypes."""
    _, _, _, verdicts = _run(JaxJit, spec)
    assert not _deviating(verdicts)


@pytest.mark.parametrize("cls, expected", [
    (FlaxLinen, ["biased"]), (FlaxLinenTwoPass, ["biased"]), (FlaxNnx, ["biased"]), (JaxJit, ["unbiased"]),
], ids=lambda x: getattr(x, "family", ""))
def test_running_variance_convention(cls: type[Target], expected: list[str]) -> None:
    """Flax feeds the biased batch variance to its running update; jax.jit (defined here) the unbiased one."""
    _, _, _, verdicts = _run(cls, {"shape": [4, 3, 2]})
    rv = verdicts["train0.running_var"]
    assert rv.passed and rv.matches == expected


def test_trajectory_running_statistics_after_every_step() -> None:
    """Each training step reports the running statistics the framework carried from the previous step."""
    spec = {"shape": [6, 3, 4], "mode": "trajectory", "steps": 4, "momentum": 0.5}
    for cls in TARGETS:
        _, obs, _, verdicts = _run(cls, spec)
        for i in range(4):
            for q in ("running_mean", "running_var"):
                assert verdicts[f"train{i}.{q}"].passed, (cls.family, i, q)
        assert not np.array_equal(obs["train0.running_var"], obs["train3.running_var"])
        assert verdicts["eval.y"].passed


def test_float64_is_computed_in_float64() -> None:
    """float64 cases meet float64 bounds (float32 arithmetic would miss them by about 1e8)."""
    spec = {"shape": [8, 4, 5, 5], "dtype": "float64", "mode": "trajectory", "grad": True}
    for cls in TARGETS:
        _, _, _, verdicts = _run(cls, spec)
        assert not _deviating(verdicts), cls.family
        assert verdicts["train0.y"].max_rel < 1e-12


@pytest.mark.parametrize("loc", [1e2, 1e3, 1e4])
def test_fast_variance_fails_on_mean_offset(loc: float) -> None:
    """linen's default one-pass variance deviates on running_var, y and dx at a mean offset; two-pass does not."""
    spec = {"shape": [8, 4, 5, 5], "grad": True, "mode": "trajectory", "regime": _offset(loc)}
    _, _, _, fast = _run(FlaxLinen, spec)
    bad = _deviating(fast)
    assert {"train0.running_var", "train0.y", "train0.dx", "eval.y"} <= set(bad)
    assert bad["train0.running_var"] > 10
    assert "train0.running_mean" not in bad  # the mean itself is computed exactly as in two-pass
    _, _, _, nnx_fast = _run(FlaxNnx, spec)
    assert "train0.running_var" in _deviating(nnx_fast)  # nnx shares _compute_stats' default
    for cls in (FlaxLinenTwoPass, JaxJit):
        _, _, _, two_pass = _run(cls, spec)
        assert not _deviating(two_pass), cls.family


def test_linen_half_precision_dx_is_rounded_twice() -> None:
    """linen's dx in bfloat16 is the sum of two separately rounded bfloat16 cotangents; jax.jit's is rounded once.

    x reaches float32 through two implicit casts (in _compute_stats and in x - mean); autodiff transposes
    each into its own float32 -> bfloat16 cast and adds the two results in bfloat16.
    """
    spec = {"shape": [8, 4, 5, 5], "grad": True, "dtype": "bfloat16", "mode": "trajectory", "layout": "channels_last"}
    for cls in (FlaxLinen, FlaxLinenTwoPass):
        _, _, _, verdicts = _run(cls, spec)
        bad = _deviating(verdicts)
        assert set(bad) == {"train0.dx", "train1.dx"}, (cls.family, bad)
        assert bad["train0.dx"] > 5
    _, _, _, jit = _run(JaxJit, spec)
    assert not _deviating(jit)


def test_nnx_half_precision_rounds_parameters_and_eval() -> None:
    """nnx with dtype=float16 casts scale, bias and the running statistics to float16 (promote_dtype).

    So y deviates in training (half-precision gamma and beta), dgamma and dbeta come back rounded to
    float16, and eval normalises entirely in float16; linen on the same case keeps them in float32.
    """
    spec = {"shape": [8, 4, 5, 5], "grad": True, "dtype": "float16", "mode": "trajectory"}
    _, _, _, nnx = _run(FlaxNnx, spec)
    bad = _deviating(nnx)
    assert {"train0.y", "train0.dgamma", "train0.dbeta", "eval.y"} <= set(bad)
    assert bad["eval.y"] > 10
    assert nnx["train0.running_mean"].passed and nnx["train0.running_var"].passed
    _, _, _, linen = _run(FlaxLinenTwoPass, spec)
    assert all(linen[k].passed for k in ("train0.y", "train0.dgamma", "train0.dbeta", "eval.y", "eval.dx"))


def test_inputs_are_not_mutated() -> None:
    """Running a target leaves the input arrays untouched."""
    case = case_from_dict({"shape": [8, 4, 5], "mode": "trajectory", "steps": 2, "grad": True})
    inputs: Inputs = make_inputs(case)
    before = {k: v.copy() for k, v in inputs.items()}
    for cls in TARGETS:
        _target(cls).run(case, inputs)
    assert all(np.array_equal(inputs[k], before[k]) for k in inputs)


def test_compilations_are_reused_across_cases() -> None:
    """Cases with the same static configuration and shape reuse one jitted step (no retrace per case)."""
    for cls in TARGETS:
        target = cls("cpu")
        for seed in range(3):
            case = case_from_dict({"shape": [8, 4, 5], "grad": True, "seed": seed})
            target.run(case, make_inputs(case))
        assert len(target._cache) == 1  # type: ignore[attr-defined]
        (fn,) = target._cache.values()  # type: ignore[attr-defined]
        assert fn._cache_size() == 1


@pytest.mark.parametrize("spec, words", [
    ({"shape": [8, 4, 5], "dtype": "float32", "param_dtype": "float16"}, "not accepted"),
    ({"shape": [8, 4, 5], "dtype": "float64", "param_dtype": "float32"}, "not accepted"),
])
def test_unsupported_cases_say_why(spec: dict[str, Any], words: str) -> None:
    """Parameter dtypes outside 'same-or-float32' are rejected in the parent with a reason."""
    for cls in TARGETS:
        reason = cls("cpu").supports(case_from_dict(spec))
        assert reason and words in reason


def test_cuda_without_gpu_is_unsupported() -> None:
    """On a machine where jax sees no GPU, a cuda target raises Unsupported instead of running on the CPU."""
    if probe()["devices"] != ["cpu"]:
        pytest.skip("a GPU is visible")
    case = case_from_dict({"shape": [4, 3]})
    with pytest.raises(Unsupported, match="no GPU"):
        JaxJit("cuda").run(case, make_inputs(case))


def test_probe_reports_versions_devices_and_x64() -> None:
    """probe() names jax's version, at least the CPU, flax's version, and enables 64-bit arrays."""
    info = probe()
    assert info["version"] and "cpu" in info["devices"]
    assert info["details"]["flax"] and info["details"]["x64"] is True


def test_import_does_not_import_jax() -> None:
    """Importing the adapter module (and reading conventions) imports neither jax nor flax."""
    code = ("import sys; import bncheck.targets.jax_targets as m; m.FlaxLinen.conventions; m.JaxJit.conventions; "
            "bad = [n for n in ('jax', 'flax', 'jaxlib') if n in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
