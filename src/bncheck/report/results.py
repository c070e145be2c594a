"""Build the documented results.json document from the store and write it atomically."""

from __future__ import annotations

import json
import math
import re
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

from ..cases import case_from_dict
from .. import peers
from ..files import write_atomic
from ..severity import SEVERITIES, worst_severity
from ..results import STATUSES, Cause, Execution, Finding, Results, Run, json_float, parse_float
from ..store import Store
from .paths import annotate_conversions, path_fields



def observed_conventions(executions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per target: how often each running-variance convention explained its running_var, over all executions."""
    out: dict[str, dict[str, Any]] = {}
    for e in executions:
        for v in e["verdicts"]:
            if v["quantity"] != "running_var" or not v.get("convention"):
                continue
            rec = out.setdefault(e["target"], {"declared": v["convention"], "checked": 0, "matched": Counter()})
            rec["checked"] += 1
            for c in v.get("matches", []):
                rec["matched"][c] += 1
    for rec in out.values():
        rec["matched"] = dict(rec["matched"])
        ranked = sorted(rec["matched"].items(), key=lambda kv: -kv[1])
        if not ranked:
            rec["follows"] = "neither"
        elif len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            rec["follows"] = "ambiguous"
        else:
            rec["follows"] = ranked[0][0]
    return out


def build_findings(executions: list[dict[str, Any]], cases: dict[str, dict[str, Any]],
                   all_verdicts: dict[tuple[str, str], list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """Deviating executions grouped by root-cause signature: one finding per signature, with its count and worst case.

    `all_verdicts` ((case_id, target) -> every verdict) lets the worst case carry its passing quantities too,
    for the report's charts (running statistics at every step, per-channel errors).
    """
    groups: dict[str, dict[str, Any]] = {}
    outcome: dict[str, dict[str, bool]] = {}  # case -> target -> deviates?
    for e in executions:
        if e["status"] == "ok":
            outcome.setdefault(e["case_id"], {})[e["target"]] = bool(e["deviations"])
    for e in executions:
        diag = next((v["diagnosis"] for v in e["deviations"] if "diagnosis" in v), None)
        if diag is None:
            continue
        ratio = max((v["ratio_value"] if "ratio_value" in v else float(v["ratio"]) for v in e["deviations"]), default=0.0)
        g = groups.get(diag["signature"])
        if g is None:
            g = groups[diag["signature"]] = {
                "signature": diag["signature"], "target": e["target"], "quantity": diag["quantity"],
                "mode": diag["mode"], "hypothesis": diag["hypothesis"], "classification": diag["classification"],
                "severity": diag.get("severity", "minor"), "severity_reasons": diag.get("severity_reasons", []),
                "documented": bool(diag.get("documented")), "explanation": diag["explanation"],
                "regime": cases[e["case_id"]]["regime"]["name"], "out_of_range": diag.get("out_of_range", []),
                "count": 0, "cases": [], "channels": set(), "worst": None, "minimal_case": None,
            }
        if diag.get("peer_check") is not None:
            g.setdefault("peer_checks", []).append({"case_id": e["case_id"], **diag["peer_check"]})
        if worst_severity([g["severity"], diag.get("severity")]) != g["severity"]:
            g["severity"], g["severity_reasons"] = diag.get("severity", "minor"), diag.get("severity_reasons", [])
        if CLASS_ORDER.index(diag["classification"]) < CLASS_ORDER.index(g["classification"]):
            g["classification"] = diag["classification"]  # a same-format peer passed one of its cases
        g["count"] += 1
        g["cases"].append(e["case_id"])
        g.setdefault("_members", []).append((e["case_id"], diag["mode"]))
        g["channels"].update(diag["channels"])
        if g["worst"] is None or ratio > g["worst"]["ratio"]:
            g["mode"] = diag["mode"]  # the mode of the worst case (a signature may span modes)
            g["alternatives"] = list(diag.get("why_not") or [])
            peers = outcome.get(e["case_id"], {})
            g["worst"] = {"case_id": e["case_id"], "ratio": ratio, "residual": diag["residual"],
                          "nonfinite_mismatch": sum(int(v.get("nonfinite_mismatch") or 0) for v in e["deviations"]),
                          "first": diag["first"], "step": diag["step"], "deviating": diag["deviating"],
                          "conditioning": diag["conditioning"], "alternatives": diag["alternatives"],
                          "agreeing_targets": sorted(t for t, bad in peers.items() if not bad),
                          "deviating_targets": sorted(t for t, bad in peers.items() if bad),
                          "verdicts": [{k: x for k, x in v.items() if k not in ("ratio_value", "diagnosis")}
                                       for v in (all_verdicts or {}).get((e["case_id"], e["target"]), e["deviations"])]}
    out = []
    for g in sorted(groups.values(), key=finding_order):
        g["minimal_case"] = minimal_member(g.pop("_members"), g["worst"]["case_id"], g["mode"], cases)
        g["channels"] = sorted(g["channels"])
        if not math.isfinite(g["worst"]["ratio"]):
            g["worst"]["ratio"] = json_float(g["worst"]["ratio"])
        out.append(g)
    return out


def minimal_member(members: list[tuple[str, str]], worst: str, mode: str, cases: dict[str, dict[str, Any]]) -> str:
    """The smallest case of a finding that keeps the worst case's profile (shrink.FindingProfile: the mode of its
    first deviation, training, statistics, layout, rank, dtypes): a signature spans modes and dtypes, its minimal
    case does not (a training finding is never reproduced by an eval-only or a float64 case of the same signature)."""
    from ..shrink import finding_profile

    want = finding_profile(cases[worst], mode)
    size = lambda cid: math.prod(cases[cid]["shape"]) * (cases[cid]["steps"] + 1)  # noqa: E731
    same = [cid for cid, m in members if finding_profile(cases[cid], m) == want]
    return min(same, key=size)  # the worst case itself is one of them


def _value(x: Any) -> float:
    """A document's number (or "inf"/"-inf"/"nan") as a float for ranking: NaN (a NaN/Inf mismatch) ranks as +inf."""
    try:
        v = parse_float(x)
    except ValueError:
        return math.nan
    return math.inf if math.isnan(v) else v


def first_deviation(worst: dict[str, Any]) -> dict[str, Any]:
    """The numbers a finding's page states (results.FirstDeviation), read from its worst case's verdicts and
    diagnosis: the first deviating quantity's ratio, its channel of largest error / bound and that channel's
    conditioning, and the case's worst quantity."""
    verdicts = {v["key"]: v for v in worst.get("verdicts") or []}
    key = worst["first"]
    fv = verdicts.get(key) or {}
    cr = list(fv.get("channel_ratios") or [])
    cond = worst.get("conditioning") or {}
    ratio = fv.get("ratio", worst["ratio"])
    channel = None
    if cr:
        vals = [_value(r) for r in cr]
        best = max(range(len(vals)), key=lambda c: (vals[c], -c))
        if vals[best] >= _value(ratio):  # else the worst channel lies beyond the recorded ones
            channel = best

    def at(name: str) -> Any:
        arr = cond.get(name) or []
        return arr[channel] if channel is not None and channel < len(arr) else None

    deviating = [k for k in worst.get("deviating") or [] if k in verdicts] or [key]
    case_key = max(deviating, key=lambda k: (_value(verdicts[k]["ratio"]) if k in verdicts else -1.0,
                                             -deviating.index(k)))
    return {"key": key, "ratio": ratio, "nonfinite_mismatch": int(fv.get("nonfinite_mismatch") or 0),
            "case_key": case_key, "case_ratio": worst["ratio"],
            "case_nonfinite_mismatch": int(worst.get("nonfinite_mismatch") or 0),
            "channel_ratios": cr, "channel": channel, "channel_ratio": cr[channel] if channel is not None else None,
            "mean_over_std": at("channel_mean_over_std"), "eps_over_var": at("channel_eps_over_var"),
            "gamma": at("channel_gamma"), "channel_mean_over_std": list(cond.get("channel_mean_over_std") or []),
            "relative_channel": cond.get("worst_channel"), "relative_error": cond.get("relative_error"),
            "rank_correlation": cond.get("error_vs_offset_rank_correlation")}


CLASS_ORDER = ("suspected-bug", "precision", "precision-outlier", "out-of-range", "convention")


def finding_order(g: dict[str, Any]) -> tuple[Any, ...]:
    """Sort key of findings and causes: class (CLASS_ORDER), then severity, target, most executions first."""
    return (CLASS_ORDER.index(g["classification"]), SEVERITIES.index(g.get("severity") or "minor"), g["target"],
            -g["count"])


def root_causes(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Findings grouped once more by (target, hypothesis, classification): one line per cause and target,
    whatever regimes and first quantities it showed in; `unexplained` findings stay one group per target.

    A finding's signature keeps the regime, so a hazards suite with twenty regimes gives twenty findings of
    one cause; this is the short list a maintainer reads first.
    """
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for f in findings:
        key = (f["target"], f["hypothesis"], f["classification"])
        g = groups.get(key)
        if g is None:
            g = groups[key] = {"target": f["target"], "hypothesis": f["hypothesis"], "classification": f["classification"],
                               "severity": f.get("severity", "minor"), "explanation": f["explanation"], "quantities": [],
                               "regimes": [], "findings": [], "count": 0, "worst_ratio": 0.0, "nonfinite": False}
        g["severity"] = worst_severity([g["severity"], f.get("severity")])
        g["nonfinite"] = g["nonfinite"] or bool(f["worst"].get("nonfinite_mismatch"))
        g["count"] += f["count"]
        g["findings"].append(f["signature"])
        for k, v in (("quantities", f["quantity"]), ("regimes", f["regime"])):
            if v not in g[k]:
                g[k].append(v)
        r = f["worst"]["ratio"]
        g["worst_ratio"] = "inf" if r == "inf" or g["worst_ratio"] == "inf" else max(g["worst_ratio"], r)
    return sorted(groups.values(), key=finding_order)


def build_results(store: Store, run_id: str) -> dict[str, Any]:
    """The whole results document of one run."""
    run = {**store.run(run_id), "plugins": list(store.run_options(run_id).get("plugins", []))}
    executions = list(store.executions(run_id))
    conv = observed_conventions(executions)
    broken = store.broken_targets(run_id)  # target -> why its remaining cases were not run
    targets = []
    for t in store.targets(run_id):
        info = t["info"]
        targets.append({"name": t["name"], "framework": t["framework"], "device": t["device"], "version": t["version"],
                        "available": t["available"], "reason": t["reason"], "description": info.get("description", ""),
                        "conventions": info.get("conventions", {}), "observed": {"running_var": conv.get(t["name"])},
                        "family": info.get("family", t["name"].split("@")[0]), **path_fields(info),
                        "broken": t["name"] in broken, "broken_reason": broken.get(t["name"], "")})
    by_target: dict[str, Counter[str]] = {}
    for e in executions:
        c = by_target.setdefault(e["target"], Counter())
        c[e["status"]] += 1
        if e["status"] == "ok" and e["deviation_count"]:
            c["deviating"] += 1
    out_execs = []
    for e in executions:
        out_execs.append({
            "case_id": e["case_id"], "target": e["target"], "status": e["status"], "message": e["message"],
            "stderr_tail": e["stderr_tail"], "elapsed_s": round(e["elapsed"], 6), "inputs_digest": e["inputs_digest"],
            "checked": [v["key"] for v in e["verdicts"]],
            "worst_ratio": e["worst_ratio"],
            "deviations": [v for v in e["verdicts"] if not v["passed"]],
        })
    metrics = store.case_metrics(run_id)
    cases = {cid: {**d, "description": case_from_dict(d).describe(), "metrics": metrics.get(cid, {})}
             for cid, d in store.cases(run_id)}
    status_counts = Counter(e["status"] for e in executions)
    for e in executions:  # the finite ratio rides along for grouping; it is dropped from the JSON below
        for v in e["verdicts"]:
            v.setdefault("ratio_value", float(v["ratio"]) if v["ratio"] not in ("inf", "nan") else float("inf"))
    judged = peers.judge_run(executions, cases, targets)  # out-of-range revised in place; precision outliers
    all_verdicts = {(e["case_id"], e["target"]): e["verdicts"] for e in executions}
    findings = build_findings(out_execs, cases, all_verdicts)
    findings = sorted(findings + peers.outlier_findings(judged.outliers, cases, all_verdicts), key=finding_order)
    outlier_keys: dict[tuple[str, str], list[str]] = {}
    for o in judged.outliers:
        outlier_keys.setdefault((o["case_id"], o["target"]), []).append(o["key"])
    for e in out_execs:
        e["peer_outliers"] = outlier_keys.get((e["case_id"], e["target"]), [])
    for f in findings:
        f["first_deviation"] = first_deviation(f["worst"])
    annotate_conversions(findings, out_execs, targets)
    for e in out_execs:
        for v in e["deviations"]:
            v.pop("ratio_value", None)
    summary = {
        "cases": len(cases),
        "targets": len([t for t in targets if t["available"]]),
        "executions": len(executions),
        "by_status": {s: status_counts.get(s, 0) for s in STATUSES},
        "deviating_executions": sum(1 for e in out_execs if e["deviations"]),
        "findings": {c: sum(1 for f in findings if f["classification"] == c) for c in CLASS_ORDER},
        "findings_by_severity": {s: sum(1 for f in findings if f.get("severity") == s) for s in SEVERITIES},
        "peers": judged.summary(),
        "by_target": {t: {**{s: c.get(s, 0) for s in STATUSES}, "deviating": c.get("deviating", 0)}
                      for t, c in sorted(by_target.items())},
        "broken_targets": sorted(broken),
    }
    typed = Results(Run(**run), summary, targets, [Finding.from_json(f, strict=True) for f in findings],
                    [Cause(**c) for c in root_causes(findings)], cases, [Execution(**e) for e in out_execs])
    return typed.to_json()


FINDINGS_DIR = "findings"  # beside the HTML report's findings/<signature>.html pages
CASE_FILE = "case.json"


def finding_case_file(signature: str) -> str:
    """Where a finding's minimal case is written, relative to the output directory."""
    return f"{FINDINGS_DIR}/{re.sub(r'[^A-Za-z0-9_.-]', '_', str(signature))}/{CASE_FILE}"


def plugin_args(doc: dict[str, Any]) -> str:
    """' --plugin MODULE' for each plugin the run loaded: a replay command needs them to find plugin targets."""
    return "".join(f" --plugin {shlex.quote(m)}" for m in doc["run"].get("plugins", []))


def write_finding_cases(doc: dict[str, Any], out_dir: Path) -> int:
    """Write each finding's minimal case to findings/<signature>/case.json, atomically, and record the path in the
    finding (`case_file`); case files of findings no longer in the document go. Returns how many were written.

    The file is a loadable .json case file ({"cases": [the case]}) that also names the finding and the command
    that replays it, so `bncheck replay`/`bncheck run` re-run the minimal case anywhere, shrunk or not.
    """
    out_dir = Path(out_dir)
    wanted: set[str] = set()
    for f in doc["findings"]:
        cid = f["minimal_case"]
        case = {k: v for k, v in doc["cases"][cid].items() if k not in ("description", "metrics")}
        rel = finding_case_file(f["signature"])
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        replay = (f"bncheck replay {cid} --target {shlex.quote(f['target'])} --cases {shlex.quote(str(path))}"
                  + plugin_args(doc))
        body = {"finding": {"signature": f["signature"], "target": f["target"], "quantity": f["quantity"],
                            "hypothesis": f["hypothesis"], "classification": f["classification"], "regime": f["regime"],
                            "case_id": cid, "from_case": (f.get("shrink") or {}).get("from_case", cid),
                            "run_id": doc["run"]["run_id"], "replay": replay},
                "cases": [case]}
        write_atomic(path, json.dumps(body, indent=1, allow_nan=False) + "\n")
        f["case_file"] = rel
        wanted.add(str(path.parent.name))
    fdir = out_dir / FINDINGS_DIR
    if fdir.is_dir():
        for old in fdir.glob(f"*/{CASE_FILE}"):
            if old.parent.name not in wanted:
                old.unlink(missing_ok=True)
                try:
                    old.parent.rmdir()
                except OSError:  # something else lives there: leave it
                    pass
    return len(wanted)


def store_findings(store: Store, run_id: str, doc: dict[str, Any]) -> None:
    """Record a run's finalised findings (after shrinking) with their minimal cases in the store's findings table."""
    rows = []
    for f in doc["findings"]:
        cid = f["minimal_case"]
        case = case_from_dict({k: v for k, v in doc["cases"][cid].items() if k not in ("description", "metrics")})
        ratio = f["worst"]["ratio"]
        rows.append({**{k: f[k] for k in ("signature", "target", "quantity", "mode", "hypothesis", "classification",
                                          "regime", "count")},
                     "worst_ratio": float(ratio) if ratio is not None else None,
                     "minimal_case_id": cid, "minimal_case": case.canonical_json(),
                     "from_case_id": (f.get("shrink") or {}).get("from_case", cid),
                     "shrunk": bool((f.get("shrink") or {}).get("reduced")),
                     "repro": f.get("repro"), "case_file": f.get("case_file")})
    store.set_findings(run_id, rows)


def finalise_findings(store: Store, run_id: str, doc: dict[str, Any], out_dir: Path) -> None:
    """After shrinking and the reproduction scripts: write each finding's case file and store the findings."""
    write_finding_cases(doc, out_dir)
    store_findings(store, run_id, doc)


def write_results(doc: dict[str, Any], path: Path) -> None:
    """Write results.json: the document as bncheck.results.Results encodes it (an undeclared field is refused)."""
    write_atomic(path, json.dumps(Results.typed(doc).to_json(), indent=1, sort_keys=False, allow_nan=False) + "\n")
