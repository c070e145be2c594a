"""Typed results: Run, Execution, Finding, Cause and the Results document, with their one JSON encoding.

`results.json` is `Results.to_json()`; readers (`gate`, `diff`, `junit`, `baseline`) parse it back with
`Results.from_json`, which says in one line what is wrong with a document that is not one. The JSON Schema of the
encoding ships beside this module (`schemas/results.schema.json`); `tests/test_schemas.py` validates documents
that real runs write against it.

Non-finite floats have one encoding, here: JSON has no literal for them, so `json_float` writes +Inf, -Inf and NaN
as the strings "inf", "-inf" and "nan", and `parse_float` reads them back. Every module that writes such a value
into a document calls `json_float`.

What a finding's page states about its worst case is typed here (`FirstDeviation`, `Alternative`: the page, the
markdown issue bodies and the charts read every number from them). Nested records whose shape belongs to the module
that makes them stay plain JSON objects here, documented by the schema: a finding's `worst` case (report/results.py), verdicts (compare.Verdict.to_dict), diagnoses
(diagnose.Diagnosis.to_dict), conventions (targets.base.Conventions.to_dict) and the run's manifest.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

SCHEMA = "bncheck.results"
SCHEMA_VERSION = 1
STATUSES = ("ok", "error", "refused", "crash", "timeout", "unsupported")
JsonFloat = float | str


def json_float(x: float | None) -> JsonFloat | None:
    """A float for JSON: finite values as themselves, +Inf/-Inf/NaN as "inf"/"-inf"/"nan"; None stays None."""
    if x is None:
        return None
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if x != x else ("inf" if x > 0 else "-inf")


def parse_float(v: Any) -> float:
    """The float of a JSON number or of "inf"/"-inf"/"nan" (ValueError for anything else)."""
    if isinstance(v, bool):
        raise ValueError(f"not a number: {v!r}")
    if isinstance(v, (int, float)):
        return float(v)
    if v in ("inf", "-inf", "nan"):
        return float(v)
    raise ValueError(f"not a number or 'inf'/'-inf'/'nan': {str(v)[:40]!r}")


class ResultsError(ValueError):
    """A document that is not a bncheck results document; the message says where, in one line."""


def _check(cls: type, d: Any, where: str, strict: bool = False) -> dict[str, Any]:
    """The fields of `cls` found in `d`, with the required ones present (ResultsError otherwise). Reading, unknown
    fields are ignored (a document from a newer bncheck); writing (`strict`), they are an error."""
    if not isinstance(d, dict):
        raise ResultsError(f"{where}: expected an object, got {type(d).__name__}")
    if strict:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ResultsError(f"{where}: unknown field {unknown[0]!r} (add it to bncheck.results.{cls.__name__})")
    out = {}
    for f in fields(cls):
        if f.name in d:
            out[f.name] = d[f.name]
        elif f.default is MISSING and f.default_factory is MISSING:  # type: ignore[misc]
            raise ResultsError(f"{where}: \"{f.name}\" is missing")
    return out


def _encode(obj: Any) -> dict[str, Any]:
    """A dataclass's fields as a JSON object, in field order, leaving out None for optional extras."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if v is None and f.metadata.get("omit_none"):
            continue
        out[f.name] = v.to_json() if hasattr(v, "to_json") else v
    return out


OPTIONAL = {"omit_none": True}


@dataclass
class Run:
    """One invocation: its id, when, the command, what it ran, how it ended and where its time went."""

    run_id: str
    started: float
    finished: float | None
    command: str
    sources: list[str]
    manifest: dict[str, Any]  # machine facts and each framework's probe (runner.manifest_for)
    status: str  # 'complete', 'interrupted' or 'running'
    plugins: list[str] = field(default_factory=list)
    timings_s: dict[str, float] | None = field(default=None, metadata=OPTIONAL)

    def to_json(self) -> dict[str, Any]:
        """The JSON object."""
        return _encode(self)

    @classmethod
    def from_json(cls, d: Any, strict: bool = False) -> "Run":
        """Parse and check the required fields."""
        return cls(**_check(cls, d, "results: run", strict))


@dataclass
class Execution:
    """One (case, target) execution: its status and, when it ran, every deviating verdict (with its diagnosis)."""

    case_id: str
    target: str
    status: str  # one of STATUSES
    message: str
    stderr_tail: str
    elapsed_s: float
    inputs_digest: str
    checked: list[str]  # the quantity keys judged
    worst_ratio: float | None  # the largest error / bound over them (None: nothing judged)
    deviations: list[dict[str, Any]]  # compare.Verdict.to_dict() of each deviating quantity; diagnosis on the first
    peer_outliers: list[str] = field(default_factory=list)  # keys judged precision outliers against the peers

    def to_json(self) -> dict[str, Any]:
        """The JSON object (a ratio beyond the float range is stored as "inf")."""
        d = _encode(self)
        d["worst_ratio"] = json_float(self.worst_ratio)
        return d

    @classmethod
    def from_json(cls, d: Any, where: str = "results: executions[]", strict: bool = False) -> "Execution":
        """Parse and check the required fields."""
        got = _check(cls, d, where, strict)
        if got["status"] not in STATUSES:
            raise ResultsError(f"{where}: status {got['status']!r} is not one of {', '.join(STATUSES)}")
        if got.get("worst_ratio") is not None:
            got["worst_ratio"] = parse_float(got["worst_ratio"])
        return cls(**got)


@dataclass
class FirstDeviation:
    """The numbers a finding's page states about its worst case, each computed once (report/results.py
    `first_deviation`) from the worst execution's verdicts and diagnosis: the headline, the tables and the charts
    read them from here, so they cannot disagree."""

    key: str  # the first deviating quantity of the worst case ('<phase>.<quantity>')
    ratio: JsonFloat  # its largest error / bound, over every element
    nonfinite_mismatch: int  # its elements of another NaN/Inf pattern than the reference's
    case_key: str  # the worst case's quantity of largest error / bound, over every deviating quantity
    case_ratio: JsonFloat  # that ratio (the finding's worst.ratio)
    case_nonfinite_mismatch: int  # NaN/Inf mismatches over every deviating quantity of the worst case
    channel_ratios: list[JsonFloat]  # error / bound of `key` per channel (the first 64: compare.MAX_CHANNEL_VALUES)
    channel: int | None  # the channel of largest error / bound of `key` (None: beyond the recorded channels)
    channel_ratio: JsonFloat | None  # its error / bound (equal to `ratio` when `channel` is not None)
    mean_over_std: JsonFloat | None  # |mean| / std of that channel's batch in the phase of `key`
    eps_over_var: JsonFloat | None  # eps / var of that channel
    gamma: JsonFloat | None  # gamma of that channel
    channel_mean_over_std: list[JsonFloat] = field(default_factory=list)  # |mean| / std of every recorded channel
    relative_channel: int | None = None  # the deviating channel of largest relative error (diagnose._conditioning)
    relative_error: JsonFloat | None = None  # that relative error
    rank_correlation: float | None = None  # rank correlation of relative error with |mean| / std over channels

    def to_json(self) -> dict[str, Any]:
        """The JSON object."""
        return _encode(self)

    @classmethod
    def from_json(cls, d: Any, where: str = "results: findings[].first_deviation", strict: bool = False) -> "FirstDeviation":
        """Parse and check the required fields."""
        return cls(**_check(cls, d, where, strict))


@dataclass
class Alternative:
    """A hypothesis tried on the worst case and not chosen, with the rule that decided against it
    (diagnose.WHY_NOT: does-not-explain, range-first, fewer-quantities, formula-first, closer-formula,
    documented-first, looser-bound, more-unconstrained, closer-model)."""

    hypothesis: str
    kind: str  # formula | precision | range
    residual: JsonFloat | None  # worst error / bound of the deviating quantities it models, under it
    explains: bool  # residual <= 1
    rule: str  # a diagnose.WHY_NOT key
    reason: str  # that rule in words

    def to_json(self) -> dict[str, Any]:
        """The JSON object."""
        return _encode(self)

    @classmethod
    def from_json(cls, d: Any, where: str = "results: findings[].alternatives[]", strict: bool = False) -> "Alternative":
        """Parse and check the required fields."""
        return cls(**_check(cls, d, where, strict))


@dataclass
class Finding:
    """Deviating executions of one root-cause signature (target family, first quantity, hypothesis, regime)."""

    signature: str
    target: str
    quantity: str
    mode: str
    hypothesis: str
    classification: str  # suspected-bug | precision | precision-outlier | out-of-range | convention
    severity: str  # critical | major | minor
    explanation: str
    regime: str
    count: int
    cases: list[str]
    channels: list[int]
    worst: dict[str, Any]  # the worst case: its ratio, diagnosis facts, peers and verdicts (report/results.py)
    minimal_case: str
    severity_reasons: list[dict[str, Any]] = field(default_factory=list)
    documented: bool = False  # a precision model the target's record declares
    out_of_range: list[dict[str, Any]] = field(default_factory=list)  # formats.py: intermediates beyond the format
    peer_checks: list[dict[str, Any]] | None = field(default=None, metadata=OPTIONAL)
    peer_rule: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)  # precision-outlier findings
    conversion: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)  # exported/converted paths
    shrink: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)  # attempts, reduced, from_case, skipped
    repro: str | None = None  # repro/<signature>.py, relative to the output folder
    case_file: str | None = field(default=None, metadata=OPTIONAL)  # findings/<signature>/case.json
    first_deviation: FirstDeviation | None = field(default=None, metadata=OPTIONAL)  # the page's numbers
    alternatives: list[Alternative] = field(default_factory=list)  # not chosen, and why (worst case)

    def to_json(self) -> dict[str, Any]:
        """The JSON object."""
        d = _encode(self)
        d["alternatives"] = [a.to_json() if isinstance(a, Alternative) else a for a in self.alternatives]
        return d

    @classmethod
    def from_json(cls, d: Any, where: str = "results: findings[]", strict: bool = False) -> "Finding":
        """Parse and check the required fields."""
        got = _check(cls, d, where, strict)
        if not isinstance(got["signature"], str) or not got["signature"]:
            raise ResultsError(f"{where}: \"signature\" must be a non-empty string")
        if not isinstance(got["worst"], dict):
            raise ResultsError(f"{where}: \"worst\" must be an object")
        if got.get("first_deviation") is not None and not isinstance(got["first_deviation"], FirstDeviation):
            got["first_deviation"] = FirstDeviation.from_json(got["first_deviation"], f"{where}.first_deviation", strict)
        got["alternatives"] = [a if isinstance(a, Alternative) else Alternative.from_json(a, f"{where}.alternatives[{i}]", strict)
                               for i, a in enumerate(got.get("alternatives") or [])]
        return cls(**got)


@dataclass
class Cause:
    """Findings grouped once more by (target, hypothesis, classification): one line of the causes table."""

    target: str
    hypothesis: str
    classification: str
    severity: str
    explanation: str
    quantities: list[str]
    regimes: list[str]
    findings: list[str]  # their signatures
    count: int
    worst_ratio: JsonFloat
    nonfinite: bool = False

    def to_json(self) -> dict[str, Any]:
        """The JSON object."""
        return _encode(self)

    @classmethod
    def from_json(cls, d: Any, where: str = "results: root_causes[]", strict: bool = False) -> "Cause":
        """Parse and check the required fields."""
        return cls(**_check(cls, d, where, strict))


@dataclass
class Results:
    """The whole results.json of one run."""

    run: Run
    summary: dict[str, Any]  # counts by status, class, severity, target; the peer judgement; broken targets
    targets: list[dict[str, Any]]  # every target considered, with its conventions and what it was observed to follow
    findings: list[Finding]
    root_causes: list[Cause]
    cases: dict[str, dict[str, Any]]  # case id -> the canonical case, its description and reference metrics
    executions: list[Execution]

    def to_json(self) -> dict[str, Any]:
        """The document, schema name and version first."""
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "run": self.run.to_json(), "summary": self.summary,
                "targets": self.targets, "findings": [f.to_json() for f in self.findings],
                "root_causes": [c.to_json() for c in self.root_causes], "cases": self.cases,
                "executions": [e.to_json() for e in self.executions]}

    @classmethod
    def typed(cls, d: dict[str, Any]) -> "Results":
        """A document bncheck built, strictly parsed: every field of every record must be a declared one."""
        return cls.from_json(d, strict=True)

    @classmethod
    def from_json(cls, d: Any, strict: bool = False) -> "Results":
        """Parse a results document, checking its schema name, version and the required fields of each record."""
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ResultsError(f"not a bncheck results document (expected \"schema\": \"{SCHEMA}\")")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ResultsError(f"results: unsupported \"schema_version\" {d.get('schema_version')!r} (this bncheck reads "
                               f"{SCHEMA_VERSION})")
        for key, kind in (("findings", list), ("root_causes", list), ("executions", list), ("targets", list),
                          ("cases", dict), ("summary", dict)):
            if not isinstance(d.get(key), kind):
                raise ResultsError(f"results: \"{key}\" must be {'a list' if kind is list else 'an object'}")
        try:
            if strict:
                unknown = sorted(set(d) - {"schema", "schema_version", *(f.name for f in fields(cls))})
                if unknown:
                    raise ResultsError(f"results: unknown field {unknown[0]!r} (add it to bncheck.results.Results)")
            return cls(Run.from_json(d.get("run"), strict), d["summary"], d["targets"],
                       [Finding.from_json(f, f"results: findings[{i}]", strict) for i, f in enumerate(d["findings"])],
                       [Cause.from_json(c, f"results: root_causes[{i}]", strict) for i, c in enumerate(d["root_causes"])],
                       d["cases"],
                       [Execution.from_json(e, f"results: executions[{i}]", strict) for i, e in enumerate(d["executions"])])
        except (TypeError, ValueError) as e:
            if isinstance(e, ResultsError):
                raise
            raise ResultsError(f"results: {e}") from None
