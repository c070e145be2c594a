"""Element-wise judging, in one plain module: bncheck's compare.py calls it, and every reproduction script embeds it
verbatim (it imports NumPy only, never a bncheck module), so the verdict a script prints is bncheck's own.

`reference` is the quantity's expected value as bncheck judges it: the exact float64 reference where the output
format can hold it, and the reference rounded to the output format (Inf, NaN) where it cannot, so that a value
beyond the format's range must come back as Inf (compare.pattern_reference builds it). An element deviates when
its error exceeds its bound (ratio > BOUND_RATIO), or when its NaN/Inf pattern differs from the reference's
(ratio Inf).
"""

import numpy as np

BOUND_RATIO = 1.0  # an element whose |error| / bound exceeds this deviates


def element_errors(observed: np.ndarray, reference: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """(err, mismatch, both, scale): |observed - reference| where both are finite and 0 elsewhere; where the NaN/Inf
    pattern differs (None: every value finite on both sides); where both are finite (None: everywhere); the reference
    where both are finite and 1 elsewhere (for relative errors and ULPs)."""
    with np.errstate(all="ignore"):
        fin_o, fin_r = np.isfinite(observed), np.isfinite(reference)
        if fin_o.all() and fin_r.all():  # the common case: every value finite on both sides
            return np.abs(observed - reference), None, None, reference
        mismatch = (fin_o != fin_r) | (~fin_o & ~fin_r & ~((np.isnan(observed) & np.isnan(reference))
                                                           | (observed == reference)))
        both = fin_o & fin_r
        err = np.where(both, np.abs(observed - reference), 0.0)
        return err, mismatch, both, np.where(both, reference, 1.0)


def element_ratios(err: np.ndarray, mismatch: np.ndarray | None, both: np.ndarray | None, bound: np.ndarray) -> np.ndarray:
    """|error| / bound per element: Inf where the NaN/Inf pattern differs, 0 where both values are the same non-finite."""
    with np.errstate(all="ignore"):
        if mismatch is None:
            return err / bound
        return np.where(mismatch, np.inf, np.where(both, err / bound, 0.0))


def exceeds(ratio: np.ndarray) -> np.ndarray:
    """Where a ratio (of elements, or the worst of each channel) deviates."""
    return ratio > BOUND_RATIO


def judge_elements(observed: np.ndarray, reference: np.ndarray, bound: np.ndarray) -> dict:
    """One quantity judged as bncheck judges it: a dict with `ratio` (per element, the reference's shape), `err`,
    `max_rel` (largest relative error), `mismatch` (where the NaN/Inf pattern differs), `nonfinite` (elements whose NaN/Inf pattern differs), `worst` (index of the largest ratio, Inf first),
    `largest_error` (index of the largest |error|) and `deviates`."""
    observed = np.asarray(observed, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), reference.shape)
    if observed.shape != reference.shape:
        raise ValueError(f"shape {observed.shape} differs from the expected {reference.shape}")
    err, mismatch, both, scale = element_errors(observed, reference)
    ratio = np.broadcast_to(element_ratios(err, mismatch, both, bound), reference.shape)
    flat = ratio.reshape(-1)
    worst = np.unravel_index(int(np.argmax(flat)), reference.shape) if flat.size else ()
    largest = np.unravel_index(int(np.argmax(np.asarray(err).reshape(-1))), reference.shape) if flat.size else ()
    with np.errstate(all="ignore"):
        rel = np.asarray(err / np.maximum(np.abs(scale), np.finfo(np.float64).tiny))
    return {"ratio": ratio, "err": np.broadcast_to(err, reference.shape), "max_rel": float(rel.max(initial=0.0)),
            "mismatch": np.zeros(reference.shape, bool) if mismatch is None else np.broadcast_to(mismatch, reference.shape),
            "nonfinite": 0 if mismatch is None else int(np.sum(mismatch)), "worst": worst, "largest_error": largest,
            "deviates": bool(exceeds(flat).any())}
