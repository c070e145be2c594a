"""Deterministic input arrays for a case: drawn in float64 from the case seed, rounded once to the case dtypes."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from .cases import Case, special_value, suite_dirs
from .text import shorten
from .dtypes import round_to, transport_dtype

Inputs = dict[str, np.ndarray]


def _generator(seed: int, name: str) -> np.random.Generator:
    """An independent stream per (seed, array name), so arrays do not shift when other arrays change."""
    digest = hashlib.sha256(f"bncheck/{seed}/{name}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


def _draw_plain(spec: dict[str, Any], shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    dist = spec["dist"]
    if dist == "normal":
        return spec["loc"] + spec["scale"] * rng.standard_normal(shape)
    if dist == "uniform":
        return rng.uniform(spec["low"], spec["high"], shape)
    if dist == "constant":
        return np.full(shape, spec["value"], dtype=np.float64)
    raise ValueError(f"unknown distribution {dist!r}")


def _draw(spec: dict[str, Any], shape: tuple[int, ...], seed: int, name: str) -> np.ndarray:
    """Values in logical layout (channels on axis 1): the base draw, per-channel overrides, then injected specials."""
    a = _draw_plain(spec, shape, _generator(seed, name))
    for ch, sub in spec.get("channels", {}).items():
        c = int(ch)
        sub_shape = (shape[0], *shape[2:]) if len(shape) > 1 else ()
        values = _draw_plain(sub, sub_shape, _generator(seed, f"{name}.channel{c}"))
        if len(shape) > 1:
            a[:, c] = values
        else:
            a[c] = values
    inj = spec.get("inject")
    if inj:
        rng = _generator(seed, f"{name}.inject")
        flat = a.reshape(-1)
        positions = rng.choice(flat.size, size=min(inj["count"], flat.size), replace=False)
        flat[positions] = special_value(inj["value"])
    return a


def _to_physical(case: Case, logical: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(logical, 1, -1)) if case.layout == "channels_last" else logical


def expected_keys(case: Case) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every input array a case needs: key -> (physical shape, dtype name)."""
    out = {}
    for phase in case.phases:
        out[f"{phase}.x"] = (case.physical_shape, case.dtype)
        if case.grad:
            out[f"{phase}.dy"] = (case.physical_shape, case.dtype)
    names = (["gamma", "beta"] if case.affine else []) + (["running_mean", "running_var"] if case.track_running_stats else [])
    for name in names:
        out[name] = ((case.channels,), case.param_dtype)
    return out


class InputDataError(ValueError):
    """A case's explicit data file is missing, altered, or does not fit the case."""


_VERIFIED: dict[str, Path] = {}  # SHA-256 -> the data file verified for it, found beside the case file that named it
def verified_data_files() -> dict[str, str]:
    """SHA-256 -> absolute path of every data file verified in this process (a run records them for --resume)."""
    return {k: str(v) for k, v in _VERIFIED.items()}


def add_verified_data_file(sha256: str, path: str | Path) -> None:
    """Look for the data file of this SHA-256 at `path` first (it is verified again when loaded)."""
    _VERIFIED.setdefault(sha256, Path(path))


def find_data_file(relative: str, sha256: str | None = None, base: Path | None = None) -> Path:
    """Locate a case data file: beside the case file that names it (`base`, its folder), where a file of that
    SHA-256 was verified before, then in the suite folders (the shipped suites, ./cases)."""
    folders = [*([base] if base is not None else []), *suite_dirs()]
    known = _VERIFIED.get(sha256 or "")
    candidates = [*([base / relative] if base is not None else []), *([known] if known is not None else []),
                  *(d / relative for d in suite_dirs())]
    for p in candidates:
        try:
            if p.is_file():
                return p
        except OSError:  # e.g. a name longer than the file system allows
            continue
    where = ", ".join(dict.fromkeys(str(d) for d in folders))
    raise InputDataError(f"data file {shorten(relative)!r} not found under {where} "
                         "(keep data files beside the case file that names them)")


def load_data(case: Case, base: Path | None = None) -> Inputs:
    """The explicit arrays of a data-backed case, verified against its SHA-256 and its shapes and dtypes; the file is
    looked for beside the case file first (`base`, its folder; see find_data_file)."""
    spec = case.regime["data"]
    path = find_data_file(spec["file"], spec["sha256"], base)
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != spec["sha256"]:
        raise InputDataError(f"{path}: SHA-256 {digest[:12]}... differs from the case's {spec['sha256'][:12]}... "
                             "(the file changed; regenerate the suite)")
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    want = expected_keys(case)
    if set(arrays) != set(want):
        raise InputDataError(f"{path}: arrays {sorted(arrays)} do not match the case's inputs {sorted(want)}")
    for k, (shape, dtype) in want.items():
        a = arrays[k]
        if a.shape != shape or a.dtype != transport_dtype(dtype):
            raise InputDataError(f"{path}: {k} is {a.dtype}{list(a.shape)}, the case needs {transport_dtype(dtype)}{list(shape)}")
        if dtype == "bfloat16" and not np.array_equal(round_to(a.astype(np.float64), "bfloat16"), a, equal_nan=True):
            raise InputDataError(f"{path}: {k} holds values that are not bfloat16")
    _VERIFIED[spec["sha256"]] = path.resolve()
    return arrays


def make_inputs(case: Case) -> Inputs:
    """Every array the case needs, keyed '<phase>.x', '<phase>.dy', 'gamma', 'beta', 'running_mean', 'running_var'.

    Batches are in the case's physical layout and dtype; parameters and running statistics in its
    parameter dtype (bfloat16 values travel as exactly representable float32). Data-backed cases
    load their arrays from the file the case names.
    """
    if "data" in case.regime:
        return load_data(case)
    r = case.regime
    out: Inputs = {}
    for key, (shape, dtype) in expected_keys(case).items():
        name = key.split(".")[-1]
        logical = case.shape if shape == case.physical_shape else shape
        a = _draw(r[name], logical, case.seed, key)
        out[key] = round_to(_to_physical(case, a) if a.ndim > 1 else a, dtype)
    return out


def inputs_digest(inputs: Inputs) -> str:
    """Hash of the exact input bits, recorded so a replay can prove it consumed the same values."""
    h = hashlib.sha256()
    for k in sorted(inputs):
        a = np.ascontiguousarray(inputs[k])
        h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()[:16]
