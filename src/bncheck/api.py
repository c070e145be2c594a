"""The Python API under the CLI: run, resume and audit suites, each returning a RunResult or raising a typed error.

    from bncheck import api

    result = api.run(["smoke"], out="reports", options=api.RunOptions(targets="torch.*"))
    print(result.status, result.summary["deviating_executions"], [f["signature"] for f in result.findings])
    raise SystemExit(api.exit_status(result))

Errors: `InputError` (exit status 2: a malformed case file, an unknown target pattern or suite, a plugin that
fails to import, an output path that cannot be a folder), `InfrastructureError` (3: no requested target
available, the output folder in use by another bncheck, a full, read-only or failing disk), `Interrupted` (128 +
the signal: SIGINT or SIGTERM in any phase; its `result` holds what was written, None when nothing was stored).

Phases of a run: loading the cases, starting the frameworks (discovery), executing, shrinking, writing the
reproduction scripts, writing the reports. A signal during any of them stops the run: what was executed stays in
the store, and the reports are written with status `interrupted`, except when the signal arrives before anything
was stored (then the folder is left as it was) or a second signal arrives while the reports are being written
(then the reports of the previous run stay intact, as every report is written atomically). The store records a
run `complete` only once its reports are written.
"""

from __future__ import annotations

import difflib
import shlex
import signal
import sqlite3
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from . import targets as registry
from .cases import Case, CaseError, CaseFileError, case_from_dict, load_cases
from .files import disk_failure
from .outdir import OutDirError, OutputLock, prepare, remove_stale_temporaries
from .store import FILENAME, Store, StoreError

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_INFRA = 0, 1, 2, 3
SHRINK_LIMIT = 50  # findings shrunk per run, at most (the rest say so)


class BncheckError(Exception):
    """An error that ends a command; `status` is its exit status."""

    status = EXIT_FINDINGS


class InputError(BncheckError):
    """The command's input cannot be used (case file, target pattern, suite, plugin, option): exit status 2."""

    status = EXIT_USAGE


class InfrastructureError(BncheckError):
    """The machine cannot run it (no target available, folder in use, disk full or failing): exit status 3."""

    status = EXIT_INFRA


class Interrupted(BncheckError):
    """SIGINT or SIGTERM stopped the command; `result` is what was written (None: nothing was stored)."""

    def __init__(self, signum: int, result: "RunResult | None", message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.result = result
        self.status = 128 + signum


@dataclass(frozen=True)
class RunOptions:
    """How a run executes; `targets` is a comma-separated list of glob patterns over target names."""

    targets: str | None = None
    timeout: float = 120.0  # seconds one case may take on one target
    shrink: int = 12  # executions each finding may spend shrinking (0: none)
    shrink_time: float = 90.0  # seconds of shrinking per run
    memory_limit: float | None = None  # GiB per worker (None: the default cap, 0: no cap)
    plugins: tuple[str, ...] = ()
    repro: bool = True  # write a reproduction script per finding
    executor: str = "local"  # where the plan runs: 'local' (worker processes here) or 'ray' (actors on a Ray cluster)
    jobs: int | None = None  # judging processes (local) or actors (ray); None: the cores available; 1: judged in this process
    address: str | None = None  # the Ray cluster (executor 'ray'; None: RAY_ADDRESS, or a local Ray for the run)


AUDIT_OPTIONS = RunOptions(shrink_time=20.0)


@dataclass
class RunResult:
    """A finished (or interrupted) run: its id, where its files are, and its results document."""

    run_id: str
    out: Path
    status: str  # 'complete' or 'interrupted'
    document: dict[str, Any]  # results.json, as written
    resumed: bool = False
    broken: dict[str, str] = field(default_factory=dict)  # target -> why it was marked broken
    timings: dict[str, float] = field(default_factory=dict)
    signal: int | None = None  # the signal that interrupted it
    written: bool = True  # False: a second signal stopped the report writing; the folder keeps the previous reports

    @property
    def summary(self) -> dict[str, Any]:
        """results.json's summary."""
        return self.document["summary"]

    @property
    def findings(self) -> list[dict[str, Any]]:
        """results.json's findings."""
        return self.document["findings"]

    @property
    def files(self) -> dict[str, Path]:
        """The files a run writes into its output folder."""
        return {"store": self.out / FILENAME, "results": self.out / "results.json", "html": self.out / "index.html",
                "junit": self.out / "results.xml"}


def exit_status(result: RunResult) -> int:
    """0 nothing to report; 1 findings, deviations, errors, crashes or timeouts; 128 + the signal if interrupted."""
    if result.signal:
        return 128 + result.signal
    s = result.summary
    bad = sum(s["by_status"].get(k, 0) for k in ("error", "crash", "timeout"))
    return EXIT_FINDINGS if s["deviating_executions"] or bad or result.findings else EXIT_OK


# ---- signals ----------------------------------------------------------------------------------------
class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that every phase stops the same way."""


def _is_sigterm(e: BaseException) -> bool:
    """Whether a KeyboardInterrupt stands for SIGTERM (the API's or the CLI's own handler raised it)."""
    return type(e).__name__ == "_Terminated"


class _Signals:
    """SIGINT and SIGTERM for the duration of a run, in the main thread: the first raises KeyboardInterrupt (or
    _Terminated) where the run is, except while `held` (writing the reports), when it is only noted; a second one
    always raises. Elsewhere (a thread that is not the main one) nothing is installed."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.holding = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                current = signal.getsignal(sig)
                if sig == signal.SIGINT and current == signal.SIG_IGN:
                    continue  # a background job ignores Ctrl-C, as it should
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.received is None
        if first:
            self.received = signum
        if self.holding and first:
            return  # finish the write in progress; the run then ends as interrupted
        raise _Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    @contextmanager
    def held(self) -> Iterator[None]:
        """Within: the first signal is noted, not raised (a second one raises)."""
        before, self.holding = self.holding, True
        try:
            yield
        finally:
            self.holding = before

    def note(self, e: KeyboardInterrupt) -> int:
        """The signal number behind a KeyboardInterrupt (SIGINT when it came from elsewhere)."""
        if self.received is None:
            self.received = signal.SIGTERM if _is_sigterm(e) else signal.SIGINT
        return self.received


class _PhaseClock:
    """Wall time of a run's phases, in order: lap(name) closes the phase that began at the previous lap."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, name: str) -> None:
        """The phase `name` ends now."""
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.last
        self.last = now

    def laps(self, until_now: str | None = None) -> dict[str, float]:
        """Every phase in seconds (rounded to 0.1 ms), `until_now` (when given) ending now, and the total."""
        if until_now:
            self.lap(until_now)
        return {**{k: round(v, 4) for k, v in self.phases.items()}, "total": round(self.last - self.start, 4)}


# ---- inputs -----------------------------------------------------------------------------------------
def known_target_names() -> list[str]:
    """Every target name a pattern may match: each registered family on each device kind."""
    from .runner import DEVICE_KINDS

    return [f"{fam}@{dev}" for fam in registry.family_names() for dev in DEVICE_KINDS]


def check_target_patterns(pattern: str | None) -> None:
    """Raise InputError naming the first pattern of a comma-separated `pattern` that matches no known target."""
    if pattern is None:
        return
    names = known_target_names()
    pats = [p.strip() for p in pattern.split(",")]
    if not any(pats):
        raise InputError("--targets is empty (give glob patterns such as 'torch.*' or 'ort.opset15@cpu')")
    for p in pats:
        if not p:
            raise InputError(f"--targets {pattern!r} has an empty pattern (remove the extra comma)")
        if not registry.match_targets(names, p):
            families = sorted({n.split("@")[0] for n in names})
            close = difflib.get_close_matches(p, families + names, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            within = f" (in --targets {pattern!r})" if p != pattern.strip() else ""
            raise InputError(f"no target matches {p!r}{within}: {hint}known families: {', '.join(families)}; "
                             "see 'bncheck backends'")


def load_plugins(plugins: Sequence[str]) -> None:
    """Import each plugin module (InputError when one fails) and load the registry's families."""
    try:
        for p in plugins:
            registry.load_plugin(p)
        registry.families()
    except registry.RegistryError as e:
        raise InputError(str(e)) from None


def _load(sources: Sequence[str | Case]) -> list[Case]:
    """Cases from case files, suite names and Case objects, in order, exact duplicates dropped."""
    out: list[Case] = []
    seen: set[str] = set()
    for s in sources:
        try:
            batch = [s] if isinstance(s, Case) else load_cases([str(s)])
        except CaseFileError as e:
            raise InputError(str(e)) from None
        for c in batch:
            if c.case_id not in seen:
                seen.add(c.case_id)
                out.append(c)
    return out


# ---- a run ------------------------------------------------------------------------------------------
Log = Callable[[str], None]
Progress = Callable[[int], Callable[[Any], None]]  # total -> a callback for each execution as it is committed


def _quiet(_message: str) -> None:
    """The default log: say nothing."""


def run(sources: Sequence[str | Case], *, out: str | Path = "reports", options: RunOptions = RunOptions(),
        log: Log = _quiet, progress: Progress | None = None, command: str | None = None) -> RunResult:
    """Run case files, suite names or Case objects on every matching available target, writing OUT's reports."""
    session = _Session(Path(out), options, log, progress, command)
    return session.start(list(sources))


def audit(suite: str = "default", *, out: str | Path = "reports", options: RunOptions = AUDIT_OPTIONS,
          log: Log = _quiet, progress: Progress | None = None, command: str | None = None) -> RunResult:
    """The shipped suite (default: 'default') on every available target; shrinking is limited to 20 s."""
    return run([suite], out=out, options=options, log=log, progress=progress, command=command)


def resume(run_id: str = "latest", *, out: str | Path = "reports", overrides: dict[str, Any] | None = None,
           log: Log = _quiet, progress: Progress | None = None) -> RunResult:
    """Complete an interrupted run stored in OUT: only its missing executions run, then its reports are rewritten.

    The run keeps its cases, targets and options; `overrides` replaces options by name (timeout, shrink,
    shrink_time, memory_limit, repro; plugins are added)."""
    session = _Session(Path(out), RunOptions(), log, progress, None)
    return session.resume(run_id, dict(overrides or {}))


class _Session:
    """One invocation of run or resume: its options, store, workers, signals and phase clock."""

    def __init__(self, out: Path, options: RunOptions, log: Log, progress: Progress | None, command: str | None) -> None:
        self.out, self.options, self.log, self.progress = out, options, log, progress
        self.command = command or "bncheck " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        self.clock = _PhaseClock()
        self.signals = _Signals()
        self.lock: OutputLock | None = None
        self.store: Store | None = None
        self.run_id = ""
        self.resumed = False
        self.stored = False  # the run's cases are in the store: --resume can complete it
        self.created = False  # this session created the output folder
        self.executor: Any = None  # the executors.Executor of the run (made once the cases and targets are checked)

    # -- entry points --
    def start(self, sources: list[str | Case]) -> RunResult:
        """A new run."""
        with self.signals:
            try:
                cases = _load(sources)
                if not cases:
                    raise InputError(f"no cases in {', '.join(map(str, sources))} (add one JSON object per line)")
                load_plugins(self.options.plugins)
                check_target_patterns(self.options.targets)
                self._lock()
                return self._execute(cases, [str(s) for s in sources if not isinstance(s, Case)] or ["<api>"], None)
            except KeyboardInterrupt as e:
                raise self._interrupted_early(e) from None
            finally:
                self._release()

    def resume(self, run_id: str, overrides: dict[str, Any]) -> RunResult:
        """Complete a stored run."""
        with self.signals:
            try:
                if not (self.out / FILENAME).is_file():
                    raise InputError(f"--resume {run_id}: no results store at {self.out / FILENAME} (nothing to resume; "
                                     "pass the --out directory of the interrupted run)")
                self._lock()
                self.store, self.run_id = _open_for_resume(self.out, run_id)
                self.resumed = self.stored = True
                stored = self.store.run_options(self.run_id)
                allowed = {"timeout", "shrink", "shrink_time", "memory_limit", "repro", "executor", "jobs", "address"}
                unknown = sorted(set(overrides) - allowed - {"plugins"})
                if unknown:
                    raise InputError(f"resume: option {unknown[0]!r} cannot change (options: {', '.join(sorted(allowed))})")
                plugins = tuple(dict.fromkeys([*stored.get("plugins", []), *overrides.get("plugins", ())]))
                kept = {"timeout": stored.get("timeout"), "shrink": stored.get("shrink"),
                        "shrink_time": stored.get("shrink_time"), "memory_limit": stored.get("memory_limit_gib"),
                        "repro": stored.get("repro"), "executor": stored.get("executor"), "address": stored.get("address")}
                kept = {k: v for k, v in kept.items() if v is not None}
                if "executor" in overrides and "address" not in overrides:  # the cluster goes with the executor
                    kept.pop("address", None)
                self.options = replace(RunOptions(), **{**kept, **{k: v for k, v in overrides.items() if k in allowed}},
                                       plugins=plugins)
                try:
                    cases = [case_from_dict(d) for _, d in self.store.cases(self.run_id)]
                except CaseError as e:
                    raise InputError(f"run {self.run_id}: a stored case no longer validates ({e}); start a new run") from None
                wanted = [t["name"] for t in self.store.targets(self.run_id) if t["available"]]
                if not cases or not wanted:
                    raise InputError(f"run {self.run_id} has no cases or no available targets to complete")
                from .inputs import add_verified_data_file

                for sha, path in (stored.get("data_files") or {}).items():
                    add_verified_data_file(sha, path)
                self.options = replace(self.options, targets=",".join(wanted))
                load_plugins(self.options.plugins)
                sources = self.store.run(self.run_id)["sources"]
                return self._execute(cases, sources, wanted)
            except KeyboardInterrupt as e:
                raise self._interrupted_early(e) from None
            finally:
                self._release()

    # -- the phases --
    def _lock(self) -> None:
        """Create the output folder if needed and take its lock; remove what a killed writer left there."""
        self.created = not self.out.exists() and not self.out.is_symlink()
        try:
            folder = prepare(self.out)
            self.lock = OutputLock(folder)
            self.lock.acquire(self.run_id, self.command)
        except OutDirError as e:
            raise (InputError if e.status == EXIT_USAGE else InfrastructureError)(str(e)) from None
        for p in remove_stale_temporaries(folder):
            self.log(f"bncheck: removed {p}, left by a writer that was killed")

    def _release(self) -> None:
        """Close the store and give the folder back; a folder this session created and never used goes again."""
        if self.store is not None:
            try:
                self.store.close()
            except sqlite3.Error:
                pass
            self.store = None
        if self.lock is not None:
            self.lock.release()
            if self.created and not self.stored:  # e.g. no target available: leave nothing behind
                try:
                    self.lock.path.unlink(missing_ok=True)
                    self.out.rmdir()
                except OSError:
                    pass
            self.lock = None

    def _interrupted_early(self, e: KeyboardInterrupt) -> Interrupted:
        """A signal before the run's executions began (loading, starting the frameworks)."""
        signum = self.signals.note(e)
        name = signal.Signals(signum).name
        if self.stored:
            return Interrupted(signum, None, f"interrupted while starting ({name}); run {self.run_id} is stored: "
                                             f"complete it with: bncheck run --resume {self.run_id} --out {self.out}")
        return Interrupted(signum, None, f"interrupted while starting ({name}); nothing was executed and the output "
                                         "folder keeps what it had: run the command again")

    def _executor(self) -> Any:
        """The executor the options name; InputError when it cannot run here (Ray missing, no cluster, bad jobs)."""
        from .executors import ExecutorUnavailable, executor_for

        opts = self.options
        if opts.jobs is not None and opts.jobs < 1:
            raise InputError(f"--jobs {opts.jobs}: give 1 or more judging processes (1 judges in the bncheck process)")
        try:
            return executor_for(opts.executor, opts.jobs, opts.address)
        except (ExecutorUnavailable, ValueError) as e:
            raise InputError(str(e)) from None

    def _execute(self, cases: list[Case], sources: list[str], resumed_targets: list[str] | None) -> RunResult:
        """Execute on the options' executor, released at the end."""
        self.executor = self._executor()
        try:
            return self._execute_on(self.executor, cases, sources, resumed_targets)
        finally:
            self.executor.close()

    def _execute_on(self, executor: Any, cases: list[Case], sources: list[str],
                    resumed_targets: list[str] | None) -> RunResult:
        from .pool import memory_limit_bytes
        from .runner import PlanError, check_plan, manifest_for

        opts = self.options
        discovery = executor.discover(opts.targets, list(opts.plugins), memory_limit_bytes(opts.memory_limit))
        try:
            self.clock.lap("starting frameworks")
            try:
                check_plan(discovery, opts.targets)
            except PlanError as e:
                raise (InputError if e.status == EXIT_USAGE else InfrastructureError)(str(e)) from None
            try:
                return self._run_plan(cases, sources, discovery, resumed_targets, manifest_for(discovery))
            except (OSError, sqlite3.Error) as e:  # the disk filled up (or failed) under the store or the reports
                raise self._disk_error(e) from None
        finally:
            discovery.close()

    def _disk_error(self, e: OSError | sqlite3.Error) -> BaseException:
        what = disk_failure(e)
        if what is None:
            return e
        where = f" ({self.out / FILENAME})" if isinstance(e, sqlite3.Error) else ""
        if not (self.out / FILENAME).exists():  # the output folder itself was removed
            kept = "; the results store is gone too: run the command again"
        elif self.stored:
            kept = (f"; run {self.run_id} keeps every execution committed before, and 'bncheck run --resume "
                    f"{self.run_id} --out {self.out}' completes it once there is room")
        else:
            kept = "; run the command again once there is room"
        return InfrastructureError(f"cannot write{where}: {what}{kept}")

    def _run_plan(self, cases: list[Case], sources: list[str], discovery: Any, resumed_targets: list[str] | None,
                  manifest: dict[str, Any]) -> RunResult:
        from .inputs import verified_data_files
        from .runner import pending_pairs, resume_state

        opts = self.options
        done: set[tuple[str, str]] = set()
        broken: dict[str, str] = {}
        consecutive: dict[str, int] = {}
        if self.store is None:
            try:
                self.store = Store(self.out / FILENAME)
            except StoreError as e:
                raise InfrastructureError(f"cannot use output directory {self.out}: {e}") from None
            self.run_id = self.store.begin_run(self.command, sources, manifest)
            self.store.set_run_options(self.run_id, {
                "plugins": list(opts.plugins), "pattern": opts.targets, "timeout": opts.timeout,
                "memory_limit_gib": opts.memory_limit, "shrink": opts.shrink, "shrink_time": opts.shrink_time,
                "repro": opts.repro, "data_files": verified_data_files(), "executor": opts.executor, "jobs": opts.jobs,
                "address": opts.address})
            self.store.add_targets(self.run_id, discovery.rows)
            self.store.add_cases(self.run_id, [(c.case_id, c.canonical_json()) for c in cases])
            self.stored = True
            self.log(f"bncheck: {len(cases)} cases x {len(discovery.runnable)} targets "
                     f"({', '.join(t.name for t in discovery.runnable)})")
        else:
            done, broken, consecutive = resume_state(self.store, self.run_id)
            have = {t.name for t in discovery.runnable}
            stored_targets = {t["name"]: t for t in self.store.targets(self.run_id)}
            for name in sorted(set(resumed_targets or []) - have):
                self.log(f"bncheck: warning: {name} of run {self.run_id} is not available now; its missing executions "
                         "stay missing")
            for r in discovery.rows:
                if r["available"] and r["name"] in stored_targets and stored_targets[r["name"]]["version"] != r["version"]:
                    self.log(f"bncheck: warning: {r['name']} is {r['version']} now, {stored_targets[r['name']]['version']} "
                             f"in run {self.run_id}: the run mixes versions")
            self.store.reopen_run(self.run_id)
            missing = pending_pairs(cases, discovery.runnable, done)
            self.store.add_event(self.run_id, "resumed", "", f"{missing} executions missing")
            self.log(f"bncheck: resuming run {self.run_id}: {missing} of {len(cases) * len(discovery.runnable)} "
                     f"executions missing ({len(cases)} cases x {len(discovery.runnable)} targets)")
        assert self.lock is not None
        self.lock.update(self.run_id, self.command)
        skipped: dict[str, list[str]] = {}
        for r in discovery.rows:
            if not r["available"]:
                skipped.setdefault(r["reason"], []).append(r["name"])
        for reason, names in sorted(skipped.items()):
            self.log(f"bncheck: skipping {', '.join(names)}: {reason}")

        store, run_id = self.store, self.run_id
        interrupted: int | None = None
        total = pending_pairs(cases, discovery.runnable, done)
        try:
            self.executor.execute(store, run_id, cases, discovery, opts.timeout,
                                  on_result=self.progress(total) if self.progress else None, done=done, broken=broken,
                                  consecutive=consecutive, plugins=list(opts.plugins), expected=total)
        except KeyboardInterrupt as e:  # what is stored stays; the reports say 'interrupted'
            interrupted = self.signals.note(e)
            self.log(f"\nbncheck: interrupted; {len(store.execution_statuses(run_id))} executions are stored")
        self.clock.lap("executing")
        stored_pairs = {(c, t) for c, t, _ in store.execution_statuses(run_id)}
        complete = pending_pairs(cases, discovery.runnable, stored_pairs) == 0 and (
            resumed_targets is None or set(resumed_targets) <= {t.name for t in discovery.runnable})
        return self._finish(discovery, interrupted, complete)

    def _finish(self, discovery: Any, interrupted: int | None, complete: bool) -> RunResult:
        """Shrink (a complete run), write the reproduction scripts and the reports; then record the run's status.

        Shrinking and the scripts stop at a signal; building and writing the reports hold it (noted, then the run
        ends as interrupted), and a second signal stops the writing."""
        from .report.results import FINDINGS_DIR, build_results

        store, run_id, opts = self.store, self.run_id, self.options
        assert store is not None
        written = True
        try:
            with self.signals.held():
                doc = build_results(store, run_id)
        except KeyboardInterrupt as e:  # a second signal: nothing is written
            raise self._interrupted_unwritten(e) from None
        self.clock.lap("reports")
        interrupted = interrupted if interrupted is not None else self.signals.received
        status = "complete" if interrupted is None and complete else "interrupted"
        if opts.shrink and status == "complete" and doc["findings"]:
            self.log(f"bncheck: shrinking {min(len(doc['findings']), SHRINK_LIMIT)} findings (budget {opts.shrink} "
                     "executions each)")
            cancel = threading.Event()
            try:
                self.executor.shrink(doc, discovery, opts.timeout, budget=opts.shrink, limit=SHRINK_LIMIT,
                                     seconds=opts.shrink_time, cancel=cancel, data_dir=self.out / FINDINGS_DIR)
                _mark_unshrunk(doc, "finding-cap")
            except KeyboardInterrupt as e:
                cancel.set()
                interrupted, status = self.signals.note(e), "interrupted"
                self.log("\nbncheck: interrupted while shrinking; the findings keep their unshrunk cases")
                try:
                    with self.signals.held():
                        doc = build_results(store, run_id)  # the shrinking threads may still touch the old one
                except KeyboardInterrupt as e2:
                    raise self._interrupted_unwritten(e2) from None
                _mark_unshrunk(doc, "interrupted")
            self.clock.lap("shrinking")
        elif doc["findings"]:
            _mark_unshrunk(doc, "run-incomplete" if status != "complete" else "shrink-off")
        doc["run"]["status"] = status
        if opts.repro:
            try:
                from .repro import write_finding_repros

                write_finding_repros(doc, self.out, {t.name: t for t in discovery.runnable})
            except KeyboardInterrupt as e:
                interrupted, status = self.signals.note(e), "interrupted"
                doc["run"]["status"] = status
                self.log("\nbncheck: interrupted while writing the reproduction scripts; the rest are not written")
        else:
            for f in doc["findings"]:
                f["repro"] = None
        written = self._write_reports(doc)
        if interrupted is None and self.signals.received is not None:  # held while the reports were written
            interrupted, status = self.signals.received, "interrupted"
            doc["run"]["status"] = status
            if written:
                written = self._write_reports(doc, only_status=True)
        if written or status != "complete":
            store.finish_run(run_id, status)  # 'complete' only once the reports are written
        self.clock.lap("writing reports")
        self.log("bncheck: times: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.clock.laps().items()))
        result = RunResult(run_id, self.out, status, doc, self.resumed, store.broken_targets(run_id),
                           dict(doc["run"].get("timings_s", {})), interrupted, written)
        if interrupted is not None:
            name = signal.Signals(interrupted).name
            how = "its reports say 'interrupted'" if written else "the reports not rewritten are the previous ones"
            raise Interrupted(interrupted, result, f"run {run_id} was interrupted ({name}); {how}; complete it with: "
                                                   f"bncheck run --resume {run_id} --out {self.out}")
        return result

    def _interrupted_unwritten(self, e: KeyboardInterrupt) -> Interrupted:
        """A second signal while the results were being built: the folder keeps its previous reports."""
        signum = self.signals.note(e)
        if self.store is not None:
            self.store.finish_run(self.run_id, "interrupted")
        return Interrupted(signum, None, f"run {self.run_id} was interrupted ({signal.Signals(signum).name}) before its "
                                         f"reports were written; the folder keeps the previous ones; complete it with: "
                                         f"bncheck run --resume {self.run_id} --out {self.out}")

    def _write_reports(self, doc: dict[str, Any], only_status: bool = False) -> bool:
        """Case files, the store's findings, results.json, index.html and results.xml, with signals held; False when a
        second signal stopped the writing (every file written so far is whole: the others are the previous ones)."""
        from .report.html import write_html
        from .report.junit import write_junit
        from .report.results import finalise_findings, write_results

        assert self.store is not None
        try:
            with self.signals.held():
                if not only_status:
                    finalise_findings(self.store, self.run_id, doc, self.out)
                    doc["run"]["timings_s"] = self.clock.laps(until_now="reports")
                write_results(doc, self.out / "results.json")
                write_html(doc, self.out / "index.html")
                write_junit(doc, self.out / "results.xml", self.out)
            return True
        except KeyboardInterrupt as e:
            self.signals.note(e)
            self.log("\nbncheck: interrupted again while writing the reports; the files not yet rewritten are the "
                     "previous ones")
            return False


def _mark_unshrunk(doc: dict[str, Any], reason: str) -> None:
    """Give every finding without a shrink record one that says why it was not shrunk (a shrink.NOT_SHRUNK reason)."""
    from .shrink import not_shrunk

    for f in doc["findings"]:
        f.setdefault("shrink", not_shrunk(reason, f["minimal_case"], limit=SHRINK_LIMIT))


def _open_for_resume(out: Path, resume: str) -> tuple[Store, str]:
    """The store of a run to resume and the run id; errors name what exists."""
    path = out / FILENAME
    if not path.is_file():
        raise InputError(f"--resume {resume}: no results store at {path} (nothing to resume; pass the --out directory "
                         "of the interrupted run)")
    try:
        store = Store(path)
    except StoreError as e:
        raise InfrastructureError(f"cannot use output directory {out}: {e}") from None
    runs = store.runs()
    if resume == "latest":
        run_id = store.latest_run()
    else:
        matches = [r for r in runs if r.startswith(resume)]
        run_id = matches[0] if len(matches) == 1 else None
    if run_id is None:
        store.close()
        listed = ", ".join(runs[-5:]) or "none"
        raise InputError(f"--resume {resume}: no such run in {path} (latest runs: {listed}; or use --resume latest)")
    return store, run_id

