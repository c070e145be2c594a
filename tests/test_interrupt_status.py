"""An interrupted run exits 128 + the signal (130 for Ctrl-C/SIGINT, 143 for SIGTERM), as the README's exit status
table says, and still writes its reports marked 'interrupted'."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import PLUGINS, ROOT, wait_for_executions, write_jsonl


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default. A shell starts background jobs (CI run with `&`)
    with SIGINT ignored, and Python then keeps ignoring it, as a background job should."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_run_exits_128_plus_the_signal(tmp_path, sig, status):
    """A run stopped mid-way by SIGINT or SIGTERM exits 130 or 143 with results.json saying 'interrupted'."""
    cases = write_jsonl(tmp_path / "c.jsonl", [{"shape": [6, 3, 4], "seed": s} for s in range(1, 11)])
    out = tmp_path / "out"
    env = dict(os.environ, BNCHECK_FAULTY_SLEEP="0.3")
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGINS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen([sys.executable, "-m", "bncheck.cli", "run", str(cases), "--targets", "faulty.*",
                             "--plugin", "faulty_plugin", "--shrink", "0", "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    try:
        wait_for_executions(out / "results.sqlite", 2, proc)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == status, stdout + stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["run"]["status"] == "interrupted" and len(doc["executions"]) < 10
    assert "interrupted" in stderr and f"--resume {doc['run']['run_id']}" in stdout
