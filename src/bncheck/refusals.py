"""Documented refusals, observed by running: an error the framework raised as its record documents becomes `refused`.

A target's conventions record lists `Refusal(condition, exception, message)` entries: on cases meeting the
condition the framework raises that exception with that text. The target is not asked to predict it: the
case runs, and the parent reads the worker's error (`"<ExceptionClass>: <the framework's own message>"`).
It is `refused` when a documented refusal's condition holds for the case and the exception class and
message match; any other exception stays `error`. A case that meets a documented condition but runs is
judged as usual, and its message says that the documented refusal did not happen.
"""

from __future__ import annotations

from .cases import Case
from .targets.base import Conventions, Refusal, RefusalCondition

REFUSED = "refused"


def condition_holds(condition: RefusalCondition, case: Case) -> bool:
    """Whether `case` is of the kind `condition` names."""
    batch_stats = any(p != "eval" for p in case.phases) or not case.track_running_stats
    if condition == RefusalCondition.ONE_VALUE_PER_CHANNEL_TRAINING:
        return batch_stats and case.per_channel == 1
    if condition == RefusalCondition.EPS_ZERO_TRAINING:
        return batch_stats and case.eps == 0
    if condition == RefusalCondition.RANK_NOT_4_OR_5:
        return len(case.shape) not in (4, 5)
    if condition == RefusalCondition.FLOAT64:
        return "float64" in (case.dtype, case.param_dtype)
    if condition == RefusalCondition.PARAMETERS_NOT_FLOAT32:
        return case.param_dtype != "float32"
    raise ValueError(f"unknown refusal condition {condition!r}")


def matching_refusal(case: Case, conventions: Conventions, message: str) -> Refusal | None:
    """The documented refusal that explains an error message of the worker ('Type: text'), or None."""
    kind, _, text = (message or "").partition(":")
    for r in conventions.refusals:
        if kind.strip() == r.exception and r.message in text and condition_holds(r.condition, case):
            return r
    return None


def expected_refusals(case: Case, conventions: Conventions) -> list[Refusal]:
    """The documented refusals whose condition `case` meets (the framework should have raised)."""
    return [r for r in conventions.refusals if condition_holds(r.condition, case)]


def classify(case: Case, conventions: Conventions, status: str, message: str) -> tuple[str, str]:
    """(status, message) of an outcome with documented refusals applied: an error they explain becomes refused
    (the framework's message kept as it is); an ok outcome they expected says it ran."""
    if status == "error" and matching_refusal(case, conventions, message) is not None:
        return REFUSED, message
    if status == "ok":
        expected = expected_refusals(case, conventions)
        if expected:
            why = ", ".join(sorted({str(r.condition) for r in expected}))
            note = f"ran although the conventions record documents a refusal ({why})"
            return status, f"{message}; {note}" if message else note
    return status, message
