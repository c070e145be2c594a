"""Shared fixtures: paths, a helper to run the real `bncheck` command in a subprocess, per-module framework workers."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from bncheck.pool import WorkerHandle

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = Path(__file__).resolve().parent / "plugins"


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m bncheck.cli ARGS` as a user would, with the test plugins importable."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(PLUGINS), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "bncheck.cli", *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env=e)


def wait_for_executions(db: Path, at_least: int, proc: subprocess.Popen[str], limit: float = 60) -> None:
    """Wait until a running `bncheck run` (proc) has stored `at_least` executions in `db`."""
    stop = time.monotonic() + limit
    while time.monotonic() < stop:
        assert proc.poll() is None, proc.communicate()
        if db.exists():
            try:
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                try:
                    if con.execute("SELECT count(*) FROM executions").fetchone()[0] >= at_least:
                        return
                finally:
                    con.close()
            except sqlite3.OperationalError:  # the store is being created
                pass
        time.sleep(0.05)
    raise AssertionError("the run stored too few results in time")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Write one JSON object per line."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def cli():
    """The run_cli helper."""
    return run_cli


@pytest.fixture(scope="module")
def workers() -> Iterator[dict[str, WorkerHandle]]:
    """Framework workers keyed by the test module's choice (framework or backend), started by the tests on first
    use and stopped after the module."""
    started: dict[str, WorkerHandle] = {}
    yield started
    for w in started.values():
        w.stop()
