"""`git bisect run python repro.py` over a kernel's history: bncheck's script exits 1 on the commits with the bug and
0 on the others, so bisect names the commit that introduced it (the kernel is tests/plugins/bisect_bn.py's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import PLUGINS, write_jsonl

KERNEL = '''"""A BN kernel in float64 (version {version})."""
import numpy as np

__version__ = "{version}"


def batch_norm(case, inputs, phases):
    """y and the running statistics of every phase."""
    C, eps, m = case["shape"][1], case["eps"], case["momentum"]
    rm, rv = inputs["running_mean"].astype(np.float64), inputs["running_var"].astype(np.float64)
    out = {{}}
    for phase in phases:
        x = inputs[phase + ".x"].astype(np.float64)
        n = x.size // C
        if phase == "eval":
            mean, var = rm, rv
        else:
            mean = x.mean(0)
            var = ((x - mean) ** 2).mean(0)
        out[phase + ".y"] = (x - mean) / {normalise} * inputs["gamma"] + inputs["beta"]
        if phase != "eval":
            rm = (1 - m) * rm + m * mean
            rv = (1 - m) * rv + m * var * n / (n - 1)
            out[phase + ".running_mean"], out[phase + ".running_var"] = rm, rv
    return out
'''
GOOD, BAD = "np.sqrt(var + eps)", "(np.sqrt(var) + eps)"  # the regression: eps outside the square root


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run git in the kernel's checkout (a throwaway identity for its commits)."""
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo,
                          capture_output=True, text=True, timeout=120, check=True)


def _commit(repo: Path, version: str, normalise: str) -> str:
    """Commit a version of the kernel; its hash."""
    (repo / "bisectbn_kernel.py").write_text(KERNEL.format(version=version, normalise=normalise))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", f"version {version}")
    return _git(repo, "rev-parse", "HEAD").stdout.strip()


def test_git_bisect_run_finds_the_commit_that_broke_the_kernel(tmp_path, cli):
    """bncheck finds eps outside the root at HEAD; its script exits 1 there and 0 on the fixed kernel, `git bisect
    run python repro.py` names the commit that introduced the bug, and the swapped recipe the one that fixed it."""
    repo = tmp_path / "kernel"
    repo.mkdir()
    _git(repo, "init", "-q")
    first = _commit(repo, "1.0", GOOD)
    _commit(repo, "1.1", GOOD)
    broke = _commit(repo, "1.2", BAD)
    _commit(repo, "1.3", BAD)
    env = {"PYTHONPATH": os.pathsep.join([str(PLUGINS), str(repo), os.environ.get("PYTHONPATH", "")])}
    # eps = 0.5 on float64 values of variance ~1: eps outside the root changes y far beyond float64 rounding
    cases = write_jsonl(tmp_path / "c.jsonl", [{"shape": [8, 3], "dtype": "float64", "eps": 0.5}])
    out = tmp_path / "out"
    r = cli("run", str(cases), "--targets", "bisectbn.*", "--plugin", "bisect_bn", "--out", str(out), env=env)
    assert r.returncode == 1, r.stderr
    (finding,) = json.loads((out / "results.json").read_text())["findings"]
    assert finding["hypothesis"] == "eps-outside-sqrt" and finding["quantity"] == "y", finding
    script = out / finding["repro"]
    run_env = {**os.environ, **env}
    bad = subprocess.run([sys.executable, str(script)], cwd=repo, capture_output=True, text=True, env=run_env, timeout=120)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "REPRODUCED: train0.y beyond bncheck's bound (exit 1)" in bad.stdout, bad.stdout
    assert any(line.startswith("train0.y") and " DEVIATES " in line for line in bad.stdout.splitlines()), bad.stdout
    branch = _git(repo, "rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
    _git(repo, "checkout", "-q", first)
    good = subprocess.run([sys.executable, str(script)], cwd=repo, capture_output=True, text=True, env=run_env, timeout=120)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "NOT REPRODUCED: train0.y within bncheck's bounds (exit 0)" in good.stdout, good.stdout
    _git(repo, "checkout", "-q", branch)
    _git(repo, "bisect", "start", "HEAD", first)
    bisect = subprocess.run(["git", "bisect", "run", sys.executable, str(script)], cwd=repo, capture_output=True, text=True,
                            env=run_env, timeout=300)
    assert f"{broke} is the first bad commit" in bisect.stdout, bisect.stdout + bisect.stderr
    # and the other way round (docs/reproducing.md): the commit that fixed it, with the terms and statuses swapped
    _git(repo, "bisect", "reset")
    fixed = _commit(repo, "1.4", GOOD)
    _commit(repo, "1.5", GOOD)
    _git(repo, "bisect", "start", "--term-old=broken", "--term-new=fixed", "HEAD", broke)
    wrapper = f"{sys.executable} {script}; s=$?; [ $s = 125 ] && exit 125; [ $s = 1 ] && exit 0; exit 1"
    bisect = subprocess.run(["git", "bisect", "run", "sh", "-c", wrapper], cwd=repo, capture_output=True, text=True,
                            env=run_env, timeout=300)
    assert f"{fixed} is the first fixed commit" in bisect.stdout, bisect.stdout + bisect.stderr
