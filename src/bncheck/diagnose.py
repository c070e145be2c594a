"""Localise a deviating execution and name the hypothesis that explains it: convention, precision or suspected bug.

For one execution whose verdicts deviate, `diagnose` finds the first deviating quantity in the chain
batch mean -> batch variance -> normalisation/affine output -> running mean -> running variance ->
gradients (earliest phase first), the channels involved and how the error follows their conditioning,
then evaluates alternative formulas (eps outside the root, the other variance in the running update or
the normalisation, momentum as 1-m, float32 eps and momentum, batch statistics in eval, ...) and weaker
algorithms (one-pass variance, accumulation in a narrower dtype, and the two combined) against the
observation.

A hypothesis *explains* the execution when every deviating quantity it models comes back within its bound
under it (residual = worst error / bound <= 1) and it constrains at least one of them everywhere. An
element where a precision model's bound is +inf is *unconstrained*: the model predicts nothing there (a
one-pass variance that may have cancelled to 0 or below gives any invstd, or NaN), so the element is left
out of the residual; a hypothesis that constrains no deviating quantity explains nothing.

Among the hypotheses that explain, the winner is chosen by these rules, in order:
1. the one that models the most deviating quantities;
2. an alternative formula (an exact, different computation) before a precision model (the same computation
   done less precisely): a formula predicts values, a precision model only widens bounds;
3. among formulas, the smallest residual (the closest match);
4. among precision models, one the conventions record declares (`documented`: the target says it computes so)
   before one it does not; then the *tightest* bound: the smallest geometric-mean inflation of its bound over the
   correct kernel's bound, on the deviating quantities' elements that every explaining precision model
   constrains (averaged per quantity), then the fewest unconstrained elements. A looser model (float16
   sums, or two weaknesses combined) explains everything a tighter one does and more, so it says less; it
   wins only when no tighter model explains the observation.

Format range (formats.py): elements that an intermediate out of its declared format's range makes
unpredictable (a variance beyond float32's maximum, var + eps rounding to zero, invstd^3 of an autodiff
backward overflowing) are left out of every hypothesis. When they hold every deviation, the explanation is
that range issue itself (kind `range`, class `out-of-range`; `invstd-cubed-overflow`, which only some
algorithms form, is a precision model), and it comes before every other (rule 0): the case lies outside the
format. The issues found are recorded in the diagnosis (`out_of_range`).

Classification reads the typed conventions record only: `convention` when the record declares exactly the
fitted behaviour (float32 eps and momentum, a clamped Bessel factor), `suspected-bug` for any other formula
or for nothing that fits, `precision` for a weaker algorithm (with `documented` saying whether the record
declares it), `out-of-range` for a range explanation. A hypothesis that raises is reported (in the
diagnosis's `hypothesis_errors` and on stderr), never taken for "explains nothing" silently.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from . import formats, severity
from .cases import Case
from .compare import MAX_CHANNEL_VALUES, ElementErrors, Verdict, elementwise_errors
from .dtypes import min_normal
from .inputs import Inputs
from .results import json_float
from .reference import Reference, _physical, _rows, compute_reference, inverse_std, phase_of, quantity_of
from .targets.base import (Accumulation, BesselRule, Conventions, Elementwise, EpsPlacement, Observation,
                           ParameterPrecision, RunningVar, StatisticsDtype, Subnormals, Summation, VarianceAlgorithm,
                           flatten_channels)
from .tolerance import compute_bounds, output_dtype

CHAIN = ("batch_mean", "batch_var", "batch_var_unbiased", "batch_invstd", "y", "running_mean", "running_var",
         "dx", "dgamma", "dbeta")
CLASSES = ("convention", "precision", "out-of-range", "suspected-bug")


@dataclass
class Diagnosis:
    """Where an execution first deviates and what explains it."""

    first: str  # '<phase>.<quantity>' that deviates first in the chain
    quantity: str
    mode: str  # 'train' or 'eval'
    step: int | None  # training step of the first deviation (None in eval)
    deviating: list[str]
    channels: list[int]
    conditioning: dict[str, Any]
    hypothesis: str  # a HYPOTHESES name, or 'unexplained'
    residual: float | None  # worst error / bound over the deviating quantities it models, under the hypothesis
    classification: str  # convention | precision | out-of-range | suspected-bug (peers.py may revise out-of-range)
    explanation: str
    alternatives: list[tuple[str, float]] = field(default_factory=list)  # other hypotheses and their residuals
    signature: str = ""
    documented: bool = False  # the conventions record declares exactly the fitted behaviour
    severity: str = "minor"  # critical | major | minor (severity.py)
    severity_reasons: list[dict[str, Any]] = field(default_factory=list)
    out_of_range: list[dict[str, Any]] = field(default_factory=list)  # formats.RangeIssue.to_dict() of the deviations
    hypothesis_errors: list[dict[str, str]] = field(default_factory=list)  # hypotheses that raised: name, error
    # why each of `alternatives` was not chosen: hypothesis, kind, residual, explains, rule (WHY_NOT), reason
    why_not: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["alternatives"] = [[n, json_float(r)] for n, r in self.alternatives]
        d["residual"] = json_float(self.residual)
        d["why_not"] = [{**w, "residual": json_float(w["residual"])} for w in self.why_not]
        return d


# ---- hypotheses -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hypothesis:
    """An alternative formula (values) or a weaker algorithm (bounds) that may explain a deviation."""

    name: str
    kind: str  # 'formula' (a different computation), 'precision' (the same, less precisely), 'range' (outside the format)
    explanation: str


HYPOTHESES = {h.name: h for h in (
    Hypothesis("running-var-biased", "formula", "the running variance is updated with the biased (n) batch variance"),
    Hypothesis("running-var-unbiased", "formula", "the running variance is updated with the unbiased (n-1) batch variance"),
    Hypothesis("momentum-flipped", "formula", "momentum is applied as 1 - m (the weight of the running value swapped with the batch's)"),
    Hypothesis("eps-outside-sqrt", "formula", "eps is added outside the square root: (x - mean) / (sqrt(var) + eps)"),
    Hypothesis("eps-ignored", "formula", "eps is not used"),
    Hypothesis("unbiased-normalisation", "formula", "the unbiased (n-1) variance normalises the output"),
    Hypothesis("bessel-clamped", "formula", "the Bessel factor is n / max(n - 1, 1), finite for one value per channel"),
    Hypothesis("params-float32", "formula", "eps and momentum reach the kernel rounded to float32"),
    Hypothesis("eval-uses-batch-stats", "formula", "evaluation normalises with the batch statistics instead of the running ones"),
    Hypothesis("train-uses-running-stats", "formula", "training normalises with the running statistics instead of the batch ones"),
    Hypothesis("blended-stats", "formula", "training normalises with the updated running statistics (batch blended into the running average)"),
    Hypothesis("one-pass-variance", "precision", "the variance is computed in one pass, E[x^2] - E[x]^2, which cancels when |mean| >> std"),
    Hypothesis("float32-computation", "precision", "a float64 computation is carried out in float32"),
    Hypothesis("input-dtype-accumulation", "precision", "sums and intermediates are kept in the (half-precision) input dtype"),
    # two weaknesses at once: the one-pass variance computed in the narrower arithmetic
    Hypothesis("one-pass-variance+float32-computation", "precision",
               "a float64 computation is carried out in float32 and its variance in one pass, E[x^2] - E[x]^2"),
    Hypothesis("one-pass-variance+input-dtype-accumulation", "precision",
               "sums and intermediates are kept in the (half-precision) input dtype and the variance is computed in "
               "one pass, E[x^2] - E[x]^2"),
    Hypothesis("eps-inside-sqrt", "formula", "eps is added inside the square root, (x - mean) / sqrt(var + eps), "
               "where the record declares it outside"),
    Hypothesis("sequential-accumulation", "precision",
               "the channel sums are accumulated element after element (or in long blocks) in the accumulation "
               "format: the error grows like n u, beyond the sqrt(n) u of independent roundings"),
    Hypothesis("subnormals-flushed", "precision",
               "subnormal inputs are read as zero and subnormal results flushed to zero (FTZ/DAZ)"),
    Hypothesis("half-precision-statistics", "precision",
               "the batch statistics are rounded to the half-precision input dtype before the output uses them "
               "(and overflow or underflow where they do not fit it)"),
    Hypothesis("elementwise-input-dtype", "precision",
               "the statistics are computed in float32 but the element-wise normalisation (x - mean) * invstd * "
               "gamma + beta, and the backward's element-wise terms, in the half-precision input dtype"),
    Hypothesis("constant-channel-cancellation", "precision",
               "the variance is computed in one pass and clamped at 0: on a constant channel it is the cancellation "
               "residue of E[x^2] - E[x]^2 instead of 0, which moves invstd (and dx) by up to residue / (2 eps)"),
    Hypothesis("invstd-cubed-overflow", "precision",
               "the backward forms invstd^3 = (var + eps)^-1.5 (autodiff of rsqrt), which overflows the "
               "accumulation format; a closed-form backward does not form it"),
    Hypothesis("sum-overflow", "range", "the exact sum of the channel's values exceeds the largest value of the "
               "declared format: every implementation that sums in it overflows"),
    Hypothesis("sum-of-squares-overflow", "range", "the exact sum of squared deviations (n * variance) exceeds the "
               "largest value of the declared format: every two-pass or Welford kernel in it overflows"),
    Hypothesis("variance-overflow", "range", "the exact variance exceeds the largest value of the declared format: "
               "every implementation in it overflows"),
    Hypothesis("variance-underflow", "range", "var + eps rounds to zero in the declared format: every "
               "implementation in it divides by zero"),
    Hypothesis("invstd-overflow", "range", "the exact inverse standard deviation is infinite (var + eps = 0) or "
               "beyond the declared format: the normalisation is undefined there"),
)}


def _variant_y(case: Case, inputs: Inputs, ref: Reference, how: str) -> dict[str, np.ndarray]:
    """y of the training phases under a different normalisation (float64)."""
    out = {}
    m = case.momentum
    for phase in case.phases:
        st = ref.stats[phase]
        if not st.batch_stats:
            continue
        X = _rows(case, inputs[f"{phase}.x"], np.float64)
        n = st.n
        var_u = st.var * n / (n - 1) if n > 1 else np.full_like(st.var, np.nan)
        centre, scale = st.mean, None
        with np.errstate(all="ignore"):
            if how == "eps-outside-sqrt":
                scale = 1.0 / (np.sqrt(st.var) + case.eps)
                out[f"{phase}.batch_invstd"] = scale
            elif how == "eps-inside-sqrt":
                scale = 1.0 / np.sqrt(st.var + case.eps)
                out[f"{phase}.batch_invstd"] = scale
            elif how == "unbiased-normalisation":
                scale = inverse_std(var_u, case.eps, ref.eps_placement)
                out[f"{phase}.batch_invstd"] = scale
            elif how in ("train-uses-running-stats", "blended-stats") and st.running_mean_in is not None:
                rm, rv = st.running_mean_in, st.running_var_in
                if how == "blended-stats":
                    rm, rv = (1 - m) * rm + m * st.mean, (1 - m) * rv + m * var_u
                centre, scale = rm, inverse_std(rv, case.eps, ref.eps_placement)
            if scale is None:
                continue
            out[f"{phase}.y"] = _physical(case, st.gamma * (X - centre) * scale + st.beta)
    return out


def _float32_params(case: Case, conventions: Conventions) -> Case:
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    if conventions.momentum == "old":
        momentum = 1.0 - f32(1.0 - case.momentum)
    else:
        momentum = f32(case.momentum)
    return case.replace(eps=f32(case.eps), momentum=min(max(momentum, 0.0), 1.0))


Values = dict[str, np.ndarray]
Thunk = Callable[[], tuple[Values, Values]]


@dataclass
class _Candidate:
    """A hypothesis that applies to the case: how to evaluate it, and which keys it can change.

    `touches(key)` is False only for keys whose value and bound are certainly the declared convention's
    (a running-statistics hypothesis leaves a training y alone); None: any key may change. When no deviating
    key is touched, the residual is the verdicts' own worst ratio and nothing needs computing.
    """

    name: str
    thunk: Thunk
    touches: Callable[[str], bool] | None = None
    keys: frozenset[str] | None = None  # the only keys its values hold, when it models a few (None: every key)
    issues: tuple[formats.RangeIssue, ...] = ()  # range issues of its own arithmetic: their elements are left out


def _running_only(case: Case) -> Callable[[str], bool]:
    """Keys a change of the running update can reach: the running statistics, and everything in eval."""
    return lambda key: quantity_of(key) in ("running_mean", "running_var") or phase_of(key) == "eval"


# sequential-accumulation is offered from this many elements per channel: there its n u bound is at least ten
# times the probabilistic 6 sqrt(n) u (sqrt(4096) / 6 = 10.7); below, it only loosens the bound a little and
# would be named for any deviation slightly beyond it, whatever the mechanism
SEQUENTIAL_MIN_ELEMENTS = 4096
MEMO_BYTES = 16 << 20  # a case's hypotheses kept for its other targets, at most (a case in flight holds them)


class HypothesisMemo:
    """A case's hypotheses' values and bounds, kept for the case's other deviating targets while they fit in `limit`
    bytes (one per case in flight: judging.Expected.hypotheses); what does not fit is computed again when asked."""

    def __init__(self, limit: int = MEMO_BYTES) -> None:
        self.limit = limit
        self.kept: dict[tuple[Any, ...], tuple[Values, Values]] = {}
        self._arrays: set[int] = set()  # ids of the arrays counted (a hypothesis may share the reference's)
        self.nbytes = 0

    def get(self, key: tuple[Any, ...], compute: Thunk) -> tuple[Values, Values]:
        """The result under `key`, computing it (and keeping it, if it fits) the first time."""
        if key in self.kept:
            return self.kept[key]
        result = compute()
        arrays = {id(a): a for part in result for a in part.values() if isinstance(a, np.ndarray)}
        size = sum(a.nbytes for i, a in arrays.items() if i not in self._arrays)
        if self.nbytes + size <= self.limit:
            self.kept[key] = result
            self._arrays.update(arrays)
            self.nbytes += size
        return result


def _memoised(memo: HypothesisMemo | None, key: tuple[Any, ...], thunk: Thunk) -> Thunk:
    """`thunk`, its result kept in `memo` under `key` (None: not kept)."""
    if memo is None:
        return thunk
    return lambda: memo.get(key, thunk)


def _candidates(case: Case, inputs: Inputs, refs: dict[str, Reference], conventions: Conventions,
                bounds_of: Callable[[str], Values], memo: HypothesisMemo | None = None) -> list[_Candidate]:
    """Every hypothesis that applies to the case, in catalogue order; `bounds_of(convention)` gives the
    correct kernel's bounds of refs[convention]. `memo` keeps each hypothesis's values and bounds, which
    depend on the case and the declared running-variance convention only, for the case's other targets."""
    declared = str(conventions.running_var)
    placement = str(conventions.eps_placement)
    ref = refs[declared]
    out: list[_Candidate] = []
    base_bounds = lambda: bounds_of(declared)  # noqa: E731

    def with_case(c: Case, rv: str = declared) -> Thunk:
        def thunk() -> tuple[Values, Values]:
            r = refs.get(rv) if c is case else None
            if r is not None and r.running_var == rv:
                return r.values, bounds_of(rv)
            r = compute_reference(c, inputs, rv, placement)
            return r.values, compute_bounds(c, inputs, r)
        return thunk if c is case else _memoised(memo, ("reference", c.case_id, rv, placement), thunk)

    def precision(**kw: Any) -> Thunk:
        return _memoised(memo, ("precision", declared, placement, *sorted(kw.items())),
                         lambda: (ref.values, compute_bounds(case, inputs, ref, **kw)))

    def variant(how: str) -> _Candidate:
        keys = frozenset(_variant_keys(case, ref, how))
        return _Candidate(how, _memoised(memo, ("variant", declared, placement, how),
                                         lambda: (_variant_y(case, inputs, ref, how), base_bounds())), keys=keys)

    other = "biased" if declared == "unbiased" else "unbiased"
    training = any(p != "eval" for p in case.phases)
    running = _running_only(case)
    if training and case.per_channel == 1:
        # n / max(n - 1, 1) at n = 1 is the biased update, and a batch_var_unbiased of 0 (the biased variance)
        # where the exact one is 0/0: the same numbers as the biased convention, the more specific explanation
        if case.track_running_stats and declared == "unbiased" or "batch_var_unbiased" in conventions.quantities:
            out.append(_Candidate("bessel-clamped", _memoised(memo, ("bessel-clamped",),
                                                              _bessel_clamped(case, inputs, refs, bounds_of)),
                                  lambda key: running(key) or quantity_of(key) == "batch_var_unbiased"))
    if training and case.track_running_stats:
        out.append(_Candidate(f"running-var-{other}", with_case(case, other), running))
        if 0.0 < case.momentum < 1.0:
            out.append(_Candidate("momentum-flipped", with_case(case.replace(momentum=1.0 - case.momentum)), running))
    if case.eps > 0:
        out.append(_Candidate("eps-ignored", with_case(case.replace(eps=0.0))))
        out.append(variant("eps-inside-sqrt" if placement == EpsPlacement.OUTSIDE else "eps-outside-sqrt"))
        if float(np.float32(case.eps)) != case.eps or (case.track_running_stats and training):
            out.append(_Candidate("params-float32", with_case(_float32_params(case, conventions))))
    if training:
        out.append(variant("unbiased-normalisation"))
        if case.track_running_stats:
            out.extend(variant(h) for h in ("train-uses-running-stats", "blended-stats"))
    if "eval" in case.phases and case.track_running_stats:
        def eval_batch() -> tuple[Values, Values]:
            c = case.replace(track_running_stats=False)
            r = compute_reference(c, inputs, declared, placement)
            return {"eval.y": r.values["eval.y"], **({"eval.dx": r.values["eval.dx"]} if "eval.dx" in r.values else {})}, compute_bounds(c, inputs, r)
        out.append(_Candidate("eval-uses-batch-stats", _memoised(memo, ("eval-uses-batch-stats", declared, placement), eval_batch),
                              keys=frozenset({"eval.y", "eval.dx"} if case.grad else {"eval.y"})))
    out.append(_Candidate("one-pass-variance", precision(variance="one-pass")))
    if case.dtype == "float64":
        out.append(_Candidate("float32-computation", precision(accumulation="float32", output="float32")))
        out.append(_Candidate("one-pass-variance+float32-computation",
                              precision(accumulation="float32", output="float32", variance="one-pass")))
    if case.dtype in ("float16", "bfloat16"):
        out.append(_Candidate("input-dtype-accumulation", precision(accumulation=case.dtype)))
        out.append(_Candidate("one-pass-variance+input-dtype-accumulation",
                              precision(accumulation=case.dtype, variance="one-pass")))
        half_issues = tuple(formats.range_issues(case, ref, fmt=case.dtype,
                                                 intermediates=("variance", "variance-plus-eps", "invstd")))
        # the statistics feed the forward pass: a deviation that starts in the backward is not theirs
        out.append(_Candidate("half-precision-statistics", precision(statistics=case.dtype), issues=half_issues,
                              keys=frozenset(k for k in ref.values if quantity_of(k) not in ("dx", "dgamma", "dbeta"))))
        out.append(_Candidate("elementwise-input-dtype", precision(elementwise=case.dtype)))
    if case.per_channel >= SEQUENTIAL_MIN_ELEMENTS:
        out.append(_Candidate("sequential-accumulation", precision(summation="sequential")))
    if case.eps > 0 and any(ref.stats[p].batch_stats and (ref.stats[p].var == 0).any() for p in case.phases):
        out.append(_Candidate("constant-channel-cancellation", precision(variance="one-pass-clamped")))
    tiny = min_normal(formats.accumulation_format(case, conventions))
    if any(((a != 0) & (np.abs(a) < tiny)).any() for a in inputs.values() if np.size(a)):
        out.append(_Candidate("subnormals-flushed", _memoised(memo, ("subnormals-flushed", declared, placement, tiny),
                                                             _flushed(case, inputs, declared, placement, tiny))))
    return out


def _flushed(case: Case, inputs: Inputs, running_var: str, placement: str, tiny: float) -> Thunk:
    """Values and bounds of a kernel that reads inputs below `tiny` (the smallest normal of its format) as zero
    (DAZ) and may flush results below the smallest normal of their output format to zero (FTZ)."""
    def thunk() -> tuple[Values, Values]:
        with np.errstate(all="ignore"):
            flushed = {k: np.where(np.abs(np.asarray(a, np.float64)) < tiny, 0.0, np.asarray(a, np.float64)).astype(
                np.asarray(a).dtype) for k, a in inputs.items()}
        r = compute_reference(case, flushed, running_var, placement)
        b = compute_bounds(case, flushed, r)
        return r.values, {k: np.maximum(v, min_normal(output_dtype(case, quantity_of(k)))) for k, v in b.items()}
    return thunk


def _variant_keys(case: Case, ref: Reference, how: str) -> list[str]:
    """The keys `_variant_y` returns for `how` (without computing them)."""
    keys = []
    for phase in case.phases:
        st = ref.stats[phase]
        if not st.batch_stats:
            continue
        if how in ("eps-outside-sqrt", "eps-inside-sqrt", "unbiased-normalisation"):
            keys += [f"{phase}.batch_invstd", f"{phase}.y"]
        elif st.running_mean_in is not None:
            keys.append(f"{phase}.y")
    return keys


def _bessel_clamped(case: Case, inputs: Inputs, refs: dict[str, Reference], bounds_of: Callable[[str], Values]) -> Thunk:
    """Values and bounds of a kernel whose Bessel factor is n / max(n - 1, 1), for a case with one value per channel."""
    def thunk() -> tuple[Values, Values]:
        r = refs.get("biased")
        if r is not None and r.running_var == "biased":
            values, bounds = dict(r.values), dict(bounds_of("biased"))
        else:
            r = compute_reference(case, inputs, "biased")
            values, bounds = dict(r.values), compute_bounds(case, inputs, r)
        for phase in case.phases:
            key = f"{phase}.batch_var_unbiased"
            if key in values and r.stats[phase].n == 1:
                # factor 1: the biased variance (0) with its bound, where the exact unbiased one is 0/0
                values[key], bounds[key] = values[f"{phase}.batch_var"], bounds[f"{phase}.batch_var"]
        return values, bounds
    return thunk


# ---- localisation ---------------------------------------------------------------------------------
def _chain_key(case: Case, key: str) -> tuple[int, int]:
    phase, q = phase_of(key), quantity_of(key)
    return (case.phases.index(phase) if phase in case.phases else 99, CHAIN.index(q) if q in CHAIN else 99)


def _conditioning(case: Case, inputs: Inputs, ref: Reference, v: Verdict, obs: np.ndarray, bound: np.ndarray) -> dict[str, Any]:
    """Per-channel conditioning of the first deviation, and whether the error follows it.

    Channels are ranked by their *relative* error (worst |error| over the channel's largest |exact value|),
    not by error / bound: the bound itself grows with the conditioning (|mean| / std), so ranking by it would
    hide the ill-conditioned channels the error follows. `worst_channel` is the deviating channel with the
    largest relative error (any channel when none deviates per element); the channel of largest error / bound is
    the verdict's (its `channel_ratios`), and `channel_*` give every channel's conditioning so that a report can
    name the conditioning of either.
    """
    st = ref.stats[v.phase]
    expected = ref.values[v.key]
    elementwise = v.quantity in ("y", "dx")
    with np.errstate(all="ignore"):
        offset = np.abs(st.mean) / np.sqrt(st.var)
        eps_ratio = case.eps / st.var
        err = np.abs(np.asarray(obs, np.float64) - expected)
        err = np.where(np.isnan(err), np.inf, err)
        ratio = err / np.broadcast_to(bound, expected.shape)
        if elementwise:
            err_c = flatten_channels(case, err).max(axis=0)
            scale = flatten_channels(case, np.abs(expected)).max(axis=0)
            deviates = flatten_channels(case, ratio).max(axis=0) > 1.0
        else:
            err_c, scale, deviates = err.reshape(-1), np.abs(expected).reshape(-1), ratio.reshape(-1) > 1.0
        scale = np.where(np.isfinite(scale), scale, np.nan)
        relative = err_c / np.maximum(scale, np.finfo(np.float64).tiny)
    relative = np.where(np.isnan(relative), np.inf, relative)
    pool = np.flatnonzero(deviates) if deviates.any() else np.arange(relative.size)
    worst = int(pool[np.argmax(relative[pool])]) if relative.size else 0
    info: dict[str, Any] = {
        "worst_channel": worst,
        "relative_error": float(relative[worst]) if relative.size and np.isfinite(relative[worst]) else None,
        "mean_over_std": float(offset[worst]) if np.isfinite(offset[worst]) else None,
        "eps_over_var": float(eps_ratio[worst]) if np.isfinite(eps_ratio[worst]) else None,
        "gamma": float(st.gamma[worst]),
    }
    # every channel's conditioning (the first MAX_CHANNEL_VALUES, as the verdicts' channel_ratios): the report reads
    # the conditioning of any channel it names, and draws error / bound against it, from these alone
    keep = slice(0, MAX_CHANNEL_VALUES)
    info["channel_mean_over_std"] = [json_float(x) for x in offset[keep]]
    info["channel_eps_over_var"] = [json_float(x) for x in eps_ratio[keep]]
    info["channel_gamma"] = [json_float(x) for x in st.gamma[keep]]
    ok = np.isfinite(relative) & np.isfinite(offset)
    if ok.sum() >= 3 and np.ptp(offset[ok]) > 0 and np.ptp(relative[ok]) > 0:
        ranks = lambda a: np.argsort(np.argsort(a))  # noqa: E731
        info["error_vs_offset_rank_correlation"] = float(np.corrcoef(ranks(relative[ok]), ranks(offset[ok]))[0, 1])
    return info


@dataclass
class _Fit:
    """How one hypothesis fits the deviating quantities."""

    name: str
    residual: float  # worst error / bound over the constrained elements (inf: explains nothing)
    modelled: int  # deviating quantities it models
    unconstrained: float = 0.0  # fraction of the modelled elements where its bound is +inf
    inflation: float = 0.0  # mean log(bound / declared bound), over the elements every rival constrains (tightness)
    documented: bool = False  # the target's record declares the behaviour (precision models: ranked first)
    log_ratios: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # per key: log(bound / declared bound)


class _Errors:
    """compare.elementwise_errors per (key, expected array), computed once per diagnosis: the precision
    hypotheses share the reference's values and differ only in their bounds."""

    def __init__(self, case: Case, obs: Observation) -> None:
        self.case, self.obs = case, obs
        # (key, id(expected)) -> (expected, kept so that its id stays valid; its errors), or None (shape differs)
        self._cache: dict[tuple[str, int], tuple[np.ndarray, ElementErrors] | None] = {}

    def _get(self, key: str, expected: np.ndarray) -> ElementErrors | None:
        slot = (key, id(expected))
        if slot not in self._cache:
            o = np.asarray(self.obs[key], dtype=np.float64)
            self._cache[slot] = None if o.shape != expected.shape else (
                expected, elementwise_errors(o, expected, output_dtype(self.case, quantity_of(key))))
        got = self._cache[slot]
        return None if got is None else got[1]

    def exceeding(self, key: str, expected: np.ndarray, bound: np.ndarray) -> np.ndarray | None:
        """Elements beyond `bound` or of another NaN/Inf pattern (None for a shape mismatch)."""
        e = self._get(key, expected)
        if e is None:
            return None
        with np.errstate(all="ignore"):
            out = e.err > bound
            return out if e.mismatch is None else out | e.mismatch

    def ratio(self, key: str, expected: np.ndarray, bound: np.ndarray, free: np.ndarray | None = None) -> float:
        """max |error| / bound over the elements not `free` (inf for a shape or NaN/Inf-pattern mismatch)."""
        e = self._get(key, expected)
        if e is None:
            return np.inf
        with np.errstate(all="ignore"):
            r = e.err / bound if e.mismatch is None else np.where(e.mismatch, np.inf, np.where(e.both, e.err / bound, 0.0))
        if free is not None:
            r = np.where(free, 0.0, r)
        return float(np.asarray(r).max(initial=0.0))


def _fit(case: Case, errors: _Errors, keys: list[str], values: Values, bounds: Values, base: Values, name: str,
         masks: dict[str, np.ndarray] | None = None) -> _Fit:
    """Residual, coverage and tightness of one hypothesis over the deviating keys; `masks` (key -> elements out of
    the format's range) are left out of the residual and count neither as constrained nor as unconstrained."""
    worst, modelled, constrained, free_n, total_n = 0.0, 0, False, 0, 0
    logs: dict[str, np.ndarray] = {}
    for k in keys:
        if k not in values or k not in bounds:
            continue
        modelled += 1
        val = values[k]
        b = np.broadcast_to(bounds[k], val.shape)
        # an infinite bound where the hypothesis predicts a finite value: it predicts nothing there (unconstrained)
        free = ~np.isfinite(b) & np.isfinite(val)
        m = (masks or {}).get(k)
        if m is not None:
            free = free & ~m
        n_free = int(free.sum())
        out = free if m is None else free | m
        n_out = int(out.sum())
        free_n += n_free
        total_n += free.size - (0 if m is None else int(m.sum()))
        if n_out == out.size:
            continue
        constrained = constrained or not n_free
        worst = max(worst, errors.ratio(k, val, b, out if n_out else None))  # free and masked elements: left out
        if k in base and HYPOTHESES[name].kind == "precision":
            with np.errstate(all="ignore"):
                lr = np.log(b / np.broadcast_to(base[k], val.shape)).reshape(-1)
                logs[k] = lr if m is None else np.where(m.reshape(-1), np.inf, lr)
    if modelled and not constrained:
        worst = np.inf  # constrains none of the deviating quantities: explains nothing
    return _Fit(name, worst, modelled, free_n / total_n if total_n else 0.0, log_ratios=logs)


def _range_fit(case: Case, errors: _Errors, keys: list[str], ref: Reference, base: Values,
               issues: list[formats.RangeIssue]) -> tuple[_Fit, list[formats.RangeIssue]] | None:
    """The explanation by range alone: every element beyond the correct kernel's bound lies where `issues` make its
    quantity unpredictable. Uses the inevitable issues alone when they suffice (class out-of-range), else every
    issue; named after the strongest issue needed. None when the issues do not hold every deviation."""
    if not issues:
        return None
    exceed = {k: errors.exceeding(k, ref.values[k], np.broadcast_to(base[k], ref.values[k].shape)) for k in keys}

    def covers(chosen: list[formats.RangeIssue]) -> bool:
        for k, e in exceed.items():
            if e is None:
                return False
            m = formats.mask(case, chosen, k, e.shape)
            if (e & ~m).any() if m is not None else e.any():
                return False
        return True

    inevitable = [i for i in issues if i.inevitable]
    chosen = inevitable if inevitable and covers(inevitable) else (issues if covers(issues) else None)
    if chosen is None:
        return None
    needed = [i for i in chosen if any(e is not None and (m := formats.mask(case, [i], k, e.shape)) is not None
                                       and (e & m).any() for k, e in exceed.items())]
    if not needed:
        return None
    worst = max(errors.ratio(k, ref.values[k], np.broadcast_to(base[k], ref.values[k].shape),
                             formats.mask(case, needed, k, ref.values[k].shape)) for k in keys)
    return _Fit(formats.strongest(needed).hypothesis, worst, len(keys)), needed


def _tightness(fits: list[_Fit]) -> None:
    """Set each precision fit's `inflation`: its mean log bound inflation over the elements that every one of
    `fits` constrains (finite bounds), averaged per quantity, so that models are compared on the same elements."""
    if not fits:
        return
    keys = set.intersection(*(set(f.log_ratios) for f in fits))
    common = {k: np.logical_and.reduce([np.isfinite(f.log_ratios[k]) for f in fits]) for k in keys}
    common = {k: m for k, m in common.items() if m.any()}
    for f in fits:
        per_key = [float(f.log_ratios[k][m].mean()) for k, m in common.items()]
        if not per_key:  # nothing in common: the model's own constrained elements
            per_key = [float(lr[np.isfinite(lr)].mean()) for lr in f.log_ratios.values() if np.isfinite(lr).any()]
        f.inflation = float(np.mean(per_key)) if per_key else 0.0


def diagnose(case: Case, inputs: Inputs, obs: Observation, refs: dict[str, Reference],
             conventions: Conventions, verdicts: list[Verdict], family: str,
             bounds: dict[str, dict[str, np.ndarray]] | None = None,
             memo: HypothesisMemo | None = None) -> Diagnosis | None:
    """The diagnosis of one execution, or None when nothing deviates.

    `bounds`, keyed by running-variance convention like compare()'s, are the correct kernel's bounds of
    `refs`, when the caller has them; otherwise they are computed here (the same numbers, only slower).
    `memo`, one dict per case (judging.Expected.hypotheses), keeps the hypotheses' values and bounds for the
    case's other deviating targets: the same numbers, computed once.
    """
    bad = sorted((v for v in verdicts if not v.passed), key=lambda v: _chain_key(case, v.key))
    if not bad:
        return None
    first = bad[0]
    declared = conventions.running_var
    ref = refs[declared]
    known = dict(bounds or {})

    def bounds_of(convention: str) -> Values:
        if convention not in known:
            known[convention] = compute_bounds(case, inputs, refs[convention])
        return known[convention]

    base_bounds = lambda: bounds_of(declared)  # noqa: E731

    keys = [v.key for v in bad]
    untouched = max(v.ratio for v in bad)
    errors = _Errors(case, obs)
    issues = formats.range_issues(case, ref, conventions)  # out of the declared formats' range
    shapes = {k: np.shape(ref.values[k]) for k in keys}
    global_masks = {k: m for k in keys if (m := formats.mask(case, issues, k, shapes[k])) is not None}
    results: list[_Fit] = []
    failures: list[dict[str, str]] = []
    own_issues: dict[str, tuple[formats.RangeIssue, ...]] = {}
    for cand in _candidates(case, inputs, refs, conventions, bounds_of, memo):
        if cand.keys is not None and first.key not in cand.keys:
            continue  # it does not model the first deviating quantity
        if cand.touches is not None and not any(cand.touches(k) for k in keys) and not global_masks:
            # every deviating quantity keeps the declared value and bound: the verdicts' own ratios
            results.append(_Fit(cand.name, untouched, len(keys)))
            continue
        try:
            values, alt_bounds = cand.thunk()
        except Exception as e:  # a broken hypothesis is reported, not taken for one that explains nothing
            failures.append({"hypothesis": cand.name, "error": f"{type(e).__name__}: {e}"})
            print(f"bncheck: warning: hypothesis {cand.name} raised on case {case.case_id} ({family}): "
                  f"{type(e).__name__}: {e}", file=sys.stderr)
            continue
        if first.key not in values:
            continue
        masks = global_masks
        if cand.issues:
            own_issues[cand.name] = cand.issues
            both = list(issues) + list(cand.issues)
            masks = {k: m for k in keys if (m := formats.mask(case, both, k, shapes[k])) is not None}
        results.append(_fit(case, errors, keys, values, alt_bounds, base_bounds(), cand.name, masks))
    ranged = _range_fit(case, errors, keys, ref, base_bounds(), issues)
    explaining = [r for r in results if r.residual <= 1.0]
    if ranged is not None:
        explaining.insert(0, ranged[0])
    for r in explaining:
        r.documented = documented(r.name, conventions, case)
    _tightness([r for r in explaining if HYPOTHESES[r.name].kind == "precision"])
    explaining.sort(key=_rank)
    others = sorted((r for r in results if r not in explaining[:1]), key=lambda r: r.residual)[:3]
    channels = sorted({c for v in bad for c in v.channels})
    step = int(first.phase[5:]) if first.phase.startswith("train") else None
    info = _conditioning(case, inputs, ref, first, obs[first.key], base_bounds()[first.key])
    declared_behaviour = False
    if explaining:
        name, residual = explaining[0].name, explaining[0].residual
        hyp = HYPOTHESES[name]
        cls, declared_behaviour = classify(name, conventions, case)
        explanation = hyp.explanation
    else:
        name, residual, cls = "unexplained", None, "suspected-bug"
        explanation = "no hypothesis brings the deviating quantities back within their bounds"
    relevant = list(ranged[1]) if ranged is not None and explaining and explaining[0] is ranged[0] else list(dict.fromkeys(
        i for i in [*issues, *own_issues.get(name, ())] if any(i.affects(case, k) for k in keys)))
    level, reasons = severity.assess(case, inputs, obs, ref, verdicts)
    diag = Diagnosis(first=first.key, quantity=first.quantity, mode="eval" if first.phase == "eval" else "train",
                     step=step, deviating=keys, channels=channels, conditioning=info, hypothesis=name,
                     residual=residual, classification=cls, explanation=explanation,
                     alternatives=[(r.name, r.residual) for r in others], documented=declared_behaviour,
                     why_not=[_why_not(r, explaining[0] if explaining else None, len(keys)) for r in others],
                     severity=level, severity_reasons=reasons, out_of_range=[i.to_dict() for i in relevant],
                     hypothesis_errors=failures)
    diag.signature = signature(family, diag.quantity, name, case.regime_name)
    return diag


# why an alternative lost to the chosen hypothesis: the rule of the module docstring that decided it
WHY_NOT = {
    "does-not-explain": "it does not explain the deviation: some deviating quantity it models stays outside its bound",
    "range-first": "rule 0: the case lies outside the declared format's range, which comes before every hypothesis",
    "fewer-quantities": "rule 1: it models fewer of the deviating quantities than the chosen hypothesis",
    "formula-first": "rule 2: an alternative formula (which predicts values) is preferred to a precision model (which "
                     "only widens bounds), whatever their residuals",
    "closer-formula": "rule 3: among formulas the smallest residual (the closest match) wins",
    "documented-first": "rule 4: the target's conventions record declares the chosen precision model and not this one",
    "looser-bound": "rule 4: its bound is looser than the chosen model's on the elements both constrain (the tightest "
                    "model wins: a looser one says less)",
    "more-unconstrained": "rule 4: it leaves more elements unconstrained than the chosen model",
    "closer-model": "rule 4: as tight as the chosen model, whose residual is smaller",
}


def _why_not(r: _Fit, winner: _Fit | None, n_keys: int) -> dict[str, Any]:
    """Why `r` was not chosen over `winner` (None: nothing explains), as a WHY_NOT rule and its reason."""
    kind = HYPOTHESES[r.name].kind
    out = {"hypothesis": r.name, "kind": kind, "residual": r.residual, "explains": bool(r.residual <= 1.0)}
    if winner is None or r.residual > 1.0:
        rule = "does-not-explain"
    else:
        wkind = HYPOTHESES[winner.name].kind
        if wkind == "range":
            rule = "range-first"
        elif r.modelled < winner.modelled:
            rule = "fewer-quantities"
        elif wkind == "formula" and kind == "precision":
            rule = "formula-first"
        elif wkind == "formula":
            rule = "closer-formula"
        elif winner.documented and not r.documented:
            rule = "documented-first"
        elif r.inflation > winner.inflation:
            rule = "looser-bound"
        elif r.unconstrained > winner.unconstrained:
            rule = "more-unconstrained"
        else:
            rule = "closer-model"
    reason = WHY_NOT[rule]
    if rule == "fewer-quantities" and winner is not None:
        reason += f" ({r.modelled} of {n_keys}, against {winner.modelled})"
    return {**out, "rule": rule, "reason": reason}


def _rank(r: _Fit) -> tuple[Any, ...]:
    """Sort key of an explaining hypothesis (the module docstring's rules 0-4)."""
    kind = HYPOTHESES[r.name].kind
    if kind == "range":
        return (-1, -r.modelled, 0, False, r.residual, 0.0, 0.0)
    if kind == "precision":
        return (0, -r.modelled, 1, not r.documented, r.inflation, r.unconstrained, r.residual)
    return (0, -r.modelled, 0, False, r.residual, 0.0, 0.0)


def _computation_dtype(case: Case, conventions: Conventions) -> str:
    """The dtype eps and momentum are constants of, for a record whose parameter precision is the input dtype."""
    return formats.accumulation_format(case, conventions)


def documented(name: str, conventions: Conventions, case: Case) -> bool:
    """Whether the typed record declares exactly the behaviour hypothesis `name` fits (see the module docstring)."""
    cv = conventions
    one_pass = cv.variance_algorithm in (VarianceAlgorithm.ONE_PASS, VarianceAlgorithm.ONE_PASS_CLAMPED)
    rules: dict[str, Callable[[], bool]] = {
        "params-float32": lambda: cv.parameter_precision == ParameterPrecision.FLOAT32_ATTRIBUTES or (
            cv.parameter_precision == ParameterPrecision.INPUT_DTYPE and _computation_dtype(case, cv) == "float32"),
        "bessel-clamped": lambda: cv.bessel == BesselRule.CLAMPED,
        "running-var-biased": lambda: cv.running_var == RunningVar.BIASED,
        "running-var-unbiased": lambda: cv.running_var == RunningVar.UNBIASED,
        "eps-outside-sqrt": lambda: cv.eps_placement == EpsPlacement.OUTSIDE,
        "eps-inside-sqrt": lambda: cv.eps_placement == EpsPlacement.INSIDE,
        "one-pass-variance": lambda: one_pass,
        "constant-channel-cancellation": lambda: cv.variance_algorithm == VarianceAlgorithm.ONE_PASS_CLAMPED,
        "float32-computation": lambda: cv.accumulation == Accumulation.FLOAT32,
        "input-dtype-accumulation": lambda: cv.accumulation == Accumulation.INPUT_DTYPE,
        "one-pass-variance+float32-computation": lambda: one_pass and cv.accumulation == Accumulation.FLOAT32,
        "one-pass-variance+input-dtype-accumulation": lambda: one_pass and cv.accumulation == Accumulation.INPUT_DTYPE,
        "sequential-accumulation": lambda: cv.summation == Summation.SEQUENTIAL,
        "subnormals-flushed": lambda: cv.subnormals == Subnormals.FLUSHED,
        "half-precision-statistics": lambda: cv.statistics_dtype == StatisticsDtype.INPUT,
        "elementwise-input-dtype": lambda: cv.elementwise == Elementwise.INPUT_DTYPE,
    }
    if HYPOTHESES[name].kind == "range":
        return True  # the format is the one the record declares
    rule = rules.get(name)
    return bool(rule()) if rule else False


def classify(name: str, conventions: Conventions, case: Case) -> tuple[str, bool]:
    """(classification, documented) of an explaining hypothesis: out-of-range for a range explanation, precision for
    weaker arithmetic, convention for a formula the record declares exactly, else suspected-bug."""
    kind = HYPOTHESES[name].kind
    doc = documented(name, conventions, case)
    if kind == "range":
        return "out-of-range", doc
    if kind == "precision":
        return "precision", doc
    return ("convention" if doc else "suspected-bug"), doc


def signature(family: str, quantity: str, hypothesis: str, regime: str) -> str:
    """Root-cause signature for de-duplication: (target family, first quantity, hypothesis, regime)."""
    text = f"{family}|{quantity}|{hypothesis}|{regime}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]
