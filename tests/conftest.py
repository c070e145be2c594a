"""Shared fixtures: paths, a helper to run the real `bncheck` command in a subprocess, per-module framework workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
