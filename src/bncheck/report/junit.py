"""JUnit XML from a results document, for CI systems that display test reports.

One <testsuite> per target and one <testcase> per (case, target) execution: classname is the target, name the
case description followed by its case id in brackets. A deviating execution has a <failure> whose message
names its worst quantity, its error in units of the bound and, when diagnosed (the diagnosis rides on the
first deviating verdict as `diagnosis`), the hypothesis and classification; the body lists every deviating
quantity, the diagnosis, the finding's page and a replay command that works as written (with the run's
--plugin options and its --out folder). `error`, `crash` and `timeout` executions have an <error> (type =
status) whose body is the message and the stderr tail; `unsupported` ones are <skipped> with their reason, and so
are `refused` ones (the framework raised as its record documents), with the framework's message. A NaN/Inf
mismatch reads "NaN/Inf in N elements", not "inf x bound". An execution that a precision-outlier finding names
(within its bound, far less accurate than its peers) is a <failure> too, as it is a finding.

Given the gate's decision against a baseline (`bncheck junit RUN_DIR --baseline FILE`), only what fails the gate
is a <failure> or an <error>: an accepted deviation, or one whose class does not gate, passes, with a
<system-out> saying why, so that a dashboard is red exactly when the gate fails. Characters that XML 1.0
cannot carry (control characters in a stderr tail, say) are dropped.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..files import write_atomic
from ..gate import GateDecision, execution_signature

_INVALID_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(s: Any) -> str:
    return _INVALID_XML.sub("", str(s if s is not None else ""))


def _ratio(v: Any) -> float:
    try:
        r = float(v)
    except (TypeError, ValueError):
        return math.inf
    return math.inf if math.isnan(r) else r


def _fmt(r: float) -> str:
    return "inf" if math.isinf(r) else f"{r:.3g}"


def _first_line(s: str) -> str:
    s = (s or "").strip()
    return s.splitlines()[0] if s else ""


def failure_message(execution: dict[str, Any]) -> str:
    """'<worst key> deviates: <ratio> x bound; <hypothesis> (<classification>)' for a deviating execution."""
    devs = execution.get("deviations") or []
    worst = max(devs, key=lambda v: _ratio(v.get("ratio")))
    if worst.get("nonfinite_mismatch"):
        msg = f"{worst.get('key', worst.get('quantity', '?'))} deviates: NaN/Inf in {worst['nonfinite_mismatch']} elements"
    else:
        msg = f"{worst.get('key', worst.get('quantity', '?'))} deviates: error {_fmt(_ratio(worst.get('ratio')))} x bound"
    if len(devs) > 1:
        msg += f" ({len(devs)} quantities deviate)"
    diag = next((v["diagnosis"] for v in devs if isinstance(v.get("diagnosis"), dict)), None)
    if diag:
        msg += (f"; {diag.get('hypothesis', '?')} ({diag.get('classification', '?')}, {diag.get('severity', 'minor')}), "
                f"first at {diag.get('first', '?')}")
    return msg


def outlier_message(execution: dict[str, Any]) -> str:
    """The failure message of an execution that is a precision outlier (no deviation from its bound)."""
    return ("precision outlier (far less accurate than its peers, within the bound): "
            + ", ".join(execution.get("peer_outliers") or []))


def _failure_body(execution: dict[str, Any], case: dict[str, Any] | None, out_dir: Path | str | None,
                  plugins: list[str], signature: str | None) -> str:
    lines = []
    for v in execution.get("deviations") or []:
        parts = [f"{v.get('key', '?')}: ratio {_fmt(_ratio(v.get('ratio')))}"]
        for k in ("max_abs", "max_rel", "max_ulp"):
            if isinstance(v.get(k), (int, float)):
                parts.append(f"{k} {v[k]:.3g}")
        if v.get("nonfinite_mismatch"):
            parts.append(f"nonfinite_mismatch {v['nonfinite_mismatch']}")
        if v.get("channels"):
            parts.append(f"channels {v['channels']}")
        if v.get("note"):
            parts.append(str(v["note"]))
        lines.append(", ".join(parts))
    diag = next((v["diagnosis"] for v in execution.get("deviations") or [] if isinstance(v.get("diagnosis"), dict)), None)
    if diag:
        lines.append(f"diagnosis: first deviating {diag.get('first')}; hypothesis {diag.get('hypothesis')} "
                     f"({diag.get('classification')}): {diag.get('explanation', '')}; signature {diag.get('signature', '')}")
        why = diag.get("why_not") or []
        alts = diag.get("alternatives") or []
        if why:  # each with the rule that decided against it (diagnose.WHY_NOT)
            lines.append("alternatives (residual, why not chosen): " + "; ".join(
                f"{w['hypothesis']} {_fmt(_ratio(w['residual']))} ({w['rule']})" for w in why))
        elif alts:
            lines.append("alternatives (residual): " + ", ".join(f"{n} {_fmt(_ratio(r))}" for n, r in alts))
    lines.append(f"replay: {replay_command(execution, out_dir, plugins)}")
    if signature:
        lines.append(f"finding page: {Path(out_dir or '.') / 'findings' / page_name(signature)}")
    if case:
        lines.append("case: " + json.dumps({k: x for k, x in case.items() if k not in ("description", "metrics")}, sort_keys=True))
    return "\n".join(lines)


def replay_command(execution: dict[str, Any], out_dir: Path | str | None, plugins: list[str]) -> str:
    """The `bncheck replay` command that re-runs an execution, with the run's folder and plugins."""
    import shlex

    parts = ["bncheck", "replay", str(execution.get("case_id")), "--target", str(execution.get("target"))]
    if out_dir is not None:
        parts += ["--out", str(out_dir)]
    for m in plugins:
        parts += ["--plugin", m]
    return " ".join(shlex.quote(p) for p in parts)


def page_name(signature: str) -> str:
    """The finding page's file name (as the HTML report writes it)."""
    from .html import page_name as html_page

    return html_page(signature)


def _signatures(doc: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(case_id, target) -> the signature of the finding that execution belongs to."""
    out: dict[tuple[str, str], str] = {}
    for f in doc.get("findings") or []:
        if isinstance(f, dict):
            for c in f.get("cases") or []:
                out.setdefault((str(c), str(f.get("target"))), str(f.get("signature")))
    return out


def build_junit(doc: dict[str, Any], out_dir: Path | str | None = None, decision: GateDecision | None = None) -> ET.Element:
    """The <testsuites> element of a results document written in `out_dir`, judged by the gate's `decision` if any."""
    plugins = [str(m) for m in (doc.get("run") or {}).get("plugins") or []]
    finding_of = _signatures(doc)
    failing = {it.signature for it in decision.failing} if decision is not None else None
    accepted = {it.signature: it.reason for it in decision.accepted} if decision is not None else {}
    cases = doc.get("cases") or {}
    run = doc.get("run") or {}
    targets = {t.get("name"): t for t in doc.get("targets") or [] if isinstance(t, dict)}
    by_target: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in doc.get("executions") or []:
        by_target[str(e.get("target", ""))].append(e)
    started = run.get("started")
    stamp = (datetime.fromtimestamp(started, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
             if isinstance(started, (int, float)) else None)
    root = ET.Element("testsuites", name="bncheck")
    totals = defaultdict(float)
    for target in sorted(by_target):
        suite = ET.SubElement(root, "testsuite", name=_text(target))
        if stamp:
            suite.set("timestamp", stamp)
        props = ET.SubElement(suite, "properties")
        info = targets.get(target, {})
        for k, v in (("run_id", run.get("run_id")), ("framework", info.get("framework")),
                     ("version", info.get("version")), ("device", info.get("device"))):
            if v:
                ET.SubElement(props, "property", name=k, value=_text(v))
        counts = defaultdict(float)
        for e in by_target[target]:
            case = cases.get(e.get("case_id"))
            desc = (case or {}).get("description") or ""
            elapsed = e.get("elapsed_s") if isinstance(e.get("elapsed_s"), (int, float)) else 0.0
            tc = ET.SubElement(suite, "testcase", classname=_text(target),
                               name=_text(f"{desc} [{e.get('case_id')}]".strip()), time=f"{elapsed:.6f}")
            status = e.get("status")
            counts["tests"] += 1
            counts["time"] += elapsed
            key = (str(e.get("case_id")), str(target))
            if status == "ok" and (e.get("deviations") or e.get("peer_outliers")):
                sig = finding_of.get(key)
                what = failure_message(e) if e.get("deviations") else outlier_message(e)
                if failing is None or sig is None or sig in failing:
                    counts["failures"] += 1
                    f = ET.SubElement(tc, "failure", message=_text(what),
                                      type="deviation" if e.get("deviations") else "precision-outlier")
                    f.text = _text(_failure_body(e, case, out_dir, plugins, sig))
                else:
                    ET.SubElement(tc, "system-out").text = _text(_passed_note(sig, accepted, what))
            elif status in ("error", "crash", "timeout"):
                sig = execution_signature(str(target), status, str(e.get("message") or ""))
                if failing is None or sig in failing:
                    counts["errors"] += 1
                    err = ET.SubElement(tc, "error", message=_text(_first_line(e.get("message") or status)), type=status)
                    err.text = _text("\n".join(s for s in (e.get("message") or "", e.get("stderr_tail") or "",
                                                            "replay: " + replay_command(e, out_dir, plugins)) if s))
                else:
                    ET.SubElement(tc, "system-out").text = _text(_passed_note(sig, accepted, f"{status}: {e.get('message')}"))
            elif status == "unsupported":
                counts["skipped"] += 1
                ET.SubElement(tc, "skipped", message=_text(e.get("message") or "unsupported"))
            elif status == "refused":
                counts["skipped"] += 1
                ET.SubElement(tc, "skipped", message=_text(f"refused (documented): {_first_line(e.get('message') or '')}"))
            elif e.get("message"):
                ET.SubElement(tc, "system-out").text = _text(e["message"])
        for k in ("tests", "failures", "errors", "skipped"):
            suite.set(k, str(int(counts[k])))
            totals[k] += counts[k]
        suite.set("time", f"{counts['time']:.6f}")
        totals["time"] += counts["time"]
    for k in ("tests", "failures", "errors", "skipped"):
        root.set(k, str(int(totals[k])))
    root.set("time", f"{totals['time']:.6f}")
    return root


def _passed_note(signature: str, accepted: dict[str, str], what: str) -> str:
    if signature in accepted:
        return f"accepted by the baseline ({accepted[signature] or 'no reason given'}), signature {signature}: {what}"
    return f"does not fail the gate (its class is not gated), signature {signature}: {what}"


def junit_xml(doc: dict[str, Any], out_dir: Path | str | None = None, decision: GateDecision | None = None) -> str:
    """JUnit XML text (UTF-8, with declaration) of a results document."""
    root = build_junit(doc, out_dir, decision)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(doc: dict[str, Any], path: Path | str, out_dir: Path | str | None = None,
                decision: GateDecision | None = None) -> None:
    """Write the JUnit XML of a results document (of the run in `out_dir`) to `path`, atomically."""
    write_atomic(Path(path), junit_xml(doc, out_dir, decision))
