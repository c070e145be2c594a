"""Format range: which exact intermediates of a case do not fit the arithmetic format a target declares.

A BN kernel forms, per channel, the sum of x, the sum of squared deviations (n times the variance: the M2 of
a two-pass or Welford kernel), the variance, var + eps and the inverse standard deviation; an autodiff
backward of `rsqrt` also forms invstd^3 = (var + eps)^-1.5. When such a value, computed exactly, lies beyond
the largest finite number of the format it is computed in (or var + eps, being positive, rounds to zero in
it), every implementation in that format that forms it must overflow (or underflow), whatever its order of
operations. `range_issues` lists those intermediates per phase and channel, with the format the target's
record declares for them (`Conventions.accumulation`, `Conventions.statistics_dtype`), and `mask` says which
elements of a quantity each one makes unpredictable.

The diagnosis (diagnose.py) leaves those elements out of every hypothesis, and a deviation confined to them
is an `out-of-range` finding naming the intermediate; peers.py keeps it a finding (not out of range) when a
peer that declares the same format for that intermediate does not fail. invstd^3 is only formed by some
algorithms (`inevitable=False`): a deviation it alone explains is a precision finding, not out-of-range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .results import json_float
from .cases import Case
from .dtypes import max_finite, narrower, round_as_float64
from .reference import Reference, _physical, phase_of, quantity_of
from .targets.base import Accumulation, Conventions, StatisticsDtype

# intermediate -> (hypothesis name when it overflows/underflows, whether every algorithm forms it)
INTERMEDIATES = {
    "sum": ("sum-overflow", True),
    "sum-of-squares": ("sum-of-squares-overflow", True),
    "variance": ("variance-overflow", True),
    "variance-plus-eps": ("variance-underflow", True),
    "invstd": ("invstd-overflow", True),
    "invstd-cubed": ("invstd-cubed-overflow", False),
}
# the order in which a range explanation is named when several intermediates of a channel are out of range:
# the one that says most (an exact variance beyond the format fails every algorithm, a sum of squares some)
STRENGTH = ("variance-overflow", "sum-overflow", "invstd-overflow", "variance-underflow", "sum-of-squares-overflow",
            "invstd-cubed-overflow")
_VARIANCE_FED = ("batch_var", "batch_var_unbiased", "batch_invstd", "y", "dx", "dgamma", "running_var")
_EVAL_FED = ("y", "dx", "dgamma")


@dataclass(frozen=True)
class RangeIssue:
    """One intermediate of one phase whose exact value does not fit `format` on `channels`."""

    intermediate: str  # a key of INTERMEDIATES
    kind: str  # 'overflow' (beyond the largest finite value), 'underflow' (rounds to zero) or 'undefined' (0/0)
    format: str  # the dtype it is computed in, as the target declares
    phase: str
    channels: tuple[int, ...]
    exact: float  # its exact value on the worst channel (inf: infinite, e.g. 1/sqrt(0))

    @property
    def hypothesis(self) -> str:
        """The hypothesis name of this issue, e.g. 'variance-overflow'."""
        return INTERMEDIATES[self.intermediate][0]

    @property
    def inevitable(self) -> bool:
        """Whether every BN algorithm in the format forms the intermediate (then every one of them fails)."""
        return INTERMEDIATES[self.intermediate][1]

    def describe(self) -> str:
        """One line: 'the exact variance (3.2e+39) exceeds float32's largest value on channels 0-5 of train0'."""
        what = {"sum": "sum of x", "sum-of-squares": "sum of squared deviations (n * variance)", "variance": "variance",
                "variance-plus-eps": "var + eps", "invstd": "inverse standard deviation",
                "invstd-cubed": "invstd^3 = (var + eps)^-1.5 of the rsqrt backward"}[self.intermediate]
        how = {"overflow": f"exceeds {self.format}'s largest value", "underflow": f"rounds to zero in {self.format}",
               "undefined": "is infinite (var + eps = 0)"}[self.kind]
        return f"the exact {what} ({self.exact:.3g}) {how} on channel{'s' if len(self.channels) > 1 else ''} " \
               f"{_ranges(self.channels)} of {self.phase}"

    def affects(self, case: Case, key: str) -> bool:
        """Whether the issue makes quantity `key` unpredictable on its channels."""
        phase, q = phase_of(key), quantity_of(key)
        if phase not in case.phases or self.phase not in case.phases:
            return False
        i, j = case.phases.index(self.phase), case.phases.index(phase)
        if self.intermediate == "invstd-cubed":
            return j == i and q == "dx"
        if j == i:
            return q != "dbeta" and (self.intermediate == "sum" or q in _VARIANCE_FED)
        if j < i:
            return False
        if q == "running_var" or (self.intermediate == "sum" and q == "running_mean"):
            return True
        return phase == "eval" and q in _EVAL_FED and case.track_running_stats

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"intermediate": self.intermediate, "hypothesis": self.hypothesis, "kind": self.kind,
                "format": self.format, "phase": self.phase, "channels": list(self.channels),
                "exact": json_float(self.exact), "inevitable": self.inevitable,
                "description": self.describe()}


def _ranges(channels: tuple[int, ...]) -> str:
    """'0-3, 5' for (0, 1, 2, 3, 5)."""
    out, start = [], None
    for i, c in enumerate(channels):
        if start is None:
            start = c
        if i + 1 == len(channels) or channels[i + 1] != c + 1:
            out.append(f"{start}" if start == c else f"{start}-{c}")
            start = None
    return ", ".join(out)


def accumulation_format(case: Case, conventions: Conventions) -> str:
    """The dtype the target computes its statistics in, for this case, as its record declares."""
    acc = conventions.accumulation
    if acc == Accumulation.FLOAT32:
        return "float32"
    if acc == Accumulation.FLOAT64:
        return "float64"
    if acc == Accumulation.INPUT_DTYPE:
        return case.dtype
    return "float64" if case.dtype == "float64" else "float32"


def intermediate_format(case: Case, conventions: Conventions, intermediate: str) -> str:
    """The dtype `intermediate` is computed (or, for statistics the output uses, stored) in."""
    fmt = accumulation_format(case, conventions)
    if intermediate in ("variance", "variance-plus-eps", "invstd") and conventions.statistics_dtype == StatisticsDtype.INPUT:
        return narrower(fmt, case.dtype)
    return fmt


def _exact(case: Case, ref: Reference) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(phase, intermediate -> exact per-channel values) of every phase that normalises."""
    out = []
    with np.errstate(all="ignore"):
        for phase in case.phases:
            st = ref.stats[phase]
            if st.batch_stats:
                var, n = st.var, st.n
                values = {"sum": n * np.abs(st.mean), "sum-of-squares": n * var, "variance": var}
            elif st.running_var_in is not None:
                var, values = st.running_var_in, {}
            else:
                continue
            v = var + case.eps
            values["variance-plus-eps"] = v
            values["invstd"] = np.where(v > 0, 1.0 / np.sqrt(np.where(v > 0, v, 1.0)), np.inf)
            if st.batch_stats:
                values["invstd-cubed"] = values["invstd"] ** 3
            out.append((phase, values))
    return out


def range_issues(case: Case, ref: Reference, conventions: Conventions | None = None,
                 fmt: str | None = None, intermediates: tuple[str, ...] | None = None) -> list[RangeIssue]:
    """Every intermediate of `case` that does not fit its format: the formats `conventions` declares, or `fmt` for all.

    `intermediates` restricts the check (default: all of INTERMEDIATES).
    """
    names = intermediates or tuple(INTERMEDIATES)
    issues = []
    for phase, values in _exact(case, ref):
        for name in names:
            if name not in values:
                continue
            a = np.asarray(values[name], dtype=np.float64)
            f = fmt or intermediate_format(case, conventions, name)
            big = max_finite(f)
            with np.errstate(all="ignore"):
                if name == "variance-plus-eps":
                    bad, kind = (a > 0) & (round_as_float64(a, f) == 0), "underflow"
                elif name == "invstd":
                    undefined = np.isinf(a) & ~np.isnan(a)
                    bad = undefined | (np.isfinite(a) & (a > big))
                    kind = "undefined" if undefined[bad].all() and bad.any() else "overflow"
                else:
                    bad, kind = np.isfinite(a) & (a > big), "overflow"
            if not bad.any():
                continue
            channels = tuple(int(c) for c in np.flatnonzero(bad))
            exact = float(a[bad].max()) if kind != "underflow" else float(a[bad].min())
            issues.append(RangeIssue(name, kind, f, phase, channels, exact))
    return issues


def mask(case: Case, issues: list[RangeIssue], key: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """Elements of quantity `key` (of `shape`) that `issues` make unpredictable, or None when there are none."""
    channels = np.zeros(case.channels, dtype=bool)
    for issue in issues:
        if issue.affects(case, key):
            channels[list(issue.channels)] = True
    if not channels.any():
        return None
    if quantity_of(key) in ("y", "dx"):
        rows = np.broadcast_to(channels.astype(np.float64), (case.per_channel, case.channels))
        m = _physical(case, rows) > 0.5
    else:
        m = channels
    return m.reshape(shape) if m.size == int(np.prod(shape)) else None


def strongest(issues: list[RangeIssue]) -> RangeIssue:
    """The issue a range explanation is named after (see STRENGTH)."""
    return min(issues, key=lambda i: STRENGTH.index(i.hypothesis))
