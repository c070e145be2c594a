"""Replay one case on one target and print every quantity beside the reference; or on two targets side by side
(`--against`), each against the other and against the reference, with the conventions that differ between them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .cases import Case, case_from_dict, load_case_file, resolve_case_source, suite_dirs
from .compare import compare
from .inputs import inputs_digest, make_inputs
from .judging import expected_values


def _from_store(case_id: str, store_path: Path) -> tuple[Case, str | None] | None:
    if not store_path.is_file():
        return None
    try:
        db = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
        rows = db.execute("SELECT case_id, json FROM cases WHERE case_id LIKE ?", (case_id + "%",)).fetchall()
        digest = None
        if len(rows) == 1:
            d = db.execute("SELECT inputs_digest FROM executions WHERE case_id=? AND inputs_digest != '' LIMIT 1",
                           (rows[0][0],)).fetchone()
            digest = d[0] if d else None
        db.close()
    except sqlite3.DatabaseError:
        return None
    if len(rows) > 1:
        raise LookupError(f"case id prefix {case_id!r} is ambiguous in {store_path} ({len(rows)} cases); give more characters")
    if not rows:
        return None
    case = case_from_dict(json.loads(rows[0][1]))
    if "data" in case.regime:  # a shrunk data-backed case: its data file lies beside its finding's case file
        from .inputs import add_verified_data_file

        for p in sorted((store_path.parent / "findings").glob(f"*/{case.regime['data']['file']}")):
            add_verified_data_file(case.regime["data"]["sha256"], p.resolve())
            break
    return case, digest


def find_case(case_id: str, sources: list[str], store_path: Path) -> tuple[Case, str | None]:
    """The case whose id starts with `case_id`, from the given sources, else the store, else every shipped suite."""
    if not sources:
        found = _from_store(case_id, store_path)
        if found:
            return found
        files = [f for d in suite_dirs() for f in sorted(d.glob("*.json*"))]
    else:
        files = [resolve_case_source(s) for s in sources]
    hits = {c.case_id: c for f in files for c in load_case_file(f) if c.case_id.startswith(case_id)}
    if len(hits) > 1:
        raise LookupError(f"case id prefix {case_id!r} is ambiguous ({len(hits)} cases); give more characters")
    if not hits:
        raise LookupError(f"no case {case_id!r} in {store_path} or in {', '.join(map(str, files)) or 'any suite'} (pass --cases FILE)")
    return next(iter(hits.values())), None


class CaseInputError(ValueError):
    """An inline case (--case) that is not valid JSON or not a valid case; the message says which and how to fix it."""


def parse_inline_case(text: str) -> Case:
    """The case of `--case '{...}'` (CaseInputError naming the problem and the fix)."""
    from .cases import CaseError
    from .inputs import InputDataError, load_data

    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise CaseInputError(f"--case: invalid JSON at column {e.colno}: {e.msg} (give one case object, e.g. "
                             "--case '{\"shape\": [8, 4], \"mode\": \"train\"}')") from None
    try:
        case = case_from_dict(d)
        if "data" in case.regime:
            load_data(case, Path.cwd())  # a data file beside the current folder, or in a suite folder
    except CaseError as e:
        raise CaseInputError(f"--case: {e.describe()}") from None
    except InputDataError as e:
        raise CaseInputError(f"--case: {e}") from None
    return case


def _fmt(x: float) -> str:
    return f"{x:.10g}" if np.isfinite(x) else str(x)


def replay_case(case: Case, target_name: str, timeout: float, plugins: list[str], stored_digest: str | None,
                elements: int, echo: Callable[[str], None]) -> int:
    """Run the case on the named target in its worker; print the comparison; return 0 if all passes, 1 otherwise."""
    from .runner import discover

    d = discover(target_name, plugins)
    try:
        match = [t for t in d.runnable if t.name == target_name]
        if not match:
            known = sorted(r["name"] for r in d.rows)
            row = next((r for r in d.rows if r["name"] == target_name), None)
            if row is not None:
                raise RuntimeError(f"target {target_name} is unavailable: {row['reason']}")
            raise LookupError(f"unknown target {target_name!r}" + (f"; did you mean {', '.join(known)}?" if known else "; see 'bncheck backends'"))
        target = match[0]
        inputs = make_inputs(case)
        digest = inputs_digest(inputs)
        echo(f"case     {case.case_id}  {case.describe()}")
        echo(f"target   {target.name}  ({target.description}; {d.frameworks[target.framework].get('version', '')})")
        same = "" if stored_digest is None else ("  (identical to the stored run)" if stored_digest == digest else f"  (DIFFERS from the stored run's {stored_digest})")
        echo(f"inputs   sha256/{digest}{same}")
        reason = target.supports(case)
        if reason:
            echo(f"unsupported: {reason}")
            return 0
        out = d.workers[target.framework].request(
            {"op": "run", "family": target.family, "device": target.device, "case": case.to_dict(), "inputs": inputs}, timeout)
    finally:
        d.close()
    if out.status != "ok":
        echo(f"status   {out.status}: {out.message}")
        if out.stderr_tail:
            echo(out.stderr_tail)
        return 1
    obs = out.reply["observation"]
    expected = expected_values(case, inputs)
    refs, bounds = expected.references, expected.bounds
    declared = target.conventions.running_var
    verdicts = {v.key: v for v in compare(case, obs, refs, bounds, target.conventions, expected.dependent)}
    echo(f"reference {refs[declared].precision} (exact: errors are measured against it, as the verdicts are); "
         f"running variance: {declared} (the target's declared convention)\n")
    echo(f"{'quantity':<22} {'index':>7}  {'target':>18}  {'reference':>18}  {'|error|':>10}  {'err/bound':>9}")
    for key, v in verdicts.items():
        ref = np.asarray(refs[declared].values[key], dtype=np.float64).reshape(-1)  # exact, as the verdict measures
        o = np.asarray(obs[key], dtype=np.float64).reshape(-1)
        b = np.broadcast_to(bounds[declared][key], refs[declared].values[key].shape).reshape(-1)
        for i in range(min(elements, o.size)):
            err = abs(o[i] - ref[i])
            echo(f"{key if i == 0 else '':<22} {i:>7}  {_fmt(o[i]):>18}  {_fmt(ref[i]):>18}  {err:>10.3g}  {err / b[i]:>9.3g}")
        flag = "pass" if v.passed else "DEVIATES"
        more = f" ({o.size} elements)" if o.size > elements else ""
        echo(f"{'':<22} {'max':>7}  {flag}{more}: err/bound {v.ratio:.3g}, abs {v.max_abs:.3g}, rel {v.max_rel:.3g}, "
             f"{v.max_ulp:.3g} ULP" + (f"; {v.note}" if v.note else ""))
    bad = [k for k, v in verdicts.items() if not v.passed]
    echo(f"\n{len(verdicts)} quantities checked, {len(bad)} deviate" + (": " + ", ".join(bad) if bad else ""))
    return 1 if bad else 0


def _pick(d: Any, name: str) -> Any:
    """The runnable target called `name` of a discovery (LookupError: unknown; RuntimeError: unavailable)."""
    match = [t for t in d.runnable if t.name == name]
    if match:
        return match[0]
    row = next((r for r in d.rows if r["name"] == name), None)
    if row is not None:
        raise RuntimeError(f"target {name} is unavailable: {row['reason']}")
    known = sorted(r["name"] for r in d.rows)
    raise LookupError(f"unknown target {name!r}" + (f"; did you mean {', '.join(known)}?" if known else "; see 'bncheck backends'"))


def conventions_that_differ(a: Any, b: Any) -> list[tuple[str, Any, Any]]:
    """(field, A's value, B's value) of every typed conventions field (and default) where the records differ; prose
    (notes, sources) left out."""
    da, db = a.conventions.to_dict(), b.conventions.to_dict()
    return [(k, da.get(k), db.get(k)) for k in da if k not in ("notes", "sources") and da.get(k) != db.get(k)]


def _show(v: Any) -> str:
    """A conventions value in a few words: lists joined, refusals by their conditions."""
    if isinstance(v, (list, tuple)):
        return ", ".join(x["condition"] if isinstance(x, dict) and "condition" in x else str(x) for x in v) or "-"
    return str(v)


def check_target_name(name: str, option: str) -> None:
    """LookupError when no registered family on a known device is called `name` (nothing is started)."""
    import difflib

    from .api import known_target_names

    names = known_target_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        raise LookupError(f"{option} {name!r}: no such target" + (f"; did you mean {', '.join(close)}?" if close else "")
                          + " (see 'bncheck backends')")


def _index(i: tuple[int, ...]) -> str:
    return "[" + ",".join(str(int(k)) for k in i) + "]"


def replay_pair(case: Case, name_a: str, name_b: str, timeout: float, plugins: list[str],
                echo: Callable[[str], None]) -> int:
    """Run the case on targets A and B; print, per quantity, both values at the element where they differ most, their
    difference, and each one's error / bound and verdict against the reference under its own declared conventions;
    then the conventions that differ. 0 when both pass every quantity, 1 otherwise."""
    from .elementwise import judge_elements
    from .compare import pattern_reference
    from .reference import quantity_of
    from .runner import discover
    from .tolerance import output_dtype

    check_target_name(name_a, "--target")
    check_target_name(name_b, "--against")
    if name_a == name_b:
        raise LookupError(f"--against {name_b} names the --target itself (give another target, e.g. from 'bncheck backends')")
    d = discover(f"{name_a},{name_b}", plugins)
    try:
        a, b = _pick(d, name_a), _pick(d, name_b)
        inputs = make_inputs(case)
        echo(f"case     {case.case_id}  {case.describe()}")
        for label, t in (("A", a), ("B", b)):
            echo(f"{label}        {t.name}  ({t.description}; {d.frameworks[t.framework].get('version', '')})")
        echo(f"inputs   sha256/{inputs_digest(inputs)} (the same bits for both)")
        obs: dict[str, dict[str, np.ndarray]] = {}
        status: dict[str, str] = {}
        for label, t in (("A", a), ("B", b)):
            reason = t.supports(case)
            if reason:
                status[label] = f"unsupported: {reason}"
                continue
            out = d.workers[t.framework].request(
                {"op": "run", "family": t.family, "device": t.device, "case": case.to_dict(), "inputs": inputs}, timeout)
            if out.status != "ok":
                status[label] = f"{out.status}: {out.message}"
                continue
            obs[label] = out.reply["observation"]
    finally:
        d.close()
    for label, text in status.items():
        echo(f"{label}: {text}")
    expected = expected_values(case, inputs)
    judged: dict[str, dict[str, Any]] = {}
    refs: dict[str, dict[str, np.ndarray]] = {}
    bounds: dict[str, dict[str, np.ndarray]] = {}
    for label, t in (("A", a), ("B", b)):
        e = expected.for_conventions(t.conventions)
        declared = t.conventions.running_var
        refs[label] = {k: pattern_reference(np.asarray(v, dtype=np.float64), output_dtype(case, quantity_of(k)))
                       for k, v in e.references[declared].values.items()}
        bounds[label] = e.bounds[declared]
        if label in obs:
            judged[label] = {v.key: v for v in compare(case, obs[label], e.references, e.bounds, t.conventions,
                                                       e.dependent)}
    keys = [k for k in refs["A"] if any(k in obs.get(x, {}) for x in ("A", "B"))]
    echo("\nreference: bncheck's float64 reference under each target's declared conventions; err/bound: each target's "
         "largest error / bound against it (> 1 deviates)")
    echo(f"{'quantity':<22} {'element':<12} {'A':>20} {'B':>20} {'reference':>20} {'|A-B|':>10}  "
         f"{'A err/bound':>13}  {'B err/bound':>13}")
    bad = []
    for key in keys:
        cells = {}
        for label in ("A", "B"):
            v = judged.get(label, {}).get(key)
            cells[label] = "-" if v is None else f"{v.ratio:.3g} {'pass' if v.passed else 'DEV'}"
            if v is not None and not v.passed:
                bad.append(f"{label}:{key}")
        if key in obs.get("A", {}) and key in obs.get("B", {}):
            oa = np.asarray(obs["A"][key], dtype=np.float64)
            ob = np.asarray(obs["B"][key], dtype=np.float64)
            if oa.shape == ob.shape:
                j = judge_elements(oa, ob, np.ones(()))  # |A - B|, NaN/Inf patterns, as the verdicts measure them
                i = j["largest_error"] if not j["nonfinite"] else j["worst"]
                ref = refs["A"][key]
                other = "" if np.array_equal(refs["A"][key], refs["B"][key], equal_nan=True) else " *"
                echo(f"{key:<22} {_index(i):<12} {_fmt(oa[i]):>20} {_fmt(ob[i]):>20} {_fmt(ref[i]) + other:>20} "
                     f"{float(j['err'][i]):>10.3g}  {cells['A']:>13}  {cells['B']:>13}")
                if other:
                    echo(f"{'':<22} {'':<12} {'':>20} {'':>20} {_fmt(refs['B'][key][i]) + ' *':>20}  (B's reference)")
                continue
        echo(f"{key:<22} {'':<12} {'(only one target observes it, or the shapes differ)':>62}  {cells['A']:>13}  {cells['B']:>13}")
    if any(not np.array_equal(refs["A"][k], refs["B"][k], equal_nan=True) for k in keys if k in refs["B"]):
        echo("* the reference differs between their declared conventions: A's is shown")
    diff = conventions_that_differ(a, b)
    echo("\nconventions that differ" + (":" if diff else ": none"))
    for field_name, va, vb in diff:
        echo(f"  {field_name:<22} A: {_show(va):<28} B: {_show(vb)}")
    echo(f"\n{len(keys)} quantities; " + (f"deviating from the reference: {', '.join(bad)}" if bad else
                                          "both targets within their bounds on every one they observe")
         + ("; " + "; ".join(f"{x} did not run" for x in status) if status else ""))
    return 1 if bad or status else 0
