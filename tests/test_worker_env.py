"""What the README promises about worker environments: passive OpenMP waiting, and JAX's persistent compilation
cache under $XDG_CACHE_HOME/bncheck/jax unless JAX_ENABLE_COMPILATION_CACHE=false."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from bncheck.cases import case_from_dict
from bncheck.inputs import make_inputs
from bncheck.pool import WorkerHandle, worker_environment
from bncheck.targets import frameworks
from conftest import PLUGINS


def test_openmp_waits_passively_unless_the_user_says_otherwise():
    """OMP_WAIT_POLICY=PASSIVE is set for workers; a value the user exported is kept."""
    assert worker_environment(base={})["OMP_WAIT_POLICY"] == "PASSIVE"
    assert worker_environment(base={"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to read a process's environment")
def test_a_running_worker_has_passive_openmp_waiting(monkeypatch):
    """The environment of a real worker process (read from /proc) has OMP_WAIT_POLICY=PASSIVE."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    w = WorkerHandle("faulty", plugins=["faulty_plugin"])
    try:
        w.start()
        assert w.request({"op": "status"}, 60).status == "ok"
        env = dict(kv.split("=", 1) for kv in Path(f"/proc/{w.proc.pid}/environ").read_text().split("\0") if "=" in kv)
        assert env.get("OMP_WAIT_POLICY") == "PASSIVE"
    finally:
        w.stop()


def _cache_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_compilation_cache_fills_its_folder_unless_disabled(tmp_path):
    """A jax worker caches compiled kernels under $XDG_CACHE_HOME/bncheck/jax; JAX_ENABLE_COMPILATION_CACHE=false
    leaves that folder empty."""
    if any(k in os.environ for k in ("JAX_COMPILATION_CACHE_DIR", "JAX_ENABLE_COMPILATION_CACHE")):
        pytest.skip("the environment already configures JAX's cache")
    case = case_from_dict({"shape": [4, 3, 5], "seed": 11})
    inputs = make_inputs(case)
    folders = {}
    for label, extra in (("on", {}), ("off", {"JAX_ENABLE_COMPILATION_CACHE": "false"})):
        home = tmp_path / label
        env = {**dict(frameworks()["jax"].env), "XDG_CACHE_HOME": str(home), **extra}
        w = WorkerHandle("jax", env=env)
        try:
            out = w.request({"op": "run", "family": "jax.jit", "device": "cpu", "case": case.to_dict(), "inputs": inputs,
                             "key": case.case_id}, 180)
            assert out.status == "ok", (out.message, out.stderr_tail[-2000:])
        finally:
            w.stop()
        folders[label] = home / "bncheck" / "jax"
    assert _cache_files(folders["on"]), "the cache folder should hold the compiled kernels"
    assert _cache_files(folders["off"]) == []
