"""Parallel judging (--jobs) and executor selection: verdicts and findings identical whatever judges them."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import PLUGINS, ROOT, write_jsonl

from bncheck import api
from bncheck.generate import random_cases
from bncheck.cases import case_from_dict

PLUGIN_NAMES = ("faulty_plugin", "peer_bn_targets")
TARGETS = "faulty.*,peerbn.pairwise,peerbn.fold,peerbn.wide"
FAULT_SEEDS = [1, 101, 102, 120, 121, 122, 2]  # correct, raises, aborts, y x1.01, y x1.5, running_var x1.01, correct


def suite() -> list[Any]:
    """A small generated suite: random cases over the case space, plus cases on which the faulty target misbehaves."""
    small = [c for c in random_cases(40, 19) if _elements(c.to_dict()["shape"]) <= 4096][:14]
    return small + [case_from_dict({"shape": [6, 3, 4], "seed": s}) for s in FAULT_SEEDS]


def _elements(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


@pytest.fixture
def plugins_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test plugins importable here and in every worker or judge process."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(PLUGINS), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))


def stored(out: Path) -> dict[str, Any]:
    """Everything a run decided, from its store and results.json, without times, ids and paths."""
    db = sqlite3.connect(out / "results.sqlite")
    try:
        doc = json.loads((out / "results.json").read_text())
        return {
            "executions": sorted(db.execute("SELECT case_id, target, status, message, deviations, worst_ratio FROM executions")),
            "verdicts": sorted(db.execute("SELECT case_id, target, key, passed, ratio, detail FROM verdicts")),
            "metrics": sorted(db.execute("SELECT case_id, metrics FROM case_metrics")),
            "findings": [(f["signature"], f["target"], f["classification"], f["count"]) for f in doc["findings"]],
            "causes": [(c["target"], c["hypothesis"], c["count"]) for c in doc["root_causes"]],
            "summary": {k: v for k, v in doc["summary"].items() if "time" not in k},
        }
    finally:
        db.close()


def run_with(out: Path, **options: Any) -> dict[str, Any]:
    """api.run of the suite with these options; what it stored."""
    opts = api.RunOptions(targets=TARGETS, plugins=PLUGIN_NAMES, shrink=0, repro=False, timeout=30, **options)
    try:
        api.run(suite(), out=out, options=opts)
    except api.BncheckError as e:  # pragma: no cover - the assertion below says what happened
        raise AssertionError(f"run failed: {e}") from e
    return stored(out)


def test_verdicts_and_findings_are_identical_for_any_number_of_judges(tmp_path, plugins_importable):
    """One judge in the parent, and three judge processes (cases pinned to one each), decide exactly the same."""
    one = run_with(tmp_path / "one", jobs=1)
    three = run_with(tmp_path / "three", jobs=3)
    assert len(one["executions"]) == len(suite()) * 4
    statuses = {e[2] for e in one["executions"]}
    assert {"ok", "error", "crash"} <= statuses  # the suite exercises faults, not only passes
    assert any(not v[3] for v in one["verdicts"]) and one["findings"] and one["metrics"]
    assert three == one


def test_a_judge_process_that_dies_is_restarted_and_its_batch_judged_again(tmp_path, plugins_importable, monkeypatch):
    """Killing a judge process under a run loses no verdict: the batch goes to a new judge with the cases it needs."""
    from bncheck import judges

    killed: list[int] = []
    calls: dict[int, int] = {}
    real_call = judges.ProcessJudge.call

    def call_then_die(self: judges.ProcessJudge, message: dict[str, Any]) -> dict[str, Any]:
        """Kill a judge process at its second batch (it holds cases by then), twice in the run."""
        if self.proc is not None:
            calls[self.proc.pid] = calls.get(self.proc.pid, 0) + 1
            if calls[self.proc.pid] == 2 and len(killed) < 2:
                killed.append(self.proc.pid)
                self.proc.kill()
                self.proc.wait()
        return real_call(self, message)

    monkeypatch.setattr(judges.ProcessJudge, "call", call_then_die)
    two = run_with(tmp_path / "two", jobs=2)
    monkeypatch.setattr(judges.ProcessJudge, "call", real_call)
    one = run_with(tmp_path / "one", jobs=1)
    assert len(killed) == 2
    assert two == one


def test_ray_without_ray_installed_is_a_one_line_input_error(tmp_path, cli):
    """--executor ray where 'import ray' fails: exit 2, one line saying how to install it, nothing written."""
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    out = tmp_path / "out"
    r = cli("run", "smoke", "--targets", "faulty.*", "--plugin", "faulty_plugin", "--executor", "ray", "--out", str(out),
            env={"PYTHONPATH": os.pathsep.join([str(tmp_path / "noray"), str(PLUGINS), os.environ.get("PYTHONPATH", "")])})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert "pip install 'bncheck[ray]'" in r.stderr
    assert not out.exists()


def test_address_without_the_ray_executor_is_a_usage_error(tmp_path, cli):
    """--address names a Ray cluster, so it needs --executor ray: exit 2 with the fix, nothing written."""
    out = tmp_path / "out"
    r = cli("run", "smoke", "--address", "127.0.0.1:6379", "--out", str(out))
    assert r.returncode == 2
    assert "add --executor ray" in r.stderr
    assert not out.exists()


def test_sigterm_with_judge_processes_ends_the_run_cleanly_and_resume_completes_it(tmp_path, cli):
    """SIGTERM while two judge processes judge: exit 143, the reports say 'interrupted', no judge is left running, and
    --resume completes the run with the same verdicts as an uninterrupted one."""
    import signal
    import subprocess

    from conftest import wait_for_executions

    rows = [{"shape": [6, 3, 4], "seed": s} for s in [1, 120, 2, 121, 3, 122] * 5]
    rows = [dict(r, eps=1e-5 * (1 + i)) for i, r in enumerate(rows)]  # 30 distinct cases
    cases = write_jsonl(tmp_path / "c.jsonl", rows)
    out = tmp_path / "out"
    env = dict(os.environ, BNCHECK_FAULTY_SLEEP="0.1",
               PYTHONPATH=os.pathsep.join([str(PLUGINS), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "bncheck.cli", "run", str(cases), "--targets", "faulty.*", "--plugin",
                             "faulty_plugin", "--jobs", "2", "--shrink", "0", "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_executions(out / "results.sqlite", 4, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert json.loads((out / "results.json").read_text())["run"]["status"] == "interrupted"
    left = subprocess.run(["pgrep", "-f", f"bncheck.judges --parent {proc.pid}"], capture_output=True, text=True)
    assert left.stdout.strip() == "", left.stdout
    r = cli("run", "--resume", "latest", "--out", str(out), "--jobs", "2")
    assert r.returncode == 1, r.stderr[-2000:]  # deviations found: the faulty seeds scale y and running_var
    whole = tmp_path / "whole"
    r = cli("run", str(cases), "--targets", "faulty.*", "--plugin", "faulty_plugin", "--jobs", "1", "--shrink", "0",
            "--out", str(whole))
    assert r.returncode == 1, r.stderr[-2000:]
    resumed, uninterrupted = stored(out), stored(whole)
    assert len(resumed["executions"]) == 30
    assert resumed["executions"] == uninterrupted["executions"] and resumed["verdicts"] == uninterrupted["verdicts"]
