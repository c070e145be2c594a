"""Files written whole or not at all, and a one-line account of a write that failed (disk, folder, permission)."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

# errno values that say the disk or the file system refused, not that bncheck is wrong
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG})
# SQLite primary result codes of the same kind: PERM 3, BUSY 5, LOCKED 6, READONLY 8, IOERR 10, CORRUPT 11, FULL 13,
# CANTOPEN 14, NOTADB 26 (a misused API or a constraint is bncheck's fault, and stays a traceback)
_SQLITE_DISK_CODES = frozenset({3, 5, 6, 8, 10, 11, 13, 14, 26})
# their messages, for Pythons before 3.11, whose sqlite3 exceptions carry no code
_SQLITE_DISK_MESSAGES = ("disk is full", "disk I/O error", "readonly database", "unable to open database", "malformed",
                         "not a database", "database is locked", "access permission denied")


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


def disk_failure(e: BaseException) -> str | None:
    """What went wrong when `e` is a full, read-only, locked or failing disk or results database; None for anything else."""
    if isinstance(e, sqlite3.Error):
        code = getattr(e, "sqlite_errorcode", None)
        if code is not None:
            return str(e) if (code & 0xFF) in _SQLITE_DISK_CODES else None
        return str(e) if any(m in str(e) for m in _SQLITE_DISK_MESSAGES) else None
    if isinstance(e, OSError) and (e.errno in _DISK_ERRNOS or isinstance(e, WriteError)):
        reason = os.strerror(e.errno) if e.errno else (e.strerror or "could not be written")
        return f"{e.filename}: {reason}" if e.filename else reason
    return None
