"""Reliability: segfaults, aborts, memory exhaustion and hangs are recorded; broken targets; SIGKILL and --resume;
hostile input is a one-line usage error; the default memory cap lets every framework start."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bncheck import protocol
from bncheck.pool import GIB, WorkerHandle, default_memory_limit, memory_limit_bytes
from bncheck.runner import _Window, broken_message
from bncheck.store import Store
from bncheck.worker import jax_cache_env
from conftest import PLUGINS, ROOT, wait_for_executions, write_jsonl

FAULTY = ("--targets", "faulty.*", "--plugin", "faulty_plugin", "--shrink", "0")


def _results(out: Path) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """results.json and its executions keyed by case seed."""
    doc = json.loads((out / "results.json").read_text())
    return doc, {doc["cases"][e["case_id"]]["seed"]: e for e in doc["executions"]}


def _cases(path: Path, seeds: list[int]) -> Path:
    return write_jsonl(path, [{"shape": [6, 3, 4], "seed": s} for s in seeds])


# ---- fault isolation ----------------------------------------------------------------------------
def test_segfault_memory_exhaustion_and_hang_are_recorded_and_the_run_goes_on(tmp_path, cli):
    """SIGSEGV is a crash with its Python stack; exhausting the memory cap is an error naming it; a hang leaves its stack."""
    seeds = [1, 106, 2, 107, 3, 108, 4, 103, 5]
    out = tmp_path / "out"
    r = cli("run", str(_cases(tmp_path / "c.jsonl", seeds)), *FAULTY, "--memory-limit", "0.5", "--timeout", "4", "--out", str(out))
    assert r.returncode == 1, r.stderr
    doc, by_seed = _results(out)
    segv = by_seed[106]
    assert segv["status"] == "crash" and "SIGSEGV" in segv["message"] and "restarted" in segv["message"]
    assert "Segmentation fault" in segv["stderr_tail"] and "faulty_plugin.py" in segv["stderr_tail"]
    assert "Extension modules" not in segv["stderr_tail"]
    for s, size in ((107, "256. MiB"), (108, "64.0 GiB")):  # touched chunk by chunk / asked for at once
        e = by_seed[s]
        assert e["status"] == "error", e
        assert e["message"].startswith(f"MemoryError: Unable to allocate {size}"), e["message"]
        assert "memory limit is 0.5 GiB" in e["message"] and "--memory-limit" in e["message"]
    hang = by_seed[103]
    assert hang["status"] == "timeout" and "faulty_plugin.py" in hang["stderr_tail"], hang  # faulthandler's dump
    for s in (1, 2, 3, 4, 5):  # the worker came back after every fault
        assert by_seed[s]["status"] == "ok" and not by_seed[s]["deviations"], by_seed[s]
    assert "broken" not in r.stdout  # crashes were never 3 in a row
    assert doc["run"]["status"] == "complete"


def test_three_consecutive_crashes_mark_a_target_broken(tmp_path, cli):
    """After 3 crashes in a row the target's remaining cases are recorded as not run, and the store says why."""
    out = tmp_path / "out"
    r = cli("run", str(_cases(tmp_path / "c.jsonl", [1, 106, 102, 105, 2, 3])), *FAULTY, "--out", str(out))
    assert r.returncode == 1, r.stderr
    doc, by_seed = _results(out)
    assert by_seed[1]["status"] == "ok"
    assert [by_seed[s]["status"] for s in (106, 102, 105)] == ["crash"] * 3
    for s in (2, 3):
        assert by_seed[s]["status"] == "crash" and by_seed[s]["message"] == broken_message(3)
    assert f"faulty.numpy@cpu: broken: {broken_message(3)}" in r.stdout
    store = Store(out / "results.sqlite")
    assert store.broken_targets(doc["run"]["run_id"]) == {"faulty.numpy@cpu": broken_message(3)}
    store.close()


def test_default_memory_limit_lets_every_framework_start_and_run(tmp_path):
    """torch, tensorflow, jax (and keras on jax, onnxruntime) workers start and run a case under the default cap."""
    from bncheck.cases import case_from_dict
    from bncheck.inputs import make_inputs
    from bncheck.targets import frameworks

    families = {"torch": "torch.nn", "tensorflow": "tf.keras", "jax": "jax.jit", "keras-jax": "keras.jax",
                "onnxruntime": "ort.opset15"}
    need = {"torch": "torch", "tensorflow": "tensorflow", "jax": "jax", "keras-jax": "keras", "onnxruntime": "onnxruntime"}
    present = {fw: fam for fw, fam in families.items() if importlib.util.find_spec(need[fw])}
    if not present:
        pytest.skip("no framework installed")
    case = case_from_dict({"shape": [4, 3, 5], "mode": "train"})
    inputs = make_inputs(case)
    workers = {fw: WorkerHandle(fw, env=dict(frameworks()[fw].env)) for fw in present}
    try:
        for w in workers.values():
            w.start()  # imports in parallel
        for fw, w in workers.items():
            assert w.memory_limit == default_memory_limit()
            st = w.request({"op": "status"}, 60)
            assert st.status == "ok" and st.reply["rlimit_data"] == default_memory_limit(), st
            out = w.request({"op": "run", "family": present[fw], "device": "cpu", "case": case.to_dict(),
                             "inputs": inputs, "key": case.case_id}, 180)
            assert out.status == "ok", (fw, out.message, out.stderr_tail[-2000:])
            if fw in ("jax", "keras-jax") and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
                assert st.reply["environment"]["JAX_COMPILATION_CACHE_DIR"].endswith(os.path.join("bncheck", "jax"))
    finally:
        for w in workers.values():
            w.stop()


def test_memory_limit_option_values():
    """--memory-limit: absent is the default (at most 16 GiB), 0 is no cap, a number is GiB."""
    assert memory_limit_bytes(None) == default_memory_limit() <= 16 * GIB
    assert memory_limit_bytes(0) is None
    assert memory_limit_bytes(2.5) == int(2.5 * GIB)


def test_jax_cache_environment_respects_the_user():
    """The JAX compilation cache goes under XDG_CACHE_HOME, caches every compilation, and a user setting wins."""
    env = jax_cache_env({"XDG_CACHE_HOME": "/x"})
    assert env["JAX_COMPILATION_CACHE_DIR"] == os.path.join("/x", "bncheck", "jax")
    assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    mine = jax_cache_env({"JAX_COMPILATION_CACHE_DIR": "/mine", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "2"})
    assert mine == {"JAX_COMPILATION_CACHE_MAX_SIZE": str(2 * GIB)}


def test_garbage_length_header_is_a_protocol_error():
    """A length header beyond any real message is refused instead of waiting for (or allocating) it."""
    r, w = os.pipe()
    os.write(w, (1 << 62).to_bytes(8, "little"))
    with pytest.raises(protocol.ProtocolError):
        protocol.receive(r, deadline=time.monotonic() + 2)
    os.close(r)
    os.close(w)


def test_window_admits_one_large_case_and_bounds_the_rest():
    """The in-flight window bounds cases and bytes, but always admits a case when nothing is in flight."""
    win = _Window(2, 100)
    win.acquire(500)  # too big, but alone: admitted
    assert (win.items, win.bytes) == (1, 500)
    win.release(500)
    win.acquire(40)
    win.acquire(40)
    assert win.items == 2
    win.release(40)
    win.release(40)
    assert (win.items, win.bytes) == (0, 0)


# ---- SIGKILL, SIGTERM and --resume --------------------------------------------------------------
def _env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(PLUGINS), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e.update(extra)
    return e


def _start_slow_run(cases: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bncheck.cli", "run", str(cases), *FAULTY, "--out", str(out)],
                            cwd=ROOT, env=_env(BNCHECK_FAULTY_SLEEP="0.3"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _stored(db: Path) -> dict[tuple[str, str], tuple[Any, ...]]:
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = con.execute("SELECT case_id, target, status, message, elapsed, inputs_digest, deviations FROM executions").fetchall()
    verdicts = dict(con.execute("SELECT case_id || target, count(*) FROM verdicts GROUP BY case_id, target").fetchall())
    con.close()
    return {(r[0], r[1]): (*r[2:], verdicts.get(r[0] + r[1], 0)) for r in rows}


def _summary(out: Path) -> dict[tuple[str, str], tuple[Any, ...]]:
    doc = json.loads((out / "results.json").read_text())
    return {(e["case_id"], e["target"]): (e["status"], e["message"], e["inputs_digest"], tuple(e["checked"]),
                                          tuple(sorted(v["key"] for v in e["deviations"]))) for e in doc["executions"]}


def _workers_of(pid: int) -> list[int]:
    """Worker processes started by `pid` that are still alive."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"bncheck.worker" in cmd and b"--parent" in cmd and cmd[cmd.index(b"--parent") + 1] == str(pid).encode():
                found.append(int(p.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_sigkill_loses_no_committed_result_and_resume_equals_a_clean_run(tmp_path, cli):
    """SIGKILL mid-run: the store is intact and holds whole executions; --resume runs only the rest; the result equals a clean run."""
    cases = _cases(tmp_path / "c.jsonl", list(range(1, 13)) + [120])  # seed 120 deviates (y scaled by 1.01)
    out = tmp_path / "killed"
    proc = _start_slow_run(cases, out)
    wait_for_executions(out / "results.sqlite", 4, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    time.sleep(0.3)
    assert _workers_of(proc.pid) == []  # the workers died with their parent
    before = _stored(out / "results.sqlite")
    assert 4 <= len(before) < 13
    for status, _msg, _el, digest, _dev, n_verdicts in before.values():
        assert status == "ok" and digest and n_verdicts > 0  # no half-written execution
    con = sqlite3.connect(out / "results.sqlite")
    assert con.execute("SELECT status FROM runs").fetchall() == [("running",)]
    con.close()
    assert not (out / "results.json").exists()

    r = cli("run", "--resume", "latest", "--out", str(out))
    assert r.returncode == 1, r.stdout + r.stderr  # seed 120 deviates
    assert f"{13 - len(before)} of 13 executions missing" in r.stderr
    after = _stored(out / "results.sqlite")
    assert len(after) == 13 and all(after[k] == v for k, v in before.items())  # the stored ones were not re-run
    doc = json.loads((out / "results.json").read_text())
    assert doc["run"]["status"] == "complete"

    clean = tmp_path / "clean"
    r = cli("run", str(cases), *FAULTY, "--out", str(clean))
    assert r.returncode == 1, r.stderr
    assert _summary(out) == _summary(clean)


def test_sigterm_records_an_interrupted_run_that_resume_completes(tmp_path, cli):
    """SIGTERM ends the run as 'interrupted' with its reports written; --resume RUN_ID completes it."""
    cases = _cases(tmp_path / "c.jsonl", list(range(1, 11)))
    out = tmp_path / "out"
    proc = _start_slow_run(cases, out)
    wait_for_executions(out / "results.sqlite", 2, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    doc = json.loads((out / "results.json").read_text())
    assert doc["run"]["status"] == "interrupted", stderr
    assert 2 <= len(doc["executions"]) < 10
    run_id = doc["run"]["run_id"]
    assert f"bncheck run --resume {run_id}" in stdout, stderr
    r = cli("run", "--resume", run_id[:12], "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["run"]["status"] == "complete" and len(doc["executions"]) == 10


def test_resume_of_an_unknown_run_lists_the_runs(tmp_path, cli):
    """--resume with a run id that is not in the store names the runs that are."""
    out = tmp_path / "out"
    assert cli("run", str(_cases(tmp_path / "c.jsonl", [1])), *FAULTY, "--out", str(out)).returncode == 0
    run_id = json.loads((out / "results.json").read_text())["run"]["run_id"]
    r = cli("run", "--resume", "nosuchrun", "--out", str(out))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and f"latest runs: {run_id}" in r.stderr, r.stderr


# ---- hostile input ------------------------------------------------------------------------------
HOSTILE: list[tuple[str, bytes, str]] = [
    ("wrong-type.jsonl", b'{"shape": "big"}\n', ":1: shape: must be a list of 2 to 5 integers"),
    ("too-large.jsonl", b'{"shape": [8, 3]}\n{"shape": [100000, 100000, 100]}\n', ":2: shape: 1000000000000 elements per batch exceeds"),
    ("negative-eps.jsonl", b'{"shape": [8, 3], "eps": -0.001}\n', ":1: eps: must be >= 0, got -0.001 (use a non-negative epsilon)"),
    ("unknown-field.jsonl", b'{"shape": [8, 3], "epsilon": 0.001}\n', ":1: epsilon: unknown field (fields: shape,"),
    ("truncated.jsonl", b'{"shape": [8, 3]}\n{"shape": [8, 3\n', ":2: invalid JSON at column"),
    ("not-utf8.jsonl", b'{"shape": [8, 3]}\n{"regime": {"name": "\xff\xfe"}}\n', ":2: not UTF-8 text"),
    ("nan-eps.jsonl", b'{"shape": [8, 3], "eps": NaN}\n', ":1: eps: must be finite"),
    ("list.json", b'{"shape": [8, 3]}', "a .json case file holds a list of cases"),
    ("bad-regime.jsonl", b'{"shape": [8, 3], "regime": {"x": {"dist": "cauchy"}}}\n', ":1: regime.x.dist: unknown distribution"),
    ("momentum.jsonl", b'{"shape": [8, 3], "momentum": 1.5}\n', ":1: momentum: must be within [0, 1], got 1.5"),
]
BAD_INVOCATIONS: list[tuple[tuple[str, ...], str]] = [
    (("run", "smoke", "--targets", "nosuch.*"), "no target matches 'nosuch.*'"),
    (("run", "no-such-suite"), "no-such-suite: no such case file or suite"),
    (("run", "smoke", "--plugin", "broken_plugin"), "plugin 'broken_plugin' failed to import"),
    (("run", "smoke", "--plugin", "no_such_module_xyz"), "plugin 'no_such_module_xyz' failed to import"),
    (("run", "--resume", "latest"), "no results store at"),
    (("run", "smoke", "--resume", "latest"), "--resume takes no CASEFILE"),
    (("run", "--resume", "latest", "--targets", "torch.*"), "--resume takes no --targets"),
    (("run",), "give at least one CASEFILE"),
]


@pytest.fixture(scope="module")
def hostile_runs(tmp_path_factory) -> dict[str, tuple[Path, Path, subprocess.CompletedProcess[str]]]:
    """Every hostile invocation, run concurrently as real `bncheck` processes: name -> (input, out dir, result)."""
    base = tmp_path_factory.mktemp("hostile")
    jobs: dict[str, tuple[Path, Path, list[str]]] = {}
    for name, content, _ in HOSTILE:
        (base / name).write_bytes(content)
        jobs[name] = (base / name, base / f"out-{name}", ["run", str(base / name)])
    for k, (args, _) in enumerate(BAD_INVOCATIONS):
        jobs[f"args{k}"] = (base, base / f"out-args{k}", list(args))
    procs = {name: subprocess.Popen([sys.executable, "-m", "bncheck.cli", *args, "--out", str(out)], cwd=ROOT, env=_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (_, out, args) in jobs.items()}
    results = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        results[name] = (jobs[name][0], jobs[name][1], subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return results


@pytest.mark.parametrize("name, expected", [(h[0], h[2]) for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_case_file_is_one_line_usage_error(hostile_runs, name, expected):
    """Each malformed case file: exit 2, one line naming file, line and fix, nothing written."""
    path, out, r = hostile_runs[name]
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith(f"bncheck: error: {path}") and r.stderr.count("\n") == 1, r.stderr
    assert expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


@pytest.mark.parametrize("k, expected", [(k, e) for k, (_, e) in enumerate(BAD_INVOCATIONS)],
                         ids=[" ".join(a) for a, _ in BAD_INVOCATIONS])
def test_unknown_targets_plugins_and_bad_resume_are_usage_errors(hostile_runs, k, expected):
    """Unknown targets, suites and plugins, --resume misuse: exit 2 with one line, and no output directory."""
    _, out, r = hostile_runs[f"args{k}"]
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("bncheck: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert expected in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()


# ---- the parent's memory -------------------------------------------------------------------------
@pytest.mark.slow
def test_parent_memory_is_flat_in_the_number_of_cases(tmp_path):
    """2000 small cases on one fast target: the parent's resident memory after 25% and at 100% differ little."""
    cases = write_jsonl(tmp_path / "many.jsonl", [{"shape": [4, 3, 2], "seed": 1000 + i} for i in range(2000)])
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "bncheck.cli", "run", str(cases), *FAULTY, "--out", str(out)],
                            cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples: list[tuple[int, int]] = []  # (stored executions, RSS KiB)
    db = out / "results.sqlite"
    while proc.poll() is None:
        try:
            rss = int(next(l for l in Path(f"/proc/{proc.pid}/status").read_text().splitlines() if l.startswith("VmRSS")).split()[1])
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            n = con.execute("SELECT count(*) FROM executions").fetchone()[0]
            con.close()
            samples.append((n, rss))
        except (OSError, StopIteration, sqlite3.Error):
            pass
        time.sleep(0.2)
    assert proc.returncode == 0
    early = max(rss for n, rss in samples if 400 <= n <= 600)
    late = max(rss for n, rss in samples if 1800 <= n < 2000)  # still executing (the report is built from the store after)
    assert late - early < 30 * 1024, (early, late)  # KiB


# ---- commits ------------------------------------------------------------------------------------
_COMMITTED_BEFORE_REPORTED = r'''
import sqlite3, sys
from pathlib import Path
from bncheck import targets as registry
from bncheck.cases import load_cases
from bncheck.runner import discover, execute
from bncheck.store import Store

registry.load_plugin("faulty_bn_targets")
db = Path(sys.argv[1]) / "s.sqlite"
store = Store(db)
run_id = store.begin_run("t", ["smoke"], {})
reader = sqlite3.connect(db)  # a second connection sees committed rows only
seen = []

def on_result(r):
    n = reader.execute("SELECT count(*) FROM executions WHERE run_id=? AND case_id=? AND target=?",
                       (run_id, r.case.case_id, r.target.name)).fetchone()[0]
    seen.append(n)

d = discover("faultybn.correct*", plugins=["faulty_bn_targets"])
try:
    ran = execute(store, run_id, load_cases(["smoke", "default"]), d, timeout=120, on_result=on_result)
finally:
    d.close()
print(ran, len(seen), sum(seen))
'''


def test_an_execution_is_reported_only_once_it_is_committed(tmp_path):
    """runner.execute commits in groups when results queue up; on_result must never see an uncommitted one."""
    r = subprocess.run([sys.executable, "-c", _COMMITTED_BEFORE_REPORTED, str(tmp_path)], capture_output=True,
                       text=True, cwd=ROOT, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ran, reported, committed = map(int, r.stdout.split())
    assert ran == reported == committed == 2 * 107  # two targets x (12 smoke + 95 default cases), each committed
