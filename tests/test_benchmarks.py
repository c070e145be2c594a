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


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_reports_benchmark_runs_and_prints_both_ways() -> None:
    """benchmarks/reports.py at a small size: the before/after render lines and the run's phases."""
    r = subprocess.run([sys.executable, "benchmarks/reports.py", "--per-channel", "65536"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"^now: +render_files \d+\.\d+ s", r.stdout, re.M), r.stdout
    assert re.search(r"^before: textwrap payload .* ratio \d+x\)$", r.stdout, re.M), r.stdout
    assert re.search(r"^bncheck run of that case .* 1 finding\(s\); times: .*writing reports", r.stdout, re.M), r.stdout


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_path_costs_benchmark_prints_a_row_per_family_and_the_totals() -> None:
    """benchmarks/path_costs.py on the smoke suite and one family: its row and a total row, figures that add up."""
    r = subprocess.run([sys.executable, "benchmarks/path_costs.py", "--suite", "smoke", "--targets", "torch.functional"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    row = re.search(r"^torch.functional +(\d+) +([\d.]+) +([\d.]+) +([\d.]+) +0$", r.stdout, re.M)
    total = re.search(r"^total +([\d.]+) +([\d.]+) +([\d.]+)$", r.stdout, re.M)
    assert row and total, r.stdout
    assert int(row[1]) >= 1 and [row[2], row[3], row[4]] == [total[1], total[2], total[3]]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_throughput_benchmark_prints_each_configuration_and_identical_verdicts() -> None:
    """benchmarks/throughput.py on a few cases, without Ray: a row per configuration, ratio 1 for the first, same verdicts."""
    r = subprocess.run([sys.executable, "benchmarks/throughput.py", "--cases", "8", "--targets", "torch.functional@cpu",
                        "--jobs", "2", "--no-ray"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = dict(re.findall(r"^(local, \d judges?) +(\d+) ", r.stdout, re.M))
    assert set(rows) == {"local, 1 judge", "local, 2 judges"}, r.stdout
    assert rows["local, 1 judge"] == rows["local, 2 judges"] and int(rows["local, 1 judge"]) >= 1
    assert re.search(r"^local, 1 judge +\d+ +\d+\.\d+ +\d+\.\d +1\.00 ", r.stdout, re.M), r.stdout
    assert "verdicts identical across configurations: yes" in r.stdout
