"""The reference: BN forward, batch and running statistics and backward, in float64 or wider arithmetic.

float16, bfloat16 and float32 cases are computed in float64; float64 cases in the platform's extended
long double where it is wider than float64 (x86-64: 64-bit significand), otherwise with exactly rounded
sums (math.fsum), so that a float64 target can still be judged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .cases import Case
from .inputs import Inputs

RUNNING_VAR_CONVENTIONS = ("unbiased", "biased")
_LONGDOUBLE_IS_WIDER = np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant


@dataclass
class PhaseStats:
    """Per-channel facts of one phase that tolerances need (all float64 arrays of shape (C,))."""

    n: int
    batch_stats: bool  # normalised with batch statistics (training, or eval without running statistics)
    mean: np.ndarray
    var: np.ndarray  # biased batch variance
    abs_mean: np.ndarray  # mean |x|
    invstd: np.ndarray  # the inverse standard deviation actually used to normalise
    centre: np.ndarray  # the mean actually used to normalise
    gamma: np.ndarray
    beta: np.ndarray
    running_mean_in: np.ndarray | None = None
    running_var_in: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Reference:
    """Reference values (float64, physical layout for tensors, (C,) for statistics) and per-phase facts."""

    values: dict[str, np.ndarray]
    stats: dict[str, PhaseStats]
    running_var: str
    precision: str
    metrics: dict[str, float | None] = field(default_factory=dict)  # case-level measurements, e.g. the train/eval gap


def working_dtype(case: Case) -> np.dtype:
    """The arithmetic the reference uses for this case."""
    if case.dtype == "float64" and _LONGDOUBLE_IS_WIDER:
        return np.dtype(np.longdouble)
    return np.dtype(np.float64)


def precision_label(case: Case) -> str:
    """Human description of the reference arithmetic for this case."""
    if case.dtype != "float64":
        return "float64"
    return f"long double ({np.finfo(np.longdouble).nmant + 1}-bit significand)" if _LONGDOUBLE_IS_WIDER else "float64 with exact sums"


def _channel_sum(a: np.ndarray, exact: bool) -> np.ndarray:
    """Sum over rows of a (rows, C) array; exactly rounded when `exact`."""
    if exact:
        return np.array([math.fsum(col) for col in np.asarray(a, dtype=np.float64).T])
    return a.sum(axis=0)


def _rows(case: Case, arr: np.ndarray, wd: np.dtype) -> np.ndarray:
    """Physical array -> (elements per channel, C) in the working dtype."""
    a = np.asarray(arr, dtype=wd)
    if case.layout == "channels_first":
        a = np.moveaxis(a, 1, -1)
    return a.reshape(-1, case.channels)


def _physical(case: Case, rows: np.ndarray) -> np.ndarray:
    """(elements per channel, C) -> physical array as float64."""
    logical_last = rows.reshape(case.physical_shape if case.layout == "channels_last" else (case.shape[0], *case.shape[2:], case.channels))
    if case.layout == "channels_first":
        logical_last = np.moveaxis(logical_last, -1, 1)
    return np.ascontiguousarray(logical_last, dtype=np.float64)


def compute_reference(case: Case, inputs: Inputs, running_var: str = "unbiased") -> Reference:
    """Every observable quantity of `case`, with running variance updated by the given convention."""
    return _compute(case, inputs, (running_var,))[running_var]


def _compute(case: Case, inputs: Inputs, conventions: tuple[str, ...]) -> dict[str, Reference]:
    """The reference under each of `conventions`, in one pass: only what depends on the running variance
    (its updates, and evaluation with running statistics) is computed per convention; the rest is shared."""
    for c in conventions:
        if c not in RUNNING_VAR_CONVENTIONS:
            raise ValueError(f"running_var must be one of {RUNNING_VAR_CONVENTIONS}")
    wd = working_dtype(case)
    exact = case.dtype == "float64" and not _LONGDOUBLE_IS_WIDER
    C = case.channels
    one = wd.type(1)
    eps, m = wd.type(case.eps), wd.type(case.momentum)
    gamma = np.asarray(inputs["gamma"], dtype=wd) if case.affine else np.ones(C, wd)
    beta = np.asarray(inputs["beta"], dtype=wd) if case.affine else np.zeros(C, wd)
    rm = np.asarray(inputs["running_mean"], dtype=wd) if case.track_running_stats else None
    rv0 = np.asarray(inputs["running_var"], dtype=wd) if case.track_running_stats else None
    rvs = {c: rv0 for c in conventions}
    values: dict[str, dict[str, np.ndarray]] = {c: {} for c in conventions}
    stats: dict[str, dict[str, PhaseStats]] = {c: {} for c in conventions}
    metrics: dict[str, dict[str, float | None]] = {c: {} for c in conventions}
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731

    def put(key: str, value: np.ndarray) -> None:
        """A value every convention shares."""
        for c in conventions:
            values[c][key] = value

    with np.errstate(all="ignore"):
        for phase in case.phases:
            X = _rows(case, inputs[f"{phase}.x"], wd)
            n = X.shape[0]
            mean = _channel_sum(X, exact) / n
            d = X - mean
            ssq = _channel_sum(d * d, exact)
            var_b = ssq / n
            var_u = ssq / (n - 1) if n > 1 else np.full(C, np.nan, wd)
            training = phase != "eval"
            batch_stats = training or not case.track_running_stats
            abs_mean = f64(_channel_sum(np.abs(X), exact) / n)
            # per convention: (centre, invstd, xhat) used to normalise; shared objects when they cannot differ
            if batch_stats:
                invstd = one / np.sqrt(var_b + eps)
                xhat = d * invstd
                Y = gamma * xhat + beta
                y = _physical(case, Y)
                norm = {c: (mean, invstd, xhat, y) for c in conventions}
            else:
                norm = {}
                batch_y = gamma * (d / np.sqrt(var_b + eps)) + beta
                for c in conventions:
                    inv = one / np.sqrt(rvs[c] + eps)
                    xh = (X - rm) * inv
                    Yc = gamma * xh + beta
                    norm[c] = (rm, inv, xh, _physical(case, Yc))
                    # the train/eval gap: eval output (running statistics) against the same batch's own statistics
                    gap = np.abs(Yc - batch_y)
                    finite = gap[np.isfinite(gap)]
                    metrics[c]["train_eval_gap_max"] = float(finite.max()) if finite.size else None
                    metrics[c]["train_eval_gap_mean"] = float(finite.mean()) if finite.size else None
            for c in conventions:
                values[c][f"{phase}.y"] = norm[c][3]
            shared_stats = dict(n=n, batch_stats=batch_stats, mean=f64(mean), var=f64(var_b), abs_mean=abs_mean,
                                gamma=f64(gamma), beta=f64(beta), running_mean_in=None if rm is None else f64(rm))
            phase_stats = {c: PhaseStats(**shared_stats, invstd=f64(norm[c][1]), centre=f64(norm[c][0]),
                                         running_var_in=None if rvs[c] is None else f64(rvs[c]))
                           for c in conventions}
            if batch_stats:
                put(f"{phase}.batch_mean", f64(mean))
                put(f"{phase}.batch_var", f64(var_b))
                put(f"{phase}.batch_var_unbiased", f64(var_u))
                put(f"{phase}.batch_invstd", f64(invstd))
            if training and case.track_running_stats:
                rm = (one - m) * rm + m * mean
                put(f"{phase}.running_mean", f64(rm))
                for c in conventions:
                    rvs[c] = (one - m) * rvs[c] + m * (var_u if c == "unbiased" else var_b)
                    values[c][f"{phase}.running_var"] = f64(rvs[c])
            if case.grad:
                dY = _rows(case, inputs[f"{phase}.dy"], wd)
                dbeta = _channel_sum(dY, exact)
                extras = {"abs_dy_mean": f64(_channel_sum(np.abs(dY), exact) / n), "dy_mean": f64(dbeta / n)}
                done: dict[int, tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = {}
                for c in conventions:
                    _, inv, xh, _ = norm[c]
                    if id(xh) not in done:  # conventions that normalised alike share their gradients
                        dgamma = _channel_sum(dY * xh, exact)
                        if batch_stats:
                            dX = gamma * inv * (dY - dbeta / n - xh * (dgamma / n))
                        else:
                            dX = gamma * inv * dY
                        done[id(xh)] = (_physical(case, dX), dgamma, {
                            "abs_dy_xhat_mean": f64(_channel_sum(np.abs(dY * xh), exact) / n),
                            "dy_xhat_mean": f64(dgamma / n)})
                    dx, dgamma, own = done[id(xh)]
                    values[c][f"{phase}.dx"] = dx
                    if case.affine:
                        values[c][f"{phase}.dgamma"] = f64(dgamma)
                        values[c][f"{phase}.dbeta"] = f64(dbeta)
                    phase_stats[c].extras.update(extras, **own)
            for c in conventions:
                stats[c][phase] = phase_stats[c]
    label = precision_label(case)
    return {c: Reference(values=values[c], stats=stats[c], running_var=c, precision=label, metrics=metrics[c])
            for c in conventions}


def convention_matters(case: Case) -> bool:
    """True when the running-variance convention changes some reference value (a training step updates running statistics)."""
    return case.track_running_stats and any(phase != "eval" for phase in case.phases)


def compute_references(case: Case, inputs: Inputs) -> dict[str, Reference]:
    """The reference under each running-variance convention, computed once when the convention cannot matter."""
    if convention_matters(case):
        return _compute(case, inputs, RUNNING_VAR_CONVENTIONS)
    ref = compute_reference(case, inputs, RUNNING_VAR_CONVENTIONS[0])
    return {c: ref if c == ref.running_var else replace(ref, running_var=c) for c in RUNNING_VAR_CONVENTIONS}


def quantity_of(key: str) -> str:
    """'train0.running_var' -> 'running_var'."""
    return key.split(".", 1)[1]


def phase_of(key: str) -> str:
    """'train0.running_var' -> 'train0'."""
    return key.split(".", 1)[0]
