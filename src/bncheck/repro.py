"""Standalone reproduction scripts for `git bisect run`: numpy plus the target's framework, inputs embedded, bncheck's
expected values and bounds embedded as data.

A script defines `run(case, inputs)` from the target's own `repro_source()`: for the built-in targets, the
kernel-path module the adapter itself calls (bncheck/targets/paths/, embedded verbatim; see
bncheck.targets.kernel). It embeds bncheck's expected values and bounds for the quantities it shows (computed here
by bncheck's reference and tolerance, never recomputed by the script) and bncheck's element-wise judging
(bncheck/elementwise.py, verbatim), so the verdict it prints is bncheck's. It prints, per quantity, the verdict,
the largest error / bound, the largest error, and at the element of largest error / bound the actual and expected
values, the error and the bound; it exits 1 when a quantity of the finding deviates, 0 when none does, and 125 when
the framework cannot run the case (docs/reproducing.md).
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from .cases import Case
from .files import write_atomic
from .inputs import Inputs

PREAMBLE_SOURCE = '''
import os
import sys

# the environment bncheck's worker sets for this framework (the backend Keras runs on, ...), then framework logging
# off before any framework is imported (TensorFlow's C++ log lines, then the Python loggers and warnings below)
os.environ.update(FRAMEWORK_ENV)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import base64  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

warnings.filterwarnings("ignore")
for _name in ("tensorflow", "absl", "jax", "torch", "onnxruntime", "keras", "h5py"):
    logging.getLogger(_name).setLevel(logging.ERROR)


class QuietStderr:
    """File descriptor 2 into a temporary file while the framework runs: TensorFlow's C++ libraries print their
    start-up lines before any setting is read. What was captured is printed when the framework raises, or always
    with BNCHECK_REPRO_VERBOSE=1."""

    def __enter__(self):
        import tempfile

        sys.stderr.flush()
        self.file = tempfile.TemporaryFile(mode="w+b")
        self.saved = os.dup(2)
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, kind, value, tb):
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.seek(0)
        captured = self.file.read().decode(errors="replace")
        self.file.close()
        if captured and (kind is not None or os.environ.get("BNCHECK_REPRO_VERBOSE") == "1"):
            sys.stderr.write(captured)
        return False
'''

MAIN_SOURCE = '''
EXIT_FIXED, EXIT_REPRODUCED, EXIT_CANNOT_TELL = 0, 1, 125  # git bisect run: good, bad, skip


def main():
    """Run the framework path on the case, judge each shown quantity against bncheck's expected values and bounds
    (judge_elements, above), print them; return 1 when a quantity of KEYS (the finding) deviates, 0 when none does,
    125 when the framework cannot run the case or produces none of them."""
    print("bncheck reproduction:", TITLE)
    print("case:", json.dumps(CASE, sort_keys=True))
    print("bncheck's diagnosis:", DIAGNOSIS)
    print("expected: bncheck's float64 reference under the target's declared conventions (" + CONVENTIONS + "); "
          "bound: bncheck's rounding-error bound; a quantity deviates where |actual - expected| > bound, or where "
          "its NaN/Inf pattern differs")
    try:
        with QuietStderr():
            obs = run(CASE, INPUTS)
    except Exception as e:  # noqa: BLE001 - the framework cannot run the case here: neither reproduced nor fixed
        import traceback

        traceback.print_exc()
        print(f"CANNOT TELL: the framework raised {type(e).__name__}: {e} (exit {EXIT_CANNOT_TELL}: git bisect skips)")
        return EXIT_CANNOT_TELL
    print()
    print(f"{'quantity':<22} {'verdict':<8} {'error/bound':>11} {'max |error|':>11} {'max rel':>9}  at the element of largest "
          "error/bound: [index] actual vs expected, |error|, bound (max |error| and max rel: over elements finite on both sides)")
    deviating, judged = [], []
    for key in SHOWN:
        if key not in obs:
            print(f"{key:<22} {'-':<8} not produced by the framework")
            continue
        finding = key in KEYS
        try:
            j = judge_elements(obs[key], EXPECTED[key], BOUND[key])
        except ValueError as e:  # a shape that differs deviates
            print(f"{key:<22} {'DEVIATES':<8} {'inf':>11} {'inf':>11} {'inf':>9}  {e}")
            judged += [key] if finding else []
            deviating += [key] if finding else []
            continue
        o = np.asarray(obs[key], np.float64)
        i = j["worst"]
        b = np.broadcast_to(np.asarray(BOUND[key], np.float64), o.shape)[i]
        where = ",".join(str(int(k)) for k in i)
        extra = f"; NaN/Inf pattern differs at {j['nonfinite']} elements" if j["nonfinite"] else ""
        error = "NaN/Inf mismatch" if j["mismatch"][i] else f"{float(j['err'][i]):.4g}"
        print(f"{key:<22} {'DEVIATES' if j['deviates'] else 'pass':<8} {float(j['ratio'][i]):>11.4g} "
              f"{float(np.max(j['err'], initial=0.0)):>11.4g} {j['max_rel']:>9.3g}  [{where}] {float(o[i])!r} vs {float(EXPECTED[key][i])!r}, "
              f"{error}, {float(b):.4g}{extra}")
        if finding:
            judged.append(key)
            if j["deviates"]:
                deviating.append(key)
    print()
    if not judged:
        print(f"CANNOT TELL: the framework produced none of {', '.join(KEYS)} (exit {EXIT_CANNOT_TELL}: git bisect skips)")
        return EXIT_CANNOT_TELL
    if deviating:
        print(f"REPRODUCED: {', '.join(deviating)} beyond bncheck's bound (exit {EXIT_REPRODUCED})")
        return EXIT_REPRODUCED
    print(f"NOT REPRODUCED: {', '.join(judged)} within bncheck's bounds (exit {EXIT_FIXED})")
    return EXIT_FIXED


if __name__ == "__main__":
    sys.exit(main())
'''


LITERAL_ELEMENTS = 256  # an array of at most this many elements is written as literal values
INLINE_BYTES = 1 << 20  # the larger ones, up to this size in all, as base64 inside the script; beyond, in an .npz beside it
BASE64_LINE = 100
CONTEXT_ELEMENTS = 4096  # a quantity outside the finding is shown (its expected values embedded) up to this size


def npz_bytes(arrays: Inputs) -> bytes:
    """The arrays as an uncompressed .npz file."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in sorted(arrays.items())})
    return buf.getvalue()


def _literal(a: np.ndarray) -> str:
    """An exact Python expression for a small array (repr of each value as a float64 round-trips it)."""
    values = ", ".join(repr(float(x)) for x in np.asarray(a, dtype=np.float64).reshape(-1))
    return f"np.array([{values}], dtype={str(a.dtype)!r}).reshape({tuple(a.shape)!r})"


def arrays_source(name: str, arrays: Inputs, npz_name: str | None) -> tuple[list[str], bytes | None]:
    """The script lines that define the dictionary `name` of `arrays`, and the .npz to write beside the script (None:
    all inline).

    Each array of at most LITERAL_ELEMENTS elements is written as literal values a maintainer can read and edit;
    the larger ones together as base64 cut into fixed-width lines (never textwrap, which is quadratic on one long
    word), or, beyond INLINE_BYTES, loaded from `npz_name`. Linear in the size of the arrays."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    small = {k: v for k, v in arrays.items() if v.size <= LITERAL_ELEMENTS}
    large = {k: v for k, v in arrays.items() if k not in small}
    lines = ['nan, inf = float("nan"), float("inf")', f"{name} = {{"]
    lines += [f"    {k!r}: {_literal(v)}," for k, v in sorted(small.items())]
    lines.append("}")
    if not large:
        return lines, None
    raw = npz_bytes(large)
    if len(raw) <= INLINE_BYTES or npz_name is None:
        text = base64.b64encode(raw).decode()
        body = [text[i:i + BASE64_LINE] for i in range(0, len(text), BASE64_LINE)]
        return [*lines, f"{name}.update(np.load(io.BytesIO(base64.b64decode(\"\"\"", *body, '"""))))'], None
    return [*lines, f"# {', '.join(sorted(large))}: too large to embed, they lie beside this script",
            f"{name}.update(np.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), {npz_name!r})))"], raw


def inputs_source(inputs: Inputs, npz_name: str | None) -> tuple[list[str], bytes | None]:
    """The script lines that define INPUTS, and the .npz of the large ones to write beside the script (None: all inline)."""
    return arrays_source("INPUTS", inputs, npz_name)


def expected_arrays(case: Case, inputs: Inputs, target: Any, keys: list[str]
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """bncheck's expected values and bounds of `keys` (those the reference has) under the target's declared
    conventions, as its verdicts use them: the reference where the output format holds it (compare.pattern_reference),
    each bound in the shape it broadcasts from."""
    from .compare import pattern_reference
    from .judging import expected_values
    from .reference import quantity_of
    from .tolerance import output_dtype

    expected = expected_values(case, inputs).for_conventions(target.conventions)
    declared = target.conventions.running_var
    ref, bounds = expected.references[declared].values, expected.bounds[declared]
    values, bound = {}, {}
    for k in keys:
        if k in ref:
            values[k] = pattern_reference(np.asarray(ref[k], dtype=np.float64), output_dtype(case, quantity_of(k)))
            bound[k] = np.asarray(bounds[k], dtype=np.float64)
    return values, bound


def _conventions_line(target: Any) -> str:
    """The declared conventions the expected values follow, in one line."""
    cv = target.conventions
    return (f"running variance {cv.running_var}, eps {cv.eps_placement}, momentum {cv.momentum}"
            f" (the weight of the {'new batch statistic' if str(cv.momentum) == 'new' else 'running value'})")


def render(case: Case, inputs: Inputs, target: Any, keys: list[str], title: str, diagnosis: str,
           manifest: dict[str, Any], npz_name: str | None = None, shown: list[str] | None = None) -> str:
    """The text of a standalone reproduction script for `target` on `case` (see render_files for large inputs)."""
    return render_files(case, inputs, target, keys, title, diagnosis, manifest, npz_name, shown)[0]


def render_files(case: Case, inputs: Inputs, target: Any, keys: list[str], title: str, diagnosis: str,
                 manifest: dict[str, Any], npz_name: str | None = None, shown: list[str] | None = None
                 ) -> tuple[str, bytes | None]:
    """The script's text, and the bytes of the .npz beside it when its arrays are too large to embed.

    `keys` are the finding's deviating quantities: the script exits 1 when one of them deviates. `shown` (default:
    `keys`) are the quantities it prints, each with bncheck's expected value and bound embedded as data: those of
    `keys` always, the others up to CONTEXT_ELEMENTS elements each."""
    source = target.repro_source()
    shown = list(dict.fromkeys([*(shown or []), *keys])) if shown else list(keys)
    values, bound = expected_arrays(case, inputs, target, shown)
    keys = [k for k in keys if k in values]
    # the other quantities are shown for context where they are small: each costs its expected values and bounds
    shown = [k for k in shown if k in values and (k in keys or values[k].size <= CONTEXT_ELEMENTS)]
    values, bound = {k: values[k] for k in shown}, {k: bound[k] for k in shown}
    beside: dict[str, np.ndarray] = {}
    sections = []
    for name, arrays in (("INPUTS", inputs), ("EXPECTED", values), ("BOUND", bound)):
        lines, npz = arrays_source(name, arrays, f"{npz_name}" if npz_name else None)
        if npz is not None:  # one .npz beside the script holds every large array, its keys prefixed
            lines = [*lines[:-1], f"{name}.update({{k.split('/', 1)[1]: v for k, v in _BESIDE.items() "
                                  f"if k.startswith('{name}/')}})"]
            with np.load(io.BytesIO(npz)) as z:
                beside.update({f"{name}/{k}": z[k] for k in z.files})
        sections.append(lines)
    beside_lines = ([f"_BESIDE = dict(np.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), {npz_name!r})))"]
                    if beside else [])
    env = {k: manifest.get(k) for k in ("python", "platform", "cpu", "numpy")}
    env["framework"] = manifest.get("frameworks", {}).get(target.framework, {}).get("version")
    from .targets import frameworks

    record = frameworks().get(target.framework)
    framework_env = dict(record.env) if record is not None else {}
    from . import elementwise

    text = "\n".join([
        "#!/usr/bin/env python3",
        f'"""bncheck reproduction: {title}.',
        "",
        f"Target: {target.name} ({target.description}).",
        f"Needs only numpy and the framework. Environment where bncheck saw it: {json.dumps(env)}",
        "",
        "Exit status: 1 when the discrepancy reproduces (a quantity of KEYS beyond bncheck's bound), 0 when it does",
        "not, 125 when the framework cannot run the case. Inside the framework's checkout, `git bisect run python",
        'THIS_SCRIPT` finds the commit that introduced (or, with the terms swapped, fixed) it.',
        '"""',
        f"FRAMEWORK_ENV = {framework_env!r}",
        PREAMBLE_SOURCE.strip(),
        "",
        f"TITLE = {title!r}",
        f"DIAGNOSIS = {diagnosis!r}",
        f"CONVENTIONS = {_conventions_line(target)!r}",
        f"CASE = json.loads({case.canonical_json()!r})",
        f"PHASES = {list(case.phases)!r}",
        f"KEYS = {keys!r}  # the finding's quantities: the exit status says whether one of them deviates",
        f"SHOWN = {shown!r}",
        f"DEVICE = {target.device!r}",
        *beside_lines,
        *sections[0],
        "# bncheck's expected values (float64) and error bounds, computed by bncheck's reference (bncheck/reference.py,",
        "# bncheck/tolerance.py) for this case under the target's declared conventions",
        *sections[1],
        *sections[2],
        "",
        "# ---- the framework path under test ----",
        textwrap.dedent(source).strip(),
        "",
        "# ---- elementwise.py, verbatim (bncheck/elementwise.py): how bncheck judges each element ----",
        inspect.getsource(elementwise).strip(),
        "",
        MAIN_SOURCE.strip(),
        "",
    ])
    return text, (npz_bytes(beside) if beside else None)


def write_repro(path: Path, case: Case, inputs: Inputs, target: Any, keys: list[str], title: str,
                diagnosis: str, manifest: dict[str, Any], shown: list[str] | None = None) -> Path | None:
    """Write the script, and its large arrays beside it as PATH.inputs.npz when they are too large to embed (None when
    the target has no repro_source)."""
    if not hasattr(target, "repro_source"):
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    npz_path = path.with_name(path.stem + ".inputs.npz")
    text, npz = render_files(case, inputs, target, keys, title, diagnosis, manifest, npz_path.name, shown)
    if npz is not None:
        write_atomic(npz_path, npz)
    else:
        npz_path.unlink(missing_ok=True)
    write_atomic(path, text)
    return path


def write_finding_repros(doc: dict[str, Any], out_dir: Path, targets: dict[str, Any]) -> int:
    """Write one script per finding (for its smallest case) under out_dir/repro/; record each path in the finding."""
    from .cases import case_from_dict
    from .inputs import make_inputs

    written = 0
    for f in doc["findings"]:
        target = targets.get(f["target"])
        case_d = {k: v for k, v in doc["cases"][f["minimal_case"]].items() if k not in ("description", "metrics")}
        if target is None or not hasattr(target, "repro_source"):
            f["repro"] = None
            continue
        case = case_from_dict(case_d)
        if f.get("classification") == "precision-outlier":
            # its evidence is the peers' errors beside its own; a one-target script would show a quantity within
            # its bound (and, for the large cases where outliers show, embed megabytes of inputs for nothing)
            f["repro"] = None
            continue
        execution = next((e for e in doc["executions"] if e["case_id"] == f["minimal_case"]
                          and e["target"] == f["target"]), None)
        if (f.get("shrink") or {}).get("reduced"):
            keys, shown = f["shrink"]["deviating"], list(f["shrink"].get("checked") or [])
        else:
            assert execution is not None, f"finding {f['signature']}: no execution of its minimal case"
            keys, shown = [d["key"] for d in execution["deviations"]], list(execution.get("checked") or [])
        title = f"{f['target']}: {f['worst']['first'].split('.', 1)[1]} deviates ({f['hypothesis']}, {f['classification']}) on {case.describe()}"
        path = out_dir / "repro" / f"{f['signature']}.py"
        if write_repro(path, case, make_inputs(case), target, keys, title, f["explanation"], doc["run"]["manifest"],
                       shown):
            f["repro"] = str(path.relative_to(out_dir))
            written += 1
        else:
            f["repro"] = None
    return written
