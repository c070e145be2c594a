"""Standalone reproduction scripts: numpy plus the target's framework, inputs embedded, values beside a reference.

A script defines `run(case, inputs)` from the target's own `repro_source()`: for the built-in targets, the
kernel-path module the adapter itself calls (bncheck/targets/paths/, embedded verbatim; see
bncheck.targets.kernel), then an independent float64 reference, and prints every deviating quantity
with the framework's value, the reference value and the error. A maintainer can paste it into an issue.
"""

from __future__ import annotations

import base64
import io
import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from .cases import Case
from .files import write_atomic
from .inputs import Inputs

REFERENCE_SOURCE = '''
def reference(case, inputs, running_var):
    """BN in float64 with NumPy, independently of any framework: every quantity bncheck compares."""
    c_axis = len(case["shape"]) - 1 if case["layout"] == "channels_last" else 1
    C = case["shape"][1]
    rows = lambda a: np.moveaxis(np.asarray(a, np.float64), c_axis, -1).reshape(-1, C)
    def physical(r, like):
        shape = np.moveaxis(np.empty(like.shape), c_axis, -1).shape
        return np.moveaxis(r.reshape(shape), -1, c_axis)
    eps, m = case["eps"], case["momentum"]
    gamma = np.asarray(inputs["gamma"], np.float64) if case["affine"] else np.ones(C)
    beta = np.asarray(inputs["beta"], np.float64) if case["affine"] else np.zeros(C)
    rm = np.asarray(inputs["running_mean"], np.float64) if case["track_running_stats"] else None
    rv = np.asarray(inputs["running_var"], np.float64) if case["track_running_stats"] else None
    out = {}
    with np.errstate(all="ignore"):
        for phase in PHASES:
            X = rows(inputs[phase + ".x"]); n = X.shape[0]
            mean = X.mean(0); d = X - mean; var = (d * d).mean(0)
            var_u = (d * d).sum(0) / (n - 1) if n > 1 else np.full(C, np.nan)
            batch = phase != "eval" or not case["track_running_stats"]
            centre, s = (mean, 1 / np.sqrt(var + eps)) if batch else (rm, 1 / np.sqrt(rv + eps))
            xhat = (X - centre) * s
            out[phase + ".y"] = physical(gamma * xhat + beta, inputs[phase + ".x"])
            if batch:
                out[phase + ".batch_mean"], out[phase + ".batch_var"] = mean, var
                out[phase + ".batch_var_unbiased"], out[phase + ".batch_invstd"] = var_u, s
            if phase != "eval" and case["track_running_stats"]:
                rm = (1 - m) * rm + m * mean
                rv = (1 - m) * rv + m * (var_u if running_var == "unbiased" else var)
                out[phase + ".running_mean"], out[phase + ".running_var"] = rm.copy(), rv.copy()
            if phase + ".dy" in inputs:
                dY = rows(inputs[phase + ".dy"]); db = dY.sum(0); dg = (dY * xhat).sum(0)
                dX = gamma * s * (dY - db / n - xhat * dg / n) if batch else gamma * s * dY
                out[phase + ".dx"] = physical(dX, inputs[phase + ".x"])
                if case["affine"]:
                    out[phase + ".dgamma"], out[phase + ".dbeta"] = dg, db
    return out
'''

MAIN_SOURCE = '''
def main():
    """Run the framework, compare with the reference, print the deviating quantities."""
    obs = run(CASE, INPUTS)
    ref = reference(CASE, INPUTS, RUNNING_VAR)
    print("bncheck reproduction:", TITLE)
    print("case:", json.dumps(CASE, sort_keys=True))
    print("expected by bncheck: " + EXPECTATION)
    print()
    print(f"{'quantity':<22} {'max |error|':>12} {'max rel':>10}  first differing element: framework vs reference")
    for key in KEYS:
        if key not in obs or key not in ref:
            print(f"{key:<22} (not produced)")
            continue
        o = np.asarray(obs[key], np.float64).reshape(-1)
        r = np.asarray(ref[key], np.float64).reshape(-1)
        with np.errstate(all="ignore"):
            err = np.where(np.isnan(o) & np.isnan(r), 0.0, np.abs(o - r))
            err = np.where(np.isnan(err), np.inf, err)
            rel = err / np.maximum(np.abs(r), 1e-300)
        i = int(np.argmax(err))
        print(f"{key:<22} {err.max():>12.4g} {rel.max():>10.3g}  [{i}] {float(o[i])!r} vs {float(r[i])!r}")


if __name__ == "__main__":
    main()
'''


LITERAL_ELEMENTS = 256  # inputs of at most this many elements in all are written as literal values
INLINE_BYTES = 1 << 20  # larger ones up to this size as base64 inside the script; beyond, in an .npz beside it
BASE64_LINE = 100


def npz_bytes(inputs: Inputs) -> bytes:
    """The inputs as an uncompressed .npz file."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in sorted(inputs.items())})
    return buf.getvalue()


def _literal(a: np.ndarray) -> str:
    """An exact Python expression for a small array (repr of each value as a float64 round-trips it)."""
    values = ", ".join(repr(float(x)) for x in np.asarray(a, dtype=np.float64).reshape(-1))
    return f"np.array([{values}], dtype={str(a.dtype)!r}).reshape({tuple(a.shape)!r})"


def inputs_source(inputs: Inputs, npz_name: str | None) -> tuple[list[str], bytes | None]:
    """The script lines that define INPUTS, and the .npz to write beside the script (None: all inline).

    Linear in the size of the inputs: small inputs as literal values, medium ones as base64 cut into fixed-width
    lines (never textwrap, which is quadratic on one long word), large ones loaded from `npz_name`."""
    total = sum(int(np.asarray(v).size) for v in inputs.values())
    if total <= LITERAL_ELEMENTS:
        lines = ["nan, inf = float(\"nan\"), float(\"inf\")", "INPUTS = {"]
        lines += [f"    {k!r}: {_literal(np.asarray(v))}," for k, v in sorted(inputs.items())]
        return lines + ["}"], None
    raw = npz_bytes(inputs)
    if len(raw) <= INLINE_BYTES or npz_name is None:
        text = base64.b64encode(raw).decode()
        body = [text[i:i + BASE64_LINE] for i in range(0, len(text), BASE64_LINE)]
        return ['INPUTS = dict(np.load(io.BytesIO(base64.b64decode("""', *body, '"""))))'], None
    return ["# the inputs are too large to embed: they lie beside this script",
            f"INPUTS = dict(np.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), {npz_name!r})))"], raw


def render(case: Case, inputs: Inputs, target: Any, keys: list[str], title: str, expectation: str,
           manifest: dict[str, Any], npz_name: str | None = None) -> str:
    """The text of a standalone reproduction script for `target` on `case` (see render_files for large inputs)."""
    return render_files(case, inputs, target, keys, title, expectation, manifest, npz_name)[0]


def render_files(case: Case, inputs: Inputs, target: Any, keys: list[str], title: str, expectation: str,
                 manifest: dict[str, Any], npz_name: str | None = None) -> tuple[str, bytes | None]:
    """The script's text, and the bytes of the .npz of its inputs when they are too large to embed."""
    source = target.repro_source()
    inputs_lines, npz = inputs_source(inputs, npz_name)
    env = {k: manifest.get(k) for k in ("python", "platform", "cpu", "numpy")}
    env["framework"] = manifest.get("frameworks", {}).get(target.framework, {}).get("version")
    phases = list(case.phases)
    text = "\n".join([
        "#!/usr/bin/env python3",
        f'"""bncheck reproduction: {title}.',
        "",
        f"Target: {target.name} ({target.description}).",
        f"Needs only numpy and the framework. Environment where bncheck saw it: {json.dumps(env)}",
        '"""',
        "import base64",
        "import io",
        "import json",
        "import os",
        "",
        "import numpy as np",
        "",
        f"TITLE = {title!r}",
        f"EXPECTATION = {expectation!r}",
        f"CASE = json.loads({case.canonical_json()!r})",
        f"PHASES = {phases!r}",
        f"KEYS = {keys!r}",
        f"RUNNING_VAR = {str(target.conventions.running_var)!r}  # the target's documented running-variance convention",
        f"DEVICE = {target.device!r}",
        *inputs_lines,
        "",
        "# ---- the framework path under test ----",
        textwrap.dedent(source).strip(),
        "",
        "# ---- independent float64 reference ----",
        REFERENCE_SOURCE.strip(),
        "",
        MAIN_SOURCE.strip(),
        "",
    ])
    return text, npz


def write_repro(path: Path, case: Case, inputs: Inputs, target: Any, keys: list[str], title: str,
                expectation: str, manifest: dict[str, Any]) -> Path | None:
    """Write the script, and its inputs beside it as PATH.inputs.npz when they are too large to embed (None when the
    target has no repro_source)."""
    if not hasattr(target, "repro_source"):
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    npz_path = path.with_name(path.stem + ".inputs.npz")
    text, npz = render_files(case, inputs, target, keys, title, expectation, manifest, npz_path.name)
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
        if f.get("shrink", {}).get("reduced"):
            keys = f["shrink"]["deviating"]
        else:
            execution = next(e for e in doc["executions"] if e["case_id"] == f["minimal_case"] and e["target"] == f["target"])
            keys = [d["key"] for d in execution["deviations"]]
        title = f"{f['target']}: {f['worst']['first'].split('.', 1)[1]} deviates ({f['hypothesis']}, {f['classification']}) on {case.describe()}"
        expectation = (f"{f['explanation']}; bncheck judged these quantities outside their rounding-error bounds: "
                       + ", ".join(keys))
        path = out_dir / "repro" / f"{f['signature']}.py"
        if write_repro(path, case, make_inputs(case), target, keys, title, expectation, doc["run"]["manifest"]):
            f["repro"] = str(path.relative_to(out_dir))
            written += 1
        else:
            f["repro"] = None
    return written
