"""Judging outside the parent: judge processes (or Ray actors) that each own the cases pinned to them.

Judging an observation is a pure function of (case, inputs, target conventions, observation): `CaseJudges`
holds the cases pinned to one judge (their inputs, and their expected values, built once per case on first use)
and answers batches of observations with (status, message, verdicts, case metrics). It is what a judge process
(`python -m bncheck.judges`) and a Ray judge actor run; the parent keeps the store (single writer).

`JudgePool` runs N judges behind one thread each: the parent's main thread submits every `ok` outcome of a case
to the judge that case is pinned to (case index modulo N), the judge's thread sends what is waiting as one batch,
and the replies come back on the run's outbox. A judge that dies is restarted and its batch sent again once
(with the cases it had); if it dies again on the same batch, those outcomes are recorded as bncheck errors.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from . import protocol

BATCH = 64  # outcomes per message to a judge, at most


def default_jobs() -> int:
    """The cores this process may use (its CPU affinity where the platform says, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# ---- the judge's side: a pure function of (case, observations) ------------------------------------------
class CaseJudges:
    """The cases pinned to one judge and their expected values; `handle` answers one batch message."""

    def __init__(self, plugins: list[str] | None = None) -> None:
        from . import targets as registry

        for p in plugins or []:
            registry.load_plugin(p)
        self.states: dict[int, Any] = {}
        self.metrics_sent: set[int] = set()
        self.targets: dict[tuple[str, str], Any] = {}

    def _target(self, family: str, device: str) -> Any:
        from . import targets as registry

        key = (family, device)
        if key not in self.targets:
            self.targets[key] = registry.family_class(family)(device)
        return self.targets[key]

    def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        """Register the message's cases, judge its items, drop the cases it names; the results in item order."""
        from .cases import case_from_dict
        from .pool import Outcome
        from .runner import _CaseState, judge_outcome

        for idx, (case_dict, case_id, inputs) in message.get("cases", {}).items():
            self.states[idx] = _CaseState(case_from_dict(case_dict), inputs, 0, case_id)
        results = []
        for seq, idx, family, device, status, text, observation in message.get("items", []):
            state = self.states[idx]
            tail = None
            try:
                out = Outcome(status, {"observation": observation}, text)
                judged = judge_outcome(state, self._target(family, device), out)
            except Exception as e:  # a fault in bncheck's own judging is recorded, as in the parent
                judged = ("error", f"bncheck could not judge this observation: {type(e).__name__}: {e}", [])
                tail = traceback.format_exc()[-4000:]
            metrics = None
            if state._expected is not None and idx not in self.metrics_sent:  # once per case, with its first result
                self.metrics_sent.add(idx)
                metrics = {conv: ref.metrics for conv, ref in state._expected.references.items() if ref.metrics}
            results.append((seq, *judged, metrics, tail))
        for idx in message.get("drop", []):
            self.states.pop(idx, None)
            self.metrics_sent.discard(idx)
        return {"status": "ok", "results": results}


def main(argv: list[str] | None = None) -> int:
    """Entry point of a judge process: answer batch messages on stdin/stdout until the parent closes the pipe."""
    parser = argparse.ArgumentParser(prog="bncheck.judges")
    parser.add_argument("--plugin", action="append", default=[])
    parser.add_argument("--parent", type=int, default=0, help="pid of the parent, to die with it")
    args = parser.parse_args(argv)
    from .worker import _die_with_parent, _private_channels

    if args.parent:
        _die_with_parent(args.parent)
    for sig in (signal.SIGINT, signal.SIGTERM):  # the parent decides when a run ends; it stops its judges itself
        signal.signal(sig, signal.SIG_IGN)
    rfd, wstream = _private_channels()
    judges = CaseJudges(args.plugin)
    while True:
        try:
            msg = protocol.receive(rfd)
        except protocol.ChannelClosed:
            return 0
        if msg.get("op") == "exit":
            return 0
        try:
            reply = judges.handle(msg)
        except Exception as e:
            reply = {"status": "error", "message": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        try:
            protocol.send(wstream, reply)
        except BrokenPipeError:
            return 0


# ---- the parent's side ----------------------------------------------------------------------------------
class JudgeDied(Exception):
    """The judge process (or actor) is gone; the message says how."""


class JudgeChannel(Protocol):
    """One judge as the parent sees it: started, called with a batch message, closed."""

    def start(self) -> None:
        """Start the judge (again, after it died)."""

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one batch message and wait for its reply; JudgeDied when the judge is gone."""

    def close(self) -> None:
        """Stop the judge; no restart after that."""


def _receive_trusted(fd: int) -> Any:
    """One framed reply from a judge process: bncheck's own code, which imports no framework, so its verdicts (with
    their enum values) are unpickled as they are; a worker's replies go through protocol.receive's allow-list."""
    import pickle

    (length,) = protocol._HEADER.unpack(protocol._read_exact(fd, protocol._HEADER.size, None))
    if length > protocol.MAX_MESSAGE:
        raise protocol.ProtocolError(f"message length header {length} exceeds {protocol.MAX_MESSAGE} bytes")
    return pickle.loads(protocol._read_exact(fd, length, None))


class ProcessJudge:
    """A judge in a child process (`python -m bncheck.judges`), framed like a worker's pipe."""

    def __init__(self, plugins: list[str]) -> None:
        self.plugins = list(plugins)
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr: Any = None
        self.closed = False

    def start(self) -> None:
        """Start (or restart) the process, in its own session so that a terminal's Ctrl-C reaches only the parent."""
        from .pool import _spawn, worker_environment

        if self.closed:
            raise JudgeDied("the judges are stopped")
        self.kill()
        cmd = [sys.executable, "-m", "bncheck.judges", "--parent", str(os.getpid())]
        for p in self.plugins:
            cmd += ["--plugin", p]
        self.stderr = tempfile.TemporaryFile(prefix="bncheck-judge-")
        self.proc = _spawn(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                           start_new_session=True, env=worker_environment(), close_fds=True)

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        """One batch, one reply."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            raise JudgeDied("the judge process is not running")
        try:
            protocol.send(proc.stdin, message)  # type: ignore[arg-type]
            return _receive_trusted(proc.stdout.fileno())  # type: ignore[union-attr]
        except (protocol.ChannelClosed, protocol.ProtocolError, OSError, EOFError, ValueError) as e:
            code = proc.poll()
            tail = ""
            if self.stderr is not None:
                try:
                    self.stderr.seek(0)
                    lines = self.stderr.read().decode("utf-8", "replace").strip().splitlines()
                    tail = f": {lines[-1]}" if lines else ""
                except (OSError, ValueError):
                    pass
            raise JudgeDied(f"the judge process {'exited with status ' + str(code) if code is not None else 'broke its pipe'}"
                            f" ({type(e).__name__}){tail}") from None

    def kill(self) -> None:
        """Kill the process (if any) and close its files."""
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.kill()
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
        f, self.stderr = self.stderr, None
        if f is not None:
            f.close()

    def close(self) -> None:
        """Ask the process to exit, then make sure it has."""
        self.closed = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                protocol.send(proc.stdin, {"op": "exit"})  # type: ignore[arg-type]
                proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


@dataclass
class _Slot:
    """One judge, the thread that feeds it, and which cases it holds now."""

    channel: JudgeChannel
    inbox: "queue.Queue[Any]" = field(default_factory=lambda: queue.Queue())
    holds: set[int] = field(default_factory=set)  # case indices registered in the live judge
    drops: list[int] = field(default_factory=list)  # cases to drop with the next batch
    guard: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None


class JudgePool:
    """N judges for one run, each case pinned to one of them; replies go to `outbox` as ('judged', ...) items."""

    def __init__(self, channels: list[JudgeChannel], outbox: "queue.Queue[Any]",
                 case_of: Callable[[int], tuple[dict[str, Any], str, dict[str, Any]]]) -> None:
        # case_of(idx) -> (case dict, case id, inputs) of a case in flight, for registering it in a judge
        self.slots = [_Slot(c) for c in channels]
        self.outbox, self.case_of = outbox, case_of
        self.stopping = threading.Event()

    def start(self) -> None:
        """Start every judge at once and one feeding thread per judge."""
        def start_one(slot: _Slot) -> None:
            """Start one judge."""
            try:
                slot.channel.start()
            except Exception:  # started again at its first batch, whose outcomes say why if it fails again
                pass

        starters = [threading.Thread(target=start_one, args=(s,), daemon=True) for s in self.slots]
        for th in starters:
            th.start()
        for th in starters:
            th.join()
        for i, slot in enumerate(self.slots):
            slot.thread = threading.Thread(target=self._feed, args=(slot,), daemon=True, name=f"bncheck-judge-{i}")
            slot.thread.start()

    def slot_of(self, idx: int) -> _Slot:
        """The judge a case is pinned to."""
        return self.slots[idx % len(self.slots)]

    def submit(self, item: tuple[Any, ...]) -> None:
        """Queue (seq, idx, family, device, status, message, observation) for the judge of case idx."""
        self.slot_of(item[1]).inbox.put(item)

    def drop(self, idx: int) -> None:
        """Case idx has no outcome left to judge: its judge forgets it with its next batch."""
        slot = self.slot_of(idx)
        with slot.guard:
            slot.drops.append(idx)

    def _feed(self, slot: _Slot) -> None:
        """Send what waits for this judge as one batch; put each result on the outbox."""
        while True:
            first = slot.inbox.get()
            if first is None:
                return
            items = [first]
            while len(items) < BATCH:
                try:
                    nxt = slot.inbox.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    slot.inbox.put(None)
                    break
                items.append(nxt)
            try:
                results = self._send(slot, items)
            except BaseException as e:  # never leave the main thread waiting
                if self.stopping.is_set():
                    return
                why = f"bncheck's judge failed twice on this batch: {type(e).__name__}: {e}"
                results = [(it[0], "error", why, [], None, traceback.format_exc()[-4000:]) for it in items]
            self.outbox.put(("judged", results))

    def _send(self, slot: _Slot, items: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """One batch to the judge; if it died, restart it and send the batch again (with every case it needs)."""
        for attempt in (0, 1):
            with slot.guard:
                drops, slot.drops = slot.drops, []
            need = {it[1] for it in items} - slot.holds
            # a case is dropped only once all its outcomes were judged, so no item of this batch is of a dropped case
            message = {"op": "judge", "cases": {i: self.case_of(i) for i in sorted(need)}, "items": items, "drop": drops}
            try:
                reply = slot.channel.call(message)
            except JudgeDied:
                if attempt or self.stopping.is_set():
                    raise
                slot.holds.clear()  # a new judge holds nothing
                slot.channel.start()
                continue
            if reply.get("status") != "ok":
                raise RuntimeError(reply.get("message", "the judge answered an error"))
            slot.holds = (slot.holds | need) - set(drops)
            return reply["results"]
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Stop the threads and the judges."""
        self.stopping.set()
        for slot in self.slots:
            slot.inbox.put(None)
        for slot in self.slots:
            try:
                slot.channel.close()
            except Exception:
                pass
        for slot in self.slots:
            if slot.thread is not None:
                slot.thread.join(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
