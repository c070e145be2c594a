"""Judgements that need every target of a case: peer-relative accuracy, and the same-format check of out-of-range.

Both run on what the store holds (the verdict rows of each execution and the targets' conventions records),
so a resumed run, or any subset of targets, is judged the same way; nothing is recomputed.

Peer-relative accuracy (`precision-outlier`)
--------------------------------------------
For every '<phase>.<quantity>' of every case, the peers of a target are the other targets that ran the case
(status ok) and observed that quantity. A target whose verdict on it passes its bound is a precision outlier
when, with at least RULE.min_peers peers,

    error > RULE.factor x median(peers' errors)   and   error >= RULE.floor_ulps x ULP(max |reference|),

where error is the largest absolute error over the quantity's elements (`max_abs` of the verdict) and the ULP
is that of the output dtype at the quantity's largest reference value (`scale_ulp`). The median is robust to
a minority of inaccurate peers; the floor keeps errors of a few roundings from counting when the peers are
exact. A quantity whose bound is as large as the quantity itself (`bound_max >= scale`: the problem's
conditioning, e.g. a float32 mean of 1e8 with a spread of 1, leaves no digit guaranteed) is not judged: there
the order of operations, not the kernel's accuracy, decides who is closest. With fewer peers the quantity is
not judged either; the run's summary counts both. The factor and floor were derived from the errors of the
shipped suites' targets: docs/peers.md.

Out of range, or not (`out-of-range` kept or revised)
-----------------------------------------------------
A diagnosis whose class is `out-of-range` names the intermediates that do not fit the format the target
declares (formats.py). Its peers in the same format are the other targets that ran the case, declare the same
format for the strongest such intermediate, and observed one of its deviating quantities. If one of them
passes every deviating quantity it observed, the failure was not inevitable in that format: the diagnosis is
revised to `suspected-bug`, naming those peers (`peer_check`). Otherwise it stays `out-of-range`, naming the
same-format peers that failed alike.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from . import formats
from .results import json_float
from .cases import case_from_dict
from .diagnose import signature
from .reference import phase_of, quantity_of
from .targets.base import Conventions

PEER_OUTLIER = "peer-outlier"  # the hypothesis name of a precision-outlier finding
EXPLANATION = ("within its error bound, but far less accurate than the other targets that computed the same quantity "
               "on the same case")


@dataclass(frozen=True)
class PeerRule:
    """The precision-outlier rule (see the module docstring)."""

    factor: float = 100.0
    floor_ulps: float = 8.0
    min_peers: int = 3

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


RULE = PeerRule()


def _num(x: Any) -> float:
    """A stored float (or 'inf'/'nan' string) as a float."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.inf


def _safe(x: Any) -> Any:
    """A float for JSON (results.json_float); anything else as it is."""
    return json_float(x) if isinstance(x, float) else x


def _family(target: str) -> str:
    return target.split("@", 1)[0]


@dataclass
class PeerJudgement:
    """What the case-level judgement found in one run."""

    outliers: list[dict[str, Any]]  # one per (case, target, key): the outlier and its peers
    judged: int = 0  # (case, target, key) triples judged against at least RULE.min_peers peers
    not_judged: int = 0  # passing triples with fewer peers: not judged
    unresolved: int = 0  # passing triples whose bound is as large as the quantity: not judged
    revised: int = 0  # out-of-range diagnoses revised to suspected-bug by a same-format peer that passed
    kept: int = 0  # out-of-range diagnoses kept (no same-format peer passed)

    def summary(self, rule: PeerRule = RULE) -> dict[str, Any]:
        """The counts for results.json's summary, with the rule."""
        return {"rule": rule.to_dict(), "judged": self.judged, "not_judged_fewer_peers": self.not_judged,
                "not_judged_no_digit_guaranteed": self.unresolved,
                "outliers": len(self.outliers), "out_of_range_kept": self.kept, "out_of_range_revised": self.revised}


def _by_case(executions: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in executions:
        if e["status"] == "ok":
            out.setdefault(e["case_id"], []).append(e)
    return out


def outliers_of_case(case_id: str, executions: list[dict[str, Any]], rule: PeerRule = RULE,
                     counts: PeerJudgement | None = None) -> list[dict[str, Any]]:
    """The precision outliers among one case's ok executions (each with `verdicts`: every verdict row)."""
    table: dict[str, dict[str, dict[str, Any]]] = {}  # key -> target -> verdict
    for e in executions:
        for v in e["verdicts"]:
            table.setdefault(v["key"], {})[e["target"]] = v
    found = []
    for key, by_target in table.items():
        if len(by_target) < 2 and counts is None:
            continue
        errors = {t: _num(v.get("max_abs")) for t, v in by_target.items()}
        for target, v in by_target.items():
            if not v.get("passed"):
                continue
            peers = [t for t in by_target if t != target]
            if len(peers) < rule.min_peers:
                if counts is not None:
                    counts.not_judged += 1
                continue
            bound_max, top = _num(v.get("bound_max", 0.0)), _num(v.get("scale", math.inf))
            if bound_max >= top:
                if counts is not None:
                    counts.unresolved += 1
                continue
            if counts is not None:
                counts.judged += 1
            err = errors[target]
            median = statistics.median(errors[t] for t in peers)
            scale = _num(v.get("scale_ulp")) or 0.0
            floor = rule.floor_ulps * scale if scale > 0 else 0.0
            if not (math.isfinite(err) and err > rule.factor * median and err >= floor and err > 0):
                continue
            found.append({
                "case_id": case_id, "target": target, "key": key, "error": err, "median_peer_error": median,
                "factor": err / median if median > 0 else math.inf, "ulps": err / scale if scale > 0 else None,
                "ratio": _num(v.get("ratio")),
                "peers": sorted(({"target": t, "error": errors[t], "ulps": errors[t] / scale if scale > 0 else None,
                                  "ratio": _num(by_target[t].get("ratio")), "passed": bool(by_target[t].get("passed"))}
                                 for t in peers), key=lambda p: p["error"]),
            })
    return found


def _conventions(targets: list[dict[str, Any]]) -> dict[str, Conventions | None]:
    out: dict[str, Conventions | None] = {}
    for t in targets:
        try:
            out[t["name"]] = Conventions.from_dict(t.get("conventions") or {})
        except (TypeError, ValueError):  # a record this bncheck cannot read (an older run): no format known
            out[t["name"]] = None
    return out


def revise_out_of_range(executions: list[dict[str, Any]], cases: dict[str, dict[str, Any]],
                        targets: list[dict[str, Any]], counts: PeerJudgement | None = None) -> None:
    """Apply the same-format peer check to every out-of-range diagnosis, in place (see the module docstring)."""
    conv = _conventions(targets)
    by_case = _by_case(executions)
    for case_id, execs in by_case.items():
        for e in execs:
            diag = next((v["diagnosis"] for v in e["verdicts"] if isinstance(v.get("diagnosis"), dict)), None)
            if diag is None or diag.get("classification") != "out-of-range" or not diag.get("out_of_range"):
                continue
            issue = min(diag["out_of_range"], key=lambda i: formats.STRENGTH.index(i["hypothesis"])
                        if i.get("hypothesis") in formats.STRENGTH else 99)
            try:
                case = case_from_dict({k: v for k, v in cases[case_id].items() if k not in ("description", "metrics")})
            except Exception:  # noqa: BLE001 - a case that no longer validates: nothing to compare with
                continue
            deviating = set(diag.get("deviating") or [])
            passing, failing = [], []
            for p in execs:
                if p is e or conv.get(p["target"]) is None:
                    continue
                if formats.intermediate_format(case, conv[p["target"]], issue["intermediate"]) != issue["format"]:
                    continue
                seen = [v for v in p["verdicts"] if v["key"] in deviating]
                if not seen:
                    continue
                (passing if all(v.get("passed") for v in seen) else failing).append(p["target"])
            check = {"intermediate": issue["intermediate"], "format": issue["format"],
                     "same_format_passing": sorted(passing), "same_format_failing": sorted(failing)}
            diag["peer_check"] = check
            if passing:
                diag["classification"] = "suspected-bug"
                if counts is not None:
                    counts.revised += 1
            elif counts is not None:
                counts.kept += 1


def outlier_findings(outliers: list[dict[str, Any]], cases: dict[str, dict[str, Any]],
                     all_verdicts: dict[tuple[str, str], list[dict[str, Any]]], rule: PeerRule = RULE) -> list[dict[str, Any]]:
    """precision-outlier findings, one per root-cause signature (family, quantity, 'peer-outlier', regime), in the
    shape of results.build_findings' findings; the worst case (largest factor) carries the peers' errors."""
    groups: dict[str, dict[str, Any]] = {}
    for o in outliers:
        case = cases[o["case_id"]]
        q, regime = quantity_of(o["key"]), case["regime"]["name"]
        sig = signature(_family(o["target"]), q, PEER_OUTLIER, regime)
        g = groups.get(sig)
        if g is None:
            g = groups[sig] = {
                "signature": sig, "target": o["target"], "quantity": q, "mode": "train", "hypothesis": PEER_OUTLIER,
                "classification": "precision-outlier", "severity": "minor", "severity_reasons": [],
                "documented": False, "explanation": EXPLANATION, "regime": regime, "count": 0, "cases": [],
                "channels": [], "worst": None, "minimal_case": None, "peer_rule": rule.to_dict(), "out_of_range": [],
            }
        g["count"] += 1
        if o["case_id"] not in g["cases"]:
            g["cases"].append(o["case_id"])
        if g["worst"] is None or o["factor"] > _num(g["worst"]["factor"]):
            phase = phase_of(o["key"])
            g["mode"] = "eval" if phase == "eval" else "train"
            g["worst"] = {"case_id": o["case_id"], "ratio": o["ratio"], "residual": None, "first": o["key"],
                          "step": int(phase[5:]) if phase.startswith("train") else None, "deviating": [],
                          "conditioning": {}, "alternatives": [], "nonfinite_mismatch": 0,
                          "agreeing_targets": sorted(p["target"] for p in o["peers"] if p["passed"]),
                          "deviating_targets": sorted(p["target"] for p in o["peers"] if not p["passed"]),
                          "error": o["error"], "median_peer_error": o["median_peer_error"],
                          "factor": _safe(o["factor"]), "ulps": o["ulps"],
                          "peers": [{k: _safe(x) for k, x in p.items()} for p in o["peers"]],
                          "verdicts": [{k: x for k, x in v.items() if k not in ("ratio_value", "diagnosis")}
                                       for v in all_verdicts.get((o["case_id"], o["target"]), [])]}
        size = lambda cid: math.prod(cases[cid]["shape"]) * (cases[cid]["steps"] + 1)  # noqa: E731
        if g["minimal_case"] is None or size(o["case_id"]) < size(g["minimal_case"]):
            g["minimal_case"] = o["case_id"]
    return list(groups.values())


def judge_run(executions: list[dict[str, Any]], cases: dict[str, dict[str, Any]], targets: list[dict[str, Any]],
              rule: PeerRule = RULE) -> PeerJudgement:
    """The case-level judgement of a run: out-of-range diagnoses revised in place, and the precision outliers.

    `executions` are the store's (every verdict row, the diagnosis on the first deviating one)."""
    result = PeerJudgement([])
    revise_out_of_range(executions, cases, targets, result)
    for case_id, execs in _by_case(executions).items():
        result.outliers += outliers_of_case(case_id, execs, rule, result)
    return result
