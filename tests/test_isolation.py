"""Fault isolation: a target that raises, aborts, hangs, exits or prints is recorded and the run goes on."""

from __future__ import annotations

import json
import os

from conftest import PLUGINS, write_jsonl


def test_faults_are_recorded_and_the_run_completes(tmp_path, cli):
    """Each injected fault becomes error/crash/timeout for its case; cases after it still run and pass."""
    seeds = [1, 101, 2, 102, 3, 103, 4, 104, 105, 5]
    cases = write_jsonl(tmp_path / "faults.jsonl", [{"shape": [6, 3, 4], "seed": s} for s in seeds])
    out = tmp_path / "out"
    r = cli("run", str(cases), "--targets", "faulty.*", "--plugin", "faulty_plugin", "--timeout", "8", "--out", str(out))
    assert r.returncode == 1, r.stderr
    doc = json.loads((out / "results.json").read_text())
    by_seed = {doc["cases"][e["case_id"]]["seed"]: e for e in doc["executions"]}
    assert sorted(by_seed) == sorted(seeds)
    assert by_seed[101]["status"] == "error" and "ValueError: injected failure" in by_seed[101]["message"]
    assert by_seed[101]["stderr_tail"].strip().startswith("Traceback")
    assert by_seed[102]["status"] == "crash" and "SIGABRT" in by_seed[102]["message"]
    assert by_seed[103]["status"] == "timeout" and "8 s" in by_seed[103]["message"]
    assert by_seed[105]["status"] == "crash" and "status 7" in by_seed[105]["message"]
    assert by_seed[104]["status"] == "ok" and not by_seed[104]["deviations"]
    assert "garbage on stdout" in by_seed[104]["stderr_tail"] or by_seed[104]["stderr_tail"] == ""
    for s in (1, 2, 3, 4, 5):
        assert by_seed[s]["status"] == "ok" and not by_seed[s]["deviations"], by_seed[s]
        assert "train0.running_var" in by_seed[s]["checked"]
    assert doc["summary"]["by_status"] == {"ok": 6, "error": 1, "refused": 0, "crash": 2, "timeout": 1, "unsupported": 0}
    assert doc["run"]["status"] == "complete"


def test_broken_plugin_is_a_one_line_usage_error(tmp_path, cli):
    """A plugin that fails to import exits 2 with one line naming it, and writes nothing."""
    out = tmp_path / "out"
    r = cli("run", "smoke", "--plugin", "broken_plugin", "--out", str(out))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "plugin 'broken_plugin' failed to import: ImportError: this plugin is broken on purpose" in r.stderr
    assert not out.exists()


def test_entry_point_targets_are_discovered(tmp_path, cli):
    """A distribution that declares a `bncheck.targets` entry point contributes its targets without --plugin."""
    dist = tmp_path / "site" / "bncheck_faulty_ep-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bncheck-faulty-ep\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bncheck.targets]\nfaulty = faulty_plugin:FaultyNumpy\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(PLUGINS)])}
    r = cli("backends", env=env)
    assert r.returncode == 0, r.stderr
    assert "faulty.numpy@cpu" in r.stdout and "available" in r.stdout
    cases = write_jsonl(tmp_path / "c.jsonl", [{"shape": [4, 3, 2]}])
    r = cli("run", str(cases), "--targets", "faulty.*", "--out", str(tmp_path / "o"), env=env)
    assert r.returncode == 0, r.stdout + r.stderr


def test_frameworks_are_probed_at_the_same_time(tmp_path, cli):
    """Discovery imports every framework at once: two probes that each wait for the other must both answer.

    (Probed one after another, as they once were, the imports took the sum of their times; the first of
    these two probes would wait for the second in vain, fail, and leave its target unavailable.)
    """
    r = cli("backends", "--plugin", "rendezvous_plugin", "--json", env={"BNCHECK_RENDEZVOUS": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)["targets"]}
    for name in ("rendezvous.a@cpu", "rendezvous.b@cpu"):
        assert rows[name]["available"], rows[name]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_the_parent_unpickles_plain_data_and_arrays_only():
    """Arrays, NumPy scalars and plain containers come through; any other global (even a builtin) is refused."""
    import io
    import pickle

    import numpy as np
    import pytest

    from bncheck.protocol import _PlainUnpickler

    reply = {"observation": {"y": np.ones((2, 3)), "s": np.float32(2.5), "f": np.asfortranarray(np.ones((3, 2))),
                             "v": np.arange(5, dtype=np.float16)[::2]},
             "details": {"t": (1, 2), "c": 1 + 2j, "set": {1}, "b": b"x", "n": None, "i": np.int64(3)}}
    back = _PlainUnpickler(io.BytesIO(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))).load()
    assert np.array_equal(back["observation"]["f"], reply["observation"]["f"]) and back["details"]["c"] == 1 + 2j

    class Evil:
        def __reduce__(self):
            return (getattr, (print, "__name__"))

    for payload in (Evil(), pickle.loads(pickle.dumps(print)), range(3)):
        with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins"):
            _PlainUnpickler(io.BytesIO(pickle.dumps(payload))).load()
