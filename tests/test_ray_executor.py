"""The Ray executor on a local Ray (2 CPUs): the same verdicts and findings as the local executor; a killed actor is a crash."""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any, Iterator

import pytest

from conftest import PLUGINS, ROOT

from bncheck import api
from test_executors import PLUGIN_NAMES, TARGETS, stored, suite

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """A local Ray for the module (its actors import bncheck and the test plugins from this checkout)."""
    path = os.pathsep.join([str(ROOT / "src"), str(PLUGINS), os.environ.get("PYTHONPATH", "")])
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = path  # inherited by the Ray processes, and by the workers the actors start
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="bncheck-tests")
    try:
        yield ray
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def run_on(out: Any, progress: Any = None, targets: str = TARGETS, **options: Any) -> api.RunResult:
    """api.run of the shared suite with these options."""
    opts = api.RunOptions(targets=targets, plugins=PLUGIN_NAMES, shrink=0, repro=False, timeout=60, **options)
    return api.run(suite(), out=out, options=opts, progress=progress)


def test_ray_gives_the_same_verdicts_and_findings_as_the_local_executor(tmp_path, local_ray, monkeypatch):
    """Framework actors, two judge actors, results streamed into the driver's store: identical to a local run."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    # a real framework too, where installed: its worker must see the environment a local worker does (Ray's
    # OMP_NUM_THREADS=1 changed PyTorch's summation order, and so its observations)
    targets = TARGETS + (",torch.nn@cpu" if importlib.util.find_spec("torch") else "")
    ray_result = run_on(tmp_path / "ray", targets=targets, executor="ray", jobs=2)
    run_on(tmp_path / "local", targets=targets, executor="local", jobs=1)
    assert ray_result.status == "complete"
    on_ray, local = stored(tmp_path / "ray"), stored(tmp_path / "local")
    assert {"ok", "error", "crash"} <= {e[2] for e in local["executions"]} and local["findings"]
    assert on_ray == local


def test_a_killed_actor_is_a_crash_and_is_replaced(tmp_path, local_ray, monkeypatch):
    """ray.kill on the faulty framework's actor mid-run: that execution is a crash, a new actor runs the rest."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    from bncheck import ray_executor

    plain_init = ray_executor.RayWorkerHandle.__init__

    def slowed(self: Any, *args: Any, **kwargs: Any) -> None:
        """Each faulty execution takes 0.1 s more, so that the actor still has work when it is killed."""
        plain_init(self, *args, **kwargs)
        self.env["BNCHECK_FAULTY_SLEEP"] = "0.1"

    monkeypatch.setattr(ray_executor.RayWorkerHandle, "__init__", slowed)
    killed: list[str] = []

    def progress(total: int) -> Any:
        """A progress callback that kills the faulty framework's actor once 3 results are stored."""
        seen = {"n": 0}

        def update(result: Any) -> None:
            """Count, and kill at the third."""
            seen["n"] += 1
            if seen["n"] == 3 and not killed:
                names = [n for n in ray.util.list_named_actors() if n.startswith("bncheck-faulty-")]
                assert len(names) == 1, names
                ray.kill(ray.get_actor(names[0]))
                killed.append(names[0])

        return update

    result = run_on(tmp_path / "ray", progress=progress, executor="ray", jobs=2)
    assert killed and result.status == "complete"
    run_on(tmp_path / "local", executor="local", jobs=1)
    on_ray, local = stored(tmp_path / "ray"), stored(tmp_path / "local")
    died = [e for e in on_ray["executions"] if "Ray actor" in e[3]]
    assert len(died) == 1 and died[0][2] == "crash" and killed[0] in died[0][3], died
    assert died[0][1] == "faulty.numpy@cpu"
    expected = [e for e in local["executions"] if (e[0], e[1]) != (died[0][0], died[0][1])]
    assert [e for e in on_ray["executions"] if e is not died[0]] == expected
    assert not [n for n in ray.util.list_named_actors() if n.startswith("bncheck-")]  # every actor stopped


def test_sigterm_ends_a_ray_run_cleanly_and_resume_completes_it(tmp_path):
    """SIGTERM mid-run on Ray: exit 143, reports say 'interrupted', no Ray process left; --resume on Ray completes it."""
    import signal
    import sqlite3
    import subprocess
    import sys

    from conftest import run_cli, wait_for_executions, write_jsonl

    cases = write_jsonl(tmp_path / "c.jsonl", [{"shape": [6, 3, 4], "seed": s} for s in range(1, 31)])
    out = tmp_path / "out"
    env = dict(os.environ, BNCHECK_FAULTY_SLEEP="0.2",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(PLUGINS), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "bncheck.cli", "run", str(cases), "--targets", "faulty.*", "--plugin",
                             "faulty_plugin", "--executor", "ray", "--shrink", "0", "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_executions(out / "results.sqlite", 3, proc, limit=120)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "was interrupted (SIGTERM)" in err and "--resume" in err
    assert json.loads((out / "results.json").read_text())["run"]["status"] == "interrupted"
    db = sqlite3.connect(out / "results.sqlite")
    stored = db.execute("SELECT count(*) FROM executions").fetchone()[0]
    db.close()
    assert 3 <= stored < 30
    r = run_cli("run", "--resume", "latest", "--out", str(out), "--executor", "ray", "--jobs", "1", timeout=300,
                env={"PYTHONPATH": env["PYTHONPATH"]})
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((out / "results.json").read_text())
    assert doc["run"]["status"] == "complete" and doc["summary"]["executions"] == 30
