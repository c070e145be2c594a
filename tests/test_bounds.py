"""The error bounds are neither too loose nor too tight.

Small BN kernels written in NumPy emulate real implementations in low precision (float32 arithmetic, float16
where the fault is a float16 accumulation). Correct kernels must pass every verdict of compare(); kernels with
a known fault must be flagged on the quantity the fault corrupts, while the quantities it leaves alone still pass.
Worst ratios are collected in RATIOS and printed at the end of the module (run with -s to see them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from bncheck.cases import Case, case_from_dict
from bncheck.compare import Verdict, compare
from bncheck.dtypes import round_as_float64
from bncheck.inputs import Inputs, make_inputs
from bncheck.reference import RUNNING_VAR_CONVENTIONS, Reference, compute_reference
from bncheck.targets.base import Conventions, flatten_channels
from bncheck.tolerance import compute_bounds

DECLARED = Conventions(momentum="new", running_var="unbiased")
RATIOS: dict[str, str] = {}  # label -> one line of findings, printed at module teardown


# ---- emulated kernels ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kernel:
    """How an emulated BN kernel computes; the defaults are a correct float32 kernel."""

    acc: Any = np.float32  # arithmetic dtype of the whole kernel
    sum_dtype: Any = None  # dtype the channel sums accumulate in (None: acc)
    summation: str = "pairwise"  # "pairwise" (np.sum along a contiguous axis) or "sequential" (np.cumsum)
    variance: str = "two-pass"  # "two-pass", "welford", "one-pass" (E[x^2] - E[x]^2) or "one-pass-clamped" (max(0, .))
    fold: bool = False  # y = x*a + b with a = gamma*invstd and b = beta - mean*a
    eps_placement: str = "inside"  # "inside" sqrt, "outside" (sqrt(var) + eps) or "ignored"
    norm_var: str = "biased"  # variance that normalises
    running_var: str = "unbiased"  # variance that feeds the running update
    momentum: str = "new"  # "new": m weighs the batch statistic; "flipped": 1 - m does
    running_update: str = "batch"  # "batch", "previous" (the previous step's batch) or "none"
    eval_stats: str = "running"  # statistics eval mode normalises with: "running" or "batch"
    dx_mean_dy: bool = True  # dx subtracts mean(dy)
    dgamma_sign: float = 1.0
    saved_var: str = "biased"  # variance reported as batch_var
    float32_eps: bool = False  # eps reaches the kernel as a float32 attribute (ONNX)
    float32_momentum: bool = False  # so does momentum, in ONNX's form (weight of the old value)
    reciprocal: bool = False  # means as sum * (1/n) with a rounded reciprocal (XLA, TF), not sum / n
    ftz: bool = False  # subnormal inputs read as zero and subnormal results flushed (FTZ/DAZ)
    stats_dtype: Any = None  # the batch statistics are rounded to this dtype before the output uses them
    ew_dtype: Any = None  # the element-wise normalisation (and dx) in this dtype, the sums in `acc`
    dx_form: str = "closed"  # "closed": gamma s (dy - mean dy - xhat mean(dy xhat)); "autodiff": via s^3


CORRECT = Kernel()


def _sum(a: np.ndarray, k: Kernel) -> np.ndarray:
    """Channel sums of an (n, C) array in the kernel's sum dtype and order."""
    dt = np.dtype(k.sum_dtype or k.acc)
    a = a.astype(dt)
    if k.summation == "sequential":
        return np.cumsum(a, axis=0, dtype=dt)[-1]
    # numpy sums pairwise only along a contiguous axis; along axis 0 of (n, C) it would add row by row
    return np.ascontiguousarray(a.T).sum(axis=1, dtype=dt)


def _moments(X: np.ndarray, k: Kernel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch mean, biased and unbiased variance of an (n, C) array, in the kernel's arithmetic."""
    acc = np.dtype(k.acc).type
    n = X.shape[0]
    nn, n1 = acc(n), acc(max(n - 1, 1))
    if k.variance == "welford":
        mean = np.zeros(X.shape[1], acc)
        m2 = np.zeros(X.shape[1], acc)
        for i, row in enumerate(X, 1):
            delta = row - mean
            mean = mean + delta / acc(i)
            m2 = m2 + delta * (row - mean)
        return mean, m2 / nn, m2 / n1
    div = (lambda a: a * (acc(1) / nn)) if k.reciprocal else (lambda a: a / nn)  # noqa: E731
    mean = div(_sum(X, k)).astype(acc)
    if k.variance in ("one-pass", "one-pass-clamped"):
        var_b = div(_sum(X * X, k)).astype(acc) - mean * mean
        if k.variance == "one-pass-clamped":
            var_b = np.maximum(var_b, acc(0))
        return mean, var_b, var_b * (nn / n1)
    d = X - mean
    ssq = _sum(d * d, k).astype(acc)
    return mean, div(ssq).astype(acc), ssq / n1


def _physical(case: Case, rows: np.ndarray) -> np.ndarray:
    """(elements per channel, C) -> the case's physical layout."""
    if case.layout == "channels_last":
        return rows.reshape(case.physical_shape)
    logical_last = rows.reshape((case.shape[0], *case.shape[2:], case.channels))
    return np.moveaxis(logical_last, -1, 1)


def emulate(case: Case, inputs: Inputs, k: Kernel = CORRECT) -> dict[str, np.ndarray]:
    """Observation of an emulated kernel: float64 arrays rounded to the dtypes a real kernel returns."""
    acc = np.dtype(k.acc).type
    C = case.channels
    eps_v, m_v = case.eps, case.momentum
    if k.float32_eps:
        eps_v = float(np.float32(eps_v))
    if k.float32_momentum:  # ONNX's momentum is the weight of the old value, 1 - m, stored as a float attribute
        m_v = 1.0 - float(np.float32(1.0 - m_v))
    if k.momentum == "flipped":
        m_v = 1.0 - m_v
    eps, m, one = acc(eps_v), acc(m_v), acc(1)
    gamma = inputs["gamma"].astype(acc) if case.affine else np.ones(C, acc)
    beta = inputs["beta"].astype(acc) if case.affine else np.zeros(C, acc)
    rm = inputs["running_mean"].astype(acc) if case.track_running_stats else None
    rv = inputs["running_var"].astype(acc) if case.track_running_stats else None
    out_x = lambda rows: round_as_float64(_physical(case, rows.astype(np.float64)), case.dtype)  # noqa: E731
    out_p = lambda a: round_as_float64(np.asarray(a, dtype=np.float64), case.param_dtype)  # noqa: E731
    obs: dict[str, np.ndarray] = {}
    previous = None
    tiny = np.finfo(acc).tiny
    daz = (lambda a: np.where(np.abs(a) < tiny, 0, a).astype(np.asarray(a).dtype)) if k.ftz else (lambda a: a)  # noqa: E731
    ew = np.dtype(k.ew_dtype or k.acc).type
    if k.ftz:
        out_x0, out_p0 = out_x, out_p
        out_x = lambda rows: daz(out_x0(rows))  # noqa: E731
        out_p = lambda a: daz(out_p0(a))  # noqa: E731
        gamma, beta = daz(gamma), daz(beta)
    with np.errstate(all="ignore"):
        for phase in case.phases:
            X = daz(flatten_channels(case, inputs[f"{phase}.x"]).astype(acc))
            n = X.shape[0]
            training = phase != "eval"
            batch = training or not case.track_running_stats or k.eval_stats == "batch"
            if batch:
                mean, var_b, var_u = _moments(X, k)
                if k.stats_dtype is not None:  # half-precision moments (tf.nn): rounded before anything uses them
                    mean, var_b, var_u = (np.asarray(a).astype(k.stats_dtype).astype(acc) for a in (mean, var_b, var_u))
                centre, v = mean, (var_b if k.norm_var == "biased" else var_u)
            else:
                centre, v = rm, rv
            if k.eps_placement == "inside":
                invstd = one / np.sqrt(v + eps)
            elif k.eps_placement == "outside":
                invstd = one / (np.sqrt(v) + eps)
            else:
                invstd = one / np.sqrt(v)
            if k.fold:
                a = gamma * invstd
                b = beta - centre * a
                Y = X * a + b
            elif k.ew_dtype is not None:  # element-wise in the half dtype, from float32 statistics
                Y = ((X.astype(ew) - centre.astype(ew)) * invstd.astype(ew)) * gamma.astype(ew) + beta.astype(ew)
            else:
                Y = ((X - centre) * invstd) * gamma + beta
            obs[f"{phase}.y"] = out_x(Y)
            if batch and (training or not case.track_running_stats):
                obs[f"{phase}.batch_mean"] = out_p(mean)
                obs[f"{phase}.batch_var"] = out_p(var_b if k.saved_var == "biased" else var_u)
                obs[f"{phase}.batch_var_unbiased"] = out_p(var_u)
                obs[f"{phase}.batch_invstd"] = out_p(invstd)
            if training and case.track_running_stats:
                stat = (mean, var_u if k.running_var == "unbiased" else var_b)
                use = previous if (k.running_update == "previous" and previous is not None) else stat
                previous = stat
                if k.running_update != "none":
                    rm = (one - m) * rm + m * use[0]
                    rv = (one - m) * rv + m * use[1]
                obs[f"{phase}.running_mean"] = out_p(rm)
                obs[f"{phase}.running_var"] = out_p(rv)
            if case.grad:
                dY = daz(flatten_channels(case, inputs[f"{phase}.dy"]).astype(acc))
                xhat = (X - centre) * invstd
                dbeta = _sum(dY, k).astype(acc)
                dgamma = _sum(dY * xhat, k).astype(acc)
                if batch and k.dx_form == "autodiff":  # d var / dx through rsqrt: s^3 = (var + eps)^-1.5
                    nn = acc(n)
                    d = X - centre
                    dX = (gamma * invstd) * (dY - dbeta / nn) - gamma * (invstd * invstd * invstd) * d * (_sum(dY * d, k) / nn)
                elif batch and k.eps_placement == "outside":  # the gradient of (x - mean) / (sqrt(var) + eps)
                    nn = acc(n)
                    d = X - centre
                    sd = np.sqrt(v)
                    coef = np.where(sd > 0, invstd * invstd * (_sum(dY * d, k) / nn) / np.where(sd > 0, sd, acc(1)), acc(0))
                    dX = gamma * (invstd * (dY - dbeta / nn) - d * coef)
                elif batch and k.ew_dtype is not None:
                    nn = acc(n)
                    m1, m2 = (dbeta / nn).astype(ew), (dgamma / nn).astype(ew)
                    dX = (gamma * invstd).astype(ew) * (dY.astype(ew) - m1 - xhat.astype(ew) * m2)
                elif batch:
                    nn = acc(n)
                    mdy = dbeta / nn if k.dx_mean_dy else acc(0)
                    dX = (gamma * invstd) * (dY - mdy - xhat * (dgamma / nn))
                else:
                    dX = (gamma * invstd) * dY
                obs[f"{phase}.dx"] = out_x(dX)
                if case.affine:
                    obs[f"{phase}.dgamma"] = out_p(k.dgamma_sign * dgamma)
                    obs[f"{phase}.dbeta"] = out_p(dbeta)
    return obs


# ---- judging ---------------------------------------------------------------------------------------
_CACHE: dict[tuple[str, str], tuple[Inputs, dict[str, Reference], dict[str, dict[str, np.ndarray]]]] = {}


def prepared(case: Case, eps_placement: str = "inside_sqrt") -> tuple[Inputs, dict[str, Reference], dict[str, dict[str, np.ndarray]]]:
    """Inputs, references and bounds under both running-variance conventions (cached by case id and eps placement)."""
    # keyed by case_id: Case equality ignores the regime, so two regimes of one shape would collide
    key = (case.case_id, str(eps_placement))
    if key not in _CACHE:
        inputs = make_inputs(case)
        refs = {c: compute_reference(case, inputs, c, str(eps_placement)) for c in RUNNING_VAR_CONVENTIONS}
        _CACHE[key] = (inputs, refs, {c: compute_bounds(case, inputs, refs[c]) for c in refs})
    return _CACHE[key]


def run(case: Case, k: Kernel = CORRECT) -> dict[str, Verdict]:
    """Verdicts, keyed by '<phase>.<quantity>', of kernel `k` on `case` under the declared conventions."""
    inputs, refs, bounds = prepared(case)
    obs = emulate(case, inputs, k)
    verdicts = {v.key: v for v in compare(case, obs, refs, bounds, DECLARED)}
    assert set(verdicts) == set(obs) == set(refs["unbiased"].values), "every reference quantity is observed and judged"
    return verdicts


def worst(verdicts: dict[str, Verdict]) -> tuple[str, float]:
    """The key with the largest ratio and that ratio."""
    key = max(verdicts, key=lambda k: verdicts[k].ratio)
    return key, verdicts[key].ratio


def failed(verdicts: dict[str, Verdict]) -> dict[str, float]:
    """Ratios of the verdicts that did not pass."""
    return {k: v.ratio for k, v in verdicts.items() if not v.passed}


def record(label: str, text: str) -> None:
    """Collect one line for the end-of-module table and print it."""
    RATIOS[label] = text
    print(f"{label}: {text}")


def print_table(title: str, rows: dict[str, str]) -> None:
    """Print collected label/text rows as an aligned table under a title (nothing when there are none)."""
    if rows:
        width = max(map(len, rows))
        print(f"\n---- {title} ----")
        for label, text in rows.items():
            print(f"{label:<{width}}  {text}")


@pytest.fixture(scope="module", autouse=True)
def _ratio_table():
    """Print every collected ratio when the module finishes."""
    yield
    print_table("bound ratios (error / bound)", RATIOS)


def mk(shape: list[int], **kw: Any) -> Case:
    """A validated case."""
    return case_from_dict({"shape": shape, **kw})


def assert_all_pass(label: str, cases: list[Case], k: Kernel = CORRECT, limit: float = 1.0) -> float:
    """Every verdict of every case passes; record and return the worst ratio."""
    worst_ratio, worst_where = 0.0, ""
    for case in cases:
        verdicts = run(case, k)
        bad = failed(verdicts)
        assert not bad, f"correct kernel flagged on {case.describe()}: {bad}"
        key, r = worst(verdicts)
        if r >= worst_ratio:
            worst_ratio, worst_where = r, f"{key} in {case.describe()}"
    record(label, f"worst ratio {worst_ratio:.3g} ({worst_where})")
    assert worst_ratio <= limit
    return worst_ratio


def assert_flagged(label: str, case: Case, k: Kernel, expect: str, unaffected: tuple[str, ...] = ()) -> dict[str, Verdict]:
    """`expect` ('<phase>.<quantity>') is flagged and the keys in `unaffected` still pass; record the ratios."""
    verdicts = run(case, k)
    bad = failed(verdicts)
    record(label, f"{expect} ratio {verdicts[expect].ratio:.3g}; flagged: " + ", ".join(f"{q} {r:.3g}" for q, r in bad.items()))
    assert not verdicts[expect].passed, f"{label}: {expect} passed with ratio {verdicts[expect].ratio:.3g}"
    for key in unaffected:
        assert verdicts[key].passed, f"{label}: {key} should be unaffected, ratio {verdicts[key].ratio:.3g}"
    # the control: the correct kernel (in the fault's arithmetic) passes the very same case
    control = failed(run(case, Kernel(acc=k.acc)))
    assert not control, f"{label}: the correct kernel fails the fault's case: {control}"
    return verdicts


# ---- A. correct kernels pass -----------------------------------------------------------------------
SHAPES = {"4d": [8, 6, 6, 6], "2d": [16, 6], "5d": [4, 6, 4, 4, 4]}
MODES = {"train": {"mode": "train"}, "eval": {"mode": "eval"}, "traj3": {"mode": "trajectory", "steps": 3}}
OFFSET = {"name": "offset", "x": {"dist": "normal", "loc": 1e4, "scale": 1.0}}
SEEDS = range(4)


@pytest.mark.parametrize("summation", ["pairwise", "sequential"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_float32_standard_cases_pass(shape: str, summation: str) -> None:
    """A correct float32 kernel passes train, eval and trajectory cases of every rank, with gradients."""
    cases = [mk(SHAPES[shape], grad=True, seed=s, **mode) for mode in MODES.values() for s in SEEDS]
    assert_all_pass(f"A float32 {shape} {summation}", cases, Kernel(summation=summation))


@pytest.mark.parametrize("fold", [False, True])
def test_float32_channels_last_passes(fold: bool) -> None:
    """A correct float32 kernel passes channels_last cases, with y computed directly or folded into x*a + b."""
    cases = [mk([4, 6, 5, 5], layout="channels_last", grad=True, seed=s, **mode) for mode in MODES.values() for s in SEEDS]
    assert_all_pass(f"A float32 channels_last fold={fold}", cases, Kernel(fold=fold))


def test_float32_welford_passes() -> None:
    """A float32 kernel with Welford's running variance passes."""
    cases = [mk([8, 6, 6, 6], grad=True, seed=s, **mode) for mode in (MODES["train"], MODES["traj3"]) for s in SEEDS]
    assert_all_pass("A float32 4d welford", cases, Kernel(variance="welford"))


@pytest.mark.parametrize("fold", [False, True])
def test_float32_mean_offset_two_pass_passes(fold: bool) -> None:
    """A two-pass float32 kernel passes data with mean 1e4 (variance 1), direct or folded y."""
    cases = [mk([8, 6, 6, 6], grad=True, regime=OFFSET, seed=s, **mode) for mode in MODES.values() for s in SEEDS]
    assert_all_pass(f"A float32 offset 1e4 two-pass fold={fold}", cases, Kernel(fold=fold))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_inputs_with_float32_accumulation_pass(dtype: str) -> None:
    """float16/bfloat16 inputs computed in float32 and rounded once to the input dtype pass."""
    cases = [mk([8, 6, 6, 6], dtype=dtype, grad=True, seed=s, **mode) for mode in MODES.values() for s in SEEDS]
    cases.append(mk([32, 4, 16, 16], dtype=dtype, grad=True))
    assert_all_pass(f"A {dtype} (float32 accumulation)", cases)


def test_float64_passes() -> None:
    """A correct float64 kernel passes against the long-double reference (control for the ONNX attribute fault)."""
    cases = [mk([8, 6, 6, 6], dtype="float64", grad=True, seed=s, **mode) for mode in MODES.values() for s in SEEDS]
    assert_all_pass("A float64", cases, Kernel(acc=np.float64))


LARGE = [64, 8, 32, 32]  # 65536 elements per channel


@pytest.mark.parametrize("summation", ["sequential", "pairwise"])
def test_large_case_passes(summation: str) -> None:
    """65536 elements per channel: float32 sums in sequential (cumsum) and pairwise (np.sum) order both pass."""
    case = mk(LARGE, mode="trajectory", steps=1, grad=True)
    ratio = assert_all_pass(f"A float32 large {summation}", [case], Kernel(summation=summation))
    # a sequential float32 sum of 65536 terms must still leave a real margin under the probabilistic bound
    assert ratio < 0.5


# ---- B. faulty kernels are flagged -----------------------------------------------------------------
STD = dict(grad=True)
TRAIN = mk([8, 6, 6, 6], **STD)
TRAJ = mk([8, 6, 6, 6], mode="trajectory", steps=3, **STD)


def test_eps_outside_sqrt_flagged() -> None:
    """y = (x - mean) / (sqrt(var) + eps) with eps = 1e-3 is flagged on y; batch statistics are untouched."""
    case = mk([8, 6, 6, 6], eps=1e-3, **STD)
    assert_flagged("B eps outside sqrt (eps=1e-3)", case, Kernel(eps_placement="outside"), "train0.y",
                   unaffected=("train0.batch_mean", "train0.batch_var", "train0.running_mean", "train0.running_var", "train0.dbeta"))


def test_eps_outside_sqrt_small_variance_flagged() -> None:
    """eps outside the square root is flagged with the default eps when the variance is small (x scale 1e-2)."""
    case = mk([8, 6, 6, 6], regime={"name": "small_var", "x": {"dist": "normal", "loc": 0.0, "scale": 1e-2}}, **STD)
    assert_flagged("B eps outside sqrt (var~1e-4)", case, Kernel(eps_placement="outside"), "train0.y",
                   unaffected=("train0.batch_mean", "train0.batch_var"))


@pytest.mark.parametrize("label,kw", [
    ("eps=1e-3", {"eps": 1e-3}),
    ("var~1e-4", {"regime": {"name": "small_var", "x": {"dist": "normal", "loc": 0.0, "scale": 1e-2}}}),
])
def test_eps_ignored_flagged(label: str, kw: dict[str, Any]) -> None:
    """Normalising with 1/sqrt(var) (eps ignored) is flagged on y."""
    assert_flagged(f"B eps ignored ({label})", mk([8, 6, 6, 6], **STD, **kw), Kernel(eps_placement="ignored"), "train0.y",
                   unaffected=("train0.batch_mean", "train0.batch_var", "train0.running_var"))


def test_biased_running_var_is_named() -> None:
    """A biased running update under a declared unbiased convention is flagged on running_var, which matches 'biased'."""
    v = assert_flagged("B biased running var", TRAJ, Kernel(running_var="biased"), "train0.running_var",
                       unaffected=("train0.y", "train0.running_mean", "train0.batch_var", "train0.dx"))
    rv = v["train0.running_var"]
    assert rv.convention == "unbiased"
    assert rv.matches == ["biased"]
    assert "biased running-variance convention instead of the declared unbiased" in rv.note
    assert all(not v[f"{p}.running_var"].passed and v[f"{p}.running_var"].matches == ["biased"] for p in ("train1", "train2"))
    # the correct kernel's running_var matches only the declared convention
    assert run(TRAJ)["train0.running_var"].matches == ["unbiased"]


def test_unbiased_normalisation_flagged() -> None:
    """Normalising with the unbiased variance is flagged on y (and invstd); the batch mean is untouched."""
    assert_flagged("B unbiased var normalises", TRAIN, Kernel(norm_var="unbiased"), "train0.y",
                   unaffected=("train0.batch_mean", "train0.running_mean", "train0.running_var", "train0.dbeta"))
    assert not run(TRAIN, Kernel(norm_var="unbiased"))["train0.batch_invstd"].passed


def test_flipped_momentum_flagged() -> None:
    """Weighting the batch statistic by 1 - momentum is flagged on running_mean; y is untouched."""
    assert_flagged("B momentum 1-m", TRAJ, Kernel(momentum="flipped"), "train0.running_mean",
                   unaffected=("train0.y", "train0.batch_mean", "train0.dx"))


def test_running_update_with_previous_batch_flagged() -> None:
    """Updating with the previous step's batch statistics passes step 0 and is flagged from step 1 on."""
    v = assert_flagged("B running update, previous batch", TRAJ, Kernel(running_update="previous"), "train1.running_mean",
                       unaffected=("train0.running_mean", "train0.running_var", "train1.y", "train1.batch_mean"))
    assert not v["train1.running_var"].passed and not v["eval.y"].passed


def test_running_stats_not_updated_flagged() -> None:
    """Never updating the running statistics is flagged on running_mean and running_var of the first step."""
    v = assert_flagged("B running stats not updated", TRAJ, Kernel(running_update="none"), "train0.running_mean",
                       unaffected=("train0.y", "train0.batch_mean", "train0.dx"))
    assert not v["train0.running_var"].passed


def test_one_pass_variance_on_mean_offset_flagged() -> None:
    """E[x^2] - E[x]^2 in float32 on data with mean 1e4 is flagged on batch_var and y; the mean is still fine."""
    case = mk([8, 6, 6, 6], regime=OFFSET, **STD)
    v = assert_flagged("B one-pass variance, offset 1e4", case, Kernel(variance="one-pass"), "train0.batch_var",
                       unaffected=("train0.batch_mean", "train0.running_mean", "train0.dbeta"))
    assert not v["train0.y"].passed


def test_float16_accumulation_flagged() -> None:
    """Summing float16 inputs in float16 (8192 elements per channel) is flagged on the batch statistics."""
    case = mk([32, 4, 16, 16], dtype="float16", **STD)
    v = assert_flagged("B float16 accumulation", case, Kernel(sum_dtype=np.float16, summation="sequential"), "train0.batch_var")
    assert not v["train0.batch_mean"].passed and not v["train0.y"].passed


def test_eval_with_batch_statistics_flagged() -> None:
    """Eval mode normalising with batch instead of running statistics is flagged on eval.y."""
    case = mk([8, 6, 6, 6], mode="eval", **STD)
    assert_flagged("B eval uses batch stats", case, Kernel(eval_stats="batch"), "eval.y")
    assert_flagged("B eval uses batch stats (trajectory)", TRAJ, Kernel(eval_stats="batch"), "eval.y",
                   unaffected=("train2.y", "train2.running_mean", "train2.running_var"))


def test_dx_without_mean_dy_flagged() -> None:
    """dx that omits the mean(dy) term is flagged on dx; the forward pass and dgamma/dbeta are untouched."""
    assert_flagged("B dx without mean(dy)", TRAIN, Kernel(dx_mean_dy=False), "train0.dx",
                   unaffected=("train0.y", "train0.dgamma", "train0.dbeta"))


def test_dgamma_wrong_sign_flagged() -> None:
    """A dgamma of the wrong sign is flagged on dgamma; dbeta and dx are untouched."""
    assert_flagged("B dgamma sign", TRAIN, Kernel(dgamma_sign=-1.0), "train0.dgamma",
                   unaffected=("train0.dbeta", "train0.dx", "train0.y"))


F64_TRAJ = mk([8, 6, 6, 6], dtype="float64", mode="trajectory", steps=3, grad=True)


def test_float64_with_float32_attributes_flagged() -> None:
    """A float64 kernel whose eps and momentum went through float32 (ONNX attributes) is flagged on running_mean and y."""
    k = Kernel(acc=np.float64, float32_eps=True, float32_momentum=True)
    v = assert_flagged("B float64, float32 eps+momentum", F64_TRAJ, k, "train0.running_mean",
                       unaffected=("train0.batch_mean", "train0.batch_var", "train0.dbeta"))
    assert not v["train0.running_var"].passed and not v["train0.y"].passed


def test_float64_with_float32_momentum_only_flagged() -> None:
    """float32(1 - momentum) alone is flagged on the running statistics; the forward pass is untouched."""
    k = Kernel(acc=np.float64, float32_momentum=True)
    assert_flagged("B float64, float32 momentum only", F64_TRAJ, k, "train0.running_mean",
                   unaffected=("train0.y", "train0.batch_invstd", "train0.dx"))


def test_float64_with_float32_eps_only_flagged() -> None:
    """float32(eps) alone (a relative change of 2.5e-9 in eps = 1e-5) is flagged on y and invstd of a float64 kernel."""
    k = Kernel(acc=np.float64, float32_eps=True)
    v = assert_flagged("B float64, float32 eps only", F64_TRAJ, k, "train0.batch_invstd",
                       unaffected=("train0.batch_mean", "train0.batch_var", "train0.running_mean", "train0.running_var"))
    assert not v["train0.y"].passed


@pytest.mark.parametrize("loc", [1e2, 1e3])
def test_bessel_faults_flagged_on_offset_data(loc: float) -> None:
    """With mean offsets up to 1e3 the three n vs n-1 faults stay distinguishable (batch_var, y/invstd, running_var)."""
    case = mk([8, 6, 6, 6], grad=True, mode="trajectory", steps=3,
              regime={"name": f"offset{loc:g}", "x": {"dist": "normal", "loc": loc, "scale": 1.0}})
    assert_flagged(f"B batch_var unbiased, offset {loc:g}", case, Kernel(saved_var="unbiased"), "train0.batch_var",
                   unaffected=("train0.y", "train0.running_var"))
    assert_flagged(f"B unbiased var normalises, offset {loc:g}", case, Kernel(norm_var="unbiased"), "train0.batch_invstd",
                   unaffected=("train0.batch_var", "train0.running_var"))
    v = assert_flagged(f"B biased running var, offset {loc:g}", case, Kernel(running_var="biased"), "train0.running_var",
                       unaffected=("train0.y", "train0.batch_var"))
    assert v["train0.running_var"].matches == ["biased"]


# ---- C. small magnitudes: the bound floor --------------------------------------------------------
def _scaled(scale: float) -> dict[str, Any]:
    """A regime with zero-mean normal x of the given spread."""
    return {"name": f"scale{scale:g}", "x": {"dist": "normal", "loc": 0.0, "scale": scale}}


@pytest.mark.parametrize("scale", [1.0, 1e-2, 1e-3])
def test_batch_var_reported_unbiased_flagged(scale: float) -> None:
    """Reporting the unbiased variance as batch_var (a relative error of 1/(n-1) = 3.5e-3) is flagged at every data scale."""
    case = mk([8, 6, 6, 6], grad=True, regime=_scaled(scale))
    assert_flagged(f"C batch_var unbiased, x scale {scale:g}", case, Kernel(saved_var="unbiased"), "train0.batch_var",
                   unaffected=("train0.y", "train0.batch_mean", "train0.running_var", "train0.dx"))


@pytest.mark.parametrize("gamma", [1.0, 1e-2])
def test_float16_unbiased_normalisation_flagged(gamma: float) -> None:
    """float16 y normalised with the unbiased variance (relative error 1/(2n) = 1.7e-3) is flagged, also for small gamma."""
    regime = {"name": f"gamma{gamma:g}", "gamma": {"dist": "constant", "value": gamma}, "beta": {"dist": "constant", "value": 0.0}}
    case = mk([8, 6, 6, 6], dtype="float16", grad=True, regime=regime)
    assert_flagged(f"C float16 unbiased var normalises, gamma {gamma:g}", case, Kernel(norm_var="unbiased"), "train0.y",
                   unaffected=("train0.batch_mean", "train0.running_mean"))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_bound_floor_is_the_smallest_subnormal(dtype: str) -> None:
    """A quantity whose bound is zero (dy = 0: dx, dgamma, dbeta are exactly 0) gets the smallest subnormal as its floor."""
    case = mk([8, 6, 6, 6], dtype=dtype, grad=True, regime={"name": "zero_dy", "dy": {"dist": "constant", "value": 0.0}})
    inputs, refs, bounds = prepared(case)
    b = bounds["unbiased"]
    tiny = {"float16": 2.0**-24, "float32": 2.0**-149}
    floors = {q: float(np.max(b[f"train0.{q}"])) for q in ("dx", "dgamma", "dbeta")}
    record(f"C bound floor {dtype}", ", ".join(f"{q} {f:.3g}" for q, f in floors.items()))
    # a kernel whose dx should be exactly 0 but carries garbage of 1e-8 (float32) or 2**-20 (float16) must be flagged
    garbage = {"float32": 1e-8, "float16": 2.0**-20}[dtype]
    obs = emulate(case, inputs)
    assert not obs["train0.dx"].any()
    obs["train0.dx"] = obs["train0.dx"] + garbage
    verdicts = {v.key: v for v in compare(case, obs, refs, bounds, DECLARED)}
    record(f"C dx garbage {garbage:.3g} with dy=0, {dtype}", f"train0.dx ratio {verdicts['train0.dx'].ratio:.3g}")
    assert not verdicts["train0.dx"].passed
    assert floors["dx"] == tiny[dtype]
    assert floors["dgamma"] == floors["dbeta"] == tiny[case.param_dtype]


# ---- the weaker-kernel models of the diagnosis hold their own kernels ---------------------------------------
def _within_model(case: Case, k: Kernel, **model: Any) -> tuple[float, int, int]:
    """(worst ratio over the constrained elements, NaN elements, unconstrained elements) of kernel `k` under
    compute_bounds(**model); a NaN observation is only allowed where the model's bound is +inf (unconstrained)."""
    inputs, refs, _ = prepared(case)
    ref = refs["unbiased"]
    bounds = compute_bounds(case, inputs, ref, **model)
    obs = emulate(case, inputs, k)
    worst, nans, free_n = 0.0, 0, 0
    for key, o in obs.items():
        b = np.broadcast_to(bounds[key], o.shape)
        free = ~np.isfinite(b)
        free_n += int(free.sum())
        nan = np.isnan(o) & ~np.isnan(ref.values[key])
        nans += int(nan.sum())
        assert not (nan & ~free).any(), f"{key}: NaN where the model bounds the value"
        with np.errstate(all="ignore"):
            r = np.where(free | np.isnan(o), 0.0, np.abs(o - ref.values[key]) / b)
        worst = max(worst, float(r.max(initial=0.0)))
    return worst, nans, free_n


@pytest.mark.parametrize("loc", [0.0, 1e1, 1e2, 3e2, 1e3, 3e3, 1e4, 1e5])
def test_one_pass_model_holds_a_one_pass_kernel(loc: float) -> None:
    """The one-pass precision model (interval propagation through 1/sqrt(v + eps)) bounds a float32 one-pass kernel
    at every mean offset, including those where the variance cancels to 0 or below (its invstd, y and dx are then
    NaN or arbitrary, and the model leaves exactly those elements unconstrained); batch and running statistics stay
    constrained throughout."""
    for seed in range(3):
        case = mk([8, 6, 6, 6], regime={"name": f"offset{loc:g}", "x": {"dist": "normal", "loc": loc, "scale": 1.0}},
                  grad=True, mode="trajectory", steps=2, seed=seed)
        worst, nans, free_n = _within_model(case, Kernel(variance="one-pass"), variance="one-pass")
        RATIOS[f"M one-pass model, offset {loc:g}, seed {seed}"] = f"worst {worst:.3g}, NaN {nans}, unconstrained {free_n}"
        assert worst <= 1.0
        inputs, refs, _ = prepared(case)
        b = compute_bounds(case, inputs, refs["unbiased"], variance="one-pass")
        for q in ("batch_mean", "batch_var", "batch_var_unbiased", "running_mean", "running_var", "dbeta"):
            assert np.isfinite(b[f"train0.{q}"]).all(), q
        if loc <= 1e2:
            assert free_n == 0, "the variance cannot cancel at small offsets: every element is constrained"
        if loc >= 1e4:
            assert free_n > 0


@pytest.mark.parametrize("loc", [0.0, 1e2, 1e4])
def test_combined_model_holds_a_float32_one_pass_kernel_on_float64(loc: float) -> None:
    """float64 data computed in float32 in one pass stays within the combined model's bound."""
    case = mk([8, 6, 6, 6], dtype="float64", regime={"name": f"offset{loc:g}", "x": {"dist": "normal", "loc": loc, "scale": 1.0}},
              grad=True, mode="trajectory", steps=2)
    worst, _, _ = _within_model(case, Kernel(acc=np.float32, variance="one-pass"),
                                accumulation="float32", output="float32", variance="one-pass")
    RATIOS[f"M one-pass float32 model on float64, offset {loc:g}"] = f"worst {worst:.3g}"
    assert worst <= 1.0


def test_one_pass_interval_is_not_first_order() -> None:
    """Where the one-pass variance error is a large fraction of the variance, the invstd bound is the interval's
    (1/sqrt(var - e_var + eps) - s), larger than the first-order 0.5 s e_var / var; where it is small they agree."""
    from bncheck.tolerance import _invstd_interval
    var, eps, ua = np.array([1.0, 1.0, 1.0]), 1e-5, 2.0**-24
    s = 1.0 / np.sqrt(var + eps)
    e = np.array([1e-6, 0.75, 2.0])
    b = _invstd_interval(var, e, eps, s, ua)
    first_order = 0.5 * s * e / (var + eps)
    rounding = 3 * ua * s  # the add, sqrt and divide
    assert b[0] == pytest.approx(first_order[0] + rounding[0], rel=1e-3)
    assert b[1] == pytest.approx(1.0 / np.sqrt(0.25 + eps) - s[1], rel=1e-5) and b[1] > 2.5 * first_order[1]
    assert np.isinf(b[2])  # var - e_var + eps < 0: any invstd (or NaN) is possible
