"""A signal in every phase of a run (start-up, shrinking, reproduction scripts, reports) ends it with 128 + the signal,
a readable results.json saying 'interrupted' (or the folder as it was, before anything is stored), and a resume
command; two runs on one output folder are told apart."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PLUGINS, ROOT, run_cli, wait_for_executions, write_jsonl

SLOW_PHASE = PLUGINS / "slow_phase.py"


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGINS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background job's SIGINT is ignored; a user's is not


def _cases(tmp_path: Path) -> Path:
    """Two cases, one of which the faulty target gets wrong (seed 120 scales y): a finding to shrink and script."""
    return write_jsonl(tmp_path / "c.jsonl", [{"shape": [6, 3, 4], "seed": 120}, {"shape": [6, 3, 4], "seed": 1}])


def _run_in_phase(tmp_path: Path, phase: str, sig: int, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, str]:
    """Start a run whose `phase` is slowed, signal it there, and return the finished process and its stderr."""
    # an interruptible phase is cut short by the signal; the reports hold it until written: a short sleep there
    args = [sys.executable, str(SLOW_PHASE), phase, "3" if phase == "reports" else "20", "run", str(_cases(tmp_path)), "--targets", "faulty.*",
            "--plugin", "faulty_plugin", "--out", str(out), *extra]
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if line.strip() == f"PHASE {phase}":
                time.sleep(0.3)
                proc.send_signal(sig)
                break
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert any(line.strip() == f"PHASE {phase}" for line in lines), "".join(lines)
    return subprocess.CompletedProcess(args, proc.returncode, stdout, "".join(lines) + stderr), "".join(lines) + stderr


def _stored_status(out: Path) -> str:
    con = sqlite3.connect(out / "results.sqlite")
    try:
        return con.execute("SELECT status FROM runs ORDER BY started DESC LIMIT 1").fetchone()[0]
    finally:
        con.close()


def test_a_signal_during_start_up_leaves_the_folder_as_it_was(tmp_path):
    """Before anything is stored: 130, one line saying so, and no output folder created."""
    out = tmp_path / "out"
    r, stderr = _run_in_phase(tmp_path, "start", signal.SIGINT, out)
    assert r.returncode == 130, stderr
    assert "interrupted while starting" in stderr and "Traceback" not in stderr and "Aborted" not in stderr
    assert not out.exists()


def test_sigterm_during_start_up_keeps_the_previous_reports(tmp_path):
    """A folder with an earlier run's reports keeps them, untouched, when the next run is stopped while starting."""
    out = tmp_path / "out"
    first = run_cli("run", str(_cases(tmp_path)), "--targets", "faulty.*", "--plugin", "faulty_plugin", "--shrink", "0",
                    "--out", str(out))
    assert first.returncode == 1, first.stderr
    before = (out / "results.json").read_bytes()
    r, stderr = _run_in_phase(tmp_path, "start", signal.SIGTERM, out)
    assert r.returncode == 143, stderr
    assert (out / "results.json").read_bytes() == before


@pytest.mark.parametrize("phase", ["shrink", "repro", "reports"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_after_execution_writes_interrupted_reports_and_resume_completes_them(tmp_path, phase, sig):
    """Shrinking and scripts stop at once; report writing finishes first (the signal is held) and then says so."""
    out = tmp_path / "out"
    r, stderr = _run_in_phase(tmp_path, phase, sig, out)
    assert r.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["run"]["status"] == "interrupted" and _stored_status(out) == "interrupted"
    assert len(doc["executions"]) == 2 and doc["findings"]
    run_id = doc["run"]["run_id"]
    assert f"--resume {run_id}" in r.stdout
    if phase == "shrink":
        assert all(f["shrink"]["not_shrunk"] == "interrupted" and f["shrink"]["skipped"] == "the run was interrupted while shrinking" for f in doc["findings"])
    assert not list(out.rglob("*.tmp"))
    resumed = run_cli("run", "--resume", run_id, "--out", str(out))
    assert resumed.returncode == 1, resumed.stderr  # complete now, with its finding
    doc = json.loads((out / "results.json").read_text())
    assert doc["run"]["status"] == "complete" and _stored_status(out) == "complete"


def test_a_second_run_on_a_busy_folder_is_refused_naming_the_holder(tmp_path):
    """While one run executes, another run or a resume on its folder exits 3 with the holder's pid; afterwards both work."""
    cases = write_jsonl(tmp_path / "c.jsonl", [{"shape": [6, 3, 4], "seed": s} for s in range(1, 9)])
    out = tmp_path / "out"
    args = [sys.executable, "-m", "bncheck.cli", "run", str(cases), "--targets", "faulty.*", "--plugin", "faulty_plugin",
            "--shrink", "0", "--out", str(out)]
    first = subprocess.Popen(args, cwd=ROOT, env=_env(BNCHECK_FAULTY_SLEEP="0.5"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for_executions(out / "results.sqlite", 1, first)
        second = run_cli(*args[3:])
        assert second.returncode == 3, second.stderr
        assert f"is in use by another bncheck (pid {first.pid}" in second.stderr, second.stderr
        resume = run_cli("run", "--resume", "latest", "--out", str(out))
        assert resume.returncode == 3 and f"pid {first.pid}" in resume.stderr, resume.stderr
        assert first.poll() is None  # the first run did not notice
        stdout, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, stderr
    assert json.loads((out / "results.json").read_text())["summary"]["executions"] == 8
    again = run_cli(*args[3:])
    assert again.returncode == 0, again.stderr


def test_a_killed_writers_temporaries_are_removed_by_the_next_run(tmp_path):
    """write_atomic's temporaries left by a SIGKILLed writer do not pile up in the folder."""
    out = tmp_path / "out"
    (out / "findings" / "abc").mkdir(parents=True)
    stale = [out / ".results.json.4242.tmp", out / "findings" / "abc" / ".case.json.4242.tmp"]
    for p in stale:
        p.write_text("half")
    keep = out / "notes.txt"
    keep.write_text("mine")
    r = run_cli("run", str(_cases(tmp_path)), "--targets", "faulty.*", "--plugin", "faulty_plugin", "--shrink", "0",
                "--out", str(out))
    assert r.returncode == 1, r.stderr
    assert not any(p.exists() for p in stale) and keep.read_text() == "mine"
    assert "left by a writer that was killed" in r.stderr
