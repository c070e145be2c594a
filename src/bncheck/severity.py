"""Severity of a finding, beside its class: critical, major or minor, with the typed reasons that decided it.

* `critical`: a quantity is NaN or infinite where the reference is finite, or finite where the reference is
  not (`nonfinite`); a variance (batch_var, batch_var_unbiased, running_var) comes back negative where the
  exact one is not (`negative-variance`); or the output collapses: every element of a channel of y equals
  beta while the reference's do not (`collapsed-output`).
* `major`: not critical, and the worst error is more than MAJOR_RATIO times its bound.
* `minor`: everything else (a precision-outlier, within its bound, is always minor).

The class says what explains a deviation (the mechanism: a one-pass variance that went negative); the
severity says how bad the numbers are. A critical finding fails the CI gate whatever `--fail-on` narrows
(gate.py); summaries print NaN/Inf, not "inf times the bound".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .cases import Case
from .reference import Reference, quantity_of
from .targets.base import Observation, flatten_channels

SEVERITIES = ("critical", "major", "minor")
# More than 100 times the bound: the error exceeds the worst a correct kernel may make by two orders of
# magnitude (some seven bits lost beyond it). A convention, not a measured gap: the shipped default, smoke and
# trajectories suites' 41 findings (before this rule) spread from 4 to 1e11 times the bound with no gap below
# 1e4; 100 puts the half-precision dx roundings (4-7 times) and one-pass losses at small offsets (69-85) in
# minor, ONNX's float32 attributes on float32 eval (229) and above in major. docs/findings.md lists them.
MAJOR_RATIO = 100.0
_VARIANCES = ("batch_var", "batch_var_unbiased", "running_var")


def assess(case: Case, inputs: Any, obs: Observation, ref: Reference, verdicts: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    """(severity, reasons) of one execution's deviating verdicts; each reason is {"reason", "keys"} (typed)."""
    bad = [v for v in verdicts if not v.passed]
    reasons: list[dict[str, Any]] = []
    nonfinite = [v.key for v in bad if v.nonfinite_mismatch]
    if nonfinite:
        reasons.append({"reason": "nonfinite", "keys": nonfinite})
    negative = []
    collapsed = []
    with np.errstate(all="ignore"):
        for v in bad:
            q = quantity_of(v.key)
            o = np.asarray(obs.get(v.key), dtype=np.float64) if v.key in obs else None
            e = ref.values.get(v.key)
            if o is None or e is None or o.shape != np.shape(e):
                continue
            if q in _VARIANCES and bool(((o < 0) & ~(np.asarray(e) < 0)).any()):
                negative.append(v.key)
            if q == "y" and case.per_channel > 1:
                beta = np.asarray(inputs["beta"], dtype=np.float64) if case.affine else np.zeros(case.channels)
                oc, ec = flatten_channels(case, o), flatten_channels(case, np.asarray(e, dtype=np.float64))
                at_beta = (oc == beta).all(axis=0) & ~(ec == beta).all(axis=0)
                if at_beta.any():
                    collapsed.append({"key": v.key, "channels": np.flatnonzero(at_beta).tolist()[:16]})
    if negative:
        reasons.append({"reason": "negative-variance", "keys": negative})
    if collapsed:
        reasons.append({"reason": "collapsed-output", "keys": [c["key"] for c in collapsed],
                        "channels": sorted({ch for c in collapsed for ch in c["channels"]})})
    if reasons:
        return "critical", reasons
    worst = max((v.ratio for v in bad), default=0.0)
    if worst > MAJOR_RATIO:
        return "major", [{"reason": "ratio", "keys": [max(bad, key=lambda v: v.ratio).key], "ratio": worst}]
    return "minor", []


def worst_severity(severities: list[str | None]) -> str:
    """The most severe of several executions' severities (minor when none is known)."""
    known = [s for s in severities if s in SEVERITIES]
    return min(known, key=SEVERITIES.index) if known else "minor"


def ratio_text(ratio: Any, nonfinite: int | None = None) -> str:
    """A worst error for summaries: '4.78e+03 x bound', or 'NaN/Inf in N elements' for a NaN/Inf mismatch."""
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        r = math.inf
    if nonfinite or not math.isfinite(r):
        return f"NaN/Inf in {nonfinite} element{'s' if nonfinite != 1 else ''}" if nonfinite else "NaN/Inf"
    return f"{r:.3g} x bound"
