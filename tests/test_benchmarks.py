"""The judging benchmark runs from the repository and prints consistent figures (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_judging_benchmark_prints_every_stage_and_their_total() -> None:
    """benchmarks/judging.py on a few generated cases: every stage is printed, and the total is their sum."""
    r = subprocess.run([sys.executable, "benchmarks/judging.py", "--cases", "12", "--targets", "torch.functional@cpu",
                        "--repeats", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    head = re.search(r"^(\d+) outcomes \((\d+) deviating\) of (\d+) generated cases \(seed 0\) on 1 targets: "
                     r"torch.functional@cpu$", r.stdout, re.M)
    assert head, r.stdout
    assert 1 <= int(head[1]) <= 12 and int(head[3]) <= 12
    stages = dict(re.findall(r"^  (\S[^\d\n]*?) +(\d+\.\d+)s ", r.stdout, re.M))
    assert set(stages) == {"inputs", "reference + bounds", "compare", "diagnosis", "verdicts to dicts", "peers", "total"}
    parts = sum(float(v) for k, v in stages.items() if k != "total")
    assert abs(parts - float(stages["total"])) <= 0.004  # seven figures, each rounded to the millisecond
    assert re.search(r"^  peer judgement: \d+\.\d % of the other stages' CPU per outcome", r.stdout, re.M), r.stdout
