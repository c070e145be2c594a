"""Shrink a finding's case while its root-cause signature holds: fewer samples, channels, pixels, steps, features.

Greedy, in the style of Hypothesis: try each reduction of the current case, re-run the target in its
worker, re-diagnose, and keep the first reduction whose diagnosis has the same signature; repeat until
no reduction keeps it or the budget of executions is spent.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Iterator

from .cases import Case, CaseError
from .inputs import make_inputs
from .judging import judge_execution
from .pool import WorkerHandle
from .targets.base import Target


@dataclass
class ShrinkResult:
    """The smallest case found, how many executions it took, and whether the signature held throughout."""

    case: Case
    attempts: int
    reduced: bool
    deviating: list[str]


def _size(case: Case) -> int:
    n = 1
    for s in case.shape:
        n *= s
    return n * (case.steps + 1) * (2 if case.grad else 1)


def reductions(case: Case) -> Iterator[dict[str, Any]]:
    """Candidate smaller variants of `case`, largest reductions first."""
    shape = list(case.shape)
    if case.mode == "trajectory" and case.steps > 1:
        yield {"steps": 1}
        yield {"steps": case.steps - 1}
    if case.grad:
        yield {"grad": False}
    for i in [0, 1, *range(2, len(shape))]:
        floor = 1
        if shape[i] > floor:
            for new in sorted({floor, max(floor, shape[i] // 2), shape[i] - 1}):
                if new < shape[i]:
                    yield {"shape": shape[:i] + [new] + shape[i + 1:]}
    if len(shape) > 2:
        yield {"shape": shape[:-1], "layout": case.layout if len(shape) > 3 else "channels_first"}
    if case.affine:
        yield {"affine": False}
    if case.mode == "trajectory":
        yield {"mode": "train", "steps": 1}


def _signature(case: Case, target: Target, worker: WorkerHandle, timeout: float) -> tuple[str | None, list[str]]:
    """Run `case` on `target`: the diagnosis signature and deviating keys (None, []: it passes, or did not run)."""
    if target.supports(case):
        return None, []
    inputs = make_inputs(case)
    out = worker.request({"op": "run", "family": target.family, "device": target.device, "case": case.to_dict(),
                          "inputs": inputs}, timeout)
    if out.status != "ok":
        return None, []
    obs = out.reply["observation"]
    _, d = judge_execution(case, inputs, obs, target.conventions, target.family)
    return (d.signature, d.deviating) if d else (None, [])


def shrink(case: Case, signature: str, target: Target, worker: WorkerHandle, timeout: float, budget: int = 30,
           deadline: float | None = None, cancel: threading.Event | None = None) -> ShrinkResult:
    """The smallest variant of `case` found within `budget` executions (and before time.monotonic() passes `deadline`,
    or `cancel` is set) whose diagnosis keeps `signature`."""
    import time

    current, attempts, reduced, deviating = case, 0, False, []
    progress = True
    while progress and attempts < budget:
        progress = False
        for change in reductions(current):
            if attempts >= budget or (deadline is not None and time.monotonic() > deadline) or (
                    cancel is not None and cancel.is_set()):
                break
            try:
                candidate = current.replace(**change)
            except CaseError:
                continue
            if _size(candidate) >= _size(current):
                continue
            attempts += 1
            sig, keys = _signature(candidate, target, worker, timeout)
            if sig == signature:
                current, reduced, progress, deviating = candidate, True, True, keys
                break
    return ShrinkResult(current, attempts, reduced, deviating)


def shrink_findings(doc: dict[str, Any], targets: dict[str, Target], workers: dict[str, WorkerHandle],
                    timeout: float, budget: int = 12, limit: int = 50, seconds: float = 90.0,
                    cancel: threading.Event | None = None) -> int:
    """Shrink the smallest case of up to `limit` findings in a results document, in place; returns how many shrank.

    Suspected bugs first (the order of the findings list); after `seconds`, or once `cancel` is set, no new
    execution starts.
    """
    import time

    from .cases import case_from_dict

    shrunk = 0
    stop = time.monotonic() + seconds
    for f in doc["findings"][:limit]:
        if time.monotonic() > stop or (cancel is not None and cancel.is_set()):
            f["shrink"] = {"attempts": 0, "reduced": False, "from_case": f["minimal_case"],
                           "skipped": "time limit" if time.monotonic() > stop else "interrupted"}
            continue
        target = targets.get(f["target"])
        worker = workers.get(target.framework) if target else None
        f["shrink"] = {"attempts": 0, "reduced": False, "from_case": f["minimal_case"]}
        if target is None or worker is None:
            f["shrink"]["skipped"] = "its target is not running now"
            continue
        if f.get("classification") == "precision-outlier":  # judged against the peers: one target cannot re-judge it
            f["shrink"]["skipped"] = "a precision outlier is judged against its peers, which shrinking does not re-run"
            continue
        case_d = {k: v for k, v in doc["cases"][f["minimal_case"]].items() if k not in ("description", "metrics")}
        start = case_from_dict(case_d)
        if "data" in start.regime:  # explicit data cannot be resized
            f["shrink"]["skipped"] = "a data-backed case is not resized"
            continue
        result = shrink(start, f["signature"], target, worker, timeout, budget, deadline=stop, cancel=cancel)
        f["shrink"].update(attempts=result.attempts, reduced=result.reduced, deviating=result.deviating)
        if result.reduced:
            cid = result.case.case_id
            doc["cases"].setdefault(cid, {**result.case.to_dict(), "meta": {**result.case.meta, "shrunk_from": start.case_id},
                                          "description": result.case.describe(), "metrics": {}})
            f["minimal_case"] = cid
            shrunk += 1
    return shrunk
