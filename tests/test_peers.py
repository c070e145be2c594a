"""Peer-relative accuracy and the same-format check, from stored verdicts: unit rules, then a real run of peers.

The run uses tests/plugins/peer_bn_targets: three correct NumPy kernels of different accuracy (float32 pairwise,
folded affine, float64 arithmetic), one correct but sequential-sum kernel, and a one-pass kernel that returns
NaN on one case. On the shipped smoke suite nothing is flagged; on the hazards suite's many-elements case (a
million values per channel) the sequential kernel is a precision outlier within its bound, its peers named.
"""

from __future__ import annotations

import json
import math
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import PLUGINS, write_jsonl

sys.path.insert(0, str(PLUGINS))
from peer_bn_targets import MANY, PEER_NAN_CASE, VARIANCE_OVERFLOW_CASE  # noqa: E402

from bncheck import peers  # noqa: E402
from bncheck.cases import case_from_dict  # noqa: E402


def verdict(key: str, err: float, passed: bool = True, scale: float = 1e-7, ratio: float = 0.01) -> dict[str, Any]:
    """A stored verdict row with the fields the peer judgement reads."""
    return {"key": key, "passed": passed, "max_abs": err, "scale_ulp": scale, "ratio": ratio}


def executions(errors: dict[str, float], key: str = "train0.y", **kw: Any) -> list[dict[str, Any]]:
    """One ok execution per target with one verdict of the given error."""
    return [{"case_id": "c", "target": t, "status": "ok", "verdicts": [verdict(key, e, **kw)]} for t, e in errors.items()]


# ---- the rule -----------------------------------------------------------------------------------
def test_an_error_far_above_the_peers_median_is_an_outlier() -> None:
    """Four targets, one of them 1000 times less accurate than the median of its peers: it alone is flagged,
    with its factor, ULPs and every peer's error."""
    counts = peers.PeerJudgement([])
    found = peers.outliers_of_case("c", executions({"a@cpu": 1e-7, "b@cpu": 2e-7, "c@cpu": 1.5e-7, "bad@cpu": 1.5e-4}),
                                   counts=counts)
    assert [o["target"] for o in found] == ["bad@cpu"]
    o = found[0]
    assert o["factor"] == pytest.approx(1000.0) and o["ulps"] == pytest.approx(1500.0)
    assert [p["target"] for p in o["peers"]] == ["a@cpu", "c@cpu", "b@cpu"]  # most accurate first
    assert counts.judged == 4 and counts.not_judged == 0


def test_fewer_than_three_peers_are_not_judged() -> None:
    """Three targets (two peers each): nothing is judged, and the count of what was not judged says so."""
    counts = peers.PeerJudgement([])
    assert peers.outliers_of_case("c", executions({"a@cpu": 1e-7, "b@cpu": 1e-7, "bad@cpu": 1e-3}), counts=counts) == []
    assert counts.judged == 0 and counts.not_judged == 3


def test_the_floor_and_the_factor_both_hold() -> None:
    """Exact peers (error 0) do not make a few roundings an outlier (the ULP floor); a factor below the rule's
    is not one either; a deviating quantity is a bound finding, not judged again here."""
    assert peers.outliers_of_case("c", executions({"a@cpu": 0.0, "b@cpu": 0.0, "c@cpu": 0.0, "d@cpu": 3e-7})) == []
    just_below = peers.RULE.factor * 0.9 * 1e-7
    assert peers.outliers_of_case("c", executions({"a@cpu": 1e-7, "b@cpu": 1e-7, "c@cpu": 1e-7, "d@cpu": just_below})) == []
    rows = executions({"a@cpu": 1e-7, "b@cpu": 1e-7, "c@cpu": 1e-7})
    rows.append({"case_id": "c", "target": "d@cpu", "status": "ok", "verdicts": [verdict("train0.y", 1.0, passed=False)]})
    assert peers.outliers_of_case("c", rows) == []


def _oor_execution(target: str, passed: bool) -> dict[str, Any]:
    diag = {"classification": "out-of-range", "deviating": ["train0.y"], "out_of_range": [
        {"intermediate": "variance", "hypothesis": "variance-overflow", "format": "float32"}]}
    v = verdict("train0.y", 1.0, passed=passed)
    if not passed:
        v["diagnosis"] = diag
    return {"case_id": "c", "target": target, "status": "ok", "verdicts": [v]}


@pytest.mark.parametrize("peer_passes, expected", [(False, "out-of-range"), (True, "suspected-bug")])
def test_out_of_range_stays_only_when_same_format_peers_fail_alike(peer_passes: bool, expected: str) -> None:
    """A float32 target whose variance overflows is out-of-range while its float32 peer fails alike; when the
    peer passes, the failure was avoidable in float32 and the diagnosis becomes a suspected bug naming the peer.
    A float64 peer (another format) passing changes nothing."""
    cases = {"c": {**case_from_dict({"shape": [8, 6, 6, 6]}).to_dict(), "description": ""}}
    conv = {"momentum": "new", "running_var": "unbiased"}
    targets = [{"name": "a@cpu", "conventions": conv}, {"name": "b@cpu", "conventions": conv},
               {"name": "wide@cpu", "conventions": {**conv, "accumulation": "float64"}}]
    execs = [_oor_execution("a@cpu", False), _oor_execution("b@cpu", peer_passes), _oor_execution("wide@cpu", True)]
    peers.revise_out_of_range(execs, cases, targets)
    diag = execs[0]["verdicts"][0]["diagnosis"]
    assert diag["classification"] == expected
    assert diag["peer_check"]["format"] == "float32" and "wide@cpu" not in str(diag["peer_check"])
    assert diag["peer_check"]["same_format_passing" if peer_passes else "same_format_failing"] == ["b@cpu"]


# ---- a real run of peers --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """results.json of `bncheck run smoke <many-elements, NaN case>` on the peerbn targets, and its folder."""
    from conftest import run_cli

    tmp = tmp_path_factory.mktemp("peers")
    cases = write_jsonl(tmp / "cases.jsonl", [MANY, PEER_NAN_CASE, VARIANCE_OVERFLOW_CASE])
    out = tmp / "out"
    r = run_cli("run", "smoke", str(cases), "--plugin", "peer_bn_targets", "--targets", "peerbn.*", "--shrink", "0",
                "--out", str(out), timeout=900)
    assert r.returncode == 1, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return {"doc": json.loads((out / "results.json").read_text()), "out": out, "stdout": r.stdout, "tmp": tmp}


def _outliers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in doc["findings"] if f["classification"] == "precision-outlier"]


def test_correct_kernels_on_the_smoke_suite_are_never_outliers(run: dict[str, Any]) -> None:
    """Every smoke case is judged against three or more peers, and nothing is flagged on any of them."""
    doc = run["doc"]
    smoke = {c.case_id for c in __import__("bncheck.cases", fromlist=["load_cases"]).load_cases(["smoke"])}
    assert doc["summary"]["peers"]["judged"] > 0
    assert not [f for f in _outliers(doc) if set(f["cases"]) & smoke], _outliers(doc)
    assert not [f for f in _outliers(doc) if not f["target"].startswith("peerbn.sequential")]


def test_sequential_sums_over_a_million_elements_are_an_outlier_within_the_bound(run: dict[str, Any]) -> None:
    """The sequential kernel's batch mean over 1,048,576 values per channel: inside its bound, hundreds of times
    the median error of its three peers, which are listed with their errors."""
    many = case_from_dict(MANY).case_id
    found = [f for f in _outliers(run["doc"]) if f["target"] == "peerbn.sequential@cpu" and many in f["cases"]]
    assert found, _outliers(run["doc"])
    mean = next(f for f in found if f["quantity"] == "batch_mean")
    w = mean["worst"]
    assert w["ratio"] <= 1.0, "within its error bound"
    assert w["factor"] >= peers.RULE.factor and w["ulps"] >= peers.RULE.floor_ulps
    assert {p["target"] for p in w["peers"]} == {"peerbn.pairwise@cpu", "peerbn.fold@cpu", "peerbn.wide@cpu"}
    assert all(p["passed"] and p["error"] * peers.RULE.factor < w["error"] for p in w["peers"])
    assert mean["severity"] == "minor" and mean["hypothesis"] == peers.PEER_OUTLIER
    page = (run["out"] / "findings" / f"{mean['signature']}.html").read_text()
    assert 'id="peers"' in page and "peerbn.wide@cpu" in page and "far less accurate than its peers" in page


def test_the_nan_output_is_critical_and_fails_the_narrowed_gate(run: dict[str, Any]) -> None:
    """The one-pass kernel's NaN outputs: class precision (the mechanism), severity critical; `bncheck gate
    --fail-on suspected-bug,crash` still fails on it, and only --allow-critical lets the class decide."""
    from conftest import run_cli

    doc = run["doc"]
    nan = [f for f in doc["findings"] if f["target"] == "peerbn.onepass@cpu"]
    assert nan and all(f["severity"] == "critical" and f["classification"] == "precision" for f in nan), nan
    assert any(r["reason"] == "nonfinite" for f in nan for r in f["severity_reasons"])
    base = run["tmp"] / "empty.json"
    base.write_text(json.dumps({"schema": "bncheck.baseline", "schema_version": 1, "accepted": []}))
    narrowed = run_cli("gate", "--baseline", str(base), "--fail-on", "suspected-bug,crash", str(run["out"]))
    assert narrowed.returncode == 1 and "peerbn.onepass@cpu" in narrowed.stdout and "critical" in narrowed.stdout, narrowed.stdout
    allowed = run_cli("gate", "--baseline", str(base), "--fail-on", "suspected-bug,crash", "--allow-critical", str(run["out"]))
    assert allowed.returncode == 0, allowed.stdout
    assert "inf x bound" not in run["stdout"] and "NaN/Inf" in run["stdout"]


def test_a_resumed_run_is_judged_from_what_is_stored(run: dict[str, Any], tmp_path: Path) -> None:
    """Drop one peer's executions from a copy of the store, resume: its missing cases run again, and the peer
    judgement (on stored and new verdicts together) finds the same outliers."""
    import shutil

    from conftest import run_cli

    out = tmp_path / "out"
    shutil.copytree(run["out"], out)
    db = sqlite3.connect(out / "results.sqlite")
    with db:
        db.execute("DELETE FROM executions WHERE target='peerbn.wide@cpu'")
        db.execute("DELETE FROM verdicts WHERE target='peerbn.wide@cpu'")
        db.execute("UPDATE runs SET status='interrupted'")
    db.close()
    r = run_cli("run", "--resume", "latest", "--out", str(out), timeout=900)
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads((out / "results.json").read_text())
    key = lambda d: sorted((f["signature"], f["count"]) for f in _outliers(d))  # noqa: E731
    assert key(doc) == key(run["doc"]) and key(doc)
    assert doc["summary"]["peers"]["judged"] == run["doc"]["summary"]["peers"]["judged"]
    assert math.isfinite(doc["summary"]["peers"]["rule"]["factor"])


def test_a_variance_beyond_float32_is_out_of_range_on_every_float32_target(run: dict[str, Any]) -> None:
    """The exact variance (4e38) exceeds float32's maximum: the three float32 kernels overflow alike and are
    out-of-range (naming the intermediate and each other as same-format peers that fail alike), not suspected
    bugs; the float64 kernel declares another format, passes, and revises nothing."""
    cid = case_from_dict(VARIANCE_OVERFLOW_CASE).case_id
    doc = run["doc"]
    found = {f["target"]: f for f in doc["findings"] if cid in f["cases"]}
    float32 = {"peerbn.pairwise@cpu", "peerbn.fold@cpu", "peerbn.sequential@cpu"}
    assert float32 <= set(found) and "peerbn.wide@cpu" not in found, sorted(found)
    for t in float32:
        f = found[t]
        assert (f["classification"], f["hypothesis"]) == ("out-of-range", "variance-overflow"), f
        assert any(i["hypothesis"] == "variance-overflow" and i["format"] == "float32" for i in f["out_of_range"])
        check = f["peer_checks"][0]
        assert check["same_format_passing"] == [] and set(check["same_format_failing"]) == float32 - {t}
    assert doc["summary"]["peers"]["out_of_range_kept"] >= 3 and doc["summary"]["peers"]["out_of_range_revised"] == 0
