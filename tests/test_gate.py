"""The CI gate (gate.decide, baseline, diff), JUnit XML, and `bncheck baseline/gate/diff/junit` end to end.

The pure function is tested on small synthetic results documents; the commands on real runs of the
fault-injecting plugin target (tests/plugins/faulty_plugin.py: seed 120 scales y by 1.01, 121 by 1.5,
122 scales the running variance by 1.01, 101 raises).
"""

from __future__ import annotations

import copy
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from types import SimpleNamespace

import pytest

from click.testing import CliRunner

from bncheck.cli import main
from bncheck.gate import (GateInputError, Policy, decide, diff, execution_signature, gated_items, make_baseline,
                          parse_classes, validate_baseline)
from bncheck.report.junit import build_junit, junit_xml, write_junit
from conftest import write_jsonl

TODAY = date(2026, 6, 15)


# ---- synthetic documents ------------------------------------------------------------------------
def finding(sig: str, ratio: float | str, cls: str = "suspected-bug", target: str = "t.bn@cpu", quantity: str = "y",
            count: int = 1, case_id: str = "c0") -> dict:
    return {"signature": sig, "target": target, "quantity": quantity, "hypothesis": "unexplained",
            "classification": cls, "regime": "standard", "count": count,
            "worst": {"case_id": case_id, "ratio": ratio}, "minimal_case": case_id, "repro": None}


def execution(case_id: str = "c0", target: str = "t.bn@cpu", status: str = "ok", message: str = "",
              deviations: list | None = None, stderr: str = "") -> dict:
    return {"case_id": case_id, "target": target, "status": status, "message": message, "stderr_tail": stderr,
            "elapsed_s": 0.01, "inputs_digest": "d", "checked": ["train0.y"], "worst_ratio": None,
            "deviations": deviations or []}


def results(findings: list[dict], executions: list[dict] | None = None, status: str = "complete",
            run_id: str = "run-1", versions: dict | None = None) -> dict:
    execs = executions if executions is not None else [execution()]
    return {"schema": "bncheck.results", "schema_version": 1,
            "run": {"run_id": run_id, "status": status,
                    "manifest": {"frameworks": {k: {"version": v} for k, v in (versions or {}).items()}}},
            "summary": {}, "targets": [], "findings": findings, "cases": {}, "executions": execs}


def baseline_of(*entries: dict) -> dict:
    return {"schema": "bncheck.baseline", "schema_version": 1, "created": "2026-01-01", "from_run": "run-0",
            "accepted": list(entries)}


def accept(sig: str, ratio: float | str | None, expires: str | None = None, target: str = "t.bn@cpu", **kw) -> dict:
    return {"signature": sig, "target": target, "quantity": "y", "hypothesis": "unexplained",
            "classification": kw.pop("cls", "suspected-bug"), "regime": "standard", "worst_ratio": ratio,
            "reason": kw.pop("reason", "known"), "expires": expires, **kw}


# ---- decide -------------------------------------------------------------------------------------
def test_run_against_its_own_baseline_passes():
    r = results([finding("aaa", 50.0), finding("bbb", "inf", quantity="running_var")],
                [execution(), execution("c1", status="crash", message="worker killed by SIGABRT; restarted")])
    base = make_baseline(r, TODAY)
    assert base["schema"] == "bncheck.baseline" and base["schema_version"] == 1 and base["from_run"] == "run-1"
    assert base["created"] == "2026-06-15"
    assert {a["signature"] for a in base["accepted"]} == {"aaa", "bbb", execution_signature("t.bn@cpu", "crash", "worker killed by SIGABRT; restarted")}
    assert all(a["reason"] == "accepted from run run-1" and a["expires"] is None for a in base["accepted"])
    assert {a["worst_ratio"] for a in base["accepted"]} == {50.0, "inf", None}
    base = json.loads(json.dumps(base, allow_nan=False))  # what the file holds
    d = decide(r, base, Policy(), TODAY)
    assert d.passed and not d.new and not d.worse and not d.expired and not d.fixed
    assert len(d.accepted) == 3
    assert d.lines()[-1].startswith("gate passed: 0 failing") and len(d.lines()) == 1


def test_new_finding_fails_and_is_named():
    r = results([finding("aaa", 50.0), finding("ccc", 3.0, quantity="dx", target="u.bn@cpu", case_id="c9")])
    d = decide(r, baseline_of(accept("aaa", 50.0)), Policy(), TODAY)
    assert not d.passed
    assert [i.signature for i in d.new] == ["ccc"] and [i.signature for i in d.accepted] == ["aaa"]
    fails = [line for line in d.lines() if line.startswith("FAIL")]
    assert len(fails) == 1
    assert "ccc u.bn@cpu dx unexplained [suspected-bug, standard]" in fails[0] and "new: not in the baseline" in fails[0]
    assert "worst ratio 3, 1 execution, case c9" in fails[0]
    assert "gate FAILED: 1 failing (1 new, 0 worse, 0 expired)" in d.lines()[-1]


@pytest.mark.parametrize("new_class", ["convention", "precision", "suspected-bug"])
def test_new_findings_of_every_class_fail_by_default(new_class):
    d = decide(results([finding("n", 2.0, cls=new_class)]), baseline_of(), Policy(), TODAY)
    assert not d.passed


def test_worse_factor():
    r = results([finding("aaa", 1000.0)])
    assert decide(r, baseline_of(accept("aaa", 100.0)), Policy(), TODAY).passed  # exactly 10x: not worse
    d = decide(r, baseline_of(accept("aaa", 99.0)), Policy(), TODAY)
    assert not d.passed and [i.signature for i in d.worse] == ["aaa"]
    assert "worse: worst ratio 1e+03 > 10 x accepted 99" in d.lines()[0]
    assert decide(r, baseline_of(accept("aaa", 99.0)), Policy(worse_factor=20), TODAY).passed
    assert not decide(r, baseline_of(accept("aaa", 400.0)), Policy(worse_factor=2), TODAY).passed
    # a finding that got better is still accepted
    assert decide(results([finding("aaa", 2.0)]), baseline_of(accept("aaa", 100.0)), Policy(), TODAY).passed


@pytest.mark.parametrize("now, accepted, worse", [
    ("inf", 1e30, True), ("inf", "inf", False), (1e30, "inf", False), (5.0, None, False), ("inf", None, False),
    (1e-3, 0.0, True), (0.0, 0.0, False),
])
def test_inf_and_unknown_ratios(now, accepted, worse):
    d = decide(results([finding("aaa", now)]), baseline_of(accept("aaa", accepted)), Policy(), TODAY)
    assert d.passed is not worse and bool(d.worse) is worse


def test_expired_acceptance_fails_and_expiry_day_still_holds():
    r = results([finding("aaa", 50.0)])
    d = decide(r, baseline_of(accept("aaa", 50.0, expires="2026-06-14", reason="waiting for upstream fix")), Policy(), TODAY)
    assert not d.passed and [i.signature for i in d.expired] == ["aaa"] and not d.accepted
    assert "expired: acceptance expired on 2026-06-14 (reason: waiting for upstream fix)" in d.lines()[0]
    assert decide(r, baseline_of(accept("aaa", 50.0, expires="2026-06-15")), Policy(), TODAY).passed
    assert decide(r, baseline_of(accept("aaa", 50.0, expires="2027-01-01")), Policy(), TODAY).passed


def test_worse_and_expired_give_one_line_with_both_reasons():
    d = decide(results([finding("aaa", "inf")]), baseline_of(accept("aaa", 1.5, expires="2020-01-01")), Policy(), TODAY)
    fails = [line for line in d.lines() if line.startswith("FAIL")]
    assert len(fails) == 1 and "worse:" in fails[0] and "expired:" in fails[0]
    assert "1 worse, 1 expired" in d.lines()[-1]


def test_fixed_and_not_run_findings_are_reported_not_failing():
    """Fixed needs the target to have executed one of the entry's cases; otherwise not-run, with the reason."""
    r = results([finding("aaa", 50.0)], [execution(target="t.bn@cpu"), execution("c9", target="t.bn@cpu",
                                                                                   status="unsupported")])
    base = baseline_of(accept("aaa", 50.0), accept("gone", 7.0, cases=["c0"]), accept("gpu", 3.0, target="t.bn@cuda"),
                       accept("other", 2.0, cases=["zz"]), accept("unsupp", 2.0, cases=["c9"]))
    d = decide(r, base, Policy(), TODAY)
    assert d.passed
    assert [i.signature for i in d.fixed] == ["gone"]
    assert [i.signature for i in d.not_run] == ["gpu", "other", "unsupp"]
    lines = d.lines()
    assert any(line.startswith("fixed gone t.bn@cpu y") and "absent from this run, which ran t.bn@cpu on its case c0"
               in line for line in lines)
    assert any(line.startswith("not-run gpu") and "target t.bn@cuda did not run" in line for line in lines)
    assert any(line.startswith("not-run other") and "none of its 1 cases is in this run" in line for line in lines)
    assert any(line.startswith("not-run unsupp") and "did not execute on t.bn@cpu" in line for line in lines)
    assert "1 accepted, 1 fixed, 3 not-run" in lines[-1]


def test_an_entry_without_cases_is_fixed_only_where_its_regime_ran():
    """Old baselines have no case ids: the regime decides."""
    r = results([], [execution()])
    r["cases"] = {"c0": {"regime": {"name": "standard"}}}
    base = baseline_of(accept("std", 1.0), accept("hz", 1.0, regime="mean-offset-1e4"))
    d = decide(r, base, Policy(), TODAY)
    assert [i.signature for i in d.fixed] == ["std"] and [i.signature for i in d.not_run] == ["hz"]


def test_errors_crashes_and_timeouts_are_pseudo_findings():
    execs = [execution("c1", status="error", message="ValueError: bad at 0x7f3a12\nmore"),
             execution("c2", status="error", message="ValueError: bad at 0x55aa00"),
             execution("c3", status="timeout", message="no answer within 120 s; worker killed and restarted"),
             execution("c4", status="unsupported", message="float64 not supported"),
             execution("c5", target="u.bn@cpu", status="crash", message="worker killed by SIGSEGV; restarted")]
    items = gated_items(results([], execs))
    assert sorted((i.target, i.classification, i.count) for i in items.values()) == [
        ("t.bn@cpu", "error", 2), ("t.bn@cpu", "timeout", 1), ("u.bn@cpu", "crash", 1)]
    # stable: addresses and the timeout limit do not change the signature; target, status and message do
    assert execution_signature("t", "error", "E at 0x1") == execution_signature("t", "error", "E at 0xdeadbeef\nline 2")
    assert execution_signature("t", "timeout", "no answer within 5 s") == execution_signature("t", "timeout", "within 9 s")
    assert len({execution_signature("t", "error", "E"), execution_signature("t", "crash", "E"),
                execution_signature("u", "error", "E"), execution_signature("t", "error", "F")}) == 4
    d = decide(results([], execs), baseline_of(), Policy(), TODAY)
    assert not d.passed and len(d.new) == 3
    assert any(line.startswith("FAIL") and "u.bn@cpu crash: worker killed by SIGSEGV; restarted" in line for line in d.lines())
    assert decide(results([], execs), make_baseline(results([], execs), TODAY), Policy(), TODAY).passed


def test_fail_on_narrows_the_gating_classes():
    r = results([finding("conv", 5.0, cls="convention")], [execution(), execution("c1", status="crash", message="boom")])
    d = decide(r, baseline_of(), Policy(fail_on=parse_classes("suspected-bug,precision")), TODAY)
    assert d.passed and len(d.new) == 2 and not d.failing
    notes = [line for line in d.lines() if line.startswith("note")]
    assert len(notes) == 2 and all("does not fail the gate" in line for line in notes)
    assert not decide(r, baseline_of(), Policy(fail_on=parse_classes("crash")), TODAY).passed
    with pytest.raises(GateInputError, match="unknown classification 'bug'"):
        parse_classes("bug")
    with pytest.raises(GateInputError, match="worse factor"):
        Policy(worse_factor=0.5)


def test_interrupted_run_fails_unless_allowed():
    r = results([finding("aaa", 5.0)], status="interrupted")
    base = baseline_of(accept("aaa", 5.0))
    d = decide(r, base, Policy(), TODAY)
    assert not d.passed and d.lines()[0].startswith("FAIL run: run run-1 is 'interrupted'")
    assert decide(r, base, Policy(require_complete=False), TODAY).passed


def test_decide_is_pure():
    r = results([finding("aaa", 500.0), finding("bbb", 5.0)], [execution(), execution("c1", status="error", message="x")])
    base = baseline_of(accept("aaa", 5.0, expires="2020-01-01"))
    r0, b0 = copy.deepcopy(r), copy.deepcopy(base)
    first = decide(r, base, Policy(), TODAY).lines()
    assert decide(r, base, Policy(), TODAY).lines() == first
    assert r == r0 and base == b0


@pytest.mark.parametrize("doc, message", [
    ([], "expected a JSON object"),
    ({"schema": "bncheck.results"}, "\"schema\" must be \"bncheck.baseline\""),
    ({"schema": "bncheck.baseline", "schema_version": 2, "accepted": []}, "unsupported \"schema_version\" 2"),
    ({"schema": "bncheck.baseline", "schema_version": True, "accepted": []}, "unsupported \"schema_version\""),
    ({"schema": "bncheck.baseline", "schema_version": 1}, "\"accepted\" must be a list"),
    (baseline_of("x"), "accepted[0]: expected an object"),
    (baseline_of({"worst_ratio": 1}), "accepted[0]: \"signature\" must be a non-empty string"),
    (baseline_of(accept("a", 1.0), accept("a", 2.0)), "accepted[1]: signature a is accepted twice"),
    (baseline_of(accept("a", -1.0)), "accepted[0].worst_ratio: a ratio must be"),
    (baseline_of(accept("a", "big")), "accepted[0].worst_ratio: a ratio must be"),
    (baseline_of(accept("a", 1.0, expires="2026-13-01")), "is not a calendar date"),
    (baseline_of(accept("a", 1.0, expires="next week")), "must be \"YYYY-MM-DD\" or null"),
    (baseline_of(accept("a", 1.0, expires=20260101)), "must be \"YYYY-MM-DD\" or null"),
    (baseline_of(accept("a", 1.0, reason=3)), "accepted[0].reason: must be a string"),
])
def test_malformed_baseline_is_one_line_error(doc, message):
    with pytest.raises(GateInputError) as e:
        decide(results([]), doc, Policy(), TODAY)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_malformed_results_is_rejected():
    with pytest.raises(GateInputError, match="not a bncheck results document"):
        decide({"findings": []}, baseline_of(), Policy(), TODAY)
    with pytest.raises(GateInputError, match=r"findings\[0\] lacks a signature"):
        decide(results([{"target": "x"}]), baseline_of(), Policy(), TODAY)


def test_validate_baseline_defaults():
    v = validate_baseline(baseline_of({"signature": "s"}))
    assert v["s"]["worst_ratio"] is None and v["s"]["expires"] is None
    assert validate_baseline(baseline_of(accept("s", "inf")))["s"]["worst_ratio"] == math.inf


# ---- diff ---------------------------------------------------------------------------------------
def test_diff_new_fixed_changed():
    a = results([finding("same", 5.0), finding("gone", 5.0), finding("grew", 5.0), finding("more", 5.0, count=2)],
                run_id="A", versions={"torch": "2.12.0", "jax": "0.10.2"})
    b = results([finding("same", 40.0), finding("grew", 51.0), finding("more", 5.0, count=3), finding("born", "inf")],
                [execution(), execution("c1", status="crash", message="died")], run_id="B",
                versions={"torch": "2.13.0", "jax": "0.10.2"})
    d = diff(a, b)
    assert [i.signature for i in d.new] == ["born", execution_signature("t.bn@cpu", "crash", "died")]
    assert [i.signature for i in d.fixed] == ["gone"]
    assert {x.signature: what for x, _, what in d.changed} == {
        "grew": ["worst ratio 5 -> 51 (more than 10 x)"], "more": ["count 2 -> 3"]}
    assert d.unchanged == 1 and d.versions == [("torch", "2.12.0", "2.13.0")]
    lines = d.lines()
    assert lines[0] == "diff A -> B" and "version torch: 2.12.0 -> 2.13.0" in lines
    assert lines[-1] == "2 new, 1 fixed, 0 not-run, 2 changed, 1 unchanged"
    assert [x.signature for x, _, _ in diff(b, a).changed] == ["grew", "more"]  # shrinking by > factor is a change too
    assert not diff(a, b, factor=20).changed[0][2][0].startswith("worst")


# ---- JUnit --------------------------------------------------------------------------------------
def junit_doc() -> dict:
    diag = {"first": "train0.y", "hypothesis": "one-pass-variance", "classification": "precision",
            "explanation": "E[x^2]-E[x]^2", "signature": "abc123", "alternatives": [["eps-ignored", "inf"]]}
    devs = [{"key": "train0.running_var", "quantity": "running_var", "ratio": "inf", "max_abs": 1.0, "max_rel": 1.0,
             "max_ulp": 9.0, "nonfinite_mismatch": 2, "channels": [1], "note": ""},
            {"key": "train0.y", "quantity": "y", "ratio": 12.5, "max_abs": 0.1, "max_rel": 0.01, "max_ulp": 100.0,
             "nonfinite_mismatch": 0, "channels": [0, 1], "note": "2 of 3 channels deviate", "diagnosis": diag}]
    doc = results([], [execution("c0", target="t.bn@cpu"),
                       execution("c1", target="t.bn@cpu", deviations=devs),
                       execution("c2", target="t.bn@cpu", status="crash", message="worker killed by SIGABRT; restarted",
                                 stderr="Fatal \x1b[31mabort\x00\x07 <here> & there"),
                       execution("c0", target="u.bn@cpu", status="unsupported", message="float16 is not supported"),
                       execution("c1", target="u.bn@cpu", status="timeout", message="no answer within 1 s")])
    doc["cases"] = {c: {"shape": [2, 3], "seed": 1, "description": f"train float32 (2, 3) {c}", "metrics": {}}
                    for c in ("c0", "c1", "c2")}
    doc["targets"] = [{"name": "t.bn@cpu", "framework": "t", "version": "1.0", "device": "cpu"}]
    doc["run"]["started"] = 1795261688.6
    return doc


def test_junit_xml_structure(tmp_path):
    path = tmp_path / "results.xml"
    write_junit(junit_doc(), path)
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    assert {k: root.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "5", "failures": "1", "errors": "2", "skipped": "1"}
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"t.bn@cpu", "u.bn@cpu"}
    props = {p.get("name"): p.get("value") for p in suites["t.bn@cpu"].iter("property")}
    assert props == {"run_id": "run-1", "framework": "t", "version": "1.0", "device": "cpu"}
    cases = {(tc.get("classname"), tc.get("name")): tc for tc in root.iter("testcase")}
    assert len(cases) == 5
    ok = cases[("t.bn@cpu", "train float32 (2, 3) c0 [c0]")]
    assert list(ok) == []
    fail = cases[("t.bn@cpu", "train float32 (2, 3) c1 [c1]")].find("failure")
    assert fail.get("type") == "deviation"
    assert fail.get("message") == ("train0.running_var deviates: NaN/Inf in 2 elements "
                                   "(2 quantities deviate); one-pass-variance (precision, minor), first at train0.y")
    assert "train0.y: ratio 12.5" in fail.text and "signature abc123" in fail.text
    assert "bncheck replay c1 --target t.bn@cpu" in fail.text
    crash = cases[("t.bn@cpu", "train float32 (2, 3) c2 [c2]")].find("error")
    assert crash.get("type") == "crash" and crash.get("message") == "worker killed by SIGABRT; restarted"
    assert "Fatal [31mabort <here> & there" in crash.text  # control characters dropped, markup escaped
    skipped = cases[("u.bn@cpu", "train float32 (2, 3) c0 [c0]")].find("skipped")
    assert skipped.get("message") == "float16 is not supported"
    assert cases[("u.bn@cpu", "train float32 (2, 3) c1 [c1]")].find("error").get("type") == "timeout"
    assert junit_xml(junit_doc()).startswith('<?xml version="1.0" encoding="UTF-8"?>')
    assert build_junit(results([], [])).get("tests") == "0"


# ---- the commands, end to end -------------------------------------------------------------------
CASE = {"shape": [8, 3, 4]}
FAULTY = ("--plugin", "faulty_plugin", "--targets", "faulty.*", "--shrink", "0")


def bn(*args: str) -> SimpleNamespace:
    """`bncheck ARGS` in process (the gate commands import no framework and start no worker)."""
    r = CliRunner().invoke(main, list(args))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.stderr)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Real runs of the faulty target: A (a y deviation, an error), B = A + a new running-variance fault,
    C = A again, D = A with the y deviation about 50 times larger, E = A's cases with the faults fixed, F = the
    clean case only (A's faulty cases not run)."""
    from conftest import run_cli

    root = tmp_path_factory.mktemp("gate")
    seeds = {"A": [1, 120, 101], "B": [1, 120, 101, 122], "C": [1, 120, 101], "D": [1, 121, 101], "E": [1, 120, 101],
             "F": [1]}
    def run(name: str):
        cases = write_jsonl(root / f"{name}.jsonl", [{**CASE, "seed": s, **({"mode": "trajectory", "steps": 2} if s == 122 else {})}
                                                    for s in seeds[name]])
        return run_cli("run", str(cases), "--out", str(root / name), *FAULTY,
                       env={"BNCHECK_FAULTY_FIXED": "1"} if name == "E" else None)

    with ThreadPoolExecutor(max_workers=3) as pool:  # independent runs, each in its own process and folder
        done = dict(zip(seeds, pool.map(run, seeds)))
    out = {}
    for name, r in done.items():
        assert r.returncode == (0 if name in "EF" else 1), r.stderr
        out[name] = root / name
    r = run_cli("baseline", str(out["A"]), "--out", str(root / "baseline.json"))
    assert r.returncode == 0, r.stderr
    assert "2 accepted (1 findings, 1 errors/crashes/timeouts)" in r.stdout
    out["baseline"] = root / "baseline.json"
    out["root"] = root
    return out


def test_baseline_file(runs):
    base = json.loads(runs["baseline"].read_text())
    run_a = json.loads((runs["A"] / "results.json").read_text())
    assert base["from_run"] == run_a["run"]["run_id"] and base["created"] == date.today().isoformat()
    assert {a["signature"] for a in base["accepted"]} == {f["signature"] for f in run_a["findings"]} | {
        execution_signature("faulty.numpy@cpu", "error", "ValueError: injected failure")}
    assert validate_baseline(base)


def test_gate_fails_on_new_fault_and_names_it(runs, cli):
    new_sig = next(f["signature"] for f in json.loads((runs["B"] / "results.json").read_text())["findings"]
                   if f["quantity"] == "running_var")
    r = cli("gate", "--baseline", str(runs["baseline"]), str(runs["B"]))
    assert r.returncode == 1, r.stdout + r.stderr
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1
    assert fails[0].startswith(f"FAIL {new_sig} faulty.numpy@cpu running_var unexplained [suspected-bug, standard]: new")
    assert "gate FAILED: 1 failing (1 new, 0 worse, 0 expired), 2 accepted" in r.stdout


def test_gate_passes_the_same_run_without_the_fault(runs, cli):
    r = cli("gate", "--baseline", str(runs["baseline"]), str(runs["C"] / "results.json"))  # a results.json path works too
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1].startswith("gate passed: 0 failing") and "2 accepted" in r.stdout


def test_gate_fails_on_expired_acceptance(runs):
    expired = runs["root"] / "expired.json"
    r = bn("baseline", str(runs["A"]), "--out", str(expired), "--reason", "upstream issue 123", "--expires", "2000-01-31")
    assert r.returncode == 2 and "that day has passed" in r.stderr and not expired.exists()  # refused when written
    today = date.today().isoformat()
    r = bn("baseline", str(runs["A"]), "--out", str(expired), "--reason", "upstream issue 123", "--expires", today)
    assert r.returncode == 0 and f"expiring after {today}" in r.stdout
    base = json.loads(expired.read_text())
    for a in base["accepted"]:
        a["expires"] = "2000-01-31"  # as if the file had lain in the repository since
    expired.write_text(json.dumps(base))
    assert {a["reason"] for a in json.loads(expired.read_text())["accepted"]} == {"upstream issue 123"}
    r = bn("gate", "--baseline", str(expired), str(runs["C"]))
    assert r.returncode == 1
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 2 and all("expired: acceptance expired on 2000-01-31 (reason: upstream issue 123)" in f for f in fails)


def test_gate_worse_factor(runs):
    r = bn("gate", "--baseline", str(runs["baseline"]), str(runs["D"]))
    assert r.returncode == 1
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and " y unexplained " in fails[0] and "worse: worst ratio" in fails[0] and "> 10 x accepted" in fails[0]
    r = bn("gate", "--baseline", str(runs["baseline"]), str(runs["D"]), "--worse-factor", "1000")
    assert r.returncode == 0 and "gate passed" in r.stdout


def test_gate_reports_fixed_findings_without_failing(runs):
    """E ran the accepted findings' cases and they pass now: fixed, and said to have run there."""
    r = bn("gate", "--baseline", str(runs["baseline"]), str(runs["E"]))
    assert r.returncode == 0, r.stdout
    fixed = [line for line in r.stdout.splitlines() if line.startswith("fixed")]
    assert len(fixed) == 2 and any("error: ValueError: injected failure" in line for line in fixed)
    assert all("which ran faulty.numpy@cpu on its case" in line for line in fixed)
    assert "0 accepted, 2 fixed, 0 not-run" in r.stdout


def test_what_did_not_run_is_not_run_never_fixed(runs):
    """F ran another suite (only the clean case): the accepted findings are not-run, and the gate says the suites differ."""
    r = bn("gate", "--baseline", str(runs["baseline"]), str(runs["F"]))
    assert r.returncode == 0, r.stdout
    lines = r.stdout.splitlines()
    assert not [line for line in lines if line.startswith("fixed")]
    not_run = [line for line in lines if line.startswith("not-run")]
    assert len(not_run) == 2 and all("is in this run (another suite?)" in line for line in not_run)
    assert lines[0].startswith("note: the suites differ: the baseline's run ran ") and "F.jsonl" in lines[0]
    assert "0 fixed, 2 not-run" in lines[-1]
    r = bn("diff", str(runs["A"]), str(runs["F"]))
    assert "0 new, 0 fixed, 2 not-run, 0 changed, 0 unchanged" == r.stdout.splitlines()[-1]
    assert any(line.startswith("note: the suites differ") for line in r.stdout.splitlines())


def test_diff_command(runs):
    r = bn("diff", str(runs["A"]), str(runs["B"]))
    assert r.returncode == 0
    assert any(line.startswith("new ") and " running_var " in line for line in r.stdout.splitlines())
    assert r.stdout.splitlines()[-1] == "1 new, 0 fixed, 0 not-run, 0 changed, 2 unchanged"
    r = bn("diff", str(runs["A"]), str(runs["D"]))
    assert r.returncode == 0 and "changed" in r.stdout and "(more than 10 x)" in r.stdout
    assert r.stdout.splitlines()[-1] == "0 new, 0 fixed, 0 not-run, 1 changed, 1 unchanged"


def test_junit_command(runs):
    r = bn("junit", str(runs["B"]))
    assert r.returncode == 0, r.stderr
    root = ET.parse(runs["B"] / "results.xml").getroot()
    assert {k: root.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "4", "failures": "2", "errors": "1", "skipped": "0"}
    assert {tc.get("classname") for tc in root.iter("testcase")} == {"faulty.numpy@cpu"}
    assert all(tc.get("name").endswith("]") for tc in root.iter("testcase"))
    messages = [f.get("message") for f in root.iter("failure")]
    assert any(m.startswith("train0.y deviates") and "unexplained (suspected-bug, " in m for m in messages)
    err = next(root.iter("error"))
    assert err.get("message") == "ValueError: injected failure" and "Traceback" in err.text
    other = runs["root"] / "junit" / "x.xml"
    other.parent.mkdir()
    assert bn("junit", str(runs["B"]), "--out", str(other)).returncode == 0 and ET.parse(other).getroot().tag == "testsuites"


def test_gate_bad_input_exit_statuses(runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for cmd in (("gate", "--baseline", str(runs["baseline"]), str(empty)), ("baseline", str(empty)),
                ("junit", str(empty)), ("diff", str(runs["A"]), str(empty))):
        r = bn(*cmd)
        assert r.returncode == 3 and "no results.json" in r.stderr, cmd
    bad = tmp_path / "bad.json"
    for text, msg in (("{not json", "not valid JSON"), ('{"schema": "bncheck.baseline", "schema_version": 1}', '"accepted" must be a list'),
                      (json.dumps(baseline_of(accept("a", 1.0, expires="soon"))), "must be \"YYYY-MM-DD\"")):
        bad.write_text(text)
        r = bn("gate", "--baseline", str(bad), str(runs["A"]))
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = bn("gate", "--baseline", str(tmp_path / "missing.json"), str(runs["A"]))
    assert r.returncode == 2 and "cannot read" in r.stderr
    r = bn("baseline", str(runs["A"]), "--expires", "31/01/2030", "--out", str(tmp_path / "b.json"))
    assert r.returncode == 2 and "expected a date YYYY-MM-DD" in r.stderr and not (tmp_path / "b.json").exists()
    notres = tmp_path / "r" / "results.json"
    notres.parent.mkdir()
    notres.write_text(json.dumps({"schema": "other"}))
    assert bn("gate", "--baseline", str(runs["baseline"]), str(notres.parent)).returncode == 2


def test_junit_with_a_baseline_fails_exactly_what_the_gate_fails(runs):
    """C against A's baseline: the gate passes and the JUnit file has no failure; B: one failure, the new fault."""
    out = runs["root"] / "junit-c.xml"
    r = bn("junit", str(runs["C"]), "--baseline", str(runs["baseline"]), "--out", str(out))
    assert r.returncode == 0 and "(0 failing the gate)" in r.stdout, r.stdout + r.stderr
    root = ET.parse(out).getroot()
    assert (root.get("failures"), root.get("errors"), root.get("tests")) == ("0", "0", "3")
    notes = [s.text for s in root.iter("system-out")]
    assert len(notes) == 2 and all(n.startswith("accepted by the baseline (accepted from run ") for n in notes)
    out = runs["root"] / "junit-b.xml"
    assert bn("junit", str(runs["B"]), "--baseline", str(runs["baseline"]), "--out", str(out)).returncode == 0
    root = ET.parse(out).getroot()
    assert (root.get("failures"), root.get("errors")) == ("1", "0")
    failure = next(root.iter("failure"))
    assert "running_var" in failure.get("message")


def test_junit_replay_command_works_as_written(runs):
    """The failure body's replay line names the run folder and the plugin; run literally, it reproduces."""
    import shlex

    from conftest import run_cli

    bn("junit", str(runs["B"]))
    root = ET.parse(runs["B"] / "results.xml").getroot()
    body = next(root.iter("failure")).text
    replay = next(line for line in body.splitlines() if line.startswith("replay: "))[len("replay: "):]
    page = next(line for line in body.splitlines() if line.startswith("finding page: "))[len("finding page: "):]
    assert Path(page).is_file(), page
    argv = shlex.split(replay)
    assert argv[:2] == ["bncheck", "replay"] and "--plugin" in argv and "--out" in argv
    r = run_cli(*argv[1:], cwd=runs["root"])
    assert r.returncode == 1 and "DEVIATES" in r.stdout, r.stdout + r.stderr
