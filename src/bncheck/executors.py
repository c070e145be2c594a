"""Where a plan runs: the small interface every executor offers (local worker processes, or Ray actors).

An executor discovers the targets (each framework probed where its workers will run), executes (case, target)
pairs into the driver's store through `runner.execute` (the store has one writer: the process that called it),
and shrinks findings with the same workers. `api.run` uses one; so can any command built on it (a fuzzing
campaign calls `execute` once per batch of generated cases with the same discovery):

    executor = executor_for("local", jobs=4)   # or executor_for("ray", jobs=8, address="ray://head:10001")
    discovery = executor.discover("torch.*", plugins=[], memory_limit=None)
    try:
        executor.execute(store, run_id, cases, discovery, timeout=120.0, on_result=print)
        executor.shrink(doc, discovery, timeout=120.0, budget=12, limit=50, seconds=90.0, cancel=None)
    finally:
        discovery.close()
        executor.close()
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterable, Protocol

from .cases import Case
from .judges import ProcessJudge, default_jobs
from .store import Store


class ExecutorUnavailable(Exception):
    """The executor cannot be used here (Ray not installed, no cluster at the address); the message says how to fix it."""


class Executor(Protocol):
    """What api.run needs from an executor."""

    name: str
    jobs: int

    def discover(self, pattern: str | None, plugins: list[str], memory_limit: int | None) -> Any:
        """Probe the frameworks of the targets `pattern` names; a runner.Discovery with live workers."""

    def execute(self, store: Store, run_id: str, cases: Iterable[Case], discovery: Any, timeout: float,
                **kwargs: Any) -> int:
        """runner.execute on this executor's workers and judges (kwargs: on_result, done, broken, consecutive, on_outcome,
        plugins, expected: the number of executions owed, when known)."""

    def shrink(self, doc: dict[str, Any], discovery: Any, timeout: float, budget: int, limit: int, seconds: float,
               cancel: threading.Event | None, data_dir: Path | None = None) -> None:
        """Shrink the first `limit` findings of `doc` in place with this executor's workers."""

    def close(self) -> None:
        """Release what the executor holds (a Ray connection it opened)."""


SMALL_RUN = 500  # executions: with --jobs not given, a run of fewer judges in the parent (see LocalExecutor)


class LocalExecutor:
    """Worker processes on this machine; judging in the calling thread (jobs 1) or in `jobs` judge processes.

    `jobs` None means the cores available, except for a run of fewer than SMALL_RUN executions, which is judged in
    the parent: starting the judge processes costs about 0.5 s of CPU (measured on the 2-core VM: 1.0 s against
    1.55 s of CPU for a 10-execution run), about what judging 400 outcomes costs.
    """

    name = "local"

    def __init__(self, jobs: int | None = None) -> None:
        self.chosen = jobs is not None
        self.jobs = default_jobs() if jobs is None else max(1, int(jobs))

    def discover(self, pattern: str | None, plugins: list[str], memory_limit: int | None) -> Any:
        """runner.discover with local worker processes."""
        from .runner import discover

        return discover(pattern, list(plugins), memory_limit=memory_limit)

    def judges(self, plugins: list[str], expected: int | None = None) -> list[ProcessJudge] | None:
        """The judge processes of one execute() call of `expected` executions (None: judge in the calling thread)."""
        if self.jobs <= 1 or (not self.chosen and expected is not None and expected < SMALL_RUN):
            return None
        return [ProcessJudge(plugins) for _ in range(self.jobs)]

    def execute(self, store: Store, run_id: str, cases: Iterable[Case], discovery: Any, timeout: float,
                **kwargs: Any) -> int:
        """runner.execute with this executor's judges (kwargs `plugins`, and `expected`: how many executions it owes)."""
        from .runner import execute

        plugins = kwargs.pop("plugins", [])
        judges = self.judges(plugins, kwargs.pop("expected", None))
        return execute(store, run_id, cases, discovery, timeout, judges=judges, **kwargs)  # type: ignore[arg-type]

    def shrink(self, doc: dict[str, Any], discovery: Any, timeout: float, budget: int, limit: int, seconds: float,
               cancel: threading.Event | None, data_dir: Path | None = None) -> None:
        """runner.shrink_in_parallel over the local lanes."""
        from .runner import shrink_in_parallel

        shrink_in_parallel(doc, discovery, timeout, budget=budget, limit=limit, seconds=seconds, cancel=cancel,
                           data_dir=data_dir)

    def close(self) -> None:
        """Nothing to release."""


EXECUTORS = ("local", "ray")


def executor_for(name: str, jobs: int | None = None, address: str | None = None) -> Executor:
    """The executor called `name` ('local' or 'ray'); ExecutorUnavailable when it cannot run here, ValueError for a bad name."""
    if name == "local":
        if address:
            raise ValueError("--address is for --executor ray (the local executor runs on this machine)")
        return LocalExecutor(jobs)
    if name == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(jobs=jobs, address=address)
    raise ValueError(f"unknown executor {name!r} (choose one of: {', '.join(EXECUTORS)})")

