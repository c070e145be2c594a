"""Files written whole or not at all, and a one-line account of a write that failed (disk, folder, permission)."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

# errno values that say the disk or the file system refused, not that bncheck is wrong
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG})
# SQLite primary result codes of the same kind: PERM 3, BUSY 5, LOCKED 6, READONLY 8, IOERR 10, FULL 13, CANTOPEN 14;
# and those that say the file is no (sound) database: CORRUPT 11, NOTADB 26. A misused API or a constraint is
# bncheck's fault, and stays a traceback. The messages are for Pythons before 3.11, whose exceptions carry no code.
_SQLITE_DISK = {3: "access permission denied", 5: "database is locked", 6: "database table is locked",
                8: "readonly database", 10: "disk I/O error", 13: "disk is full", 14: "unable to open database"}
_SQLITE_NOT_A_STORE = {11: "malformed", 26: "not a database"}


class WriteError(OSError):
    """A file bncheck writes (a report, a case file, a script) could not be written: its folder is gone, the disk is
    full or read-only, or permission is lacking. Its `filename` is the file that was being written."""


def write_atomic(path: Path | str, data: str | bytes) -> None:
    """Write `data` so that readers see the old file or the whole new one; a failed write leaves no temporary behind
    and raises WriteError naming `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WriteError(e.errno, e.strerror, str(path)) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sqlite_is(e: sqlite3.Error, kinds: dict[int, str]) -> bool:
    """True when SQLite's primary result code of `e` (or, without one, its message) is one of `kinds`."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in kinds
    return any(m in str(e) for m in kinds.values())


def not_a_database(e: sqlite3.Error) -> bool:
    """True when SQLite says the file is not a database, or a damaged one (SQLITE_NOTADB, SQLITE_CORRUPT)."""
    return _sqlite_is(e, _SQLITE_NOT_A_STORE)


def disk_failure(e: BaseException) -> str | None:
    """What went wrong when `e` is a full, read-only, locked or failing disk or results database; None for anything else."""
    if isinstance(e, sqlite3.Error):
        return str(e) if _sqlite_is(e, _SQLITE_DISK) or not_a_database(e) else None
    if isinstance(e, OSError) and (e.errno in _DISK_ERRNOS or isinstance(e, WriteError)):
        reason = os.strerror(e.errno) if e.errno else (e.strerror or "could not be written")
        return f"{e.filename}: {reason}" if e.filename else reason
    return None


def advice(e: BaseException) -> str:
    """What to do about a disk or file-system refusal, by its errno or SQLite code: '; free some space', ..."""
    if isinstance(e, sqlite3.Error):
        if _sqlite_is(e, {13: "disk is full"}):
            return "; free some space or choose another location"
        if _sqlite_is(e, {8: "readonly database"}):
            return "; the file or its folder is read-only: check the permissions, or choose another location"
        if _sqlite_is(e, {5: "database is locked", 6: "database table is locked"}):
            return "; another process holds the results store: wait for it, or choose another location"
        if _sqlite_is(e, {10: "disk I/O error"}):  # SQLite says no more: a full disk, a file-size limit or a failing one
            return "; free some space or check the disk, or choose another location"
        return "; check the disk and the permissions, or choose another location"
    if not isinstance(e, OSError):
        return ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "; free some space or choose another location"
    if e.errno == errno.EROFS:
        return "; the file system is read-only: choose another location"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "; check the permissions, or choose another location"
    if e.errno == errno.EIO:
        return "; the disk reported an I/O error: check it, or choose another location"
    return "; choose another location"
