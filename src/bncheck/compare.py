"""Compare an observation with the reference: errors, ULPs, NaN/Inf patterns, and a verdict per quantity."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .cases import Case
from .dtypes import round_as_float64, ulp
from .reference import RUNNING_VAR_CONVENTIONS, Reference, phase_of, quantity_of
from .targets.base import Conventions, Observation, flatten_channels
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
            d[k] = _json_float(d[k])
        for k in ("channel_ratios", "observed", "expected"):
            d[k] = [_json_float(x) for x in getattr(self, k)]
        return d


_FIELDS = ("key", "passed", "ratio", "max_abs", "max_rel", "max_ulp", "nonfinite_mismatch", "note")


def _json_float(x: float) -> float | str:
    """A float for JSON: non-finite values as the strings 'inf', '-inf' and 'nan'."""
    if x - x == 0.0:  # finite (inf - inf and nan - nan are nan)
        return x
    return "nan" if x != x else ("inf" if x > 0 else "-inf")


class ElementErrors(NamedTuple):
    """Element-wise errors of an observation against the reference (see elementwise_errors)."""

    err: np.ndarray  # |observed - reference| where both are finite, 0 elsewhere
    mismatch: np.ndarray | None  # where the NaN/Inf pattern differs (None: every value is finite on both sides)
    both: np.ndarray | None  # where both are finite (None: everywhere)
    scale: np.ndarray  # the reference where both are finite, 1 elsewhere: for relative errors and ULPs


def elementwise_errors(observed: np.ndarray, expected: np.ndarray, dtype: str) -> ElementErrors:
    """Errors of `observed` (float64, the shape of `expected`) against the exact reference `expected`.

    The NaN/Inf pattern is judged against the reference rounded to the output `dtype` (a value beyond the
    format's range must come back as Inf); errors against the exact reference, since bounds already contain
    the final rounding.
    """
    rounded = round_as_float64(expected, dtype)
    with np.errstate(all="ignore"):
        fin_o, fin_r = np.isfinite(observed), np.isfinite(rounded)
        if fin_o.all() and fin_r.all():  # the common case: every value finite on both sides
            return ElementErrors(np.abs(observed - expected), None, None, expected)
        ref = np.where(fin_r, expected, rounded)
        mismatch = (fin_o != fin_r) | (~fin_o & ~fin_r & ~((np.isnan(observed) & np.isnan(ref)) | (observed == ref)))
        both = fin_o & fin_r
        err = np.where(both, np.abs(observed - ref), 0.0)
        return ElementErrors(err, mismatch, both, np.where(both, ref, 1.0))


def judge(case: Case, key: str, observed: np.ndarray, expected: np.ndarray, bound: np.ndarray) -> Verdict:
    """Verdict for one quantity: the reference is rounded to the quantity's output dtype before comparing."""
    quantity = quantity_of(key)
    dt = output_dtype(case, quantity)
    obs = np.asarray(observed, dtype=np.float64)
    if obs.shape != expected.shape:
        return Verdict(key, False, np.inf, np.inf, np.inf, np.inf, int(expected.size),
                       note=f"shape {obs.shape} differs from the expected {expected.shape}")
    e = elementwise_errors(obs, expected, dt)
    with np.errstate(all="ignore"):
        if e.mismatch is None:
            nonfinite, ratio_el = 0, e.err / bound
        else:
            nonfinite = int(e.mismatch.sum())
            ratio_el = np.where(e.mismatch, np.inf, np.where(e.both, e.err / bound, 0.0))
        max_rel = float((e.err / np.maximum(np.abs(e.scale), _TINY)).max(initial=0.0))
        max_ulp = float((e.err / ulp(e.scale, dt)).max(initial=0.0))
    err = e.err
    if ratio_el.shape != obs.shape:
        ratio_el = np.broadcast_to(ratio_el, obs.shape)
    if quantity in ("y", "dx"):
        per_channel = flatten_channels(case, ratio_el).max(axis=0, initial=0.0)
        observed_values = expected_values = []
    else:
        per_channel = ratio_el.reshape(-1)
        small = case.channels <= MAX_CHANNEL_VALUES
        observed_values = obs.reshape(-1).tolist() if small else []
        expected_values = np.asarray(expected, dtype=np.float64).reshape(-1).tolist() if small else []
    channels = np.flatnonzero(per_channel > 1.0).tolist()
    note = f"{len(channels)} of {case.channels} channels deviate" if channels else ""
    return Verdict(
        key=key, passed=not channels, ratio=float(per_channel.max(initial=0.0)), max_abs=float(err.max(initial=0.0)),
        max_rel=max_rel, max_ulp=max_ulp, nonfinite_mismatch=nonfinite, channels=channels[:MAX_CHANNELS_LISTED],
        note=note, channel_ratios=per_channel[:MAX_CHANNEL_VALUES].tolist(), observed=observed_values,
        expected=expected_values,
    )


def compare(
    case: Case,
    observation: Observation,
    references: dict[str, Reference],
    bounds: dict[str, dict[str, np.ndarray]],
    conventions: Conventions,
    dependent: frozenset[str] | None = None,
) -> list[Verdict]:
    """Verdicts for every observed quantity the reference knows, under the target's declared conventions.

    `references` and `bounds` are keyed by running-variance convention. Quantities that depend on that
    convention are also judged under the other one, and `matches` lists every convention that passes,
    so a target that follows another convention than it declares is named, not just flagged. `dependent`,
    when given, names those quantities (judging.Expected.dependent); otherwise the references are compared.
    """
    declared = conventions.running_var
    ref = references[declared]
    verdicts = []
    phases = case.phases
    for key in sorted(observation, key=lambda k: (phases.index(phase_of(k)) if phase_of(k) in phases else 99, k)):
        if key not in ref.values:
            continue
        v = judge(case, key, observation[key], ref.values[key], bounds[declared][key])
        if dependent is not None:
            depends = key in dependent
        else:
            depends = any(
                not np.array_equal(references[c].values[key], ref.values[key], equal_nan=True)
                for c in references if c != declared and key in references[c].values
            )
        if depends:
            v.convention = declared
            for c in RUNNING_VAR_CONVENTIONS:
                if c not in references:
                    continue
                passes = v.passed if c == declared else judge(case, key, observation[key], references[c].values[key], bounds[c][key]).passed
                if passes:
                    v.matches.append(c)
            if not v.passed and v.matches:
                v.note = (v.note + "; " if v.note else "") + f"matches the {'/'.join(v.matches)} running-variance convention instead of the declared {declared}"
        verdicts.append(v)
    return verdicts


def missing_quantities(observation: Observation, reference: Reference, conventions: Conventions) -> list[str]:
    """Reference keys whose quantity the target declares observable (not optional) but did not report."""
    required = set(conventions.quantities) - set(conventions.optional_quantities)
    return sorted(k for k in reference.values if quantity_of(k) in required and k not in observation)
