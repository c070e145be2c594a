"""Framing of messages between the parent and a worker: an 8-byte length, then a pickle."""

from __future__ import annotations

import io
import os
import pickle
import select
import struct
import time
from typing import Any, BinaryIO

_HEADER = struct.Struct("<Q")
MAX_MESSAGE = 1 << 36  # 64 GiB: a larger length header is garbage on the channel, not a message


class ProtocolError(Exception):
    """The bytes on the channel are not a message (a garbage length header)."""


class ChannelClosed(Exception):
    """The other end closed the channel (in the parent: the worker died)."""


class ChannelTimeout(Exception):
    """No complete message arrived before the deadline."""


def send(stream: BinaryIO, message: Any) -> None:
    """Write one message."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise ChannelTimeout()
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise ChannelClosed()
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class _PlainUnpickler(pickle.Unpickler):
    """Rebuilds plain data (containers, numbers, strings, bytes) and NumPy arrays and scalars, nothing else: a reply
    can never make the parent import a framework or call a function. The globals below are every one that
    pickling such replies needs (found by recording find_class over replies of every kind, NumPy 1 and 2 names)."""

    _ALLOWED = frozenset({
        ("builtins", "complex"), ("numpy", "dtype"), ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: replies carry plain data and NumPy arrays only")


def receive(fd: int, deadline: float | None = None) -> Any:
    """Read one message from a file descriptor, waiting at most until `deadline` (time.monotonic())."""
    (length,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    if length > MAX_MESSAGE:
        raise ProtocolError(f"message length header {length} exceeds {MAX_MESSAGE} bytes (garbage on the channel)")
    return _PlainUnpickler(io.BytesIO(_read_exact(fd, length, deadline))).load()
