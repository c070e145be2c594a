"""Self-validation through the real pipeline: deliberately faulty targets, run by `bncheck run` in workers.

tests/plugins/faulty_bn_targets registers one NumPy target per diagnosis hypothesis (a correct float32 kernel
with one injected fault), plus correct float32 and float64 targets. One `bncheck run` executes them all in
worker processes, as a user's run would; results.json must then hold exactly one finding per faulty target,
naming its hypothesis, first quantity and classification, and no finding for the correct targets on the
benign cases.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import PLUGINS, write_jsonl

sys.path.insert(0, str(PLUGINS))
from faulty_bn_cases import BENIGN, FAMILY, FAULTS, all_cases  # noqa: E402

from bncheck.diagnose import HYPOTHESES  # noqa: E402


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """results.json of one run of every faultybn target on the self-validation cases."""
    from conftest import run_cli

    tmp = tmp_path_factory.mktemp("selfval")
    cases = write_jsonl(tmp / "cases.jsonl", all_cases())
    out = tmp / "out"
    r = run_cli("run", str(cases), "--plugin", "faulty_bn_targets", "--targets", f"{FAMILY}.*", "--shrink", "0",
                "--out", str(out), timeout=300)
    assert r.returncode == 1, f"exit {r.returncode} (1: findings expected)\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return json.loads((out / "results.json").read_text())


def test_there_is_a_faulty_target_per_hypothesis() -> None:
    """Every hypothesis of the catalogue has a faulty target (and only those)."""
    assert sorted(h for h, *_ in FAULTS) == sorted(HYPOTHESES)


@pytest.mark.parametrize("hypothesis,first,classification", [(h, q, c) for h, _, q, c in FAULTS], ids=[h for h, *_ in FAULTS])
def test_faulty_target_is_flagged_and_named(results: dict[str, Any], hypothesis: str, first: str, classification: str) -> None:
    """The target with this injected fault has exactly one finding, and it names the fault."""
    target = f"{FAMILY}.{hypothesis}@cpu"
    runs = [e for e in results["executions"] if e["target"] == target]
    assert [e["status"] for e in runs].count("ok") == 1, runs  # its one case ran, in a worker
    findings = [f for f in results["findings"] if f["target"] == target]
    assert len(findings) == 1, findings
    f = findings[0]
    assert (f["hypothesis"], f["quantity"], f["classification"]) == (hypothesis, first, classification), f
    assert f["count"] == 1


@pytest.mark.parametrize("name", sorted(BENIGN))
def test_correct_targets_have_no_finding(results: dict[str, Any], name: str) -> None:
    """The correct float32 and float64 targets run every benign case of theirs and deviate on none."""
    target = f"{FAMILY}.{name}@cpu"
    runs = [e for e in results["executions"] if e["target"] == target and e["status"] != "unsupported"]
    assert len(runs) == len(BENIGN[name]) and all(e["status"] == "ok" and not e["deviations"] for e in runs), runs
    assert not [f for f in results["findings"] if f["target"] == target]


def test_findings_are_only_the_injected_faults(results: dict[str, Any]) -> None:
    """Nothing else is found: one finding per faulty target, in total."""
    assert len(results["findings"]) == len(FAULTS)
    assert {f["target"] for f in results["findings"]} == {f"{FAMILY}.{h}@cpu" for h, *_ in FAULTS}
