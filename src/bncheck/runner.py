"""Plan and execute a run: discover targets through worker probes, execute cases, compare, store.

Execution: a feeder thread walks the cases once and builds each case's inputs (once); one lane thread per
worker sends it (case, target) requests in case order; the main thread judges every outcome, computing a
case's reference when its first outcome arrives (once: every target shares it), and records it. Computing
the reference in the feeder, ahead of the outcomes, was measured to cost the parent about 15 % more CPU on
a single fast target and to gain nothing on the default audit: the threads share one interpreter lock.

The main thread commits as soon as no further outcome is waiting (so results are committed as they
arrive), and otherwise every COMMIT_EVERY executions or COMMIT_SECONDS. An execution is reported to
`on_result` only once committed, so a killed run has lost nothing it reported, and `--resume` redoes the
rest. A window bounds the cases in flight (count and bytes of inputs), so the parent's memory does not grow
with the number of cases. A target whose worker crashes or hangs BROKEN_AFTER times in a row is marked
broken: its remaining cases are recorded as not run.
"""

from __future__ import annotations

import importlib.metadata
import math
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import refusals
from . import targets as registry
from .cases import Case
from .compare import missing_quantities
from .inputs import inputs_digest, make_inputs
from .judging import Expected, expected_values, judge_execution
from .manifest import base_manifest
from .pool import Outcome, WorkerHandle, memory_limit_bytes, stop_all
from .store import Store
from .targets.base import Target

if TYPE_CHECKING:
    from .judges import JudgeChannel, JudgePool

PROBE_TIMEOUT = 180.0
DEVICE_KINDS = ("cpu", "cuda")
BROKEN_AFTER = 3  # consecutive crashes or timeouts of one target before it is marked broken
TARGETS_PER_WORKER = 3  # a framework with more targets than this gets more workers (the four JAX paths get two)
WINDOW_CASES = 32  # cases in flight at most ...
WINDOW_BYTES = 256 << 20  # ... and bytes of their inputs (one case is always admitted)
COMMIT_EVERY = 64  # judged executions per commit at most, when results arrive faster than they are judged ...
COMMIT_SECONDS = 0.25  # ... or seconds between commits; with no result waiting, each one is committed at once
DEFAULT_MEMORY_LIMIT = -1  # sentinel for `discover`: the default per-worker cap of pool.default_memory_limit()


class PlanError(Exception):
    """The requested targets cannot be run; `status` is the CLI exit status (2 usage, 3 infrastructure)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Discovery:
    """Every target considered, the runnable ones, and the live workers that run them."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    runnable: list[Target] = field(default_factory=list)
    workers: dict[str, WorkerHandle] = field(default_factory=dict)
    frameworks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def close(self) -> None:
        """Stop every worker."""
        stop_all(list(self.workers.values()))
        self.workers.clear()


def _family_matches(family: str, pattern: str | None) -> bool:
    names = [f"{family}@{d}" for d in DEVICE_KINDS]
    return bool(registry.match_targets(names, pattern))


def discover(pattern: str | None = None, plugins: list[str] | None = None, keep_workers: bool = True,
             memory_limit: int | None = DEFAULT_MEMORY_LIMIT,
             new_worker: Callable[[str, list[str], dict[str, str], int | None], WorkerHandle] | None = None,
             framework_status: Callable[[Any], tuple[bool, str, str]] | None = None) -> Discovery:
    """Probe every framework that has a family matching `pattern` in its own worker; the parent imports none."""
    # memory_limit caps each worker's memory in bytes (None: no cap; the default: pool.default_memory_limit());
    # every worker is started before any is probed, so that the frameworks import in parallel. `new_worker` makes
    # a worker handle (default: a local WorkerHandle; the Ray executor's is an actor) and `framework_status`
    # says whether a framework is installed where its workers run (default: here, registry.framework_status)
    new_worker = new_worker or WorkerHandle
    status_of = framework_status or registry.framework_status
    if memory_limit == DEFAULT_MEMORY_LIMIT:
        memory_limit = memory_limit_bytes(None)
    plugins = plugins or []
    d = Discovery()
    fams = []
    for name in registry.family_names():
        if not _family_matches(name, pattern):
            continue
        try:
            fams.append(registry.family_class(name))
        except registry.RegistryError as e:
            d.rows.append({"name": f"{name}@cpu", "family": name, "framework": "?", "device": "cpu", "available": False,
                           "version": "", "reason": str(e), "info": {"description": "", "conventions": {}}})
    started: dict[str, WorkerHandle] = {}
    for fw_name in sorted({c.framework for c in fams}):  # start every worker, then probe them all at once
        fw = registry.frameworks().get(fw_name)
        if fw is not None and status_of(fw)[0]:
            started[fw_name] = w = new_worker(fw_name, plugins, dict(fw.env), memory_limit)
            w.start()
    probes = _probe_all(started)
    for fw_name in sorted({c.framework for c in fams}):
        fw = registry.frameworks().get(fw_name)
        members = [c for c in fams if c.framework == fw_name]
        if fw is None:
            for c in members:
                d.rows.append(_row(c(), False, "", f"framework {fw_name!r} is not registered"))
            continue
        installed, version, reason = status_of(fw)
        info: dict[str, Any] = {"installed": installed, "version": version, "reason": reason}
        if installed:
            w, out = started[fw_name], probes[fw_name]
            if out.status == "ok":
                probe = out.reply["probe"]
                info.update(version=probe.get("version", version), devices=probe.get("devices", ["cpu"]),
                            details=probe.get("details", {}))
            else:
                installed = False
                tail = (out.stderr_tail or "").strip().splitlines()
                info["reason"] = reason = f"import failed in the worker: {out.message or (tail[-1] if tail else out.status)}"
            if installed and keep_workers:
                d.workers[fw_name] = w
            else:
                w.stop()
        d.frameworks[fw_name] = info
        for c in members:
            if not installed:
                d.rows.append(_row(c(), False, version, reason))
                continue
            devices = [dev for dev in info["devices"] if c.devices is None or dev.split(":")[0] in c.devices]
            if not devices:
                t = c(c.devices[0] if c.devices else "cpu")
                if registry.match_targets([t.name], pattern):
                    d.rows.append(_row(t, False, info["version"], f"runs on {', '.join(c.devices or ())} only; "
                                       f"{fw_name} sees {', '.join(info['devices'])}"))
            for dev in devices:
                t = c(dev)
                if not registry.match_targets([t.name], pattern):
                    continue
                d.rows.append(_row(t, True, target_version(c, info), ""))
                d.runnable.append(t)
    return d


def target_version(cls: type[Target], info: dict[str, Any]) -> str:
    """The version a target reports: its own package's (flax for the flax targets, keras for the Keras ones, from the
    probe's details or the package metadata), else its framework's."""
    if cls.package:
        found = (info.get("details") or {}).get(cls.package)
        if isinstance(found, str) and found:
            return found
        try:
            return importlib.metadata.version(cls.package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return str(info.get("version", ""))


def _probe_all(workers: dict[str, WorkerHandle]) -> dict[str, Outcome]:
    """Send every worker its probe at once, one thread each; the outcome per worker name.

    A probe imports the framework: one after another, the imports took the sum of their times (15 s for the six
    worker groups on 2 cores); at once, they share both cores.
    """
    outcomes: dict[str, Outcome] = {}

    def probe(name: str, w: WorkerHandle) -> None:
        """One worker's probe."""
        try:
            outcomes[name] = w.request({"op": "probe"}, timeout=PROBE_TIMEOUT)
        except Exception as e:  # the worker could not even be (re)started
            outcomes[name] = Outcome("crash", {}, f"worker unavailable: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=probe, args=item, daemon=True, name=f"bncheck-probe-{item[0]}")
               for item in workers.items()]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return outcomes


def _row(t: Target, available: bool, version: str, reason: str) -> dict[str, Any]:
    return {"name": t.name, "family": t.family, "framework": t.framework, "device": t.device,
            "available": available, "version": version, "reason": reason, "info": t.info()}


def check_plan(d: Discovery, pattern: str | None) -> None:
    """Raise PlanError when the pattern names no known target or nothing it names can run."""
    if not d.rows:
        known = ", ".join(sorted(c.family for c in registry.families()))
        raise PlanError(f"no target matches {pattern!r} (known families: {known}); see 'bncheck backends'", 2)
    if not d.runnable:
        reasons = sorted({r["reason"] for r in d.rows if r["reason"]})
        raise PlanError("no requested target is available: " + "; ".join(reasons), 3)


# ---- execution ----------------------------------------------------------------------------------
@dataclass
class Result:
    """One finished (case, target) execution as it is reported to callers."""

    case: Case
    target: Target
    status: str
    message: str
    verdicts: list[dict[str, Any]]


class _CaseState:
    """A case in flight: its inputs, lazily computed references and bounds, and results still owed."""

    def __init__(self, case: Case, inputs: dict[str, np.ndarray], owed: int, case_id: str | None = None) -> None:
        self.case, self.inputs, self.owed = case, inputs, owed
        self.case_id = case_id or case.case_id
        self.digest = inputs_digest(inputs) if inputs else ""
        self.nbytes = sum(a.nbytes for a in inputs.values()) if inputs else 0
        self.metrics_stored = False
        self._expected: Expected | None = None
        self._error: BaseException | None = None

    def expected(self) -> Expected:
        """References and bounds under each running-variance convention (computed once, when first asked for, by
        the main thread that judges; a failure is raised again for every target)."""
        if self._error is not None:
            raise self._error
        if self._expected is None:
            try:
                self._expected = expected_values(self.case, self.inputs)
            except Exception as e:
                self._error = e
                raise
        return self._expected


_device_locks: dict[str, threading.Lock] = {}
_device_locks_guard = threading.Lock()


def _device_lock(device: str) -> threading.Lock | None:
    """One lock per accelerator (None for the CPU): GPU work of different frameworks is serialised per device."""
    if device.split(":")[0] == "cpu":
        return None
    with _device_locks_guard:
        return _device_locks.setdefault(device, threading.Lock())


def judge_outcome(state: _CaseState, target: Target, out: Outcome) -> tuple[str, str, list[dict[str, Any]]]:
    """Status, message and verdict dictionaries for one outcome (an error the target's record documents: refused)."""
    if out.status != "ok":
        status, message = refusals.classify(state.case, target.conventions, out.status, out.message)
        return status, message, []
    obs = out.reply.get("observation", {})
    expected = state.expected()
    verdicts, diagnosis = judge_execution(state.case, state.inputs, obs, target.conventions, target.family, expected)
    rows = []
    for v in verdicts:
        d = v.to_dict()
        d["ratio_value"] = v.ratio
        if diagnosis is not None and v.key == diagnosis.first:
            d["diagnosis"] = diagnosis.to_dict()  # carried by the first deviating verdict
        rows.append(d)
    message = ""
    missing = missing_quantities(obs, expected.references[target.conventions.running_var], target.conventions)
    if missing:
        message = "not observed: " + ", ".join(missing)
    status, message = refusals.classify(state.case, target.conventions, "ok", message)
    return status, message, rows


def broken_message(n: int) -> str:
    """The message recorded for the cases a broken target does not run."""
    return f"target marked broken after {n} consecutive crashes/timeouts; not run"


class _Window:
    """Admission of cases into flight: at most `items` cases and `nbytes` bytes of inputs (one case always fits)."""

    def __init__(self, items: int, nbytes: int) -> None:
        self.max_items, self.max_bytes = items, nbytes
        self.items = self.bytes = 0
        self.cond = threading.Condition()

    def acquire(self, nbytes: int) -> None:
        """Wait until a case of `nbytes` fits."""
        with self.cond:
            while self.items and (self.items >= self.max_items or self.bytes + nbytes > self.max_bytes):
                self.cond.wait()
            self.items += 1
            self.bytes += nbytes

    def release(self, nbytes: int) -> None:
        """A case left flight."""
        with self.cond:
            self.items -= 1
            self.bytes -= nbytes
            self.cond.notify_all()


@dataclass
class _Lane:
    """One worker and the targets it runs; `fresh` workers are started (and warmed) by the lane itself."""

    worker: WorkerHandle
    targets: list[Target]
    fresh: bool = False
    inbox: "queue.Queue[Any]" = field(default_factory=lambda: queue.Queue())
    device_locks: bool = True  # serialise GPU work per device name (a Ray lane's GPU is its own: no lock)


def plan_lanes(runnable: list[Target], workers: dict[str, WorkerHandle],
               per_worker: int = TARGETS_PER_WORKER) -> list[_Lane]:
    """Targets grouped per framework, split over ceil(n / per_worker) workers; the first is the probed worker."""
    by_fw: dict[str, list[Target]] = {}
    for t in runnable:
        by_fw.setdefault(t.framework, []).append(t)
    lanes = []
    for fw, ts in by_fw.items():
        k = max(1, math.ceil(len(ts) / max(1, per_worker)))
        for i in range(k):
            primary = workers[fw]
            lanes.append(_Lane(primary if i == 0 else primary.clone(), ts[i::k], fresh=i > 0))
    return lanes


def _warm(worker: WorkerHandle) -> None:
    """Import the framework in a (re)started worker before it is timed on a case."""
    worker.request({"op": "warm"}, PROBE_TIMEOUT)


def _lane(lane: _Lane, timeout: float, outbox: "queue.Queue[Any]", broken: dict[str, str],
          consecutive: dict[str, int], broken_after: int) -> None:
    """Run this lane's targets on each case that arrives, in order; every (case, target) yields one outcome."""
    worker = lane.worker
    warm_gen = worker.generation
    if lane.fresh:
        try:
            worker.start()
            _warm(worker)
        except Exception:  # the first request restarts it, or records why it cannot
            pass
        warm_gen = worker.generation
    while True:
        item = lane.inbox.get()
        if item is None:
            return
        idx, key, case, inputs, targets = item
        sent_gen = -1  # the worker generation that holds this case's inputs
        case_dict = case.to_dict()
        for t in targets:
            if t.name in broken:
                outbox.put(("result", idx, t, Outcome("crash", {}, broken[t.name])))
                continue
            try:
                if not worker.alive() or worker.generation != warm_gen:
                    _warm(worker)
                    warm_gen = worker.generation
                msg: dict[str, Any] = {"op": "run", "family": t.family, "device": t.device, "case": case_dict, "key": key}
                if sent_gen != worker.generation:
                    msg["inputs"] = inputs
                lock = _device_lock(t.device) if lane.device_locks else None
                if lock is None:
                    out = worker.request(msg, timeout)
                else:
                    with lock:
                        out = worker.request(msg, timeout)
                if out.status == "resend":  # the worker lost the case's inputs: send them
                    msg["inputs"] = inputs
                    out = worker.request(msg, timeout)
                if out.status not in ("crash", "timeout") and not out.reply.get("retire"):
                    sent_gen = worker.generation
            except Exception as e:  # the worker could not even be restarted
                out = Outcome("crash", {}, f"worker unavailable: {type(e).__name__}: {e}", traceback.format_exc()[-4000:])
            if out.status in ("crash", "timeout"):
                consecutive[t.name] = consecutive.get(t.name, 0) + 1
                if consecutive[t.name] >= broken_after:
                    broken[t.name] = broken_message(consecutive[t.name])
                    outbox.put(("broken", t, broken[t.name]))
            else:
                consecutive[t.name] = 0
            outbox.put(("result", idx, t, out))


def pending_pairs(cases: list[Case], runnable: list[Target], done: set[tuple[str, str]] | None = None) -> int:
    """How many (case, target) executions a run still owes."""
    done = done or set()
    names = [t.name for t in runnable]
    return sum(1 for c in cases for n in names if (c.case_id, n) not in done)


def resume_state(store: Store, run_id: str) -> tuple[set[tuple[str, str]], dict[str, str], dict[str, int]]:
    """What a resumed run starts from: the stored (case, target) pairs, broken targets, and each target's trailing run of crashes."""
    done: set[tuple[str, str]] = set()
    consecutive: dict[str, int] = {}
    for case_id, target, status in store.execution_statuses(run_id):  # in case order
        done.add((case_id, target))
        if status in ("crash", "timeout"):
            consecutive[target] = consecutive.get(target, 0) + 1
        elif status != "unsupported":  # a refusal, like an error, is an answer of a live worker
            consecutive[target] = 0
    return done, store.broken_targets(run_id), consecutive


def execute(
    store: Store, run_id: str, cases: list[Case], discovery: Discovery, timeout: float,
    on_result: Callable[[Result], None] | None = None, done: set[tuple[str, str]] | None = None,
    broken: dict[str, str] | None = None, consecutive: dict[str, int] | None = None,
    broken_after: int = BROKEN_AFTER, per_worker: int = TARGETS_PER_WORKER,
    on_outcome: Callable[[str, Target, Outcome], None] | None = None,
    judges: "list[JudgeChannel] | None" = None,
    lanes: "list[_Lane] | None" = None,
) -> int:
    """Execute every case on every runnable target (but the pairs in `done`), frameworks in parallel; returns how many ran."""
    # each result is committed as it is judged; `broken` and `consecutive` carry a resumed run's broken targets
    # and trailing crash counts; a target newly marked broken is recorded with store.add_event; `on_outcome` sees
    # every worker outcome (case id, target, outcome) before it is judged (benchmarks/judging.py keeps them).
    # `judges`: None or [] judges in this (the main) thread; otherwise every ok outcome is judged by one of these
    # judges (not started yet; the run starts and stops them), each case pinned to one. `lanes`: the plan
    # (default: plan_lanes over discovery.workers; the Ray executor passes its own); lanes marked `fresh` are
    # started by their thread and stopped at the end.
    done = done or set()
    broken = dict(broken or {})
    consecutive = dict(consecutive or {})
    runnable = list(discovery.runnable)
    lanes = plan_lanes(runnable, discovery.workers, per_worker) if lanes is None else lanes
    lane_of = {t.name: lane for lane in lanes for t in lane.targets}
    outbox: "queue.Queue[Any]" = queue.Queue()
    window = _Window(WINDOW_CASES, WINDOW_BYTES)
    states: dict[int, _CaseState] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def feed() -> None:
        """Walk the cases: unsupported outcomes at once, inputs to the lanes."""
        total = 0
        try:
            for idx, case in enumerate(cases):
                if stop.is_set():
                    break
                key = case.case_id
                pending = [t for t in runnable if (key, t.name) not in done]
                if not pending:
                    continue
                immediate: list[tuple[Target, Outcome]] = []
                to_run: list[Target] = []
                for t in pending:
                    try:
                        reason = t.supports(case)
                    except Exception as e:
                        immediate.append((t, Outcome("error", {}, f"supports() raised {type(e).__name__}: {e}")))
                        continue
                    if reason:
                        immediate.append((t, Outcome("unsupported", {}, reason)))
                    elif t.name in broken:
                        immediate.append((t, Outcome("crash", {}, broken[t.name])))
                    else:
                        to_run.append(t)
                inputs: dict[str, np.ndarray] = {}
                if to_run:
                    try:
                        inputs = make_inputs(case)
                    except Exception as e:  # e.g. a data file that vanished since the suite was loaded
                        msg = f"inputs could not be built: {type(e).__name__}: {e}"
                        immediate += [(t, Outcome("error", {}, msg, traceback.format_exc()[-4000:])) for t in to_run]
                        to_run = []
                state = _CaseState(case, inputs, len(pending), key)
                window.acquire(state.nbytes)
                with lock:
                    states[idx] = state
                total += len(pending)
                for t, out in immediate:
                    outbox.put(("result", idx, t, out))
                for lane in lanes:
                    mine = [t for t in to_run if lane_of[t.name] is lane]
                    if mine:
                        lane.inbox.put((idx, key, case, inputs, mine))
        except BaseException as e:  # never leave the main thread waiting
            outbox.put(("fatal", e))
        finally:
            for lane in lanes:
                lane.inbox.put(None)
            outbox.put(("done", total))

    pool: "JudgePool | None" = None
    if judges:
        from .judges import JudgePool

        def case_of(idx: int) -> tuple[dict[str, Any], str, dict[str, Any]]:
            """A case in flight as its judge needs it."""
            with lock:
                st = states[idx]
            return st.case.to_dict(), st.case_id, st.inputs

        pool = JudgePool(list(judges), outbox, case_of)
    threads = [threading.Thread(target=_lane, args=(lane, timeout, outbox, broken, consecutive, broken_after),
                                daemon=True, name=f"bncheck-lane-{lane.worker.framework}") for lane in lanes]
    threads.append(threading.Thread(target=feed, daemon=True, name="bncheck-feeder"))
    if pool is not None:
        pool.start()  # the judges start while the lanes send their first cases
    for th in threads:
        th.start()
    received, total = 0, None
    uncommitted: list[Result] = []  # recorded, not yet committed (nor reported)
    last_commit = time.monotonic()
    in_judging: dict[int, tuple[int, Target, Outcome]] = {}  # seq -> (case index, target, outcome) at a judge
    seq = 0

    def commit() -> None:
        """Commit what was recorded, then report it."""
        nonlocal last_commit
        store.commit()
        last_commit = time.monotonic()
        reports = uncommitted[:]
        uncommitted.clear()
        if on_result:
            for r in reports:
                on_result(r)

    def record(idx: int, target: Target, out: Outcome, status: str, message: str, verdicts: list[dict[str, Any]],
               tail: str, metrics: dict[str, Any] | None) -> None:
        """Store one judged execution (and the case's metrics, once); release the case once nothing is owed."""
        nonlocal received
        received += 1
        with lock:
            state = states[idx]
        if metrics and not state.metrics_stored:
            state.metrics_stored = True
            store.add_case_metrics(run_id, state.case_id, metrics, commit=False)
        store.add_execution(run_id, state.case_id, target.name, status, message, tail,
                            out.reply.get("elapsed", out.elapsed), state.digest, verdicts, commit=False)
        state.owed -= 1
        if state.owed == 0:
            with lock:
                del states[idx]
            window.release(state.nbytes)
            if pool is not None:
                pool.drop(idx)
        uncommitted.append(Result(state.case, target, status, message, verdicts))

    ok = False
    try:
        while total is None or received < total:
            kind, *rest = outbox.get()
            if kind == "fatal":
                raise rest[0]
            if kind == "done":
                total = rest[0]
                continue
            if kind == "broken":
                target, reason = rest
                store.add_event(run_id, "broken", target.name, reason)
                continue
            if kind == "judged":
                for n, status, message, verdicts, metrics, judge_tail in rest[0]:
                    idx, target, out = in_judging.pop(n)
                    record(idx, target, out, status, message, verdicts,
                           out.stderr_tail if judge_tail is None else judge_tail, metrics)
            else:
                idx, target, out = rest
                with lock:
                    state = states[idx]
                if on_outcome is not None:
                    on_outcome(state.case_id, target, out)
                if pool is not None and out.status == "ok":  # judged elsewhere: recorded when the reply comes
                    seq += 1
                    in_judging[seq] = (idx, target, out)
                    pool.submit((seq, idx, target.family, target.device, out.status, out.message,
                                 out.reply.get("observation", {})))
                    continue
                tail = out.stderr_tail
                try:
                    status, message, verdicts = judge_outcome(state, target, out)
                except Exception as e:  # a fault in bncheck's own judging is recorded, not fatal to the run
                    status, message, verdicts = "error", f"bncheck could not judge this observation: {type(e).__name__}: {e}", []
                    tail = traceback.format_exc()[-4000:]
                metrics = None
                if out.status == "ok" and not state.metrics_stored and state._expected is not None:  # once, when first judged
                    metrics = {conv: ref.metrics for conv, ref in state._expected.references.items() if ref.metrics}
                record(idx, target, out, status, message, verdicts, tail, metrics)
            if outbox.empty() or len(uncommitted) >= COMMIT_EVERY or time.monotonic() - last_commit >= COMMIT_SECONDS:
                commit()
        ok = True
    finally:
        if ok:
            commit()
        else:  # interrupted: an execution may be half-recorded; what was not committed is redone by --resume
            store.db.rollback()
        stop.set()
        with window.cond:  # unblock a feeder waiting for room
            window.max_items = window.max_bytes = 1 << 62
            window.cond.notify_all()
        if pool is not None:
            pool.close()
        stop_all([lane.worker for lane in lanes if lane.fresh])
    for th in threads:
        th.join(timeout=30)
    return received


def shrink_in_parallel(doc: dict[str, Any], discovery: Discovery, timeout: float, budget: int, limit: int = 50,
                       seconds: float = 90.0, cancel: threading.Event | None = None, data_dir: Path | None = None,
                       lanes: list[_Lane] | None = None) -> None:
    """shrink.shrink_findings on the first `limit` findings, one thread per lane, so that frameworks shrink at the same time."""
    # the lanes are those of plan_lanes (or `lanes`, the Ray executor's); each keeps shrink_findings' time limit of
    # `seconds`; once `cancel` is set, no lane starts another execution
    from .shrink import not_shrunk, shrink_findings

    top = doc["findings"][:limit]
    by_name = {t.name: t for t in discovery.runnable}
    lanes = plan_lanes(discovery.runnable, discovery.workers) if lanes is None else lanes
    jobs = []
    for lane in lanes:
        names = {t.name for t in lane.targets}
        mine = [f for f in top if f["target"] in names]
        if mine:
            jobs.append((lane, mine))
    laned = {t.name for lane in lanes for t in lane.targets}
    for f in top:  # a finding of a target that no lane runs now is not shrunk for that reason (not the cap)
        if f["target"] not in laned:
            f["shrink"] = not_shrunk("target-unavailable", f["minimal_case"])

    def work(lane: _Lane, findings: list[dict[str, Any]]) -> None:
        """Shrink one lane's findings with its worker."""
        try:
            if lane.fresh:
                lane.worker.start()
                _warm(lane.worker)
            # the findings are shrunk in place; the executions give the worst channel of a data-backed case
            part = {"findings": findings, "cases": doc["cases"], "executions": doc.get("executions", [])}
            shrink_findings(part, by_name, {lane.worker.framework: lane.worker}, timeout, budget=budget,
                            limit=len(findings), seconds=seconds, cancel=cancel, data_dir=data_dir)
        except Exception as e:  # shrinking is an extra: a failure leaves the findings as they were, and says so
            for f in findings:
                f.setdefault("shrink", not_shrunk("failed", f["minimal_case"], error=f"{type(e).__name__}: {e}"))

    threads = [threading.Thread(target=work, args=job, daemon=True, name="bncheck-shrink") for job in jobs]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        stop_all([lane.worker for lane, _ in jobs if lane.fresh])


def manifest_for(discovery: Discovery) -> dict[str, Any]:
    """The run manifest: machine facts plus each framework's probe."""
    m = base_manifest()
    m["frameworks"] = discovery.frameworks
    return m
