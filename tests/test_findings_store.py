"""Findings in the store (schema 2, upgraded from 1), their minimal cases as replayable case files, and broken
targets in results.json."""

from __future__ import annotations

import json
import shlex
import sqlite3
from pathlib import Path

import pytest

from bncheck.cases import case_from_dict, load_case_file
from bncheck.report.results import build_results, finalise_findings, write_finding_cases
from bncheck.runner import broken_message
from bncheck.store import SCHEMA_VERSION, Store, StoreError
from conftest import write_jsonl

FAULTY = ("--targets", "faulty.*", "--plugin", "faulty_plugin")
TARGET = "faulty.numpy@cpu"


def _run_with_two_targets(store: Store) -> str:
    run = store.begin_run("bncheck run x", ["x"], {"python": "3"})
    store.add_targets(run, [{"name": n, "framework": "f", "device": "cpu", "available": True, "info": {}}
                            for n in ("a@cpu", "b@cpu")])
    case = case_from_dict({"shape": [4, 3]})
    store.add_cases(run, [(case.case_id, case.canonical_json())])
    store.add_execution(run, case.case_id, "a@cpu", "ok", "", "", 0.1, "d", [])
    store.add_execution(run, case.case_id, "b@cpu", "crash", "signal 11", "", 0.1, "d", [])
    return run


def _schema_version(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    finally:
        db.close()


def _tables(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        db.close()


# ---- schema ---------------------------------------------------------------------------------------
def test_version_1_file_is_upgraded_in_place_and_keeps_its_runs(tmp_path):
    """A store written by schema 1 (no findings table) opens, gains the table, says version 2, keeps its data."""
    p = tmp_path / "results.sqlite"
    s = Store(p)
    run = _run_with_two_targets(s)
    s.close()
    db = sqlite3.connect(p)  # make it what bncheck 1 wrote: no findings table, version 1
    db.execute("DROP TABLE findings")
    db.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    db.commit()
    db.close()
    assert "findings" not in _tables(p) and _schema_version(p) == "1"

    s = Store(p)
    assert SCHEMA_VERSION == 2 and _schema_version(p) == "2" and "findings" in _tables(p)
    assert s.runs() == [run] and len(list(s.executions(run))) == 2 and s.findings(run) == []
    s.set_findings(run, [_finding_row("abc", case_from_dict({"shape": [2, 3]}))])
    assert [f["signature"] for f in s.findings(run)] == ["abc"]
    s.close()
    Store(p).close()  # opening an upgraded file again changes nothing
    assert _schema_version(p) == "2"


def test_newer_schema_is_refused_without_being_touched(tmp_path):
    """A file from a later bncheck (version 3) is refused before any table is added to it."""
    p = tmp_path / "results.sqlite"
    db = sqlite3.connect(p)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('schema_version', '3')")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 3, this bncheck reads 2"):
        Store(p)
    assert _tables(p) == {"meta"}


def _finding_row(signature: str, case, **extra):
    return {"signature": signature, "target": "a@cpu", "quantity": "y", "mode": "train", "hypothesis": "unexplained",
            "classification": "suspected-bug", "regime": "standard", "count": 2, "worst_ratio": float("inf"),
            "minimal_case_id": case.case_id, "minimal_case": case.canonical_json(), "from_case_id": "f" * 16,
            "shrunk": True, "repro": f"repro/{signature}.py", "case_file": f"findings/{signature}/case.json", **extra}


def test_findings_round_trip_replace_and_reach_the_cases_table(tmp_path):
    """set_findings replaces a run's findings; the minimal case is readable back and from the cases table."""
    s = Store(tmp_path / "r.sqlite")
    run = _run_with_two_targets(s)
    small = case_from_dict({"shape": [2, 3], "seed": 9})
    s.set_findings(run, [_finding_row("s1", small), _finding_row("s2", small, shrunk=False, repro=None)])
    got = s.findings(run)
    assert [f["signature"] for f in got] == ["s1", "s2"]
    assert got[0]["minimal_case"] == small.to_dict() and got[0]["shrunk"] is True and got[0]["worst_ratio"] == 1e308
    assert got[1]["repro"] is None and got[1]["shrunk"] is False and got[0]["count"] == 2
    row = s.db.execute("SELECT json FROM cases WHERE case_id=?", (small.case_id,)).fetchone()
    assert row is not None and case_from_dict(json.loads(row[0])) == small
    s.set_findings(run, [_finding_row("s3", small)])  # a resumed run's findings replace the earlier ones
    assert [f["signature"] for f in s.findings(run)] == ["s3"]
    other = s.begin_run("bncheck run y", ["y"], {})
    assert s.findings(other) == []


# ---- broken targets in results.json --------------------------------------------------------------
def test_results_mark_broken_targets_from_the_store(tmp_path):
    """A target with a 'broken' event is broken in results.json with its reason; the others are not."""
    s = Store(tmp_path / "r.sqlite")
    run = _run_with_two_targets(s)
    s.add_event(run, "broken", "b@cpu", broken_message(3))
    doc = build_results(s, run)
    by_name = {t["name"]: t for t in doc["targets"]}
    assert (by_name["b@cpu"]["broken"], by_name["b@cpu"]["broken_reason"]) == (True, broken_message(3))
    assert (by_name["a@cpu"]["broken"], by_name["a@cpu"]["broken_reason"]) == (False, "")
    assert doc["summary"]["broken_targets"] == ["b@cpu"]
    fresh = _run_with_two_targets(s)
    assert build_results(s, fresh)["summary"]["broken_targets"] == []


def test_run_with_three_crashes_reports_the_broken_target_in_results_json(tmp_path, cli):
    """End to end: three crashes in a row (faulty plugin) make results.json say the target is broken, and why."""
    cases = write_jsonl(tmp_path / "c.jsonl", [{"shape": [6, 3, 4], "seed": s} for s in (106, 102, 105, 2)])
    out = tmp_path / "out"
    r = cli("run", str(cases), *FAULTY, "--shrink", "0", "--out", str(out))
    assert r.returncode == 1, r.stderr
    doc = json.loads((out / "results.json").read_text())
    (t,) = [t for t in doc["targets"] if t["name"] == TARGET]
    assert t["broken"] is True and t["broken_reason"] == broken_message(3)
    assert doc["summary"]["broken_targets"] == [TARGET]
    html = (out / "index.html").read_text()  # the report's target matrix says so too
    assert f'data-broken="{TARGET}">broken: {broken_message(3)}' in html


# ---- minimal cases: stored, written as case files, replayable --------------------------------------
def test_shrunk_finding_is_stored_written_as_a_case_file_and_replays(tmp_path, cli):
    """A finding shrinks; its minimal case lands in the findings table and in findings/<signature>/case.json;
    `bncheck replay` re-runs it from that file and from the store, and `bncheck run` on the file finds it again."""
    cases = write_jsonl(tmp_path / "c.jsonl", [{"shape": [8, 4, 5], "seed": 120}])  # faulty: y scaled by 1.01
    out = tmp_path / "out"
    r = cli("run", str(cases), *FAULTY, "--out", str(out))
    assert r.returncode == 1, r.stderr
    doc = json.loads((out / "results.json").read_text())
    (f,) = doc["findings"]
    assert f["shrink"]["reduced"], f["shrink"]
    small = f["minimal_case"]
    assert small != f["shrink"]["from_case"]

    s = Store(out / "results.sqlite")
    (row,) = s.findings(doc["run"]["run_id"])
    s.close()
    assert (row["signature"], row["target"], row["minimal_case_id"], row["from_case_id"], row["shrunk"]) == (
        f["signature"], TARGET, small, f["shrink"]["from_case"], True)
    assert case_from_dict(row["minimal_case"]).case_id == small
    assert row["repro"] == f["repro"] and row["case_file"] == f["case_file"] == f"findings/{f['signature']}/case.json"

    case_file = out / f["case_file"]
    body = json.loads(case_file.read_text())
    assert body["finding"]["signature"] == f["signature"] and body["finding"]["from_case"] == f["shrink"]["from_case"]
    (loaded,) = load_case_file(case_file)
    assert loaded.case_id == small and loaded.meta["shrunk_from"] == f["shrink"]["from_case"]
    assert list(out.glob("findings/*.html")), "the HTML pages still sit beside the case folders"
    page = (out / "findings" / f"{f['signature']}.html").read_text()  # the finding's page links the case file
    assert f'href="../{f["case_file"]}"' in page and f"bncheck replay {small} --target {TARGET}" in page
    assert "--plugin faulty_plugin" in page  # the target comes from a plugin: the command must load it

    # the command written in case.json, exactly as written (it names the plugin); then from the store
    written = shlex.split(body["finding"]["replay"])
    assert written[:2] == ["bncheck", "replay"] and written[-2:] == ["--plugin", "faulty_plugin"], written
    for args in (written[1:], ["replay", small, "--target", TARGET, "--plugin", "faulty_plugin", "--out", str(out)]):
        rep = cli(*args)
        assert rep.returncode == 1, (args, rep.stderr)  # 1: the quantity still deviates
        assert small in rep.stdout and "train0.y" in rep.stdout

    again = tmp_path / "again"
    r2 = cli("run", str(case_file), *FAULTY, "--shrink", "0", "--out", str(again))
    assert r2.returncode == 1, r2.stderr
    doc2 = json.loads((again / "results.json").read_text())
    assert [(g["signature"], g["minimal_case"]) for g in doc2["findings"]] == [(f["signature"], small)]


def test_case_files_of_findings_that_went_away_are_removed(tmp_path):
    """Rewriting the reports (say after --resume) removes case files of findings no longer present, only those."""
    case = case_from_dict({"shape": [2, 3]})
    cases = {case.case_id: {**case.to_dict(), "description": case.describe(), "metrics": {}}}

    def finding(sig: str) -> dict:
        return {"signature": sig, "target": "a@cpu", "quantity": "y", "hypothesis": "h", "classification": "precision",
                "regime": "standard", "minimal_case": case.case_id}

    doc = {"run": {"run_id": "r"}, "cases": cases, "findings": [finding("old"), finding("kept")]}
    assert write_finding_cases(doc, tmp_path) == 2
    (tmp_path / "findings" / "old.html").write_text("page")  # the HTML report's, not ours
    doc["findings"] = [finding("kept")]
    write_finding_cases(doc, tmp_path)
    assert not (tmp_path / "findings" / "old").exists() and (tmp_path / "findings" / "old.html").exists()
    assert load_case_file(tmp_path / "findings" / "kept" / "case.json") == [case]
    assert doc["findings"][0]["case_file"] == "findings/kept/case.json"


def test_finalise_findings_stores_what_results_json_says(tmp_path):
    """finalise_findings (called after shrinking) writes the case files and the store rows of the same findings."""
    s = Store(tmp_path / "results.sqlite")
    run = _run_with_two_targets(s)
    case = case_from_dict({"shape": [2, 3], "seed": 4})
    doc = {"run": {"run_id": run}, "cases": {case.case_id: {**case.to_dict(), "description": "", "metrics": {}}},
           "findings": [{"signature": "x1", "target": "a@cpu", "quantity": "running_var", "mode": "train",
                         "hypothesis": "one-pass", "classification": "precision", "regime": "standard", "count": 3,
                         "minimal_case": case.case_id, "worst": {"ratio": 12.5}, "repro": None}]}
    finalise_findings(s, run, doc, tmp_path)
    (row,) = s.findings(run)
    assert row["worst_ratio"] == 12.5 and row["from_case_id"] == case.case_id and row["shrunk"] is False
    assert row["case_file"] == doc["findings"][0]["case_file"] and (tmp_path / row["case_file"]).is_file()
    s.close()
