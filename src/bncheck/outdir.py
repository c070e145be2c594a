"""A run's output folder: created with a clear error, locked against a second bncheck, cleared of stale temporaries.

The lock is an advisory `flock` on `OUT/.bncheck.lock`, held for the whole run (or resume): the kernel releases
it when the process dies, however it dies, so a killed run never leaves the folder locked. The file itself records
who holds it (pid, run id, command, start time) so that a refused second run can say which process to wait for.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from .files import advice

LOCK_NAME = ".bncheck.lock"
_TEMPORARY = re.compile(r"^\..+\.\d+\.tmp$")  # files.write_atomic's temporaries: .<name>.<pid>.tmp


class OutDirError(Exception):
    """The output folder cannot be used; `status` is the exit status (2: the path given is wrong, 3: in use or the
    file system refuses)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def prepare(out: str | Path) -> Path:
    """Create the output folder (and its parents) if needed; an error names what is in the way."""
    p = Path(out)
    if p.is_symlink() and not p.exists():
        raise OutDirError(f"--out {out} is a symbolic link to {os.readlink(p)}, which does not exist (create it, or "
                          "choose another --out)", 2)
    if p.exists() and not p.is_dir():
        raise OutDirError(f"--out {out} exists and is not a folder (choose another --out)", 2)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutDirError(f"--out {out}: a part of this path is a file, not a folder (choose another --out)", 2) from None
    except OSError as e:
        raise OutDirError(f"cannot create the output folder {out}: {e.strerror or e}{advice(e)}", 3) from None
    return p


class OutputLock:
    """Exclusive use of an output folder by one bncheck process (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self, run_id: str, command: str) -> None:
        """Take the lock or raise OutDirError (status 3) naming the process that holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise OutDirError(f"cannot use the output folder {self.path.parent}: {e.strerror or e}{advice(e)}", 3) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _describe(_read_holder(fd))
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise OutDirError(f"{self.path.parent} is in use by another bncheck ({holder}); wait for it to finish "
                                  "or choose another --out", 3) from None
            raise OutDirError(f"cannot lock {self.path}: {e.strerror or e}", 3) from None
        self.fd = fd
        self.update(run_id, command)

    def update(self, run_id: str, command: str) -> None:
        """Record who holds the lock (the run id becomes known only once the run is stored)."""
        if self.fd is None:
            return
        info = {"pid": os.getpid(), "run_id": run_id, "command": command[:500], "since": time.time()}
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, json.dumps(info).encode(), 0)
        except OSError:  # a full disk: the lock still holds, only its description is missing
            pass

    def release(self) -> None:
        """Give the folder back (the file stays; an unlocked file means nobody holds it)."""
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(info: dict[str, Any]) -> str:
    if not info.get("pid"):
        return "a process that is starting"
    since = time.strftime("%H:%M:%S", time.localtime(info["since"])) if isinstance(info.get("since"), (int, float)) else "?"
    run = f", run {info['run_id']}" if info.get("run_id") else ""
    return f"pid {info['pid']}{run}, since {since}: {str(info.get('command', ''))[:120]}"


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries a killed writer left in the folder, its findings/ and repro/ (only call with the lock
    held: then no live writer owns one). Returns what was removed."""
    removed = []
    for d in (folder, folder / "findings", folder / "repro", *sorted((folder / "findings").glob("*/"))):
        try:
            entries = list(d.iterdir()) if d.is_dir() else []
        except OSError:
            continue
        for p in entries:
            if _TEMPORARY.match(p.name) and p.is_file():
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
    return removed
