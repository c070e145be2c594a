"""Replay one case on one target and print every quantity beside the reference."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Callable

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
    return (case_from_dict(json.loads(rows[0][1])), digest) if rows else None


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
