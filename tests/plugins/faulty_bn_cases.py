"""The cases of the self-validation targets in faulty_bn_targets, and what the diagnosis must conclude (data only).

Kept apart from faulty_bn_targets, which registers targets when imported: a test reads this module without
touching the target registry of its own process.

FAULTS: one row per deliberately faulty target (family 'faultybn.<hypothesis>'): the case it runs (a case
dictionary; the target declares it unsupported for every other case), the hypothesis, first deviating
quantity and classification its one finding must carry. BENIGN: the cases on which the correct float32
('faultybn.correct32') and float64 ('faultybn.correct64') targets must give no finding.
"""

from __future__ import annotations

from typing import Any

FAMILY = "faultybn"


def _offset(loc: float, **kw: Any) -> dict[str, Any]:
    """x with mean `loc` and standard deviation 1 (float32 training with gradients unless `kw` says otherwise)."""
    return {"shape": [8, 6, 6, 6], "grad": True, "regime": {"name": f"offset{loc:g}", "x": {"dist": "normal", "loc": loc, "scale": 1.0}}, **kw}


def _spread(name: str, scale: float, loc: float = 0.0, **kw: Any) -> dict[str, Any]:
    """x ~ N(loc, scale) (float32 training with gradients unless `kw` says otherwise)."""
    return {"shape": [8, 6, 6, 6], "grad": True, "regime": {"name": name, "x": {"dist": "normal", "loc": loc, "scale": scale}}, **kw}


def _constant(value: float, **kw: Any) -> dict[str, Any]:
    """Channel 0 holds `value` everywhere, the others N(0, 1)."""
    return {"shape": [8, 6, 6, 6], "grad": True, "regime": {"name": f"constant{value:g}", "x": {
        "dist": "normal", "loc": 0, "scale": 1, "channels": {"0": {"dist": "constant", "value": value}}}}, **kw}


TRAJ = {"shape": [8, 6, 6, 6], "mode": "trajectory", "steps": 3, "grad": True}
TRAJ2_FWD = {"shape": [8, 6, 6, 6], "mode": "trajectory", "steps": 2}
EPS3 = {"shape": [8, 6, 6, 6], "eps": 1e-3, "grad": True}

# (hypothesis = target family suffix, case, first deviating quantity, classification)
FAULTS: list[tuple[str, dict[str, Any], str, str]] = [
    ("running-var-biased", TRAJ, "running_var", "suspected-bug"),
    ("running-var-unbiased", TRAJ, "running_var", "suspected-bug"),
    ("momentum-flipped", TRAJ, "running_mean", "suspected-bug"),
    ("eps-outside-sqrt", EPS3, "batch_invstd", "suspected-bug"),
    ("eps-ignored", EPS3, "batch_invstd", "suspected-bug"),
    ("unbiased-normalisation", {"shape": [8, 6, 6, 6], "grad": True}, "batch_invstd", "suspected-bug"),
    ("bessel-clamped", {"shape": [1, 6]}, "batch_var_unbiased", "convention"),
    ("params-float32", {"shape": [8, 6, 6, 6], "dtype": "float64", "mode": "trajectory", "steps": 3, "grad": True},
     "batch_invstd", "convention"),
    ("eval-uses-batch-stats", {"shape": [8, 6, 6, 6], "mode": "eval", "grad": True}, "y", "suspected-bug"),
    ("train-uses-running-stats", TRAJ2_FWD, "y", "suspected-bug"),
    ("blended-stats", TRAJ2_FWD, "y", "suspected-bug"),
    ("one-pass-variance", _offset(1e3), "batch_var", "precision"),
    ("float32-computation", {"shape": [8, 6, 6, 6], "dtype": "float64", "grad": True}, "batch_mean", "precision"),
    ("input-dtype-accumulation", {"shape": [8, 6, 6, 6], "dtype": "float16", "grad": True}, "batch_mean", "precision"),
    ("one-pass-variance+float32-computation", _offset(1e2, dtype="float64"), "batch_mean", "precision"),
    ("one-pass-variance+input-dtype-accumulation",
     {"shape": [4, 6, 4, 4], "dtype": "float16", "grad": True, "regime": {"name": "offset30", "x": {"dist": "normal", "loc": 30.0, "scale": 1.0}}},
     "batch_mean", "precision"),
    ("eps-inside-sqrt", EPS3, "batch_invstd", "suspected-bug"),
    ("sequential-accumulation", {"shape": [16, 2, 64, 64], "regime": {"name": "offset1e4", "x": {"dist": "normal", "loc": 1e4, "scale": 1.0}}},
     "batch_mean", "precision"),
    ("subnormals-flushed", _spread("subnormal", 1e-39, eps=1e-30), "batch_mean", "precision"),
    ("half-precision-statistics", {"shape": [8, 6, 6, 6], "dtype": "float16", "param_dtype": "float32", "grad": True},
     "batch_mean", "precision"),
    ("elementwise-input-dtype", {"shape": [8, 6, 6, 6], "dtype": "float16", "grad": True}, "y", "precision"),
    ("constant-channel-cancellation", _constant(2.3), "batch_var", "precision"),
    ("invstd-cubed-overflow", _spread("tiny", 1e-25, eps=1e-30), "dx", "precision"),
    ("variance-overflow", _spread("spread2e19", 2e19), "batch_invstd", "out-of-range"),
    ("sum-of-squares-overflow", _spread("spread1e19", 1e19), "batch_var", "out-of-range"),
    ("sum-overflow", _spread("mean1e37", 1.0, loc=1e37), "batch_mean", "out-of-range"),
    ("variance-underflow", {"shape": [8, 6, 6, 6], "dtype": "float16", "param_dtype": "float16", "grad": True, "eps": 1e-9,
                            "regime": {"name": "spread1e-4", "x": {"dist": "normal", "loc": 0.0, "scale": 1e-4}}},
     "batch_invstd", "out-of-range"),
    ("invstd-overflow", _constant(2.0, eps=0.0), "y", "out-of-range"),
]

BENIGN: dict[str, list[dict[str, Any]]] = {
    "correct32": [
        {"shape": [8, 6, 6, 6], "grad": True, "seed": 1},
        {"shape": [8, 6, 6, 6], "mode": "eval", "grad": True, "seed": 1},
        {"shape": [8, 6, 6, 6], "mode": "trajectory", "steps": 3, "grad": True, "seed": 1},
        {"shape": [4, 6, 5, 5], "layout": "channels_last", "mode": "trajectory", "steps": 2, "grad": True},
        {"shape": [16, 6], "eps": 1e-3, "grad": True},
        {"shape": [8, 6, 6, 6], "dtype": "float16", "mode": "trajectory", "steps": 2, "grad": True},
    ],
    "correct64": [
        {"shape": [8, 6, 6, 6], "dtype": "float64", "mode": "trajectory", "steps": 3, "grad": True, "seed": 1},
        {"shape": [8, 6, 6, 6], "dtype": "float64", "mode": "eval", "grad": True},
        {"shape": [16, 6], "dtype": "float64", "eps": 1e-3, "grad": True},
    ],
}


def all_cases() -> list[dict[str, Any]]:
    """Every distinct case dictionary above (a case file's rows)."""
    rows: list[dict[str, Any]] = []
    for d in [c for _, c, _, _ in FAULTS] + [c for cs in BENIGN.values() for c in cs]:
        if d not in rows:
            rows.append(d)
    return rows
