"""Error bounds per quantity from the dtype's unit roundoff, elements per channel and channel conditioning.

Every bound is an absolute, element-wise (or per-channel) first-order bound on |computed - exact| for a
correct implementation that accumulates in at least float32 (float64 for float64 inputs) and uses a
two-pass or Welford variance. Sums of k terms follow the probabilistic bound of Higham and Mary
(SIAM J. Sci. Comput. 2019): |error| <= lambda * sqrt(k) * u * sum|terms|, capped by the deterministic
k*u/(1 - k*u). Terms that scale with |x| rather than |x - mean| are the problem's own conditioning: a
backward-stable kernel may perturb x by u|x|, which moves y by u |x| |gamma| / sigma. The derivation
is written out in docs/tolerances.md.
"""

from __future__ import annotations

import numpy as np

from .cases import Case
from .dtypes import accumulation_dtype, smallest_subnormal, unit_roundoff
from .inputs import Inputs
from .reference import Reference, _physical, _rows, quantity_of

LAMBDA = 6.0  # probabilistic confidence: P(bound exceeded) <= 2 exp(-LAMBDA**2 / 2) per sum (about 3e-8)


def output_dtype(case: Case, quantity: str) -> str:
    """The dtype a correct implementation returns `quantity` in."""
    if quantity in ("y", "dx"):
        return case.dtype
    return case.param_dtype  # parameters, running and batch statistics live in the parameter dtype


def gamma_k(k: int | float, u: float, sequential: bool = False) -> float:
    """Bound factor for a sum of k terms: min(lambda*sqrt(k), k/(1-k*u)) * u; the deterministic k/(1-k*u) * u
    alone for `sequential` sums (one accumulator: the rounding errors correlate, the probabilistic bound fails)."""
    det = k / (1.0 - k * u) if k * u < 0.5 else np.inf
    return float((det if sequential else min(LAMBDA * np.sqrt(k), det)) * u)


def _invstd_interval(v: np.ndarray, e_v: np.ndarray, eps: float, s: np.ndarray, ua: float, clamped: bool = False,
                     outside: bool = False, nonnegative: bool = False) -> np.ndarray:
    """Bound on |computed invstd - s| for any computed variance v' in [v - e_v, v + e_v] (clamped or not).

    invstd = 1/sqrt(v' + eps) (or 1/(sqrt(v') + eps) for eps `outside` the root) is decreasing and convex,
    so the largest deviation is at an end of the interval. `clamped`: the kernel takes max(v', 0) (Flax);
    `nonnegative`: v' cannot be negative (a two-pass sum of squares). +inf where the lower end gives no finite
    invstd (v' + eps <= 0 inside the root; a negative v' outside it): a kernel may then return any large
    invstd, or NaN. Plus the add, sqrt and divide roundings at the larger invstd.
    """
    low = v - e_v
    if clamped or nonnegative:
        low = np.maximum(low, 0.0)
    if outside:
        s_lo = 1.0 / (np.sqrt(v + e_v) + eps)
        ok = low >= 0
        den = np.sqrt(np.where(ok, low, 0.0)) + eps
        s_hi = np.where(ok & (den > 0), 1.0 / np.where(den > 0, den, 1.0), np.inf)
    else:
        lo = low + eps
        s_lo = 1.0 / np.sqrt(v + e_v + eps)
        s_hi = np.where(lo > 0, 1.0 / np.sqrt(np.where(lo > 0, lo, 1.0)), np.inf)
    dev = np.maximum(s_hi - s, s - s_lo)
    return dev + 3 * ua * np.where(np.isfinite(s_hi), s_hi, np.inf)


VARIANCE_MODELS = ("two-pass", "one-pass", "one-pass-clamped")


def compute_bounds(case: Case, inputs: Inputs, ref: Reference, *, accumulation: str | None = None,
                   output: str | None = None, variance: str = "two-pass", summation: str | None = None,
                   statistics: str | None = None, elementwise: str | None = None,
                   reuse: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Absolute error bound for every reference quantity, broadcastable to its values.

    The defaults describe a correct kernel. The keywords describe a weaker one, for diagnosis:
    `accumulation` / `output` name the dtype sums and outputs are computed in, and
    `variance="one-pass"` models E[x^2] - E[x]^2, whose error e_var scales with E[x^2] instead of var.
    That error can exceed the variance itself (catastrophic cancellation): the one-pass model then bounds
    the computed variance in [var - e_var, var + e_var] (a kernel may clamp it at 0) and propagates the
    interval through 1/sqrt(v + eps) exactly instead of to first order. Where v + eps can reach 0 the
    kernel may return anything from 1/sqrt(eps) to NaN: the bound is +inf there, meaning "unconstrained"
    (nothing follows from the hypothesis for those elements), not "any error is explained".
    `variance="one-pass-clamped"` is the same kernel taking max(v, 0): the interval's lower end is 0, so with
    eps > 0 every element stays constrained (a constant channel's variance is a cancellation residue >= 0).
    `summation="sequential"`: sums with one accumulator (the deterministic n*u bound of every sum).
    `statistics=DTYPE`: the batch statistics are rounded to DTYPE before the output uses them (half-precision
    statistics). `elementwise=DTYPE`: the element-wise part ((x - mean) * invstd * gamma + beta, and the
    backward's element-wise terms) is computed in DTYPE while the sums keep the accumulation format.
    A reference computed with eps outside the root (`ref.eps_placement`) gets the interval propagation for
    invstd (the first-order form is for eps inside), and its training dx bound the factor 1 + eps/sqrt(var) of
    its derivative (approximate; no shipped target declares eps outside).

    `reuse`: the bounds of the same case and model under the other running-variance convention. Phases
    normalised with batch statistics do not depend on that convention, so their bounds are taken from it
    but for the running statistics (judging.expected_values: the result is identical, in less time).
    """
    if variance not in VARIANCE_MODELS:
        raise ValueError(f"variance model must be one of {VARIANCE_MODELS}, got {variance!r}")
    ua = unit_roundoff(accumulation or accumulation_dtype(case.dtype))
    ui = unit_roundoff(output or case.dtype)
    up = max(unit_roundoff(case.param_dtype), ui if output else 0.0)
    us = unit_roundoff(statistics) if statistics else 0.0  # rounding of the batch statistics before use
    uw = unit_roundoff(elementwise) if elementwise else 0.0  # rounding of the centre and invstd to the element-wise dtype
    ue = max(ua, uw)  # element-wise arithmetic
    sequential = summation == "sequential"
    g_of = lambda k: gamma_k(k, ua, sequential)  # noqa: E731
    m = case.momentum
    one_pass = variance != "two-pass"
    clamped = variance == "one-pass-clamped"
    outside = ref.eps_placement == "outside_sqrt"
    interval = one_pass or outside
    bounds: dict[str, np.ndarray] = {}
    err_rm = np.zeros(case.channels)  # error carried by the running statistics from earlier steps
    err_rv = np.zeros(case.channels)
    with np.errstate(all="ignore"):
        for phase in case.phases:
            st = ref.stats[phase]
            n = st.n
            g = g_of(n)
            ag, ab = np.abs(st.gamma), np.abs(st.beta)
            # batch mean and (biased) variance, two-pass in the accumulation precision
            e_mean = g * st.abs_mean + ua * np.abs(st.mean)
            if one_pass:  # E[x^2] carries g E[x^2]; subtracting mean^2 adds 2|mean| e_mean
                e_var = (g + 3 * ua) * (st.var + st.mean**2) + 2 * np.abs(st.mean) * e_mean + e_mean**2
            else:
                e_var = (g + 3 * ua) * st.var + 2 * e_mean**2
            shared = st.batch_stats and reuse is not None
            r_out = 1.0
            if shared:  # all but the running statistics as under the other convention
                prefix = f"{phase}."
                bounds.update({k: v for k, v in reuse.items() if k.startswith(prefix)
                               and quantity_of(k) not in ("running_mean", "running_var")})
            elif st.batch_stats:
                s, centre = st.invstd, st.mean
                if interval:
                    e_s = _invstd_interval(st.var, e_var, case.eps, s, ua, clamped, outside, nonnegative=not one_pass)
                else:
                    # 1/sqrt(var + eps): half the relative error of var + eps, plus the add, sqrt and divide
                    e_s = s * (0.5 * (e_var + ua * (st.var + case.eps)) / (st.var + case.eps) + 2 * ua)
                if outside:  # dx's second term carries s^2 / sqrt(var) = s^3 (1 + eps / sqrt(var))
                    r_out = 1.0 + case.eps / np.sqrt(st.var)
                # statistics are stored in the parameter dtype (float16 for an all-float16 module), and y may use them
                e_stat_mean = e_mean + (up + us) * np.abs(st.mean)
                e_s = e_s + (up + us) * s
                bounds[f"{phase}.batch_mean"] = e_stat_mean
                bounds[f"{phase}.batch_var"] = e_var + (up + us) * st.var
                c = n / (n - 1) if n > 1 else np.nan
                bounds[f"{phase}.batch_var_unbiased"] = c * (e_var + ua * st.var) + (up + us) * c * st.var
                bounds[f"{phase}.batch_invstd"] = e_s
                e_centre = e_stat_mean + uw * np.abs(st.mean)
                e_s = e_s + uw * s
            else:
                s, centre = st.invstd, st.running_mean_in
                rv = st.running_var_in
                e_centre = err_rm + uw * np.abs(centre)
                if interval:  # the running variance carries the one-pass error, possibly beyond rv itself
                    e_s = _invstd_interval(rv, err_rv, case.eps, s, ua, clamped, outside, nonnegative=not one_pass)
                else:
                    e_s = s * (0.5 * (err_rv + ua * (np.abs(rv) + case.eps)) / np.abs(rv + case.eps) + 2 * ua)
                e_s = e_s + uw * s
            if not shared:
                X = _rows(case, inputs[f"{phase}.x"], np.float64)
                d = np.abs(X - centre)
                xhat = d * s
                y = np.abs(st.gamma * (X - centre) * s + st.beta)
                # the centre's and the element-wise rounding errors are scaled by the computed invstd, at most s + e_s;
                # the two-pass model keeps the first-order s (e_s << s there)
                s_up = s + e_s if interval else s
                r = s_up / s if interval else 1.0  # how much larger the computed invstd may be than the exact one
                e_xhat = s_up * (e_centre + 4 * ue * (np.abs(X) + np.abs(centre))) + d * e_s
                # y = a*x + b with a = gamma*s and b = beta - centre*a formed in the parameter dtype (or wider)
                uc = max(ue, up)
                e_y = ag * e_xhat + 2 * uc * (ag * xhat + ab + ag * s * np.abs(centre)) + ui * y
                bounds[f"{phase}.y"] = _physical(case, e_y)
            if phase != "eval" and case.track_running_stats:
                rm_in, rv_in = st.running_mean_in, st.running_var_in
                bessel = n / (n - 1) if (ref.running_var == "unbiased" and n > 1) else 1.0
                new_rm, new_rv = ref.values[f"{phase}.running_mean"], ref.values[f"{phase}.running_var"]
                e_m, e_v = e_mean + us * np.abs(st.mean), e_var + us * st.var  # the statistics the update reads
                err_rm = (1 - m) * err_rm + m * e_m + 3 * ua * ((1 - m) * np.abs(rm_in) + m * np.abs(st.mean))
                err_rv = (1 - m) * err_rv + m * bessel * e_v + 4 * ua * ((1 - m) * np.abs(rv_in) + m * bessel * st.var)
                bounds[f"{phase}.running_mean"] = err_rm + up * np.abs(new_rm)
                bounds[f"{phase}.running_var"] = err_rv + up * np.abs(new_rv)
                err_rm = bounds[f"{phase}.running_mean"]
                err_rv = bounds[f"{phase}.running_var"]
            if case.grad and not shared:
                dY = np.abs(_rows(case, inputs[f"{phase}.dy"], np.float64))
                sum_dy = st.extras["abs_dy_mean"] * n
                e_dbeta = g_of(n) * sum_dy
                e_dgamma = g_of(n) * st.extras["abs_dy_xhat_mean"] * n * r + (dY * e_xhat).sum(axis=0)
                if st.batch_stats:
                    mdyx = np.abs(st.extras["dy_xhat_mean"])
                    inner = dY + np.abs(st.extras["dy_mean"]) + xhat * mdyx
                    e_inner = (
                        3 * ue * inner + g * st.extras["abs_dy_mean"] + xhat * g * st.extras["abs_dy_xhat_mean"]
                        + e_xhat * mdyx + xhat * (dY * e_xhat).mean(axis=0)
                    )
                    dx = np.abs(_rows(case, ref.values[f"{phase}.dx"], np.float64))
                    e_dx = ag * s * e_inner + dx * (e_s / s + 2 * ue) + ui * dx
                    if one_pass:
                        # dx = gamma s (dy - mean dy) - gamma s^3 (x - mu) mean(dy (x - mu)) is cubic in s: the
                        # first-order terms above grow at most by r^3 when s grows to r s
                        e_dx = e_dx * r**3
                    e_dx = e_dx * r_out
                else:
                    dx = ag * s * dY
                    e_dx = dx * (e_s / s + 3 * ue) + ui * dx
                    if one_pass:
                        e_dx = e_dx + ui * dx * (r - 1)  # the final rounding is of the larger computed value
                bounds[f"{phase}.dx"] = _physical(case, e_dx)
                if case.affine:
                    bounds[f"{phase}.dgamma"] = e_dgamma + up * np.abs(ref.values[f"{phase}.dgamma"])
                    bounds[f"{phase}.dbeta"] = e_dbeta + up * np.abs(ref.values[f"{phase}.dbeta"])
    # never a zero bound: the floor is the smallest subnormal of the quantity's output format; NaN means no bound
    for key, b in bounds.items():
        b = np.asarray(b, dtype=np.float64)
        bounds[key] = np.maximum(np.where(np.isnan(b), np.inf, b), smallest_subnormal(output_dtype(case, quantity_of(key))))
    return bounds
