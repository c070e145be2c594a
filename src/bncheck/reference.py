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
EPS_PLACEMENTS = ("inside_sqrt", "outside_sqrt")  # where eps enters: 1/sqrt(var + eps) or 1/(sqrt(var) + eps)
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
    eps_placement: str = "inside_sqrt"  # the normalisation the values follow (a target's declared placement)


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


def compute_reference(case: Case, inputs: Inputs, running_var: str = "unbiased",
                      eps_placement: str = "inside_sqrt") -> Reference:
    """Every observable quantity of `case`, with running variance updated by the given convention."""
    return _compute(case, inputs, (running_var,), eps_placement)[running_var]


def inverse_std(var: np.ndarray, eps: np.ndarray, eps_placement: str = "inside_sqrt") -> np.ndarray:
    """1/sqrt(var + eps), or 1/(sqrt(var) + eps) for eps outside the root, in the arithmetic of `var`."""
    one = np.asarray(var).dtype.type(1)
    if eps_placement == "outside_sqrt":
        return one / (np.sqrt(var) + eps)
    return one / np.sqrt(var + eps)


def _compute(case: Case, inputs: Inputs, conventions: tuple[str, ...],
             eps_placement: str = "inside_sqrt") -> dict[str, Reference]:
    """The reference under each of `conventions`, in one pass: only what depends on the running variance
    (its updates, and evaluation with running statistics) is computed per convention; the rest is shared."""
    for c in conventions:
        if c not in RUNNING_VAR_CONVENTIONS:
            raise ValueError(f"running_var must be one of {RUNNING_VAR_CONVENTIONS}")
    if eps_placement not in EPS_PLACEMENTS:
        raise ValueError(f"eps_placement must be one of {EPS_PLACEMENTS}")
    inv = lambda v: inverse_std(v, eps, eps_placement)  # noqa: E731
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
                invstd = inv(var_b)
                xhat = d * invstd
                Y = gamma * xhat + beta
                y = _physical(case, Y)
                norm = {c: (mean, invstd, xhat, y) for c in conventions}
            else:
                norm = {}
                batch_y = gamma * (d * inv(var_b)) + beta
                for c in conventions:
                    s_c = inv(rvs[c])
                    xh = (X - rm) * s_c
                    Yc = gamma * xh + beta
                    norm[c] = (rm, s_c, xh, _physical(case, Yc))
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
                    _, s_c, xh, _ = norm[c]
                    if id(xh) not in done:  # conventions that normalised alike share their gradients
                        dgamma = _channel_sum(dY * xh, exact)
                        if batch_stats and eps_placement == "outside_sqrt":
                            # y = gamma (x - mu) s(v), s = 1/(sqrt(v) + eps), ds/dv = -s^2 / (2 sqrt(v)), dv/dx = 2 d / n:
                            # dx = gamma (s (dy - mean dy) - s^2 d sum(dy d) / (n sqrt(v))); 0 where v = 0 (d = 0)
                            sd = np.sqrt(var_b)
                            k = np.where(sd > 0, s_c * s_c * _channel_sum(dY * d, exact) / (n * np.where(sd > 0, sd, one)), 0)
                            dX = gamma * (s_c * (dY - dbeta / n) - d * k)
                        elif batch_stats:
                            dX = gamma * s_c * (dY - dbeta / n - xh * (dgamma / n))
                        else:
                            dX = gamma * s_c * dY
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
    return {c: Reference(values=values[c], stats=stats[c], running_var=c, precision=label, metrics=metrics[c],
                         eps_placement=eps_placement) for c in conventions}


def convention_matters(case: Case) -> bool:
    """True when the running-variance convention changes some reference value (a training step updates running statistics)."""
    return case.track_running_stats and any(phase != "eval" for phase in case.phases)


def compute_references(case: Case, inputs: Inputs, eps_placement: str = "inside_sqrt") -> dict[str, Reference]:
    """The reference under each running-variance convention, computed once when the convention cannot matter."""
    if convention_matters(case):
        return _compute(case, inputs, RUNNING_VAR_CONVENTIONS, eps_placement)
    ref = compute_reference(case, inputs, RUNNING_VAR_CONVENTIONS[0], eps_placement)
    return {c: ref if c == ref.running_var else replace(ref, running_var=c) for c in RUNNING_VAR_CONVENTIONS}


def quantity_of(key: str) -> str:
    """'train0.running_var' -> 'running_var'."""
    return key.split(".", 1)[1]


def phase_of(key: str) -> str:
    """'train0.running_var' -> 'train0'."""
    return key.split(".", 1)[0]
