"""The Case model: a frozen, canonical, content-addressed BN experiment, with validation and file loading."""

from __future__ import annotations

import errno
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .dtypes import DTYPES
from .files import write_atomic
from .text import shorten

MODES = ("train", "eval", "trajectory")
LAYOUTS = ("channels_first", "channels_last")
ARRAYS = ("x", "dy", "gamma", "beta", "running_mean", "running_var")
DISTS = {"normal": ("loc", "scale"), "uniform": ("low", "high"), "constant": ("value",)}
DEFAULT_DISTS: dict[str, dict[str, Any]] = {
    "x": {"dist": "normal", "loc": 0.0, "scale": 1.0},
    "dy": {"dist": "normal", "loc": 0.0, "scale": 1.0},
    "gamma": {"dist": "uniform", "low": 0.5, "high": 1.5},
    "beta": {"dist": "uniform", "low": -0.5, "high": 0.5},
    "running_mean": {"dist": "uniform", "low": -0.5, "high": 0.5},
    "running_var": {"dist": "uniform", "low": 0.5, "high": 1.5},
}
MAX_ELEMENTS = 1 << 26  # per batch; larger cases need more memory than a worker is given
MAX_STEPS = 64
FIELDS = (
    "shape", "layout", "dtype", "param_dtype", "mode", "steps", "eps", "momentum",
    "affine", "track_running_stats", "grad", "regime", "seed",
)
OPTIONAL_FIELDS = ("meta",)


class CaseError(ValueError):
    """A case that cannot be built; `field` names the offending field and `fix` says what would be valid."""

    def __init__(self, field_name: str, problem: str, fix: str = "") -> None:
        self.field = field_name
        self.problem = problem
        self.fix = fix
        super().__init__(self.describe())

    def describe(self) -> str:
        """One line: field, problem and fix (an offending field name or value is shortened, never echoed whole)."""
        problem = shorten(self.problem, 400)
        text = f"{shorten(self.field)}: {problem}" if self.field else problem
        return f"{text} ({self.fix})" if self.fix else text


class CaseFileError(ValueError):
    """A case file that cannot be loaded, located by file and line."""

    def __init__(self, location: str, error: CaseError | str) -> None:
        self.location = location
        super().__init__(f"{location}: {error.describe() if isinstance(error, CaseError) else shorten(str(error), 400)}")


@dataclass(frozen=True, eq=False)
class Case:
    """A fully specified BN experiment; momentum is the weight of the new batch statistic (PyTorch's form)."""

    shape: tuple[int, ...]
    layout: str = "channels_first"
    dtype: str = "float32"
    param_dtype: str = "float32"
    mode: str = "train"
    steps: int = 1
    eps: float = 1e-5
    momentum: float = 0.1
    affine: bool = True
    track_running_stats: bool = True
    grad: bool = False
    regime: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    # ---- derived facts -------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        """Number of channels C."""
        return self.shape[1]

    @property
    def per_channel(self) -> int:
        """Elements per channel in one batch: N times the spatial size."""
        return math.prod(self.shape) // self.shape[1]

    @property
    def spatial_rank(self) -> int:
        """Number of spatial dimensions (0 for (N, C))."""
        return len(self.shape) - 2

    @property
    def physical_shape(self) -> tuple[int, ...]:
        """Shape of the arrays as stored: channels moved last for channels_last."""
        if self.layout == "channels_last":
            return (self.shape[0], *self.shape[2:], self.shape[1])
        return self.shape

    @property
    def channel_axis(self) -> int:
        """Axis of the channels in the physical arrays."""
        return len(self.shape) - 1 if self.layout == "channels_last" else 1

    @property
    def phases(self) -> tuple[str, ...]:
        """Phases in order: 'train0'..'train{k-1}' for training steps, then 'eval' if the case evaluates."""
        if self.mode == "eval":
            return ("eval",)
        train = tuple(f"train{i}" for i in range(self.steps))
        return train + (("eval",) if self.mode == "trajectory" else ())

    @property
    def regime_name(self) -> str:
        """Short name of the value regime."""
        return str(self.regime.get("name", "custom"))

    # ---- identity ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Canonical dictionary (every field explicit, no metadata)."""
        return {
            "shape": list(self.shape), "layout": self.layout, "dtype": self.dtype,
            "param_dtype": self.param_dtype, "mode": self.mode, "steps": self.steps,
            "eps": self.eps, "momentum": self.momentum, "affine": self.affine,
            "track_running_stats": self.track_running_stats, "grad": self.grad,
            "regime": self.regime, "seed": self.seed,
        }

    def canonical_json(self) -> str:
        """The canonical JSON text whose hash is the case id."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @property
    def case_id(self) -> str:
        """Content hash of the canonical JSON: the case's own name."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Case) and self.canonical_json() == other.canonical_json()

    def __hash__(self) -> int:
        return hash(self.canonical_json())

    def describe(self) -> str:
        """A compact human description, e.g. 'train float32 (8,4,5,5) cl eps=1e-05 m=0.1 standard'."""
        lay = " cl" if self.layout == "channels_last" else ""
        mode = f"traj{self.steps}" if self.mode == "trajectory" else self.mode
        flags = "".join(f for f, on in ((" -affine", not self.affine), (" -stats", not self.track_running_stats), (" +grad", self.grad)) if on)
        dt = self.dtype if self.param_dtype == self.dtype else f"{self.dtype}/{self.param_dtype}"
        return f"{mode} {dt} {tuple(self.shape)}{lay} eps={self.eps:g} m={self.momentum:g}{flags} {self.regime_name}"

    def replace(self, **changes: Any) -> "Case":
        """A validated copy with some fields (or `meta`) changed."""
        d = {**self.to_dict(), "meta": self.meta}
        d.update(changes)
        return case_from_dict(d)


# ---- validation -----------------------------------------------------------------------------------
def _require_bool(d: dict[str, Any], key: str, default: bool) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise CaseError(key, f"must be true or false, got {json.dumps(v)}", "use a JSON boolean")
    return v


def _require_number(d: dict[str, Any], key: str, default: float, label: str = "") -> float:
    v = d.get(key, default)
    label = label or key
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise CaseError(label, f"must be a number, got {json.dumps(v)}", "use a JSON number")
    try:
        v = float(v)
    except OverflowError:
        raise CaseError(label, f"{v} is too large for a float", "use a finite number") from None
    if not math.isfinite(v):
        raise CaseError(label, f"must be finite, got {v}", "use a finite number")
    return v


def _require_choice(d: dict[str, Any], key: str, default: str | None, choices: tuple[str, ...]) -> str:
    v = d.get(key, default)
    if v not in choices:
        raise CaseError(key, f"unknown value {json.dumps(v)}", "one of " + ", ".join(choices))
    return v


SPECIAL_VALUES = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
DATA_KEY_RE = r"^[A-Za-z0-9_.-]+\.npz$"


def _finite_float(v: Any) -> float | None:
    """float(v) when it is finite, else None (integers beyond float range included)."""
    try:
        f = float(v)
    except (OverflowError, ValueError, TypeError):
        return None
    return f if math.isfinite(f) else None


def _show(v: Any) -> str:
    """A short JSON-ish rendering of a value for error messages (never raises)."""
    try:
        text = json.dumps(v)
    except (TypeError, ValueError):
        text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def special_value(v: Any) -> float:
    """A number, or one of the strings 'nan', 'inf', '-inf' (JSON has no literal for them)."""
    return SPECIAL_VALUES[v] if isinstance(v, str) else float(v)


def _validate_inject(where: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict) or set(spec) != {"value", "count"}:
        raise CaseError(where, f"must be {{\"value\": ..., \"count\": k}}, got {json.dumps(spec)}",
                        'value is a number or "nan", "inf", "-inf"; count how many elements to overwrite')
    value = spec["value"]
    ok = (isinstance(value, str) and value in SPECIAL_VALUES) or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and _finite_float(value) is not None)
    if not ok:
        raise CaseError(f"{where}.value", f"must be a finite number or one of \"nan\", \"inf\", \"-inf\", got {_show(value)}",
                        "use a JSON number or one of those strings")
    count = spec["count"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise CaseError(f"{where}.count", f"must be an integer >= 1, got {json.dumps(count)}", "overwrite at least one element")
    return {"value": value if isinstance(value, str) else _finite_float(value), "count": count}


def _validate_dist(name: str, spec: Any, where: str = "", nested: bool = False) -> dict[str, Any]:
    where = where or f"regime.{name}"
    if not isinstance(spec, dict):
        raise CaseError(where, f"must be an object like {json.dumps(DEFAULT_DISTS[name])}", "give dist and its parameters")
    dist = spec.get("dist")
    if not isinstance(dist, str) or dist not in DISTS:
        raise CaseError(f"{where}.dist", f"unknown distribution {_show(dist)}", "one of " + ", ".join(DISTS))
    params = DISTS[dist]
    options = () if nested else ("inject", "channels")
    extra = sorted(set(spec) - {"dist", *params, *options})
    if extra:
        allowed = ", ".join((*params, *options))
        raise CaseError(f"{where}.{extra[0]}", f"not a parameter of '{dist}'" + (" here" if nested else ""), "parameters: " + allowed)
    out: dict[str, Any] = {"dist": dist}
    for p in params:
        if p not in spec:
            raise CaseError(f"{where}.{p}", "missing", f"'{dist}' needs " + ", ".join(params))
        out[p] = _require_number(spec, p, 0.0, label=f"{where}.{p}")
    if dist == "normal" and out["scale"] < 0:
        raise CaseError(f"{where}.scale", f"must be >= 0, got {out['scale']}", "use a non-negative spread")
    if dist == "uniform" and out["high"] < out["low"]:
        raise CaseError(f"{where}.high", f"must be >= low ({out['low']}), got {out['high']}", "swap low and high")
    if "channels" in spec:
        ch = spec["channels"]
        if not isinstance(ch, dict) or not ch:
            raise CaseError(f"{where}.channels", "must map channel indices to distributions",
                            'e.g. {"0": {"dist": "constant", "value": 2.0}}')
        out["channels"] = {}
        key_of: dict[str, str] = {}  # channel index -> the key that named it
        for k in sorted(ch, key=lambda k: (len(k), k)):
            if not (k.isascii() and k.isdigit()):
                raise CaseError(f"{where}.channels", f"key {json.dumps(k)} is not a channel index", "use \"0\", \"1\", ...")
            index = str(int(k))
            if index in key_of:  # "1" and "01": one would silently override the other
                raise CaseError(f"{where}.channels", f"keys {json.dumps(key_of[index])} and {json.dumps(k)} both name channel {index}",
                                f"keep one key per channel, written without leading zeros (\"{index}\")")
            key_of[index] = k
            out["channels"][index] = _validate_dist(name, ch[k], f"{where}.channels.{k}", nested=True)
    if "inject" in spec:
        out["inject"] = _validate_inject(f"{where}.inject", spec["inject"])
    return out


def _validate_data(v: Any) -> dict[str, str]:
    import re

    if not isinstance(v, dict) or set(v) != {"file", "sha256"}:
        raise CaseError("regime.data", f"must be {{\"file\": NAME.npz, \"sha256\": HEX}}, got {json.dumps(v)}",
                        "name an .npz file beside the case file and its SHA-256")
    if not isinstance(v["file"], str) or not re.match(DATA_KEY_RE, v["file"].split("/")[-1]) or ".." in v["file"]:
        raise CaseError("regime.data.file", f"must be a relative .npz path without '..', got {json.dumps(v['file'])}",
                        "store data files beside the case file, in it or in a subfolder")
    if not isinstance(v["sha256"], str) or not re.fullmatch(r"[0-9a-f]{64}", v["sha256"]):
        raise CaseError("regime.data.sha256", "must be 64 lowercase hex digits", "use the file's SHA-256")
    return {"file": v["file"], "sha256": v["sha256"]}


def _validate_regime(v: Any) -> dict[str, Any]:
    if v is None:
        v = {}
    if not isinstance(v, dict):
        raise CaseError("regime", f"must be an object, got {json.dumps(v)}", 'e.g. {"name": "standard"}')
    unknown = sorted(set(v) - {"name", "data", *ARRAYS})
    if unknown:
        raise CaseError(f"regime.{unknown[0]}", "unknown key", "keys: name, data, " + ", ".join(ARRAYS))
    name = v.get("name", "standard")
    if not isinstance(name, str) or not name:
        raise CaseError("regime.name", f"must be a non-empty string, got {json.dumps(name)}", "name the regime")
    out: dict[str, Any] = {"name": name}
    if "data" in v:
        drawn = sorted(set(v) & set(ARRAYS))
        if drawn:
            raise CaseError(f"regime.{drawn[0]}", "cannot be drawn when regime.data gives the arrays", "remove it")
        out["data"] = _validate_data(v["data"])
        return out
    for a in ARRAYS:
        out[a] = _validate_dist(a, v.get(a, DEFAULT_DISTS[a]))
    return out


def case_from_dict(d: Any) -> Case:
    """Build and validate a Case from a decoded JSON object; raises CaseError naming field and fix."""
    if not isinstance(d, dict):
        raise CaseError("", f"a case must be a JSON object, got {type(d).__name__}", "write one object per line")
    unknown = sorted(set(d) - set(FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise CaseError(unknown[0], "unknown field", "fields: " + ", ".join(FIELDS))
    if "shape" not in d:
        raise CaseError("shape", "missing", "give [N, C] or [N, C, spatial...] (channels second)")
    shape = d["shape"]
    if (not isinstance(shape, list) or not 2 <= len(shape) <= 5
            or any(isinstance(s, bool) or not isinstance(s, int) for s in shape)):
        raise CaseError("shape", f"must be a list of 2 to 5 integers, got {json.dumps(shape)}", "e.g. [8, 4, 5, 5]")
    if any(s < 1 for s in shape):
        raise CaseError("shape", f"every dimension must be >= 1, got {shape}", "use positive sizes")
    total = math.prod(shape)
    if total > MAX_ELEMENTS:
        raise CaseError("shape", f"{total} elements per batch exceeds the limit of {MAX_ELEMENTS}", "use a smaller shape")
    layout = _require_choice(d, "layout", "channels_first", LAYOUTS)
    if layout == "channels_last" and len(shape) < 3:
        raise CaseError("layout", "channels_last needs at least one spatial dimension", "use channels_first for (N, C)")
    dtype = _require_choice(d, "dtype", "float32", DTYPES)
    default_param = "float32" if dtype in ("float16", "bfloat16") else dtype
    param_dtype = _require_choice(d, "param_dtype", default_param, DTYPES)
    mode = _require_choice(d, "mode", "train", MODES)
    default_steps = {"train": 1, "eval": 0, "trajectory": 2}[mode]
    steps = d.get("steps", default_steps)
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise CaseError("steps", f"must be an integer, got {json.dumps(steps)}", "use a whole number")
    if mode != "trajectory" and steps != default_steps:
        raise CaseError("steps", f"mode '{mode}' takes {default_steps} step(s), got {steps}", "use mode 'trajectory' for several steps")
    if mode == "trajectory" and not 1 <= steps <= MAX_STEPS:
        raise CaseError("steps", f"must be within [1, {MAX_STEPS}], got {steps}", "choose fewer training steps")
    eps = _require_number(d, "eps", 1e-5)
    if eps < 0:
        raise CaseError("eps", f"must be >= 0, got {eps:g}", "use a non-negative epsilon")
    momentum = _require_number(d, "momentum", 0.1)
    if not 0.0 <= momentum <= 1.0:
        raise CaseError("momentum", f"must be within [0, 1], got {momentum:g}", "momentum is the weight of the new batch statistic")
    affine = _require_bool(d, "affine", True)
    track = _require_bool(d, "track_running_stats", True)
    grad = _require_bool(d, "grad", False)
    regime = _validate_regime(d.get("regime"))
    for a in ARRAYS:
        for k in regime.get(a, {}).get("channels", {}):
            if int(k) >= shape[1]:
                raise CaseError(f"regime.{a}.channels", f"channel {k} does not exist (C = {shape[1]})", "use indices below C")
    seed = d.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise CaseError("seed", f"must be an integer within [0, 2**63), got {json.dumps(seed)}", "use a non-negative integer")
    meta = d.get("meta", {})
    if not isinstance(meta, dict):
        raise CaseError("meta", f"must be an object, got {json.dumps(meta)}", "put free-form notes in an object")
    return Case(
        shape=tuple(shape), layout=layout, dtype=dtype, param_dtype=param_dtype, mode=mode, steps=steps,
        eps=eps, momentum=momentum, affine=affine, track_running_stats=track, grad=grad, regime=regime,
        seed=seed, meta=meta,
    )


# ---- files and suites -----------------------------------------------------------------------------
def _decode_lines(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CaseFileError(str(path), f"cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise CaseFileError(f"{path}:{line}", "not UTF-8 text (case files are UTF-8 JSON)") from None
    if path.suffix == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise CaseFileError(f"{path}:{e.lineno}", f"invalid JSON: {e.msg} (fix the syntax)") from None
        except (RecursionError, ValueError) as e:
            raise CaseFileError(str(path), f"unreadable JSON ({type(e).__name__}: {str(e)[:80]}); write plain case objects") from None
        items = doc.get("cases") if isinstance(doc, dict) and "cases" in doc else doc
        if not isinstance(items, list):
            raise CaseFileError(str(path), "a .json case file holds a list of cases or {\"cases\": [...]}")
        for i, item in enumerate(items):
            yield i + 1, item
        return
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may stand inside a JSON string
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            yield lineno, json.loads(stripped)
        except json.JSONDecodeError as e:
            raise CaseFileError(f"{path}:{lineno}", f"invalid JSON at column {e.colno}: {e.msg} (one JSON object per line)") from None
        except (RecursionError, ValueError) as e:  # nesting too deep, an integer literal too long
            raise CaseFileError(f"{path}:{lineno}", f"unreadable JSON ({type(e).__name__}: {str(e)[:80]}); "
                                "write plain case objects") from None


def load_case_file(path: str | Path) -> list[Case]:
    """Load and validate every case of a .jsonl (one per line) or .json file; errors name file and line."""
    path = Path(path)
    label = "case" if path.suffix == ".json" else "line"
    cases = []
    from .inputs import InputDataError, load_data

    for n, item in _decode_lines(path):
        loc = f"{path}:{n}" if label == "line" else f"{path}: case {n}"
        try:
            case = case_from_dict(item)
            if "data" in case.regime:
                load_data(case, path.parent)  # verified now, so a bad data file never surfaces mid-run
        except CaseError as e:
            raise CaseFileError(loc, e) from None
        except InputDataError as e:
            raise CaseFileError(loc, str(e)) from None
        cases.append(case)
    return cases


def shipped_suites_dir() -> Path:
    """The folder of the suites shipped inside the package (src/bncheck/suites/, installed with it)."""
    from importlib.resources import files

    return Path(str(files("bncheck").joinpath("suites")))


def suite_dirs() -> list[Path]:
    """Folders searched for suites named without a path: the shipped suites, then ./cases (your own suites)."""
    seen, out = set(), []
    for d in (shipped_suites_dir(), Path.cwd() / "cases"):
        try:
            if d.is_dir() and d.resolve() not in seen:
                seen.add(d.resolve())
                out.append(d)
        except OSError:
            continue
    return out


def resolve_case_source(source: str) -> Path:
    """A path to a case file, or the name of a suite (e.g. 'smoke' -> the shipped smoke.jsonl)."""
    p = Path(source)
    try:
        kind = _file_kind(p)
    except OSError as e:
        raise CaseFileError(shorten(source), f"cannot read: {e.strerror or e}") from None
    if kind == "file":
        return p
    if kind is not None:
        raise CaseFileError(shorten(source), f"is a {kind}, not a case file (give a .jsonl or .json file, or a suite name)")
    if p.suffix == "" and "/" not in source:
        for d in suite_dirs():
            for ext in (".jsonl", ".json"):
                if (d / f"{source}{ext}").is_file():
                    return d / f"{source}{ext}"
    names = sorted({f.stem for d in suite_dirs() for f in d.glob("*.json*")})
    raise CaseFileError(shorten(source), "no such case file or suite (suites: " + (", ".join(names) or "none found") + ")")


def _file_kind(p: Path) -> str | None:
    """'file' for a regular file, a word for anything else that exists there (directory, FIFO, ...), None if nothing."""
    import stat

    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ENAMETOOLONG, errno.ENOTDIR, errno.ELOOP):
            return None
        raise
    if stat.S_ISREG(mode):
        return "file"
    return {stat.S_IFDIR: "directory", stat.S_IFIFO: "FIFO (named pipe)", stat.S_IFSOCK: "socket",
            stat.S_IFCHR: "character device", stat.S_IFBLK: "block device"}.get(stat.S_IFMT(mode), "special file")


def load_cases(sources: list[str]) -> list[Case]:
    """Load cases from files or suite names, dropping exact duplicates while keeping order."""
    seen: set[str] = set()
    out: list[Case] = []
    for s in sources:
        for c in load_case_file(resolve_case_source(s)):
            if c.case_id not in seen:
                seen.add(c.case_id)
                out.append(c)
    return out


def write_case_file(path: str | Path, cases: list[Case]) -> None:
    """Write cases as canonical JSON lines, atomically."""
    path = Path(path)
    lines = []
    for c in cases:
        d = c.to_dict()
        if c.meta:
            d["meta"] = c.meta
        lines.append(json.dumps(d, sort_keys=True, separators=(",", ":")))
    write_atomic(path, "\n".join(lines) + "\n")
