"""Short renderings of user-supplied values for one-line messages: an error line never echoes megabytes."""

from __future__ import annotations

MAX_QUOTED = 200  # characters of an offending value an error line repeats, at most


def shorten(text: str, limit: int = MAX_QUOTED) -> str:
    """`text` itself when short, else its head and tail around a count of what was left out."""
    if len(text) <= limit:
        return text
    keep = max(limit - 40, 20)
    head, tail = keep * 2 // 3, keep // 3
    return f"{text[:head]}...[{len(text) - head - tail} characters]...{text[-tail:]}"
