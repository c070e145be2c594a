"""Shrink a finding's case while the finding holds: fewer samples, channels, pixels, steps, features.

Greedy, in the style of Hypothesis: try each reduction of the current case, re-run the target in its
worker, re-diagnose, and keep the first reduction whose diagnosis has the same signature and the same
profile (`FindingProfile`: the mode of the first deviating phase, whether the case trains, the statistics
it normalises with, layout, rank and dtypes), so that a training finding stays a training case; repeat until
no reduction keeps it or the budget of executions is spent. A data-backed case (regime.data) is shrunk by
subsetting its arrays (channels, samples, pixels, steps); the subset is written as a new data file beside the
finding's case file.

A finding that is not shrunk says why in its shrink record, as a typed reason (`NOT_SHRUNK`).
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from .cases import Case, CaseError
from .files import write_atomic
from .inputs import Inputs, add_verified_data_file, make_inputs
from .judging import judge_execution
from .pool import WorkerHandle
from .targets.base import Target

# why a finding was not shrunk: the typed reason (results.json: shrink.not_shrunk) and the sentence that explains it
NOT_SHRUNK: dict[str, str] = {
    "finding-cap": "only the first {limit} findings of a run are shrunk",
    "time-limit": "the run's shrinking time (--shrink-time) was spent before this finding's turn",
    "interrupted": "the run was interrupted while shrinking",
    "shrink-off": "shrinking is off (--shrink 0)",
    "run-incomplete": "the run is incomplete (complete it with bncheck run --resume)",
    "target-unavailable": "its target is not running now",
    "precision-outlier": "a precision outlier is judged against its peers, which shrinking does not re-run",
    "no-data-folder": "a data-backed case is shrunk into a new data file, and this run has no folder to write it in",
    "failed": "shrinking failed",
}
# why an attempted search ended (results.json: shrink.stopped)
STOPPED = ("no-smaller-case", "budget", "time-limit", "interrupted")
DATA_FILE = "shrunk-{digest}.npz"  # a shrunk data-backed case's arrays, beside the finding's case file


def not_shrunk(reason: str, from_case: str, **details: Any) -> dict[str, Any]:
    """The shrink record of a finding that was not shrunk: typed reason, its sentence, no attempt."""
    return {"attempts": 0, "reduced": False, "from_case": from_case, "outcome": "not-shrunk", "not_shrunk": reason,
            "skipped": NOT_SHRUNK[reason].format(**details) + (f": {details['error']}" if "error" in details else "")}


@dataclass(frozen=True)
class FindingProfile:
    """What a minimal case keeps of its finding besides the signature: the mode of the first deviating phase, whether
    the case trains at all, whether it tracks running statistics (which statistics eval normalises with), its
    layout and rank (which kernel path runs) and its input and parameter dtypes."""

    mode: str  # 'train' or 'eval': the phase of the first deviating quantity (Diagnosis.mode)
    trains: bool
    track_running_stats: bool
    layout: str
    rank: int
    dtype: str
    param_dtype: str

    def differences(self, other: "FindingProfile") -> list[str]:
        """The fields where `other` differs from this profile."""
        a, b = asdict(self), asdict(other)
        return [k for k in a if a[k] != b[k]]


def finding_profile(case: Mapping[str, Any] | Case, mode: str) -> FindingProfile:
    """The profile of a finding whose first deviation is in `mode` ('train' or 'eval') on `case` (a Case or its
    canonical dictionary)."""
    d = case.to_dict() if isinstance(case, Case) else case
    return FindingProfile(mode=mode, trains=d["mode"] != "eval", track_running_stats=bool(d["track_running_stats"]),
                          layout=d["layout"], rank=len(d["shape"]), dtype=d["dtype"], param_dtype=d["param_dtype"])


@dataclass
class ShrinkResult:
    """The smallest case found, how many executions it took, whether it is smaller, and why the search ended."""

    case: Case
    attempts: int
    reduced: bool
    deviating: list[str]
    checked: list[str]  # every quantity judged on the smallest case (the reproduction script shows them)
    stopped: str  # one of STOPPED
    data: bytes | None = None  # the smallest case's data file, for a data-backed case that was reduced


def _size(case: Case) -> int:
    n = 1
    for s in case.shape:
        n *= s
    return n * (case.steps + 1) * (2 if case.grad else 1)


def _halvings(n: int) -> list[int]:
    """Smaller sizes to try for a dimension of size n, smallest first."""
    return [m for m in sorted({1, max(1, n // 2), n - 1}) if m < n]


def reductions(case: Case) -> Iterator[dict[str, Any]]:
    """Candidate smaller variants of `case` that keep its profile (mode, layout, rank, dtypes), largest first."""
    shape = list(case.shape)
    if case.mode == "trajectory" and case.steps > 1:
        yield {"steps": 1}
        yield {"steps": case.steps - 1}
    if case.grad:
        yield {"grad": False}
    for i in [0, 1, *range(2, len(shape))]:
        for new in _halvings(shape[i]):
            yield {"shape": shape[:i] + [new] + shape[i + 1:]}
    if case.affine:
        yield {"affine": False}
    if case.mode == "trajectory":
        yield {"mode": "train", "steps": 1}


# ---- data-backed cases: subsets of the arrays ----------------------------------------------------
def _take(case: Case, inputs: Inputs, axis: int, index: list[int]) -> Inputs:
    """The inputs with logical axis `axis` (0: samples, 1: channels, 2+: spatial) cut down to `index`."""
    out: Inputs = {}
    for k, a in inputs.items():
        if "." not in k:  # gamma, beta, running statistics: (C,)
            out[k] = a[index] if axis == 1 else a
            continue
        physical = axis if case.layout == "channels_first" or axis == 0 else (
            a.ndim - 1 if axis == 1 else axis - 1)
        out[k] = np.ascontiguousarray(np.take(a, index, axis=physical))
    return out


def data_reductions(case: Case, inputs: Inputs, channel: int = 0) -> Iterator[tuple[Case, Inputs, int]]:
    """Smaller variants of a data-backed case, each with the subset of its arrays and where `channel` (the worst one
    of the first deviating quantity, which every channel subset keeps) lies in it; largest reductions first."""
    shape = list(case.shape)
    channel = min(channel, case.channels - 1)

    def variant(arrays: Inputs, moved: int, **changes: Any) -> tuple[Case, Inputs, int] | None:
        raw = _npz(arrays)
        digest = hashlib.sha256(raw).hexdigest()
        regime = {"name": case.regime_name, "data": {"file": DATA_FILE.format(digest=digest[:16]), "sha256": digest}}
        try:
            return case.replace(regime=regime, **changes), arrays, moved
        except CaseError:
            return None

    candidates: list[tuple[Inputs, dict[str, Any]]] = []
    channel_subsets: dict[int, int] = {}  # candidate number -> where the kept channel lies in its subset
    if case.mode == "trajectory" and case.steps > 1:
        for steps in (1, case.steps - 1):
            drop = {f"train{i}" for i in range(steps, case.steps)}
            candidates.append(({k: v for k, v in inputs.items() if k.split(".")[0] not in drop}, {"steps": steps}))
    if case.grad:
        candidates.append(({k: v for k, v in inputs.items() if not k.endswith(".dy")}, {"grad": False}))
    for axis in [0, 1, *range(2, len(shape))]:
        n = shape[axis]
        if axis == 1:
            subsets = [[channel]] + [list(range(m)) if channel < m else [*range(m - 1), channel] for m in _halvings(n)[1:]]
        else:
            subsets = [list(range(m)) for m in _halvings(n)]
        for index in subsets:
            if len(index) < n:
                if axis == 1:
                    channel_subsets[len(candidates)] = index.index(channel)
                candidates.append((_take(case, inputs, axis, index), {"shape": shape[:axis] + [len(index)] + shape[axis + 1:]}))
    if case.affine:
        candidates.append(({k: v for k, v in inputs.items() if k not in ("gamma", "beta")}, {"affine": False}))
    if case.mode == "trajectory":
        candidates.append(({k: v for k, v in inputs.items() if k.split(".")[0] not in
                            {"eval", *(f"train{i}" for i in range(1, case.steps))}}, {"mode": "train", "steps": 1}))
    for i, (arrays, changes) in enumerate(candidates):
        v = variant(arrays, channel_subsets.get(i, channel), **changes)
        if v is not None:
            yield v


def _npz(arrays: Inputs) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in sorted(arrays.items())})
    return buf.getvalue()


# ---- the search ------------------------------------------------------------------------------------
def _judge(case: Case, inputs: Inputs, target: Target, worker: WorkerHandle, timeout: float
           ) -> tuple[str | None, str | None, list[str], list[str]]:
    """Run `case` on `target`: (signature, mode of the first deviation, deviating keys, judged keys); (None, None, [],
    []) when it passes or did not run."""
    if target.supports(case):
        return None, None, [], []
    out = worker.request({"op": "run", "family": target.family, "device": target.device, "case": case.to_dict(),
                          "inputs": inputs}, timeout)
    if out.status != "ok":
        return None, None, [], []
    verdicts, d = judge_execution(case, inputs, out.reply["observation"], target.conventions, target.family)
    if d is None:
        return None, None, [], []
    return d.signature, d.mode, d.deviating, [v.key for v in verdicts]


def shrink(case: Case, signature: str, target: Target, worker: WorkerHandle, timeout: float, budget: int = 30,
           deadline: float | None = None, cancel: threading.Event | None = None, mode: str | None = None,
           inputs: Inputs | None = None, channel: int = 0) -> ShrinkResult:
    """The smallest variant of `case` found within `budget` executions (and before time.monotonic() passes `deadline`,
    or `cancel` is set) whose diagnosis keeps `signature` and whose profile is the finding's: the first deviation
    in `mode` (default: the case's own first phase kind), the same training, statistics, layout, rank and dtypes.

    A data-backed case is reduced by subsets of `inputs` (default: its data file's arrays), keeping `channel`."""
    import time

    mode = mode or ("eval" if case.mode == "eval" else "train")
    want = finding_profile(case, mode)
    data = "data" in case.regime
    current, current_inputs = case, (inputs if inputs is not None else make_inputs(case)) if data else None
    attempts, reduced, deviating, checked, stopped = 0, False, [], [], "no-smaller-case"
    progress = True
    while progress:
        progress = False
        if data:
            assert current_inputs is not None
            candidates: Iterator[tuple[Case, Inputs | None, int]] = data_reductions(current, current_inputs, channel)
        else:
            candidates = ((c, None, channel) for c in _valid(current))
        for candidate, arrays, moved in candidates:
            if attempts >= budget:
                stopped = "budget"
                break
            if deadline is not None and time.monotonic() > deadline:
                stopped = "time-limit"
                break
            if cancel is not None and cancel.is_set():
                stopped = "interrupted"
                break
            if _size(candidate) >= _size(current) or finding_profile(candidate, mode) != want:
                continue
            attempts += 1
            sig, got_mode, keys, judged = _judge(candidate, arrays if arrays is not None else make_inputs(candidate),
                                                 target, worker, timeout)
            if sig == signature and got_mode == mode:
                current, current_inputs, reduced, progress, deviating, checked = candidate, arrays, True, True, keys, judged
                channel = moved
                break
    return ShrinkResult(current, attempts, reduced, deviating, checked, stopped,
                        _npz(current_inputs) if data and reduced and current_inputs is not None else None)


def _valid(case: Case) -> Iterator[Case]:
    """The reductions of a generated case that make valid cases."""
    for change in reductions(case):
        try:
            yield case.replace(**change)
        except CaseError:
            continue


def _worst_channel(doc: Mapping[str, Any], case_id: str, target: str) -> int:
    """The channel of largest error / bound of the first deviating quantity of an execution in the document (0 when
    it is not there)."""
    for e in doc.get("executions", []):
        if e["case_id"] == case_id and e["target"] == target and e["deviations"]:
            ratios = e["deviations"][0].get("channel_ratios") or []
            values = [float("inf") if r in ("inf", "nan") else float(r) for r in ratios]
            return int(np.argmax(values)) if values else 0
    return 0


def _data_dir_of(data_dir: Path, signature: str) -> Path:
    """Where a finding's shrunk data file goes: beside its case file (report/results.py's finding_case_file)."""
    return data_dir / re.sub(r"[^A-Za-z0-9_.-]", "_", str(signature))


def shrink_findings(doc: dict[str, Any], targets: dict[str, Target], workers: dict[str, WorkerHandle],
                    timeout: float, budget: int = 12, limit: int = 50, seconds: float = 90.0,
                    cancel: threading.Event | None = None, data_dir: Path | None = None) -> int:
    """Shrink the smallest case of up to `limit` findings in a results document, in place; returns how many shrank.

    Suspected bugs first (the order of the findings list); after `seconds`, or once `cancel` is set, no new
    execution starts. A reduced data-backed case's data file is written under `data_dir`/<signature>/ (the
    findings folder, beside the case file), and registered so that its inputs load in this process.
    """
    import time

    from .cases import case_from_dict

    shrunk = 0
    stop = time.monotonic() + seconds
    for f in doc["findings"][:limit]:
        start_id = f["minimal_case"]
        if time.monotonic() > stop or (cancel is not None and cancel.is_set()):
            f["shrink"] = not_shrunk("time-limit" if time.monotonic() > stop else "interrupted", start_id)
            continue
        target = targets.get(f["target"])
        worker = workers.get(target.framework) if target else None
        if target is None or worker is None:
            f["shrink"] = not_shrunk("target-unavailable", start_id)
            continue
        if f.get("classification") == "precision-outlier":  # judged against the peers: one target cannot re-judge it
            f["shrink"] = not_shrunk("precision-outlier", start_id)
            continue
        case_d = {k: v for k, v in doc["cases"][start_id].items() if k not in ("description", "metrics")}
        start = case_from_dict(case_d)
        if "data" in start.regime and data_dir is None:
            f["shrink"] = not_shrunk("no-data-folder", start_id)
            continue
        result = shrink(start, f["signature"], target, worker, timeout, budget, deadline=stop, cancel=cancel,
                        mode=f.get("mode"), channel=_worst_channel(doc, start_id, f["target"]))
        f["shrink"] = {"attempts": result.attempts, "reduced": result.reduced, "from_case": start_id,
                       "outcome": "reduced" if result.reduced else "minimal", "stopped": result.stopped,
                       "deviating": result.deviating, "checked": result.checked}
        if result.reduced:
            cid = result.case.case_id
            if result.data is not None and data_dir is not None:
                spec = result.case.regime["data"]
                path = _data_dir_of(data_dir, f["signature"]) / spec["file"]
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, result.data)
                add_verified_data_file(spec["sha256"], path.resolve())
            doc["cases"].setdefault(cid, {**result.case.to_dict(), "meta": {**result.case.meta, "shrunk_from": start.case_id},
                                          "description": result.case.describe(), "metrics": {}})
            f["minimal_case"] = cid
            shrunk += 1
    return shrunk
