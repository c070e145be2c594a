"""Import ONNX's own BatchNormalization conformance tests as the data-backed `onnx-conformance` suite.

Everything comes from the installed `onnx` package; nothing is downloaded. Two kinds of ONNX backend tests
hold a lone BatchNormalization node:

* node tests (test_batchnorm_example, ..._epsilon, ..._training_mode). onnx no longer ships their data
  folders (onnx/backend/test/data/node is absent from the 1.23 wheel): `onnx.backend.test.loader.
  load_model_tests(kind="node")` builds them in memory by running the exporter code in
  onnx/backend/test/case/node/*.py, each export function after `np.random.seed(0)`
  (onnx/backend/test/case/base.py). Loading every operator's exporters takes about 12 s, so only the
  exporter modules that name "BatchNormalization" are imported; the tests and arrays are the ones the full
  loader produces (the same seed is set before each export function). Their expected outputs are ONNX's
  reference formulas evaluated in float32 NumPy at import time.
* on-disk model tests under onnx/backend/test/data/<kind>/<test>/ (model.onnx, test_data_set_*/input_*.pb,
  output_*.pb) whose graph is a single BatchNormalization node: in onnx 1.23 the five PyTorch-converted
  test_BatchNorm*_eval tests (opset 6, is_test=1; scale, bias and statistics are graph initializers; the
  expected outputs were computed by PyTorch).

Each test becomes a data-backed Case (channels-first, affine, tracked statistics; mode 'train' for
training_mode=1, else 'eval') whose arrays are written to <out>/onnx-conformance/<test>.npz, with ONNX's
expected outputs in a sidecar <test>.expected.npz keyed like the reference ('eval.y', 'train0.y',
'train0.running_mean', 'train0.running_var'). The cases go to <out>/onnx-conformance.jsonl.

Attributes are float32: eps is the float32 attribute value exactly (1e-5 is recorded as
9.999999747378752e-06), and the canonical momentum is 1 - float32(momentum) in float64, which is exact for
every float32 momentum in [2**-29, 1] (checked with fractions for each test), so a target converting back
with 1 - m recovers the float32 attribute bit for bit.

Each import is checked three ways:
1. ONNX's reference formulas (_batchnorm_test_mode, _batchnorm_training_mode in
   onnx/backend/test/case/node/batch_normalization.py) re-evaluated on the imported arrays reproduce the
   expected outputs (validates the import: input order, attributes, dtypes).
2. The expected outputs agree with bncheck's reference (running variance biased, ONNX's convention) within
   the tolerance ONNX declares for its backend tests: rtol=1e-3, atol=1e-7 per TestCase
   (onnx/backend/test/case/node/__init__.py, expect(); onnx/backend/test/loader/__init__.py defaults,
   which a data.json may override), applied by onnx/backend/test/runner/__init__.py as
   np.testing.assert_allclose(out, ref, rtol, atol), i.e. |out - ref| <= atol + rtol * |ref| with ref the
   expected output. The values are read from the installed onnx's TestCase objects.
3. The same error in units of bncheck's own bound (tolerance.compute_bounds, compare.judge), judging
   ONNX's expected outputs as if a float32 implementation had produced them.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import math
import os
import pkgutil
import zipfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .cases import Case, case_from_dict, write_case_file
from .compare import judge
from .files import write_atomic
from .inputs import expected_keys
from .reference import compute_reference
from .tolerance import compute_bounds

SUITE = "onnx-conformance"
OP = "BatchNormalization"
RUNNING_VAR = "biased"  # ONNX's current_var is the population variance (opsets 14, 15)
TOLERANCE_SOURCE = (
    "rtol/atol of each onnx TestCase: onnx/backend/test/case/node/__init__.py expect() (rtol=1e-3, atol=1e-7), "
    "onnx/backend/test/loader/__init__.py load_model_tests() (defaults rtol=1e-3, atol=1e-7, data.json may "
    "override); applied by onnx/backend/test/runner/__init__.py assert_similar_outputs() as "
    "np.testing.assert_allclose(out, ref, rtol, atol): |out - ref| <= atol + rtol * |ref|"
)
_FLOAT_DTYPES = ("float16", "float32", "float64")
_NODE_CASE_PACKAGE = "onnx.backend.test.case.node"
_FORMULA_MODULES = ("onnx.backend.test.case.node.batch_normalization", "onnx.backend.test.case.node.batchnorm")


class OnnxImportError(RuntimeError):
    """The installed onnx package cannot be imported from (missing, or its tests have an unexpected form)."""


# ---- report -------------------------------------------------------------------------------------------
@dataclass
class QuantityCheck:
    """ONNX's expected value of one quantity against bncheck's reference."""

    key: str  # 'eval.y', 'train0.running_var', ...
    max_abs: float  # max |expected - reference|
    max_rel: float  # max |expected - reference| / |reference|
    onnx_ratio: float  # max |expected - reference| / (atol + rtol * |expected|); <= 1 is within ONNX's tolerance
    within_onnx_tolerance: bool
    bncheck_ratio: float  # compare.judge ratio: max |error| / bncheck bound; <= 1 passes
    bncheck_passed: bool
    max_ulp: float  # in ULPs of the output dtype


@dataclass
class FormulaCheck:
    """ONNX's reference formula re-evaluated on the imported arrays against ONNX's expected outputs."""

    function: str  # e.g. 'onnx.backend.test.case.node.batch_normalization._batchnorm_test_mode'
    available: bool
    exact: bool = False  # bit-identical to the expected outputs
    max_abs: float = math.nan
    onnx_ratio: float = math.nan  # in units of ONNX's tolerance, as in QuantityCheck
    passed: bool = False  # within ONNX's tolerance
    note: str = ""


@dataclass
class ImportedTest:
    """One imported ONNX test: its case, provenance and checks."""

    name: str  # ONNX test name, e.g. 'test_batchnorm_example'
    kind: str  # 'node' or the data folder kind ('pytorch-converted', ...)
    source: str  # relative to the onnx package
    case: Case
    opset: int
    attributes: dict[str, Any]  # the node's attributes, schema defaults filled in
    rtol: float
    atol: float
    data_file: str  # relative to the cases folder
    expected_file: str
    quantities: list[QuantityCheck]
    formula: FormulaCheck

    @property
    def case_id(self) -> str:
        return self.case.case_id

    @property
    def mode(self) -> str:
        return self.case.mode

    @property
    def max_abs(self) -> float:
        return max(q.max_abs for q in self.quantities)

    @property
    def max_rel(self) -> float:
        return max(q.max_rel for q in self.quantities)

    @property
    def onnx_ratio(self) -> float:
        return max(q.onnx_ratio for q in self.quantities)

    @property
    def within_onnx_tolerance(self) -> bool:
        return all(q.within_onnx_tolerance for q in self.quantities)

    @property
    def bncheck_ratio(self) -> float:
        return max(q.bncheck_ratio for q in self.quantities)

    @property
    def bncheck_passed(self) -> bool:
        return all(q.bncheck_passed for q in self.quantities)


@dataclass
class SkippedTest:
    """A BatchNormalization test of the installed onnx that could not become a case, and why."""

    name: str
    source: str
    reason: str


@dataclass
class ImportReport:
    """What `import_onnx` wrote and how ONNX's expectations compare with bncheck's reference."""

    onnx_version: str
    suite_file: Path
    data_dir: Path
    tests: list[ImportedTest]
    skipped: list[SkippedTest] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # stale data files deleted from data_dir
    tolerance_source: str = TOLERANCE_SOURCE

    @property
    def cases(self) -> list[Case]:
        return [t.case for t in self.tests]

    @property
    def ok(self) -> bool:
        """Nothing skipped; every expectation within ONNX's tolerance of the reference; every formula check passed."""
        return not self.skipped and all(t.within_onnx_tolerance and t.formula.passed for t in self.tests)


# ---- discovery -------------------------------------------------------------------------------------------
@dataclass
class _Source:
    name: str
    kind: str
    source: str
    model: Any  # onnx.ModelProto
    data_sets: list[tuple[list[np.ndarray], list[np.ndarray]]]
    rtol: float
    atol: float


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - exercised only without onnx
        raise OnnxImportError(f"the onnx package is not installed ({e}); install bncheck[onnxruntime]") from None
    return onnx


def _package_dir() -> Path:
    return Path(_onnx().__file__).resolve().parent


def _rel(path: str | Path) -> str:
    """A path relative to the onnx package folder, with '/' separators."""
    return Path(os.path.relpath(Path(path).resolve(), _package_dir())).as_posix()


def _is_bn_node(node: Any) -> bool:
    return node.op_type == OP and node.domain in ("", "ai.onnx")


def _is_bn_model(model: Any) -> bool:
    """A model whose graph is one BatchNormalization node."""
    return len(model.graph.node) == 1 and _is_bn_node(model.graph.node[0])


def _node_test_modules() -> list[str]:
    """Exporter modules under onnx/backend/test/case/node that build a BatchNormalization node."""
    pkg = importlib.import_module(_NODE_CASE_PACKAGE)
    out = []
    for info in pkgutil.iter_modules(pkg.__path__):
        path = Path(pkg.__path__[0]) / f"{info.name}.py"
        if info.ispkg or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if f'"{OP}"' in text or f"'{OP}'" in text:
            out.append(f"{_NODE_CASE_PACKAGE}.{info.name}")
    return sorted(out)


def _node_sources() -> tuple[list[_Source], list[SkippedTest]]:
    """The in-memory node tests (what load_model_tests(kind='node') returns) that hold a BatchNormalization node."""
    modules = _node_test_modules()
    state = np.random.get_state()  # the exporters reseed NumPy's global generator; leave it as we found it
    try:
        for m in modules:
            importlib.import_module(m)
    finally:
        np.random.set_state(state)
    pkg = importlib.import_module(_NODE_CASE_PACKAGE)
    sources, skipped = [], []
    by_module = {m: _rel(importlib.import_module(m).__file__) for m in modules}
    origin = ", ".join(by_module.values())
    for tc in pkg._NodeTestCases:
        if tc.model is None or not any(_is_bn_node(n) for n in tc.model.graph.node):
            continue
        src = f"{origin}::{tc.name}"
        if not _is_bn_model(tc.model):
            skipped.append(SkippedTest(tc.name, src, "BatchNormalization inside a larger graph"))
            continue
        sets = [([np.asarray(_as_array(a)) for a in ins], [np.asarray(_as_array(a)) for a in outs]) for ins, outs in tc.data_sets]
        sources.append(_Source(tc.name, "node", src, tc.model, sets, float(tc.rtol), float(tc.atol)))
    return sources, skipped


def _as_array(a: Any) -> np.ndarray:
    from onnx import TensorProto, numpy_helper

    return numpy_helper.to_array(a) if isinstance(a, TensorProto) else np.asarray(a)


def _read_tensor(path: Path) -> np.ndarray:
    from onnx import TensorProto, numpy_helper

    t = TensorProto()
    t.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(t)


def _numbered(folder: Path, prefix: str) -> list[Path]:
    """folder/prefix_0.pb, prefix_1.pb, ... in numeric order."""
    files = list(folder.glob(f"{prefix}_*.pb"))
    return sorted(files, key=lambda p: int(p.stem.rsplit("_", 1)[1]))


def _data_sources() -> tuple[list[_Source], list[SkippedTest]]:
    """On-disk model tests (onnx/backend/test/data/<kind>/<test>/model.onnx) whose graph is one BatchNormalization node."""
    onnx = _onnx()
    from onnx.backend.test.loader import DATA_DIR, load_model_tests

    sources, skipped = [], []
    for kind in sorted(os.listdir(DATA_DIR)):
        if kind == "node" or not os.path.isdir(os.path.join(DATA_DIR, kind)):
            continue  # node tests come from the exporters (the folder is not shipped any more)
        for tc in sorted(load_model_tests(kind=kind), key=lambda t: t.name):
            if tc.model_dir is None:
                continue  # a data.json naming a model to download (full networks): never downloaded
            folder = Path(tc.model_dir)
            model = onnx.load(str(folder / "model.onnx"))
            if not any(_is_bn_node(n) for n in model.graph.node):
                continue
            if not _is_bn_model(model):
                continue  # whole networks (e.g. light_*, real/*) use BatchNormalization among other ops
            sets = []
            for ds in sorted(folder.glob("test_data_set_*"), key=lambda p: int(p.name.rsplit("_", 1)[1])):
                sets.append(([_read_tensor(p) for p in _numbered(ds, "input")], [_read_tensor(p) for p in _numbered(ds, "output")]))
            sources.append(_Source(tc.name, kind, _rel(folder), model, sets, float(tc.rtol), float(tc.atol)))
    return sources, skipped


# ---- one test -> one case -----------------------------------------------------------------------------
class _Skip(Exception):
    pass


def _opset(model: Any) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    raise _Skip("the model imports no ai.onnx opset")


def _attributes(node: Any, opset: int) -> dict[str, Any]:
    """The node's attributes with the schema's defaults filled in (float attributes as their float32 values)."""
    import onnx
    from onnx import helper

    schema = onnx.defs.get_schema(OP, opset, "")
    out: dict[str, Any] = {}
    for name, a in schema.attributes.items():
        if a.default_value.type != onnx.AttributeProto.UNDEFINED:
            out[name] = helper.get_attribute_value(a.default_value)
    for a in node.attribute:
        out[a.name] = helper.get_attribute_value(a)
    return out


def canonical_momentum(onnx_momentum: float) -> float:
    """1 - float32(momentum), computed in float64; raises ValueError if that subtraction would round."""
    m32 = float(np.float32(onnx_momentum))
    canonical = 1.0 - m32
    if Fraction(1) - Fraction(m32) != Fraction(canonical):
        raise ValueError(f"1 - float32({onnx_momentum!r}) is not exact in float64")
    return canonical


def _training(node: Any, opset: int, attrs: dict[str, Any]) -> bool:
    since = _onnx().defs.get_schema(OP, opset, "").since_version
    outputs = [o for o in node.output if o]
    if attrs.get("spatial", 1) != 1:
        raise _Skip(f"spatial={attrs['spatial']} (per-activation statistics) has no bncheck case")
    if since >= 14:
        return int(attrs.get("training_mode", 0)) == 1
    legacy_training = len(outputs) > 1 or (since < 7 and int(attrs.get("is_test", 0)) == 0)
    if legacy_training:
        raise _Skip(f"opset {since} training outputs (mean, var, saved_mean, saved_var) are not imported")
    return False


def _build(src: _Source, set_index: int, out_dir: Path) -> tuple[Case, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any], int]:
    """The case, its input arrays, ONNX's expected outputs (reference keys), attributes and opset; writes the npz files."""
    model = src.model
    node = model.graph.node[0]
    opset = _opset(model)
    attrs = _attributes(node, opset)
    training = _training(node, opset, attrs)
    inputs, outputs = src.data_sets[set_index]
    env = {i.name: numpy_array for i, numpy_array in zip(model.graph.input, inputs)}
    for init in model.graph.initializer:
        env.setdefault(init.name, _as_array(init))
    env_out = {o.name: a for o, a in zip(model.graph.output, outputs)}
    names = list(node.input)
    if len(names) != 5 or any(n not in env for n in names):
        raise _Skip(f"node inputs {names} are not all given (X, scale, B, input_mean, input_var)")
    x, scale, b, mean, var = (np.asarray(env[n]) for n in names)
    if x.dtype.name not in _FLOAT_DTYPES or not 2 <= x.ndim <= 5:
        raise _Skip(f"X is {x.dtype}{list(x.shape)}; bncheck takes float16/32/64 of rank 2 to 5")
    if len({scale.dtype, b.dtype, mean.dtype, var.dtype}) != 1 or scale.dtype.name not in _FLOAT_DTYPES:
        raise _Skip(f"parameters have dtypes {[a.dtype.name for a in (scale, b, mean, var)]}; bncheck has one parameter dtype")
    eps = float(np.float32(attrs["epsilon"]))
    try:
        momentum = canonical_momentum(attrs["momentum"])
    except ValueError as e:
        raise _Skip(str(e)) from None
    if not 0.0 <= momentum <= 1.0:
        raise _Skip(f"momentum {attrs['momentum']} is outside [0, 1]")

    stem = src.name if len(src.data_sets) == 1 else f"{src.name}_set{set_index}"
    data_rel = f"{SUITE}/{stem}.npz"
    expected_rel = f"{SUITE}/{stem}.expected.npz"
    mode = "train" if training else "eval"
    phase = "train0" if training else "eval"
    arrays = {f"{phase}.x": x, "gamma": scale, "beta": b, "running_mean": mean, "running_var": var}
    sha = _write_npz(out_dir / data_rel, arrays)
    d = {
        "shape": list(x.shape), "layout": "channels_first", "dtype": x.dtype.name, "param_dtype": scale.dtype.name,
        "mode": mode, "eps": eps, "momentum": momentum, "affine": True, "track_running_stats": True, "grad": False,
        "regime": {"name": f"onnx:{src.name}", "data": {"file": data_rel, "sha256": sha}}, "seed": 0,
        "meta": {
            "generator": f"bncheck.onnx_import/{__version__}", "onnx": _onnx().__version__, "source": src.source,
            "kind": src.kind, "opset": opset, "attributes": _json_attrs(attrs),
        },
    }
    case = case_from_dict(d)
    want = expected_keys(case)
    got = {k: (a.shape, a.dtype.name) for k, a in arrays.items()}
    if got != want:
        raise OnnxImportError(f"{src.name}: arrays {got} do not match the case's inputs {want}")

    outs = [o for o in node.output]
    expected: dict[str, np.ndarray] = {}
    for i, (name, key) in enumerate(zip(outs, ("y", "running_mean", "running_var"))):
        if name and name in env_out and (i == 0 or training):
            expected[f"{phase}.{key}"] = np.asarray(env_out[name])
    if f"{phase}.y" not in expected:
        raise _Skip("the test gives no expected Y")
    _write_npz(out_dir / expected_rel, expected)
    return case, arrays, expected, attrs, opset


def _json_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, float) else int(v) if isinstance(v, int) else str(v)) for k, v in sorted(attrs.items())}


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> str:
    """Write an uncompressed .npz that np.load reads, byte-for-byte reproducible; return its SHA-256.

    np.savez stamps every member with the current time, so its bytes (and the case id that holds their
    hash) would change on every import; here members are sorted and dated 1980-01-01.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[key]), allow_pickle=False)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


# ---- checks ---------------------------------------------------------------------------------------------
def _onnx_ratio(observed: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> float:
    """max |observed - expected| / (atol + rtol |expected|), as np.testing.assert_allclose(observed, expected) tests it."""
    o = np.asarray(observed, np.float64)
    e = np.asarray(expected, np.float64)
    if o.shape != e.shape:
        return math.inf
    with np.errstate(all="ignore"):
        fo, fe = np.isfinite(o), np.isfinite(e)
        same_special = (~fo & ~fe) & ((np.isnan(o) & np.isnan(e)) | (o == e))
        bad = (fo != fe) | (~fo & ~fe & ~same_special)
        r = np.where(fo & fe, np.abs(o - e) / (atol + rtol * np.abs(e)), 0.0)
    return math.inf if bad.any() else float(r.max(initial=0.0))


def _check_quantities(case: Case, inputs: dict[str, np.ndarray], expected: dict[str, np.ndarray],
                      rtol: float, atol: float) -> list[QuantityCheck]:
    ref = compute_reference(case, inputs, running_var=RUNNING_VAR)
    bounds = compute_bounds(case, inputs, ref)
    out = []
    for key in sorted(expected, key=lambda k: ("y", "running_mean", "running_var").index(k.split(".", 1)[1])):
        v = judge(case, key, expected[key], ref.values[key], bounds[key])
        r = _onnx_ratio(ref.values[key], expected[key], rtol, atol)
        out.append(QuantityCheck(key=key, max_abs=v.max_abs, max_rel=v.max_rel, onnx_ratio=r, within_onnx_tolerance=r <= 1.0,
                                 bncheck_ratio=v.ratio, bncheck_passed=v.passed, max_ulp=v.max_ulp))
    return out


def _formulas() -> tuple[str, Any, Any] | None:
    """ONNX's node-test reference formulas, if the installed onnx ships them."""
    for name in _FORMULA_MODULES:
        try:
            m = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(m, "_batchnorm_test_mode") and hasattr(m, "_batchnorm_training_mode"):
            return name, m._batchnorm_test_mode, m._batchnorm_training_mode
    return None


def _decimal(v: float) -> float:
    """The shortest decimal that rounds to float32(v), as a Python float: the literal an exporter would write."""
    return float(np.format_float_positional(np.float32(v), unique=True, trim="-"))


def _check_formula(case: Case, inputs: dict[str, np.ndarray], expected: dict[str, np.ndarray], attrs: dict[str, Any],
                   rtol: float, atol: float) -> FormulaCheck:
    """Evaluate ONNX's formula on the case's arrays, passing epsilon and momentum as the exporter does (decimal literals)."""
    found = _formulas()
    if found is None:
        return FormulaCheck(function="", available=False, note="the installed onnx ships no BatchNormalization formulas")
    module, test_mode, training_mode = found
    phase = case.phases[0]
    args = [inputs[f"{phase}.x"], inputs["gamma"], inputs["beta"], inputs["running_mean"], inputs["running_var"]]
    eps, momentum = _decimal(attrs["epsilon"]), _decimal(attrs["momentum"])
    with np.errstate(all="ignore"):
        if case.mode == "train":
            fn = f"{module}._batchnorm_training_mode"
            y, rm, rv = training_mode(*args, momentum=momentum, epsilon=eps)
            got = {f"{phase}.y": y, f"{phase}.running_mean": rm, f"{phase}.running_var": rv}
        else:
            fn = f"{module}._batchnorm_test_mode"
            got = {f"{phase}.y": test_mode(*args, epsilon=eps)}
    got = {k: np.asarray(v).astype(expected[k].dtype) for k, v in got.items() if k in expected}
    exact = all(np.array_equal(got[k], expected[k], equal_nan=True) for k in expected)
    max_abs = max(float(np.max(np.abs(got[k].astype(np.float64) - expected[k].astype(np.float64)), initial=0.0)) for k in expected)
    ratio = max(_onnx_ratio(got[k], expected[k], rtol, atol) for k in expected)
    return FormulaCheck(function=fn, available=True, exact=exact, max_abs=max_abs, onnx_ratio=ratio, passed=ratio <= 1.0,
                        note=f"epsilon={eps!r}, momentum={momentum!r} passed as Python floats")


# ---- entry points -------------------------------------------------------------------------------------------
def import_onnx(out_dir: Path) -> ImportReport:
    """Build the onnx-conformance suite under `out_dir` (normally the package's suites/ folder) from the installed onnx.

    Writes <out_dir>/onnx-conformance.jsonl, <out_dir>/onnx-conformance/<test>.npz (the case inputs) and
    <test>.expected.npz (ONNX's expected outputs), deletes stale .npz files in that folder, and returns the
    report of every check. The output is byte-for-byte reproducible for a given onnx and NumPy.
    """
    onnx = _onnx()
    out_dir = Path(out_dir)
    data_dir = out_dir / SUITE
    data_dir.mkdir(parents=True, exist_ok=True)
    node_sources, skipped = _node_sources()
    data_sources, skipped_data = _data_sources()
    skipped += skipped_data
    sources = sorted(node_sources, key=lambda s: s.name) + sorted(data_sources, key=lambda s: (s.kind, s.name))
    seen: dict[str, str] = {}
    tests: list[ImportedTest] = []
    written: set[str] = set()
    for src in sources:
        if src.name in seen:
            raise OnnxImportError(f"two BatchNormalization tests are named {src.name!r} ({seen[src.name]}, {src.source})")
        seen[src.name] = src.source
        if not src.data_sets:
            skipped.append(SkippedTest(src.name, src.source, "no test data sets"))
            continue
        for k in range(len(src.data_sets)):
            try:
                case, inputs, expected, attrs, opset = _build(src, k, out_dir)
            except _Skip as e:
                skipped.append(SkippedTest(src.name, src.source, str(e)))
                break
            data_file, expected_file = case.regime["data"]["file"], f"{SUITE}/{Path(case.regime['data']['file']).stem}.expected.npz"
            written.update({data_file, expected_file})
            tests.append(ImportedTest(
                name=src.name if len(src.data_sets) == 1 else f"{src.name}_set{k}", kind=src.kind, source=src.source,
                case=case, opset=opset, attributes=_json_attrs(attrs), rtol=src.rtol, atol=src.atol,
                data_file=data_file, expected_file=expected_file,
                quantities=_check_quantities(case, inputs, expected, src.rtol, src.atol),
                formula=_check_formula(case, inputs, expected, attrs, src.rtol, src.atol),
            ))
    removed = []
    for p in sorted(data_dir.glob("*.npz")):
        if f"{SUITE}/{p.name}" not in written:
            p.unlink()
            removed.append(p.name)
    suite_file = out_dir / f"{SUITE}.jsonl"
    write_case_file(suite_file, [t.case for t in tests])
    return ImportReport(onnx_version=onnx.__version__, suite_file=suite_file, data_dir=data_dir, tests=tests,
                        skipped=skipped, removed=removed)


def _fmt(v: float) -> str:
    return "inf" if v == math.inf else "nan" if v != v else f"{v:.2e}"


def format_report(report: ImportReport) -> str:
    """A short table for the CLI: one row per imported test, then skipped tests and the tolerance used."""
    rows = [("test", "kind", "mode", "case id", "max abs", "max rel", "ONNX tol", "bncheck", "formula")]
    for t in report.tests:
        f = t.formula
        formula = "n/a" if not f.available else ("exact" if f.exact else f"{_fmt(f.onnx_ratio)}" + ("" if f.passed else " FAIL"))
        rows.append((t.name, t.kind, t.mode, t.case_id, _fmt(t.max_abs), _fmt(t.max_rel),
                     _fmt(t.onnx_ratio) + ("" if t.within_onnx_tolerance else " FAIL"),
                     _fmt(t.bncheck_ratio) + ("" if t.bncheck_passed else " >1"), formula))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{SUITE}: {len(report.tests)} BatchNormalization tests from onnx {report.onnx_version} -> {report.suite_file}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    tols = sorted({(t.rtol, t.atol) for t in report.tests})
    lines.append("ONNX tol: max |expected - reference| / (atol + rtol*|expected|) with ONNX's "
                 + ", ".join(f"rtol={r:g} atol={a:g}" for r, a in tols) + " (<= 1 agrees); "
                 "bncheck: max |expected - reference| / bncheck bound (<= 1 passes); "
                 "formula: ONNX's reference formula on the imported arrays vs the expected outputs")
    for s in report.skipped:
        lines.append(f"skipped {s.name} ({s.source}): {s.reason}")
    if report.removed:
        lines.append("removed stale data files: " + ", ".join(report.removed))
    lines.append("all checks passed" if report.ok else "SOME CHECKS FAILED")
    return "\n".join(lines)
