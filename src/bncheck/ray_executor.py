"""The Ray executor: each framework worker a Ray actor, judging in Ray actors pinned per case, the store on the driver.

A framework actor (`FrameworkActor`) supervises one ordinary bncheck worker process on its node (the same
`python -m bncheck.worker` as a local run, with its memory cap, deadlines and restarts), so a framework that
segfaults, aborts or hangs yields the same `crash`/`timeout` result as locally, and the actor never imports a
framework. An actor that dies itself (killed, its node lost) is recorded as a `crash` of the execution it was
running and replaced by a new actor. Actors of `@cuda` targets ask Ray for a GPU (`num_gpus`), so they land on GPU
nodes; the others ask for no resources and are spread over the nodes. Judges are `JudgeActor`s, each case pinned to
one (its expected values built once); every result comes back to the driver, which commits it to its SQLite store
as it arrives, exactly as a local run does, so `--resume` and the reports are unchanged.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any, Iterable

from .cases import Case
from .executors import ExecutorUnavailable
from .judges import JudgeDied, default_jobs
from .pool import Outcome
from .store import Store

INSTALL_HINT = ("the Ray executor needs the 'ray' package: pip install 'bncheck[ray]' (with bncheck's pins: "
                "bncheck constraints > c.txt; pip install -c c.txt 'bncheck[ray]')")
REPLY_SLACK = 120.0  # seconds beyond a request's own deadline before a silent actor is given up (scheduling, restarts)
PROBE_TIMEOUT = 180.0
# Ray sets these in its worker processes when the driver has not (OMP_NUM_THREADS=1 made PyTorch's workers use one
# thread, and sum in another order than a local run: observations differed in their last bits); a framework actor
# removes the ones the driver has not set, so that its worker starts with the environment a local worker gets
RAY_SETS = ("OMP_NUM_THREADS",)


def require_ray() -> Any:
    """The ray module, or ExecutorUnavailable saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ExecutorUnavailable(INSTALL_HINT) from None
    return ray


# ---- actors (plain classes; ray.remote wraps them when the executor starts) ------------------------------------
class FrameworkActor:
    """One framework worker process on a Ray node, behind a local WorkerHandle."""

    def __init__(self, framework: str, plugins: list[str], env: dict[str, str], memory_limit: int | None,
                 unset: tuple[str, ...] = ()) -> None:
        from . import targets as registry
        from .pool import WorkerHandle

        for k in unset:  # what Ray sets for its own workers (OMP_NUM_THREADS=1) but a local worker would not have
            os.environ.pop(k, None)
        for p in plugins:
            registry.load_plugin(p)
        self.worker = WorkerHandle(framework, plugins, env, memory_limit)
        self.worker.start()

    def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """WorkerHandle.request as plain data, with the worker's generation (a new process has no cached inputs)."""
        out = self.worker.request(message, timeout)
        return {"status": out.status, "reply": out.reply, "message": out.message, "stderr_tail": out.stderr_tail,
                "elapsed": out.elapsed, "generation": self.worker.generation}

    def pid(self) -> int:
        """The actor's process id (tests kill actors by it)."""
        return os.getpid()

    def stop(self) -> None:
        """Stop the worker process."""
        self.worker.stop()


class JudgeActor:
    """A judge (judges.CaseJudges) in a Ray actor."""

    def __init__(self, plugins: list[str]) -> None:
        from .judges import CaseJudges

        self.judges = CaseJudges(plugins)

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        """Answer one batch message."""
        return self.judges.handle(message)


def framework_status_task(framework: str, plugins: list[str]) -> tuple[bool, str, str]:
    """registry.framework_status on the node that runs this task (where the workers will run)."""
    from . import targets as registry

    for p in plugins:
        registry.load_plugin(p)
    return registry.framework_status(registry.frameworks()[framework])


# ---- the driver's side ------------------------------------------------------------------------------------------
class RayWorkerHandle:
    """A framework worker as the runner sees a WorkerHandle (start, request, clone, stop), living in a Ray actor."""

    serial = 0
    serial_guard = threading.Lock()

    def __init__(self, executor: "RayExecutor", framework: str, plugins: list[str] | None = None,
                 env: dict[str, str] | None = None, memory_limit: int | None = None, num_gpus: float = 0.0) -> None:
        self.executor, self.framework = executor, framework
        self.plugins, self.env, self.memory_limit = list(plugins or []), dict(env or {}), memory_limit
        self.num_gpus = num_gpus
        self.actor: Any = None
        self.name = ""
        self.incarnation = 0
        self.generation = 0
        self.restarts = 0
        self.closed = False
        self.proc = None  # no local process (pool.stop_all reads it)

    def clone(self, num_gpus: float | None = None) -> "RayWorkerHandle":
        """Another, not yet started, actor for the same framework (with `num_gpus`, or this one's)."""
        return RayWorkerHandle(self.executor, self.framework, self.plugins, self.env, self.memory_limit,
                               self.num_gpus if num_gpus is None else num_gpus)

    def start(self) -> None:
        """Create the actor (named bncheck-FRAMEWORK-N in the executor's namespace)."""
        if self.closed:
            raise RuntimeError(f"the {self.framework} actor was stopped; bncheck is shutting down")
        with RayWorkerHandle.serial_guard:
            RayWorkerHandle.serial += 1
            self.name = f"bncheck-{self.framework}-{RayWorkerHandle.serial}"
        self.actor = self.executor.remote_framework.options(
            name=self.name, num_cpus=0, num_gpus=self.num_gpus, max_restarts=0, max_task_retries=0,
            scheduling_strategy="SPREAD").remote(self.framework, self.plugins, self.env, self.memory_limit,
                                                 tuple(k for k in RAY_SETS if k not in os.environ))
        self.incarnation += 1
        self.generation = self.incarnation * 1_000_000

    def alive(self) -> bool:
        """True while an actor is held (its worker process is restarted by the actor itself)."""
        return self.actor is not None

    def restart(self) -> None:
        """Replace the actor."""
        self.kill()
        self.restarts += 1
        self.start()

    def request(self, message: dict[str, Any], timeout: float) -> Outcome:
        """One request through the actor; an actor that dies is a crash, one that stays silent a timeout: both replaced."""
        ray = self.executor.ray
        if self.actor is None:
            self.start()
        ref = self.actor.request.remote(message, timeout)
        try:
            got = ray.get(ref, timeout=timeout + REPLY_SLACK)
        except ray.exceptions.GetTimeoutError:
            name = self.name
            self.restart()
            return Outcome("timeout", {}, f"the Ray actor {name} gave no answer within {timeout + REPLY_SLACK:g} s; "
                                          "a new actor was started")
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            name = self.name
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.restart()
            return Outcome("crash", {}, f"the Ray actor {name} running the {self.framework} worker died "
                                        f"({type(e).__name__}: {first[:300]}); a new actor was started")
        self.generation = self.incarnation * 1_000_000 + int(got["generation"])
        return Outcome(got["status"], got["reply"], got["message"], got["stderr_tail"], got["elapsed"])

    def ask_to_exit(self) -> bool:
        """Stop the actor's worker (without waiting); no new actor after this."""
        self.closed = True
        if self.actor is None:
            return False
        try:
            self.actor.stop.remote()
        except Exception:
            return False
        return True

    def kill(self) -> None:
        """Kill the actor."""
        actor, self.actor = self.actor, None
        if actor is not None:
            try:
                self.executor.ray.kill(actor, no_restart=True)
            except Exception:
                pass

    def stop(self) -> None:
        """Stop the worker, then the actor."""
        actor = self.actor
        if self.ask_to_exit() and actor is not None:
            try:
                self.executor.ray.get(actor.stop.remote(), timeout=10)
            except Exception:
                pass
        self.kill()

    def _close_stderr(self) -> None:
        """Nothing local to close (pool.stop_all calls it)."""


class RayJudge:
    """A judge channel (judges.JudgeChannel) to a JudgeActor."""

    def __init__(self, executor: "RayExecutor", plugins: list[str]) -> None:
        self.executor, self.plugins = executor, list(plugins)
        self.actor: Any = None
        self.closed = False

    def start(self) -> None:
        """Create (or replace) the actor."""
        if self.closed:
            raise JudgeDied("the judges are stopped")
        self.kill()
        self.actor = self.executor.remote_judge.options(num_cpus=0, max_restarts=0, scheduling_strategy="SPREAD").remote(
            self.plugins)

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        """One batch through the actor; JudgeDied when the actor is gone."""
        ray = self.executor.ray
        if self.actor is None:
            raise JudgeDied("no judge actor")
        try:
            return ray.get(self.actor.call.remote(message))
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            raise JudgeDied(f"the judge actor died ({type(e).__name__})") from None

    def kill(self) -> None:
        """Kill the actor."""
        actor, self.actor = self.actor, None
        if actor is not None:
            try:
                self.executor.ray.kill(actor, no_restart=True)
            except Exception:
                pass

    def close(self) -> None:
        """Kill the actor; no restart after that."""
        self.closed = True
        self.kill()


class RayExecutor:
    """Runs the plan on a Ray cluster (`address`; None: RAY_ADDRESS, or a local Ray started for the run)."""

    name = "ray"

    def __init__(self, jobs: int | None = None, address: str | None = None) -> None:
        self.ray = require_ray()
        self.address = address
        self.started_ray = False
        self._forwarding = threading.Event()
        self._forwarder: threading.Thread | None = None
        if not self.ray.is_initialized():
            # ray.init installs a Python SIGTERM handler that exits at once (status 15, nothing reported) and C-level
            # handlers of its own: the run's handlers are put back, and signals are forwarded (see _block_signals)
            handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
            self._block_signals()
            try:
                self.ray.init(address=address, namespace="bncheck", log_to_driver=False, include_dashboard=False,
                              configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as e:
                self._unblock_signals()
                raise ExecutorUnavailable(f"cannot connect to the Ray cluster at {address or 'RAY_ADDRESS'}: {e} "
                                          "(give the head node's address: --address HOST:6379 or ray://HOST:10001)") from None
            finally:
                if threading.current_thread() is threading.main_thread():
                    for sig, handler in handlers.items():
                        if handler is not None:
                            signal.signal(sig, handler)
            self.started_ray = True
        cpus = int(self.ray.cluster_resources().get("CPU", 0))
        self.jobs = max(1, int(jobs)) if jobs is not None else max(1, cpus or default_jobs())
        self.gpus = float(self.ray.cluster_resources().get("GPU", 0.0))
        self.remote_framework = self.ray.remote(FrameworkActor)
        self.remote_judge = self.ray.remote(JudgeActor)
        self.remote_status = self.ray.remote(num_cpus=0)(framework_status_task)
        self.plugins: list[str] = []
        self.memory_limit: int | None = None
        self._status: dict[str, tuple[bool, str, str]] = {}

    # -- signals --
    def _block_signals(self) -> None:
        """SIGINT and SIGTERM go to one thread that hands them to the main thread's Python handlers.

        Ray's core worker installs C-level signal handlers in the driver that bypass Python's (measured: a SIGTERM sent
        to a bncheck run on Ray killed it at once, store left 'running', Ray's processes orphaned). With both signals
        blocked in the main thread before ray.init, every thread started since (Ray's, the lanes') inherits the
        block; the kernel keeps the signal pending for the process, a forwarding thread takes it with sigtimedwait,
        and `_thread.interrupt_main(signum)` runs the run's own handler in the main thread, as a local run would.
        """
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "sigtimedwait"):
            return
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        self._forwarder = threading.Thread(target=self._forward_signals, daemon=True, name="bncheck-ray-signals")
        self._forwarder.start()

    def _forward_signals(self) -> None:
        """Hand each SIGINT or SIGTERM to the main thread until the executor closes."""
        import _thread

        while not self._forwarding.is_set():
            info = signal.sigtimedwait({signal.SIGINT, signal.SIGTERM}, 0.2)
            if info is not None:
                _thread.interrupt_main(info.si_signo)

    def _unblock_signals(self) -> None:
        """Stop forwarding; the main thread receives its signals itself again."""
        if self._forwarder is None:
            return
        self._forwarding.set()
        self._forwarder.join(timeout=5)
        self._forwarder = None
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # a pending one is delivered now

    # -- discovery --
    def _framework_status(self, fw: Any) -> tuple[bool, str, str]:
        """Whether the framework is installed on the cluster's nodes (asked of a task there, once)."""
        if fw.name not in self._status:
            self._status[fw.name] = tuple(self.ray.get(self.remote_status.remote(fw.name, self.plugins), timeout=PROBE_TIMEOUT))
        return self._status[fw.name]

    def discover(self, pattern: str | None, plugins: list[str], memory_limit: int | None) -> Any:
        """runner.discover with one actor per framework; on a cluster with GPUs each framework is also probed on a GPU."""
        from .runner import discover

        self.plugins, self.memory_limit = list(plugins), memory_limit

        def new_worker(framework: str, plugins: list[str], env: dict[str, str], limit: int | None) -> Any:
            """A worker handle whose process lives in a Ray actor."""
            return RayWorkerHandle(self, framework, plugins, env, limit)

        d = discover(pattern, list(plugins), memory_limit=memory_limit, new_worker=new_worker,
                     framework_status=self._framework_status)
        if self.gpus >= 1 and d.workers:
            self._add_gpu_targets(d, pattern)
        return d

    def _add_gpu_targets(self, d: Any, pattern: str | None) -> None:
        """Probe each framework once more in an actor that holds a GPU and add the @cuda targets it sees."""
        from . import targets as registry
        from .runner import _row, target_version

        for fw_name, primary in list(d.workers.items()):
            probe_handle = primary.clone(num_gpus=1)
            try:
                out = probe_handle.request({"op": "probe"}, PROBE_TIMEOUT)
            finally:
                probe_handle.stop()
            if out.status != "ok":
                continue
            devices = [dev for dev in out.reply["probe"].get("devices", []) if dev.split(":")[0] == "cuda"]
            info = d.frameworks[fw_name]
            info["devices"] = sorted(set(info.get("devices", [])) | set(devices))
            have = {t.name for t in d.runnable}
            for cls in registry.families():
                if cls.framework != fw_name or (cls.devices is not None and "cuda" not in cls.devices):
                    continue
                for dev in devices:
                    t = cls(dev)
                    if t.name in have or not registry.match_targets([t.name], pattern):
                        continue
                    d.rows.append(_row(t, True, target_version(cls, info), ""))
                    d.runnable.append(t)

    # -- the plan --
    def lanes(self, discovery: Any, per_worker: int | None = None) -> list[Any]:
        """Lanes per (framework, CPU or GPU): GPU lanes get an actor with a GPU (a share of one when there are
        more GPU lanes than GPUs); the first CPU lane of a framework reuses its probed actor."""
        from .runner import TARGETS_PER_WORKER, _Lane

        per = per_worker or TARGETS_PER_WORKER
        groups: dict[tuple[str, bool], list[Any]] = {}
        for t in discovery.runnable:
            groups.setdefault((t.framework, t.device.split(":")[0] != "cpu"), []).append(t)
        gpu_lanes = sum(max(1, -(-len(ts) // per)) for (_, gpu), ts in groups.items() if gpu)
        share = 1.0 if gpu_lanes <= self.gpus else max(0.01, int(100 * self.gpus / max(1, gpu_lanes)) / 100)
        lanes = []
        for (fw, gpu), ts in groups.items():
            k = max(1, -(-len(ts) // per))
            for i in range(k):
                primary = discovery.workers[fw]
                if not gpu and i == 0:
                    lanes.append(_Lane(primary, ts[i::k], fresh=False, device_locks=False))
                else:
                    lanes.append(_Lane(primary.clone(num_gpus=share if gpu else 0.0), ts[i::k], fresh=True,
                                       device_locks=False))
        return lanes

    def execute(self, store: Store, run_id: str, cases: Iterable[Case], discovery: Any, timeout: float,
                **kwargs: Any) -> int:
        """runner.execute over actor lanes, with `jobs` judge actors (jobs 1: the driver judges)."""
        from .runner import execute

        plugins = kwargs.pop("plugins", self.plugins)
        kwargs.pop("expected", None)
        judges = [RayJudge(self, plugins) for _ in range(self.jobs)] if self.jobs > 1 else None
        return execute(store, run_id, cases, discovery, timeout, judges=judges,  # type: ignore[arg-type]
                       lanes=self.lanes(discovery, kwargs.pop("per_worker", None)), **kwargs)

    def shrink(self, doc: dict[str, Any], discovery: Any, timeout: float, budget: int, limit: int, seconds: float,
               cancel: threading.Event | None, data_dir: Path | None = None) -> None:
        """runner.shrink_in_parallel over actor lanes."""
        from .runner import shrink_in_parallel

        shrink_in_parallel(doc, discovery, timeout, budget=budget, limit=limit, seconds=seconds, cancel=cancel,
                           data_dir=data_dir, lanes=self.lanes(discovery))

    def close(self) -> None:
        """Disconnect from Ray (a local Ray started for the run stops with it)."""
        if self.started_ray:
            self.started_ray = False
            try:
                self.ray.shutdown()
            except Exception:
                pass
        self._unblock_signals()
