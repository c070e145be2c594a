"""Floating-point formats bncheck knows: unit roundoff, exact rounding, ULP spacing, transport dtypes."""

from __future__ import annotations

import numpy as np

DTYPES = ("float16", "bfloat16", "float32", "float64")

# significand precision p (bits, including the implicit bit) and exponent limits
_PRECISION = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}
_MIN_EXP = {"float16": -14, "bfloat16": -126, "float32": -126, "float64": -1022}
_MAX = {
    "float16": 65504.0,
    "bfloat16": float((2 - 2.0**-7) * 2.0**127),
    "float32": float(np.finfo(np.float32).max),
    "float64": float(np.finfo(np.float64).max),
}


def unit_roundoff(dtype: str) -> float:
    """Unit roundoff u = 2**-p of a format (half the machine epsilon)."""
    return 2.0 ** -_PRECISION[dtype]


def accumulation_dtype(dtype: str) -> str:
    """The narrowest accumulation a correct BN kernel uses for inputs of `dtype` (float32 for half types)."""
    return "float64" if dtype == "float64" else "float32"


def transport_dtype(dtype: str) -> np.dtype:
    """The NumPy dtype that carries values of `dtype` exactly (bfloat16 travels as float32)."""
    return np.dtype({"float16": np.float16, "bfloat16": np.float32, "float32": np.float32, "float64": np.float64}[dtype])


def _round_to_bits(a: np.ndarray, dtype: str) -> np.ndarray:
    """Round float64 values to `dtype` with round-half-to-even, exactly (one rounding), returned as float64."""
    a = np.asarray(a, dtype=np.float64)
    p, emin = _PRECISION[dtype], _MIN_EXP[dtype]
    with np.errstate(invalid="ignore", over="ignore"):
        _, e = np.frexp(a)  # a = m * 2**e, 0.5 <= |m| < 1, so the leading bit has weight 2**(e-1)
        q = np.maximum(e - p, emin - p + 1)  # exponent of the spacing at this magnitude (subnormals clamp)
        finite = np.isfinite(a)
        q = np.where(finite, q, 0)
        r = np.ldexp(np.rint(np.ldexp(a, -q)), q)
        r = np.where(finite, r, a)
        return np.where(np.abs(r) > _MAX[dtype], np.copysign(np.inf, r), r)


def round_to(a: np.ndarray, dtype: str) -> np.ndarray:
    """Round float64 values once to `dtype`; return them in the transport dtype of `dtype`."""
    a = np.asarray(a, dtype=np.float64)
    if dtype == "bfloat16":
        return _round_to_bits(a, "bfloat16").astype(np.float32)
    with np.errstate(over="ignore"):  # overflow to inf is the correct rounding of values beyond the format
        return a.astype(transport_dtype(dtype))


def round_as_float64(a: np.ndarray, dtype: str) -> np.ndarray:
    """Round float64 values once to `dtype` and return them as float64 (for comparisons)."""
    return np.asarray(round_to(a, dtype), dtype=np.float64)


def smallest_subnormal(dtype: str) -> float:
    """The smallest positive subnormal of `dtype`: the spacing of the format at zero."""
    return 2.0 ** (_MIN_EXP[dtype] - _PRECISION[dtype] + 1)


def ulp(a: np.ndarray, dtype: str) -> np.ndarray:
    """Spacing of `dtype` at the magnitude of each value of `a` (the size of one unit in the last place)."""
    a = np.abs(np.asarray(a, dtype=np.float64))
    p, emin = _PRECISION[dtype], _MIN_EXP[dtype]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        finite = a if np.isfinite(a).all() else np.where(np.isfinite(a), a, 0.0)
        _, e = np.frexp(finite)
        # frexp(0) reports exponent 0; the spacing at zero is the smallest subnormal, 2**(emin - p + 1)
        q = np.where(finite == 0, emin - p + 1, np.maximum(e - p, emin - p + 1))
        return np.ldexp(1.0, q)


def max_finite(dtype: str) -> float:
    """The largest finite value of `dtype`."""
    return _MAX[dtype]


def min_normal(dtype: str) -> float:
    """The smallest positive normal value of `dtype` (below it, FTZ/DAZ arithmetic reads and writes zero)."""
    return 2.0 ** _MIN_EXP[dtype]


def narrower(a: str, b: str) -> str:
    """The format of the two with fewer significand bits (the narrower exponent range on ties)."""
    key = lambda d: (_PRECISION[d], -_MIN_EXP[d])  # noqa: E731
    return min(a, b, key=key)
