"""bncheck as a user installs it: the built wheel, non-editable, in a fresh virtualenv, used from a folder outside
the checkout; then the README's GitHub Actions recipe, run step by step as a script, on a package that registers
its own target, before and after that target regresses.

Slow (a virtualenv with torch and onnxruntime: about two minutes, most of it copying torch); CI runs it through
the README's test command.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "recipe" / "mykernels"

pytestmark = pytest.mark.slow


def recipe_steps(readme: str) -> dict[str, str]:
    """The README's GitHub Actions workflow: step name -> its `run:` script, in order."""
    block = re.search(r"```yaml\n(name: batchnorm\n.*?)```", readme, re.S)
    assert block, "the README has no GitHub Actions recipe (a ```yaml block starting 'name: batchnorm')"
    steps: dict[str, str] = {}
    name = None
    lines = block.group(1).splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^\s+- name: (.+)$", line)
        if m:
            name = m.group(1).strip()
        m = re.match(r"^(\s+)run: (.*)$", line)
        if m and name:
            indent, rest = len(m.group(1)), m.group(2)
            if rest.strip() == "|":
                body = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    body.append(lines[i][indent + 2:])
                    i += 1
                steps[name] = "\n".join(body).strip() + "\n"
                name = None
                continue
            steps[name] = rest + "\n"
            name = None
        i += 1
    return steps


def _sh(script: str, cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """A fresh virtualenv holding the wheel built from this checkout (with torch and onnxruntime) and the sample package."""
    root = tmp_path_factory.mktemp("wheel")
    wheels = root / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(wheels), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next(wheels.glob("bncheck-*.whl"))
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"),
                        f"{wheel}[torch,onnxruntime]"], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    sample = root / "mykernels"
    shutil.copytree(SAMPLE, sample)
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-build-isolation", str(sample)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"
    return {"root": root, "bin": env_dir / "bin", "env": env, "sample": sample}  # type: ignore[dict-item]


def test_the_wheel_is_not_the_checkout(installed):
    """bncheck imports from the virtualenv's site-packages, not from src/."""
    r = subprocess.run([str(installed["bin"] / "python"), "-c", "import bncheck; print(bncheck.__file__)"],
                       cwd=installed["root"], env=installed["env"], capture_output=True, text=True)
    assert "site-packages" in r.stdout and str(ROOT) not in r.stdout, r.stdout + r.stderr


def test_audit_and_smoke_run_from_an_empty_folder(installed):
    """The first commands a new user runs work outside the checkout: the suites ship in the wheel."""
    folder = installed["root"] / "empty"
    folder.mkdir()
    env = installed["env"]
    r = _sh("bncheck audit --targets 'torch.nn*,torch.functional,ort.*' --out audit", folder, env)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    doc = json.loads((folder / "audit" / "results.json").read_text())
    assert doc["run"]["status"] == "complete" and doc["summary"]["cases"] >= 90
    assert doc["summary"]["by_status"]["error"] == 0 and (folder / "audit" / "index.html").is_file()
    r = _sh("bncheck run smoke --targets 'torch.nn@cpu' --out smoke", folder, env)
    assert r.returncode in (0, 1) and json.loads((folder / "smoke" / "results.json").read_text())["summary"]["cases"] == 12
    r = _sh("bncheck constraints", folder, env)
    assert r.returncode == 0 and "torch==" in r.stdout
    r = _sh("bncheck backends", folder, env)
    assert r.returncode == 0 and re.search(r"^mykernels\.bn@cpu +available +1\.0", r.stdout, re.M), r.stdout


def test_the_readme_ci_recipe_passes_clean_and_fails_on_a_regression(installed):
    """The README's workflow steps, run literally: green on the accepted state, exit 1 from the gate once the
    package's kernel regresses (eps outside the square root). The install step is done by the fixture, with the
    wheel built from this checkout instead of PyPI's bncheck."""
    steps = recipe_steps((ROOT / "README.md").read_text(encoding="utf-8"))
    install = [n for n in steps if n.lower().startswith("install")]
    assert install and "bncheck constraints" in steps[install[0]]
    gating = [n for n in steps if n not in install]
    assert any("gate" in steps[n] for n in gating) and any("junit" in steps[n] for n in gating)
    repo = installed["sample"]
    step_summary = repo / "step-summary.md"  # what GitHub Actions shows as the job summary
    env = {**installed["env"], "GITHUB_STEP_SUMMARY": str(step_summary)}
    first = next(n for n in gating if "bncheck run" in steps[n])
    r = _sh(steps[first], repo, env)  # once, to accept today's findings, as the README says
    assert r.returncode == 0, r.stdout + r.stderr
    r = _sh("bncheck baseline reports --out bncheck-baseline.json --reason 'accepted when the gate was set up'", repo, env)
    assert r.returncode == 0, r.stderr
    for name in gating:
        r = _sh(steps[name], repo, env)
        assert r.returncode == 0, f"step {name!r} failed on the clean state:\n{r.stdout}\n{r.stderr}"
    assert any("GITHUB_STEP_SUMMARY" in steps[n] for n in gating)
    assert step_summary.read_text().startswith("## bncheck:") and "gate passed" in step_summary.read_text()
    step_summary.unlink()
    broken = {**env, "MYKERNELS_REGRESS": "1"}
    statuses = {}
    for name in gating:
        statuses[name] = _sh(steps[name], repo, broken)
    gate = next(n for n in gating if steps[n].startswith("bncheck gate"))
    assert statuses[first].returncode == 0  # 'deviations found' is not a failure of the run step
    assert statuses[gate].returncode == 1, statuses[gate].stdout + statuses[gate].stderr
    assert re.search(r"^FAIL \w+ mykernels\.bn@cpu .*eps-outside-sqrt.*new: not in the baseline", statuses[gate].stdout, re.M)
    posted = step_summary.read_text()  # the job summary says so too, with the new finding's row
    assert "gate FAILED" in posted.splitlines()[0] and re.search(r"^\| `\w+` \| `mykernels\.bn@cpu` \|.*eps-outside-sqrt", posted, re.M)
