"""The CI gate: a pure function from a run's results, a baseline and a policy to pass or fail.

Nothing here reads or writes a file, reads the clock or imports a framework: `decide`, `make_baseline`,
`validate_baseline` and `diff` take documents (the parsed `results.json` and baseline JSON) and return
values; `bncheck gate`, `bncheck baseline` and `bncheck diff` do the I/O.

Gated items
-----------
Every finding of `results["findings"]`, keyed by its `signature` (a hash of target family, first deviating
quantity, hypothesis and regime; see `diagnose.signature`), plus one *pseudo-finding* per distinct
(target, status, first line of message) over the executions whose status is `error`, `crash` or `timeout`
(they have no finding). A pseudo-finding's signature is `execution_signature(target, status, message)`:
the first 12 hex digits of SHA-256 of `"exec|<target>|<status>|<first line>"`, where the first line has
hexadecimal addresses (`0x7f3a...`) replaced by `0x?` and, for `timeout`, is dropped (it only states the
limit). Its classification is its status, its quantity `"-"`, its hypothesis the first line, its worst
ratio `null`.

Policy
------
`Policy(worse_factor=10.0, fail_on=ALL_CLASSES, require_complete=True, fail_on_critical=True)`. By default
every new finding fails, whatever its class: the baseline is where acceptance is recorded, so a documented
convention difference is accepted there once, with its reason, rather than exempted by class. `fail_on`
narrows the classes (`convention`, `precision`, `precision-outlier`, `out-of-range`, `suspected-bug`,
`error`, `crash`, `timeout`) that can fail the gate; items of other classes are still listed, as notes.
With `fail_on_critical` (the default) a finding of severity `critical` (NaN/Inf where the reference is
finite, a negative variance, a collapsed output: severity.py) can fail the gate whatever `fail_on` says,
so `--fail-on suspected-bug,crash` still fails on a NaN output labelled precision. With `require_complete`,
an interrupted run fails the gate (its missing executions would look fixed). Executions whose status is
`refused` (the framework raised as its record documents) or `unsupported` are not gated.

A gated item present in the run FAILS the gate when it is
  * new: its signature is not in the baseline;
  * worse: its worst ratio > worse_factor x the accepted `worst_ratio` ("inf" is worse than any finite
    ratio, never worse than an accepted "inf"; an accepted `null` ratio never gets worse);
  * expired: its acceptance has `expires` < today (an acceptance is valid through its `expires` day).
An accepted item absent from the run is *fixed* only when this run executed its target on one of the cases it
was seen on (the baseline entry's `cases`; for an entry without them, a case of its regime); otherwise it is
*not-run*, with the reason (the target did not run, say a framework missing on the CI machine, or none of its
cases was executed on it: another suite, an unsupported or failing case). Neither fails: what did not run must
never look like a fix. When the run and the baseline's source run used different suites, targets or framework
versions, the decision says so first (`context`).

Baseline format (`bncheck.baseline`, version 1)
-----------------------------------------------
    {
      "schema": "bncheck.baseline",          # required, exactly this
      "schema_version": 1,                   # required, integer 1
      "created": "YYYY-MM-DD",               # optional, informational
      "from_run": "<run_id>",                # optional, informational
      "accepted": [                          # required, a list (may be empty); signatures unique
        {"signature": "3bb7b4102000",        # required, non-empty string
         "target": "torch.nn@cpu",           # optional strings, informational (and fixed or not-run detection)
         "quantity": "y", "hypothesis": "...", "classification": "...", "regime": "...",
         "worst_ratio": 4781.36 | "inf" | null,   # optional (null): the accepted size, a number >= 0
         "cases": ["<case_id>", ...],        # optional: cases it was seen on (worst first; at most 20)
         "reason": "why this is accepted",   # optional string
         "expires": "YYYY-MM-DD" | null}     # optional (null: never)
      ],
      "source": {"sources": [...], "targets": [...],   # optional: what the accepted run ran
                 "versions": {"torch": "2.13.0", ...}}
    }
Any other shape is rejected by `validate_baseline` with a one-line `GateInputError`.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Iterable

from .results import json_float

BASELINE_SCHEMA = "bncheck.baseline"
BASELINE_VERSION = 1
FINDING_CLASSES = ("suspected-bug", "precision", "precision-outlier", "out-of-range", "convention")
EXECUTION_CLASSES = ("error", "crash", "timeout")
ALL_CLASSES = FINDING_CLASSES + EXECUTION_CLASSES
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
_INFO_FIELDS = ("target", "quantity", "hypothesis", "classification", "regime", "reason", "severity")


class GateInputError(ValueError):
    """A results or baseline document that cannot be used; the message is one line."""


@dataclass(frozen=True)
class Policy:
    """What fails the gate; see the module docstring."""

    worse_factor: float = 10.0
    fail_on: frozenset[str] = frozenset(ALL_CLASSES)
    require_complete: bool = True
    fail_on_critical: bool = True  # a critical finding can fail whatever fail_on says

    def __post_init__(self) -> None:
        if not (isinstance(self.worse_factor, (int, float)) and math.isfinite(self.worse_factor) and self.worse_factor >= 1):
            raise GateInputError(f"worse factor must be a finite number >= 1, got {self.worse_factor!r}")
        unknown = sorted(set(self.fail_on) - set(ALL_CLASSES))
        if unknown:
            raise GateInputError(f"unknown classification {unknown[0]!r} in fail_on (choose from {', '.join(ALL_CLASSES)})")


@dataclass
class Item:
    """One gated thing: a finding or a pseudo-finding, as seen in the run and/or the baseline."""

    signature: str
    kind: str  # 'finding' or 'execution'
    target: str
    quantity: str
    hypothesis: str
    classification: str
    regime: str
    count: int = 0
    ratio: float | None = None  # worst ratio in this run (math.inf for "inf"); None for pseudo-findings
    case_id: str = ""
    accepted_ratio: float | None = None
    expires: str | None = None
    reason: str = ""
    fails: bool = False
    why: list[str] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)  # the cases it was seen on (worst first)
    severity: str = ""  # critical | major | minor for findings ("" for pseudo-findings)
    nonfinite: bool = False  # the worst case is a NaN/Inf mismatch: its ratio reads NaN/Inf, not "inf"

    def label(self) -> str:
        """'<signature> <target> <quantity> <hypothesis> [<classification>, <regime>]'."""
        if self.kind == "execution":
            return f"{self.signature} {self.target} {self.classification}: {self.hypothesis}"
        return f"{self.signature} {self.target} {self.quantity} {self.hypothesis} [{self.classification}, {self.regime}]"

    def seen(self, ratio: bool = True) -> str:
        """Where it was seen: worst ratio (unless `ratio` is False), count and worst case."""
        if ratio and self.nonfinite:
            ratio_text = "worst NaN/Inf, "
        else:
            ratio_text = f"worst ratio {fmt_ratio(self.ratio)}, " if ratio and self.ratio is not None else ""
        return f"{ratio_text}{self.count} execution{'s' if self.count != 1 else ''}, case {self.case_id or '?'}"


@dataclass
class GateDecision:
    """The gate's verdict and exactly which items decided it."""

    passed: bool
    new: list[Item] = field(default_factory=list)
    worse: list[Item] = field(default_factory=list)
    expired: list[Item] = field(default_factory=list)
    fixed: list[Item] = field(default_factory=list)
    accepted: list[Item] = field(default_factory=list)
    not_run: list[Item] = field(default_factory=list)  # accepted, absent, and not executed by this run (why: Item.why)
    problems: list[str] = field(default_factory=list)  # run-level reasons to fail (an interrupted run)
    context: list[str] = field(default_factory=list)  # how this run differs from the baseline's (suites, targets, ...)
    run_id: str = ""

    @property
    def failing(self) -> list[Item]:
        """Every item that fails the gate, each once, in report order."""
        seen: dict[str, Item] = {}
        for it in (*self.new, *self.worse, *self.expired):
            if it.fails:
                seen.setdefault(it.signature, it)
        return list(seen.values())

    def lines(self) -> list[str]:
        """One line per failing item with every reason, then notes (non-gating, fixed, not-run) and a summary."""
        out = [f"note: {c}" for c in self.context]
        out += [f"FAIL run: {p}" for p in self.problems]
        for it in self.failing:
            out.append(f"FAIL {it.label()}: {'; '.join(it.why)} ({it.seen(ratio=not any(w.startswith('worse') for w in it.why))})")
        notes: dict[str, Item] = {}
        for it in (*self.new, *self.worse, *self.expired):
            if not it.fails:
                notes.setdefault(it.signature, it)
        for it in notes.values():
            out.append(f"note {it.label()}: {'; '.join(it.why)}; class {it.classification} does not fail the gate ({it.seen()})")
        for it in self.fixed:
            out.append(f"fixed {it.label()}: accepted{_accepted_ratio(it)}, absent from this run, which ran "
                       f"{'; '.join(it.why)}")
        for it in self.not_run:
            out.append(f"not-run {it.label()}: accepted{_accepted_ratio(it)}; {'; '.join(it.why)}")
        n_fail = len(self.failing)
        verdict = "passed" if self.passed else "FAILED"
        out.append(f"gate {verdict}: {n_fail} failing ({len([i for i in self.new if i.fails])} new, "
                   f"{len([i for i in self.worse if i.fails])} worse, {len([i for i in self.expired if i.fails])} expired"
                   f"{', run incomplete' if self.problems else ''}), {len(self.accepted)} accepted, "
                   f"{len(self.fixed)} fixed, {len(self.not_run)} not-run"
                   f"{', ' + str(len(notes)) + ' not gating' if notes else ''}"
                   f"{' (run ' + self.run_id + ')' if self.run_id else ''}")
        return out


def _accepted_ratio(it: Item) -> str:
    return f" at ratio {fmt_ratio(it.accepted_ratio)}" if it.accepted_ratio is not None else ""


def fmt_ratio(r: float | None) -> str:
    """A ratio for humans: 4.78e+03, inf, or '-'."""
    if r is None:
        return "-"
    return "inf" if math.isinf(r) else f"{r:.3g}"


# ---- reading results ----------------------------------------------------------------------------
def execution_signature(target: str, status: str, message: str) -> str:
    """The stable signature of an error/crash/timeout pseudo-finding (see the module docstring)."""
    first = (message or "").strip().splitlines()[0].strip() if (message or "").strip() else ""
    first = "" if status == "timeout" else _ADDRESS.sub("0x?", first)
    return hashlib.sha256(f"exec|{target}|{status}|{first}".encode()).hexdigest()[:12]


def _ratio(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if value == "inf":
        return math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise GateInputError(f"{where}: a ratio must be a number >= 0, \"inf\" or null, got {value!r}")
    return float(value)


def _count(value: Any, i: int) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise GateInputError(f"results: findings[{i}].count must be a count, got {value!r}")
    return value


def _check_results(results: Any) -> None:
    if not isinstance(results, dict) or results.get("schema") != "bncheck.results":
        raise GateInputError("not a bncheck results document (expected \"schema\": \"bncheck.results\")")
    for key in ("findings", "executions"):
        if not isinstance(results.get(key), list):
            raise GateInputError(f"results: \"{key}\" must be a list")


def gated_items(results: dict[str, Any]) -> dict[str, Item]:
    """Signature -> Item for every finding and every error/crash/timeout pseudo-finding of a run."""
    _check_results(results)
    items: dict[str, Item] = {}
    for i, f in enumerate(results["findings"]):
        if not isinstance(f, dict) or not isinstance(f.get("signature"), str) or not isinstance(f.get("worst"), dict):
            raise GateInputError(f"results: findings[{i}] lacks a signature or a worst case")
        sig = f["signature"]
        ratio = _ratio(f["worst"].get("ratio"), f"results: findings[{i}].worst.ratio")
        prev = items.get(sig)
        if prev is not None:  # one signature is one finding; be lenient with a hand-merged document
            prev.count += _count(f.get("count"), i)
            if ratio is not None and (prev.ratio is None or ratio > prev.ratio):
                prev.ratio, prev.case_id = ratio, str(f["worst"].get("case_id", ""))
            continue
        worst = str(f["worst"].get("case_id", ""))
        seen = [c for c in f.get("cases") or [] if isinstance(c, str)]
        items[sig] = Item(sig, "finding", str(f.get("target", "")), str(f.get("quantity", "")),
                          str(f.get("hypothesis", "")), str(f.get("classification", "")), str(f.get("regime", "")),
                          _count(f.get("count"), i), ratio, worst,
                          cases=list(dict.fromkeys([worst, *seen] if worst else seen)),
                          severity=str(f.get("severity") or ""), nonfinite=bool(f["worst"].get("nonfinite_mismatch")))
    for i, e in enumerate(results["executions"]):
        if not isinstance(e, dict):
            raise GateInputError(f"results: executions[{i}] is not an object")
        status = e.get("status")
        if status not in EXECUTION_CLASSES:
            continue
        target, message = str(e.get("target", "")), str(e.get("message") or "")
        sig = execution_signature(target, status, message)
        first = message.strip().splitlines()[0].strip() if message.strip() else status
        it = items.get(sig)
        if it is None:
            it = items[sig] = Item(sig, "execution", target, "-", first, status, "-", 0, None, str(e.get("case_id", "")))
        it.count += 1
        if e.get("case_id") and len(it.cases) < MAX_BASELINE_CASES:
            it.cases.append(str(e["case_id"]))
    return items


class _Coverage:
    """What a run executed: (case, target) pairs that ran to an observation, targets that ran anything, and the
    regime of every case, to tell a fixed finding from one that was not run."""

    def __init__(self, results: dict[str, Any]) -> None:
        execs = [e for e in results["executions"] if isinstance(e, dict)]
        self.targets = {str(e.get("target")) for e in execs}
        self.ok = {(str(e.get("case_id")), str(e.get("target"))) for e in execs if e.get("status") == "ok"}
        self.present = {(str(e.get("case_id")), str(e.get("target"))) for e in execs}
        cases = results.get("cases") if isinstance(results.get("cases"), dict) else {}
        regime = {cid: ((c.get("regime") or {}).get("name") if isinstance(c, dict) else None) for cid, c in cases.items()}
        self.ok_regimes = {(regime.get(c), t) for c, t in self.ok}

    def why_not_run(self, entry: dict[str, Any]) -> tuple[bool, str]:
        """(ran, how): whether the run executed the accepted entry's target on one of its cases, and a phrase why."""
        target = entry.get("target") or ""
        if not target:
            return True, "every target (the entry names none)"
        if target not in self.targets:
            return False, f"target {target} did not run"
        cases = [c for c in entry.get("cases") or [] if isinstance(c, str)]
        if cases:
            if any((c, target) in self.ok for c in cases):
                return True, f"{target} on its case {next(c for c in cases if (c, target) in self.ok)}"
            if any((c, target) in self.present for c in cases):
                return False, f"its cases did not execute on {target} (unsupported, failed or not reached)"
            return False, f"none of its {len(cases)} cases is in this run (another suite?)"
        regime = entry.get("regime")
        if regime and regime != "-":
            if (regime, target) in self.ok_regimes:
                return True, f"{target} on cases of its regime {regime}"
            return False, f"no case of its regime {regime} executed on {target}"
        return True, f"{target} (the entry names no case or regime)"


MAX_BASELINE_CASES = 20  # cases an accepted entry remembers, to tell fixed from not run


# ---- baseline -----------------------------------------------------------------------------------
def validate_baseline(baseline: Any) -> dict[str, dict[str, Any]]:
    """Signature -> accepted entry of a well-formed baseline; a GateInputError (one line) otherwise."""
    if not isinstance(baseline, dict):
        raise GateInputError("baseline: expected a JSON object with \"schema\": \"bncheck.baseline\"")
    if baseline.get("schema") != BASELINE_SCHEMA:
        raise GateInputError(f"baseline: \"schema\" must be \"{BASELINE_SCHEMA}\", got {baseline.get('schema')!r}")
    version = baseline.get("schema_version")
    if version != BASELINE_VERSION or isinstance(version, bool):
        raise GateInputError(f"baseline: unsupported \"schema_version\" {version!r} (this bncheck reads {BASELINE_VERSION})")
    accepted = baseline.get("accepted")
    if not isinstance(accepted, list):
        raise GateInputError("baseline: \"accepted\" must be a list of {\"signature\", ..., \"expires\"} objects")
    out: dict[str, dict[str, Any]] = {}
    for i, a in enumerate(accepted):
        where = f"baseline: accepted[{i}]"
        if not isinstance(a, dict):
            raise GateInputError(f"{where}: expected an object")
        sig = a.get("signature")
        if not isinstance(sig, str) or not sig:
            raise GateInputError(f"{where}: \"signature\" must be a non-empty string")
        if sig in out:
            raise GateInputError(f"{where}: signature {sig} is accepted twice")
        for k in _INFO_FIELDS:
            if k in a and a[k] is not None and not isinstance(a[k], str):
                raise GateInputError(f"{where}.{k}: must be a string, got {a[k]!r}")
        ratio = _ratio(a.get("worst_ratio"), f"{where}.worst_ratio")
        cases = a.get("cases")
        if cases is not None and not (isinstance(cases, list) and all(isinstance(c, str) for c in cases)):
            raise GateInputError(f"{where}.cases: must be a list of case ids, got {str(cases)[:80]!r}")
        expires = a.get("expires")
        if expires is not None:
            if not isinstance(expires, str) or not _DATE.match(expires):
                raise GateInputError(f"{where}.expires: must be \"YYYY-MM-DD\" or null, got {expires!r}")
            try:
                date.fromisoformat(expires)
            except ValueError:
                raise GateInputError(f"{where}.expires: {expires!r} is not a calendar date") from None
        out[sig] = {**a, "worst_ratio": ratio, "expires": expires}
    return out


def make_baseline(results: dict[str, Any], today: date, reason: str | None = None,
                  expires: date | None = None) -> dict[str, Any]:
    """A baseline accepting every finding and pseudo-finding of a run (reason default 'accepted from run <id>')."""
    items = gated_items(results)
    run_id = str((results.get("run") or {}).get("run_id", ""))
    why = reason if reason is not None else f"accepted from run {run_id}"
    accepted = []
    for it in items.values():
        accepted.append({"signature": it.signature, "target": it.target, "quantity": it.quantity,
                         "hypothesis": it.hypothesis, "classification": it.classification, "regime": it.regime,
                         **({"severity": it.severity} if it.severity else {}),
                         "worst_ratio": json_float(it.ratio),
                         "cases": it.cases[:MAX_BASELINE_CASES],
                         "reason": why, "expires": expires.isoformat() if expires else None})
    accepted.sort(key=lambda a: (a["target"], a["classification"], a["quantity"], a["signature"]))
    return {"schema": BASELINE_SCHEMA, "schema_version": BASELINE_VERSION, "created": today.isoformat(),
            "from_run": run_id, "source": run_scope(results), "accepted": accepted}


def run_scope(results: dict[str, Any]) -> dict[str, Any]:
    """What a run ran: its case sources (suites, files), the targets that executed, and the framework versions."""
    run = results.get("run") or {}
    sources = run.get("sources") if isinstance(run.get("sources"), list) else []
    return {"sources": [str(x) for x in sources], "targets": sorted(_Coverage(results).targets),
            "versions": _versions(results)}


def scope_differences(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str] = ("A", "B")) -> list[str]:
    """One line per way two runs' scopes (run_scope) differ: suites, targets, framework versions."""
    out = []
    sa, sb = [str(x) for x in a.get("sources") or []], [str(x) for x in b.get("sources") or []]
    if sa and sb and sorted(sa) != sorted(sb):
        out.append(f"the suites differ: {names[0]} ran {', '.join(sa)}; {names[1]} ran {', '.join(sb)}")
    ta, tb = set(a.get("targets") or []), set(b.get("targets") or [])
    if ta and tb and ta != tb:
        parts = []
        if ta - tb:
            parts.append(f"only {names[0]} ran {', '.join(sorted(ta - tb))}")
        if tb - ta:
            parts.append(f"only {names[1]} ran {', '.join(sorted(tb - ta))}")
        out.append("the targets differ: " + "; ".join(parts))
    va, vb = a.get("versions") or {}, b.get("versions") or {}
    changed = [f"{k} {va.get(k, '-')} -> {vb.get(k, '-')}" for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)]
    if changed:
        out.append(f"framework versions differ ({names[0]} -> {names[1]}): {', '.join(changed)}")
    return out


# ---- the decision -------------------------------------------------------------------------------
def is_worse(ratio: float | None, accepted: float | None, factor: float) -> bool:
    """ratio > factor x accepted; inf beats any finite ratio; unknown ratios never get worse."""
    if ratio is None or accepted is None:
        return False
    if math.isinf(ratio):
        return not math.isinf(accepted)
    return ratio > factor * accepted


def decide(results: dict[str, Any], baseline: dict[str, Any], policy: Policy, today: date) -> GateDecision:
    """Pass or fail a run against a baseline under a policy (see the module docstring). Pure."""
    items = gated_items(results)
    accepted = validate_baseline(baseline)
    run = results.get("run") or {}
    d = GateDecision(passed=True, run_id=str(run.get("run_id", "")))
    if policy.require_complete and run.get("status", "complete") != "complete":
        d.problems.append(f"run {d.run_id or '?'} is {run.get('status')!r}, not complete: absent findings cannot be told from fixed ones")
    for sig, it in items.items():
        gating = it.classification in policy.fail_on
        if not gating and policy.fail_on_critical and it.severity == "critical":
            gating = True
            it.why.append("critical (NaN/Inf, a negative variance or a collapsed output): gated whatever --fail-on says")
        a = accepted.get(sig)
        if a is None:
            it.why.append("new: not in the baseline")
            it.fails = gating
            d.new.append(it)
            continue
        it.accepted_ratio, it.expires, it.reason = a["worst_ratio"], a["expires"], a.get("reason") or ""
        bad = False
        if is_worse(it.ratio, it.accepted_ratio, policy.worse_factor):
            it.why.append(f"worse: worst ratio {fmt_ratio(it.ratio)} > {policy.worse_factor:g} x accepted {fmt_ratio(it.accepted_ratio)}")
            d.worse.append(it)
            bad = True
        if it.expires is not None and date.fromisoformat(it.expires) < today:
            it.why.append(f"expired: acceptance expired on {it.expires}" + (f" (reason: {it.reason})" if it.reason else ""))
            d.expired.append(it)
            bad = True
        if bad:
            it.fails = gating
        else:
            d.accepted.append(it)
    coverage = _Coverage(results)
    source = baseline.get("source") if isinstance(baseline.get("source"), dict) else None
    if source:
        d.context = scope_differences(source, run_scope(results), ("the baseline's run", "this run"))
    for sig, a in accepted.items():
        if sig in items:
            continue
        cls = a.get("classification") or ""
        it = Item(sig, "execution" if cls in EXECUTION_CLASSES else "finding", a.get("target") or "?",
                  a.get("quantity") or "", a.get("hypothesis") or "", cls, a.get("regime") or "",
                  accepted_ratio=a["worst_ratio"], expires=a["expires"], reason=a.get("reason") or "",
                  severity=a.get("severity") or "")
        ran, how = coverage.why_not_run(a)
        it.why.append(how)
        (d.fixed if ran else d.not_run).append(it)
    d.passed = not d.problems and not d.failing
    return d


# ---- comparing two runs -------------------------------------------------------------------------
@dataclass
class RunDiff:
    """Findings of run B against run A: new in B, fixed (in A, absent from B though B ran it), not-run (in A, and B
    did not execute its target on its cases), changed (count, or ratio by > factor)."""

    run_a: str
    run_b: str
    factor: float
    new: list[Item] = field(default_factory=list)
    fixed: list[Item] = field(default_factory=list)
    not_run: list[Item] = field(default_factory=list)
    changed: list[tuple[Item, Item, list[str]]] = field(default_factory=list)
    unchanged: int = 0
    versions: list[tuple[str, str, str]] = field(default_factory=list)  # (framework, version in A, version in B)
    context: list[str] = field(default_factory=list)  # how the two runs' suites, targets and versions differ

    def lines(self) -> list[str]:
        """A human report, one line per item."""
        out = [f"diff {self.run_a or '?'} -> {self.run_b or '?'}"]
        for name, va, vb in self.versions:
            out.append(f"version {name}: {va} -> {vb}")
        out += [f"note: {c}" for c in self.context]
        if self.versions:
            out.append("note: the framework versions differ, so the changes below may come from the new releases "
                       "(this is the question 'did this release change BN?')")
        for it in self.new:
            out.append(f"new {it.label()}: {it.seen()}")
        for it in self.fixed:
            out.append(f"fixed {it.label()}: {it.seen()} in A, absent from B, which ran {'; '.join(it.why)}")
        for it in self.not_run:
            out.append(f"not-run {it.label()}: {it.seen()} in A; in B {'; '.join(it.why)}")
        for a, b, what in self.changed:
            out.append(f"changed {b.label()}: {'; '.join(what)}")
        out.append(f"{len(self.new)} new, {len(self.fixed)} fixed, {len(self.not_run)} not-run, {len(self.changed)} "
                   f"changed, {self.unchanged} unchanged")
        return out


def _versions(results: dict[str, Any]) -> dict[str, str]:
    fw = ((results.get("run") or {}).get("manifest") or {}).get("frameworks") or {}
    return {k: str(v.get("version")) for k, v in fw.items() if isinstance(v, dict)} if isinstance(fw, dict) else {}


def diff(a: dict[str, Any], b: dict[str, Any], factor: float = 10.0) -> RunDiff:
    """Compare two runs' findings and pseudo-findings by signature (e.g. before and after a framework upgrade). Pure."""
    Policy(worse_factor=factor)  # validates the factor
    ia, ib = gated_items(a), gated_items(b)
    d = RunDiff(str((a.get("run") or {}).get("run_id", "")), str((b.get("run") or {}).get("run_id", "")), factor)
    va, vb = _versions(a), _versions(b)
    d.versions = [(k, va.get(k, "-"), vb.get(k, "-")) for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)]
    scope_a, scope_b = run_scope(a), run_scope(b)
    d.context = scope_differences({**scope_a, "versions": {}}, {**scope_b, "versions": {}})
    d.new = [it for s, it in ib.items() if s not in ia]
    coverage = _Coverage(b)
    for s, it in ia.items():
        if s in ib:
            continue
        ran, how = coverage.why_not_run({"target": it.target, "cases": it.cases, "regime": it.regime})
        it.why.append(how)
        (d.fixed if ran else d.not_run).append(it)
    for s, y in ib.items():
        x = ia.get(s)
        if x is None:
            continue
        what = []
        if x.count != y.count:
            what.append(f"count {x.count} -> {y.count}")
        if is_worse(y.ratio, x.ratio, factor) or is_worse(x.ratio, y.ratio, factor):
            what.append(f"worst ratio {fmt_ratio(x.ratio)} -> {fmt_ratio(y.ratio)} (more than {factor:g} x)")
        if what:
            d.changed.append((x, y, what))
        else:
            d.unchanged += 1
    return d


def parse_classes(text: str | Iterable[str]) -> frozenset[str]:
    """'suspected-bug,crash' -> a validated fail_on set."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    return Policy(fail_on=frozenset(names)).fail_on
