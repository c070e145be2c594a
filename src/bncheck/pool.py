"""Supervision of worker processes: start, request with a deadline, and restart after a crash or hang."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import protocol

STDERR_TAIL = 4000


@dataclass
class Outcome:
    """The result of one request: status is ok, error, unsupported, crash or timeout."""

    status: str
    reply: dict[str, Any]
    message: str = ""
    stderr_tail: str = ""
    elapsed: float = 0.0


_spawner: ThreadPoolExecutor | None = None
_spawner_guard = threading.Lock()


def _spawn(*args: Any, **kwargs: Any) -> "subprocess.Popen[bytes]":
    """subprocess.Popen from one long-lived thread, so that no worker dies when a short-lived lane thread ends."""
    # a worker asks the kernel to kill it when its parent dies (PR_SET_PDEATHSIG), and on Linux the "parent" is
    # the thread that forked it: spawning from one thread that lives as long as bncheck makes that "bncheck exits"
    global _spawner
    with _spawner_guard:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bncheck-spawner")
    return _spawner.submit(subprocess.Popen, *args, **kwargs).result()


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


GIB = 1 << 30
DEFAULT_MEMORY_LIMIT_GIB = 16.0
DUMP_GRACE = 1.0  # seconds a hung worker gets to write its stacks to stderr before it is killed


def physical_memory() -> int | None:
    """Bytes of physical memory, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def default_memory_limit() -> int:
    """The default cap per worker: 16 GiB, or three quarters of the physical memory where that is less."""
    phys = physical_memory()
    limit = int(DEFAULT_MEMORY_LIMIT_GIB * GIB)
    return min(limit, phys * 3 // 4) if phys else limit


def memory_limit_bytes(gib: float | None) -> int | None:
    """--memory-limit in GiB as bytes: None means the default, 0 means no limit."""
    if gib is None:
        return default_memory_limit()
    return int(gib * GIB) if gib > 0 else None


def _memory_hint(tail: str, limit: int | None) -> str:
    """'; likely out of memory ...' when a crash's stderr says the process ran out of memory."""
    low = tail.lower()
    if any(s in low for s in ("memoryerror", "bad_alloc", "out of memory", "cannot allocate memory", "failed to allocate")):
        cap = f"the worker's memory limit is {limit / GIB:g} GiB" if limit else "no memory limit was set"
        return f"; likely out of memory ({cap}; change it with --memory-limit GIB)"
    return ""


def worker_environment(framework_env: dict[str, str] | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker process: the parent's, quiet TensorFlow logs, passive OpenMP waiting, the framework's own."""
    # OMP_WAIT_POLICY=PASSIVE makes OpenMP threads (PyTorch's) sleep instead of spinning when they wait. It changes
    # no thread count and no result; it keeps a framework's idle threads from taking the CPU that the other workers
    # and the parent need (with several workers per core, spinning made small PyTorch cases 10 to 40 times slower).
    # A value the user set is kept.
    env = dict(os.environ if base is None else base)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.update(framework_env or {})
    return env


class WorkerHandle:
    """One persistent worker process for one framework."""

    def __init__(self, framework: str, plugins: list[str] | None = None, env: dict[str, str] | None = None,
                 memory_limit: int | None = -1) -> None:
        self.framework = framework
        self.plugins = list(plugins or [])
        self.env = dict(env or {})
        # bytes of data segment per worker process; None: no limit; -1: default_memory_limit()
        self.memory_limit = default_memory_limit() if memory_limit == -1 else memory_limit
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_file: Any = None
        self.restarts = 0
        self.generation = 0  # incremented at every start: a new process has none of the old one's state
        self.closed = False  # set by stop(): no restart after that

    def clone(self) -> "WorkerHandle":
        """A new, not yet started handle for another worker of the same framework, plugins, environment and limit."""
        return WorkerHandle(self.framework, self.plugins, self.env, self.memory_limit)

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker process (its stderr goes to a private temporary file)."""
        if self.closed:
            raise RuntimeError(f"the {self.framework} worker was stopped; bncheck is shutting down")
        cmd = [sys.executable, "-m", "bncheck.worker", "--framework", self.framework, "--parent", str(os.getpid())]
        for p in self.plugins:
            cmd += ["--plugin", p]
        if self.memory_limit:
            cmd += ["--memory-limit", str(int(self.memory_limit))]
        self.stderr_file = tempfile.TemporaryFile(prefix=f"bncheck-{self.framework}-")
        env = worker_environment(self.env)
        self.proc = _spawn(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr_file,
            start_new_session=True, env=env, close_fds=True,
        )
        self.generation += 1

    def alive(self) -> bool:
        """True while the process runs."""
        proc = self.proc
        return proc is not None and proc.poll() is None

    def kill(self) -> None:
        """Kill the worker's whole process group and reap it."""
        proc, self.proc = self.proc, None  # claimed first: another thread may be closing it too
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for s in (proc.stdin, proc.stdout):
            try:
                s and s.close()
            except OSError:
                pass

    def stop(self) -> None:
        """Ask the worker to exit, then make sure it has; a stopped handle starts no new process."""
        proc = self.proc
        if self.ask_to_exit() and proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        self._close_stderr()

    def _close_stderr(self) -> None:
        f, self.stderr_file = self.stderr_file, None
        if f is not None:
            f.close()

    def ask_to_exit(self) -> bool:
        """Send the exit request without waiting (see stop_all); True when it was sent to a live process.
        From now on the handle starts no new process."""
        self.closed = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                protocol.send(proc.stdin, {"op": "exit"})  # type: ignore[arg-type]
                return True
            except OSError:
                pass
        return False

    def restart(self) -> None:
        """Start the worker, replacing a dead or hung one (counted as a restart)."""
        if self.stderr_file is not None:
            self.kill()
            self._close_stderr()
            self.restarts += 1
        self.start()

    # ---- requests ----------------------------------------------------------------------------
    def _stderr_since(self, offset: int) -> str:
        if self.stderr_file is None:
            return ""
        self.stderr_file.seek(offset)
        data = self.stderr_file.read()
        self.stderr_file.seek(0, os.SEEK_END)
        text = data.decode("utf-8", "replace")
        if "\nExtension modules: " in text:  # faulthandler's list of loaded C modules: long, and it would crowd out the stack
            text = "\n".join(line for line in text.split("\n") if not line.startswith("Extension modules: "))
        return text[-STDERR_TAIL:]

    def _dump_stacks(self) -> None:
        """Ask a hung worker to write every thread's stack to its stderr (faulthandler), and give it a moment."""
        if not self.alive() or self.stderr_file is None:
            return
        self.stderr_file.seek(0, os.SEEK_END)
        size = self.stderr_file.tell()
        try:
            os.kill(self.proc.pid, signal.SIGUSR1)  # type: ignore[union-attr]
        except (ProcessLookupError, PermissionError, AttributeError):
            return
        stop = time.monotonic() + DUMP_GRACE
        while time.monotonic() < stop:
            time.sleep(0.02)
            self.stderr_file.seek(0, os.SEEK_END)
            grown = self.stderr_file.tell()
            if grown > size:  # give it a little longer to finish writing
                time.sleep(0.05)
                break

    def request(self, message: dict[str, Any], timeout: float) -> Outcome:
        """Send one request and wait for its reply; a crash or a hang is returned as an Outcome and restarts the worker."""
        if not self.alive():
            self.restart()
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.stderr_file.seek(0, os.SEEK_END)
        offset = self.stderr_file.tell()
        start = time.monotonic()
        try:
            protocol.send(self.proc.stdin, message)
            reply = protocol.receive(self.proc.stdout.fileno(), deadline=start + timeout)
        except protocol.ChannelTimeout:
            elapsed = time.monotonic() - start
            self._dump_stacks()
            self.kill()
            tail = self._stderr_since(offset)
            self.restart()
            return Outcome("timeout", {}, f"no answer within {timeout:g} s; worker killed and restarted", tail, elapsed)
        except (protocol.ChannelClosed, BrokenPipeError, OSError, EOFError) as e:
            code = None
            if self.proc is not None:
                try:
                    code = self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            tail = self._stderr_since(offset)
            how = f"killed by {_signal_name(code)}" if code is not None and code < 0 else f"exited with status {code}"
            if code is None:
                how = f"channel broke ({type(e).__name__})"
            hint = _memory_hint(tail, self.memory_limit)
            if not hint and code == -signal.SIGKILL:
                hint = "; killed from outside (the system's out-of-memory killer?)"
            self.restart()
            return Outcome("crash", {}, f"worker {how}; restarted{hint}", tail, time.monotonic() - start)
        except Exception as e:  # an undecodable reply: the worker wrote garbage on the protocol channel
            self.kill()
            tail = self._stderr_since(offset)
            self.restart()
            return Outcome("crash", {}, f"unreadable reply ({type(e).__name__}: {e}); worker restarted", tail, time.monotonic() - start)
        status = reply.get("status", "error")
        message_text = reply.get("message", "")
        tail = self._stderr_since(offset) if status not in ("ok", "resend") else ""
        if status == "error" and reply.get("traceback"):
            tail = (reply["traceback"] + ("\n" + tail if tail else ""))[-STDERR_TAIL:]
        if reply.get("retire"):  # the worker asks to be replaced (it ran out of memory)
            self.restart()
            message_text += "; worker restarted"
        return Outcome(status, reply, message_text, tail, time.monotonic() - start)


def stop_all(handles: list[WorkerHandle], grace: float = 0.5) -> None:
    """Stop several workers at once: ask each to exit, give them `grace` seconds together, kill what is left."""
    for w in handles:
        w.ask_to_exit()
    deadline = time.monotonic() + grace
    for w in handles:
        proc = w.proc  # read once: a lane thread may kill the worker (and clear it) meanwhile
        if proc is not None:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    for w in handles:  # kill stragglers, reap, close the stderr files
        w.kill()
        w._close_stderr()
