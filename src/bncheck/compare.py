"""Compare an observation with the reference: errors, ULPs, NaN/Inf patterns, and a verdict per quantity."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .cases import Case
from .dtypes import round_as_float64, ulp
from .elementwise import element_errors, element_ratios, exceeds
from .results import json_float
from .reference import RUNNING_VAR_CONVENTIONS, Reference, phase_of, quantity_of
from .targets.base import Conventions, Observation
from .tolerance import output_dtype

MAX_CHANNELS_LISTED = 16
MAX_CHANNEL_VALUES = 64  # per-channel ratios and values kept for the report's charts
_TINY = np.finfo(np.float64).tiny


@dataclass
class Verdict:
    """The judgement of one observed quantity of one execution."""

    key: str  # '<phase>.<quantity>'
    passed: bool
    ratio: float  # max over elements of |error| / bound (inf for a NaN/Inf pattern mismatch)
    max_abs: float
    max_rel: float
    max_ulp: float
    nonfinite_mismatch: int  # elements where NaN/Inf-ness (or the sign of Inf) differs
    channels: list[int] = field(default_factory=list)  # channels that deviate (first MAX_CHANNELS_LISTED)
    convention: str = ""  # the running-variance convention the verdict used, for running statistics
    matches: list[str] = field(default_factory=list)  # conventions under which the quantity passes
    note: str = ""
    channel_ratios: list[float] = field(default_factory=list)  # worst error / bound per channel (inf: NaN/Inf mismatch)
    observed: list[float] = field(default_factory=list)  # per-channel quantities: the target's values (C <= 64)
    expected: list[float] = field(default_factory=list)  # ... and the reference's
    scale_ulp: float = 0.0  # ULP of the output dtype at the quantity's largest |reference| (peer-relative accuracy)
    scale: float = 0.0  # the quantity's largest finite |reference|
    bound_max: float = 0.0  # its largest finite bound (bound_max >= scale: the bound guarantees no digit)

    @property
    def quantity(self) -> str:
        """'y', 'running_var', ..."""
        return quantity_of(self.key)

    @property
    def phase(self) -> str:
        """'train0', ..., 'eval'."""
        return phase_of(self.key)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (non-finite floats as strings)."""
        d: dict[str, Any] = {f: getattr(self, f) for f in _FIELDS}  # flat fields: no deep copy (asdict's cost)
        d["channels"], d["convention"], d["matches"] = list(self.channels), self.convention, list(self.matches)
        d["quantity"], d["phase"] = self.quantity, self.phase
        for k in ("ratio", "max_abs", "max_rel", "max_ulp"):
            d[k] = json_float(d[k])
        for k in ("channel_ratios", "observed", "expected"):
            d[k] = [json_float(x) for x in getattr(self, k)]
        return d


_FIELDS = ("key", "passed", "ratio", "max_abs", "max_rel", "max_ulp", "nonfinite_mismatch", "note", "scale_ulp", "scale",
           "bound_max")


class ElementErrors(NamedTuple):
    """Element-wise errors of an observation against the reference (see elementwise_errors)."""

    err: np.ndarray  # |observed - reference| where both are finite, 0 elsewhere
    mismatch: np.ndarray | None  # where the NaN/Inf pattern differs (None: every value is finite on both sides)
    both: np.ndarray | None  # where both are finite (None: everywhere)
    scale: np.ndarray  # the reference where both are finite, 1 elsewhere: for relative errors and ULPs


def pattern_reference(expected: np.ndarray, dtype: str) -> np.ndarray:
    """The exact reference where the output `dtype` holds it, its rounding (Inf, NaN) where it does not: what an
    observation is judged against (elementwise.py), and what a reproduction script embeds as its expected values."""
    rounded = round_as_float64(expected, dtype)
    with np.errstate(all="ignore"):
        fin_r = np.isfinite(rounded)
        return expected if fin_r.all() else np.where(fin_r, expected, rounded)


def elementwise_errors(observed: np.ndarray, expected: np.ndarray, dtype: str) -> ElementErrors:
    """Errors of `observed` (float64, the shape of `expected`) against the exact reference `expected`.

    The NaN/Inf pattern is judged against the reference rounded to the output `dtype` (a value beyond the
    format's range must come back as Inf); errors against the exact reference, since bounds already contain
    the final rounding (elementwise.element_errors, on pattern_reference).
    """
    return ElementErrors(*element_errors(observed, pattern_reference(expected, dtype)))


def _finite_max(a: np.ndarray) -> float:
    """The largest finite |value| of `a` (0 when there is none)."""
    with np.errstate(all="ignore"):
        a = np.abs(np.asarray(a, dtype=np.float64))
        return float(a[np.isfinite(a)].max(initial=0.0)) if a.size else 0.0


def scale_ulp(expected: np.ndarray, dtype: str) -> float:
    """ULP of `dtype` at the largest finite |value| of `expected`: the size of one rounding of the quantity."""
    return float(ulp(np.array(_finite_max(expected)), dtype))


def _per_channel(case: Case, quantity: str, ratio: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Worst element ratio per channel of a flat segment (y and dx), or the segment itself (per-channel statistics)."""
    if quantity not in ("y", "dx"):
        return ratio
    if case.layout == "channels_first":
        return ratio.reshape(shape[0], shape[1], -1).max(axis=(0, 2), initial=0.0)
    return ratio.reshape(-1, shape[-1]).max(axis=0, initial=0.0)


def judge(case: Case, key: str, observed: np.ndarray, expected: np.ndarray, bound: np.ndarray) -> Verdict:
    """Verdict for one quantity: the reference is rounded to the quantity's output dtype before comparing."""
    quantity = quantity_of(key)
    dt = output_dtype(case, quantity)
    obs = np.asarray(observed, dtype=np.float64)
    if obs.shape != expected.shape:
        return Verdict(key, False, np.inf, np.inf, np.inf, np.inf, int(expected.size),
                       note=f"shape {obs.shape} differs from the expected {expected.shape}")
    e = elementwise_errors(obs, expected, dt)
    nonfinite = 0 if e.mismatch is None else int(e.mismatch.sum())
    ratio_el = element_ratios(e.err, e.mismatch, e.both, bound)
    with np.errstate(all="ignore"):
        max_rel = float((e.err / np.maximum(np.abs(e.scale), _TINY)).max(initial=0.0))
        max_ulp = float((e.err / ulp(e.scale, dt)).max(initial=0.0))
    err = e.err
    if ratio_el.shape != obs.shape:
        ratio_el = np.broadcast_to(ratio_el, obs.shape)
    per_channel = _per_channel(case, quantity, ratio_el.reshape(-1), obs.shape)
    if quantity in ("y", "dx"):
        observed_values = expected_values = []
    else:
        small = case.channels <= MAX_CHANNEL_VALUES
        observed_values = obs.reshape(-1).tolist() if small else []
        expected_values = np.asarray(expected, dtype=np.float64).reshape(-1).tolist() if small else []
    channels = np.flatnonzero(exceeds(per_channel)).tolist()
    note = f"{len(channels)} of {case.channels} channels deviate" if channels else ""
    return Verdict(
        key=key, passed=not channels, ratio=float(per_channel.max(initial=0.0)), max_abs=float(err.max(initial=0.0)),
        max_rel=max_rel, max_ulp=max_ulp, nonfinite_mismatch=nonfinite, channels=channels[:MAX_CHANNELS_LISTED],
        note=note, channel_ratios=per_channel[:MAX_CHANNEL_VALUES].tolist(), observed=observed_values,
        expected=expected_values, scale_ulp=scale_ulp(expected, dt), scale=_finite_max(expected),
        bound_max=_finite_max(bound),
    )


class _Segment(NamedTuple):
    """One quantity's place in a plan's flat arrays and what its verdict needs from the reference."""

    key: str
    quantity: str
    start: int
    stop: int
    shape: tuple[int, ...]
    expected_list: list[float]  # per-channel quantities with C <= MAX_CHANNEL_VALUES: the reference's values
    dependent: bool  # the running-variance convention changes the reference: judged under each
    others: tuple[tuple[str, np.ndarray, np.ndarray], ...]  # (convention, flat reference, flat bound) of the others
    scale_ulp: float  # ULP of the output dtype at the largest |reference| (Verdict.scale_ulp)
    scale: float  # the largest |reference| (Verdict.scale)
    bound_max: float  # the largest bound (Verdict.bound_max)


@dataclass
class _Plan:
    """What a comparison needs from the case alone, flattened over every quantity of one convention's reference.

    Quantities whose rounded reference is not all finite, or whose bound has an unexpected shape, have no
    segment: judge() takes them one by one. `subsets` caches the gather indices of observed key sets.
    """

    declared: str  # the running-variance convention the target declares
    segments: dict[str, _Segment]
    expected: np.ndarray  # flat reference of the declared convention
    bound: np.ndarray
    rel_den: np.ndarray  # max(|reference|, tiny)
    ulp_den: np.ndarray  # ulp of the output dtype at the reference
    subsets: dict[tuple[str, ...], tuple[np.ndarray | None, np.ndarray, list[tuple[_Segment, int, int]]]] = field(
        default_factory=dict)


def _plan(case: Case, references: dict[str, Reference], bounds: dict[str, dict[str, np.ndarray]],
          declared: str, dependent: frozenset[str]) -> _Plan:
    """Flatten the reference, bounds and denominators of every quantity into one array each (see _Plan).

    Quantities in the input dtype (y, dx) come first, then those in the parameter dtype, so that rounding and
    ULPs take one NumPy call per dtype rather than per quantity.
    """
    ref = references[declared]
    keys = sorted(ref.values, key=lambda k: quantity_of(k) not in ("y", "dx"))
    flats, bnds, metas = [], [], []
    offset = split = 0
    for key in keys:
        quantity = quantity_of(key)
        expected = np.asarray(ref.values[key], dtype=np.float64)
        convs = [c for c in RUNNING_VAR_CONVENTIONS if c != declared and c in references] if key in dependent else []
        if expected.size == 0 or any(np.broadcast_shapes(np.shape(b), expected.shape) != expected.shape
                                     for b in [bounds[declared][key], *(bounds[c][key] for c in convs)]):
            continue
        flat = expected.reshape(-1)
        flats.append(flat)
        bnds.append(np.broadcast_to(np.asarray(bounds[declared][key], dtype=np.float64), expected.shape).reshape(-1))
        others = tuple((c, np.asarray(references[c].values[key], dtype=np.float64).reshape(-1),
                        np.broadcast_to(np.asarray(bounds[c][key], dtype=np.float64), expected.shape).reshape(-1))
                       for c in convs)
        small = quantity not in ("y", "dx") and case.channels <= MAX_CHANNEL_VALUES
        metas.append(_Segment(key, quantity, offset, offset + flat.size, expected.shape,
                              flat.tolist() if small else [], key in dependent, others,
                              scale_ulp(flat, output_dtype(case, quantity)), _finite_max(flat), _finite_max(bnds[-1])))
        offset += flat.size
        if quantity in ("y", "dx"):
            split = offset
    e = np.concatenate(flats) if flats else np.zeros(0)
    with np.errstate(all="ignore"):
        parts = [(slice(0, split), case.dtype), (slice(split, offset), case.param_dtype)]
        finite = np.concatenate([np.isfinite(round_as_float64(e[sl], dt)) for sl, dt in parts])
        ulp_den = np.concatenate([ulp(e[sl], dt) for sl, dt in parts])
        rel_den = np.maximum(np.abs(e), _TINY)
    starts = np.array([m.start for m in metas], dtype=np.intp)
    seg_finite = np.logical_and.reduceat(finite, starts).tolist() if metas else []
    segments = {}
    for m, ok in zip(metas, seg_finite):
        dt = output_dtype(case, m.quantity)
        if ok and all(np.isfinite(round_as_float64(o, dt)).all() for _, o, _ in m.others):
            segments[m.key] = m
    return _Plan(declared, segments, e, np.concatenate(bnds) if bnds else np.zeros(0), rel_den, ulp_den)


def compare(
    case: Case,
    observation: Observation,
    references: dict[str, Reference],
    bounds: dict[str, dict[str, np.ndarray]],
    conventions: Conventions,
    dependent: frozenset[str] | None = None,
    plans: dict[Any, Any] | None = None,
) -> list[Verdict]:
    """Verdicts for every observed quantity the reference knows, under the target's declared conventions.

    `references` and `bounds` are keyed by running-variance convention. Quantities that depend on that
    convention are also judged under the other one, and `matches` lists every convention that passes,
    so a target that follows another convention than it declares is named, not just flagged. `dependent`,
    when given, names those quantities (judging.Expected.dependent); otherwise the references are compared.

    Quantities whose values are all finite are judged together on flat arrays (one NumPy call per step
    for all of them, which matters for small cases); the rest, and every quantity of an unexpected shape,
    by judge(), which defines the verdict. Both give identical verdicts. `plans`, when given, caches what
    depends on the case alone (judging.Expected keeps one per case, shared by every target).
    """
    declared = conventions.running_var
    ref = references[declared]
    if dependent is None:
        dependent = frozenset(
            k for k in ref.values
            if any(not np.array_equal(references[c].values[k], ref.values[k], equal_nan=True)
                   for c in references if c != declared and k in references[c].values)
        )
    phases = case.phases
    keys = sorted((k for k in observation if k in ref.values),
                  key=lambda k: (phases.index(phase_of(k)) if phase_of(k) in phases else 99, k))
    plan = plans.get(declared) if plans is not None else None
    if plan is None:
        plan = _plan(case, references, bounds, declared, dependent)
        if plans is not None:
            plans[declared] = plan
    bulk = _judge_bulk(case, observation, keys, plan)
    verdicts = []
    for key in keys:
        v = bulk.get(key)
        if v is None:
            v = judge(case, key, observation[key], ref.values[key], bounds[declared][key])
            if key in dependent:
                v.convention = declared
                v.matches = [c for c in RUNNING_VAR_CONVENTIONS if c in references and (
                    v.passed if c == declared else
                    judge(case, key, observation[key], references[c].values[key], bounds[c][key]).passed)]
        if key in dependent and not v.passed and v.matches:
            v.note = (v.note + "; " if v.note else "") + f"matches the {'/'.join(v.matches)} running-variance convention instead of the declared {declared}"
        verdicts.append(v)
    return verdicts


def _judge_bulk(case: Case, observation: Observation, keys: list[str], plan: _Plan) -> dict[str, Verdict]:
    """Verdicts of the plan's quantities whose observation is finite and of the reference's shape (see compare)."""
    chosen = tuple(k for k in keys if k in plan.segments and np.shape(observation[k]) == plan.segments[k].shape)
    if not chosen:
        return {}
    if chosen not in plan.subsets:  # gather indices into the plan's arrays (None: all of them, in order)
        segs = [plan.segments[k] for k in chosen]
        contiguous = all(x.stop == y.start for x, y in zip(segs, segs[1:]))
        lo, hi = segs[0].start, segs[-1].stop
        idx = None if contiguous and lo == 0 and hi == plan.expected.size else (
            np.arange(lo, hi) if contiguous else np.concatenate([np.arange(x.start, x.stop) for x in segs]))
        offs = np.cumsum([0, *(x.stop - x.start for x in segs)]).tolist()
        spans = [(x, offs[i], offs[i + 1]) for i, x in enumerate(segs)]
        plan.subsets[chosen] = (idx, np.array(offs[:-1], dtype=np.intp), spans)
    idx, starts, spans = plan.subsets[chosen]
    obs = np.concatenate([np.asarray(observation[x.key], dtype=np.float64).reshape(-1) for x, _, _ in spans])
    if idx is None:
        expected, bound, rel_den, ulp_den = plan.expected, plan.bound, plan.rel_den, plan.ulp_den
    else:
        expected, bound, rel_den, ulp_den = plan.expected[idx], plan.bound[idx], plan.rel_den[idx], plan.ulp_den[idx]
    with np.errstate(all="ignore"):
        finite = np.logical_and.reduceat(np.isfinite(obs), starts)
        err = np.abs(obs - expected)
        ratio = err / bound
        max_abs = np.maximum.reduceat(err, starts).tolist()
        max_rel = np.maximum.reduceat(err / rel_den, starts).tolist()
        max_ulp = np.maximum.reduceat(err / ulp_den, starts).tolist()
        out: dict[str, Verdict] = {}
        for i, (s, a, b) in enumerate(spans):
            if not finite[i]:
                continue  # NaN or Inf observed: judge() handles the pattern
            per_channel = _per_channel(case, s.quantity, ratio[a:b], s.shape)
            deviating = exceeds(per_channel)
            channels = np.flatnonzero(deviating).tolist() if deviating.any() else []
            small = bool(s.expected_list)
            v = Verdict(
                key=s.key, passed=not channels, ratio=float(per_channel.max(initial=0.0)), max_abs=max_abs[i],
                max_rel=max_rel[i], max_ulp=max_ulp[i], nonfinite_mismatch=0, channels=channels[:MAX_CHANNELS_LISTED],
                note=f"{len(channels)} of {case.channels} channels deviate" if channels else "",
                channel_ratios=per_channel[:MAX_CHANNEL_VALUES].tolist(),
                observed=obs[a:b].tolist() if small else [], expected=list(s.expected_list), scale_ulp=s.scale_ulp,
                scale=s.scale, bound_max=s.bound_max,
            )
            if s.dependent:
                v.convention = plan.declared
                v.matches = [plan.declared] if v.passed else []
                for c, other_ref, other_bound in s.others:
                    other = _per_channel(case, s.quantity, np.abs(obs[a:b] - other_ref) / other_bound, s.shape)
                    if not exceeds(other).any():
                        v.matches.append(c)
                v.matches.sort(key=RUNNING_VAR_CONVENTIONS.index)
            out[s.key] = v
    return out


def missing_quantities(observation: Observation, reference: Reference, conventions: Conventions) -> list[str]:
    """Reference keys whose quantity the target declares observable (not optional) but did not report."""
    required = set(conventions.quantities) - set(conventions.optional_quantities)
    return sorted(k for k in reference.values if quantity_of(k) in required and k not in observation)
