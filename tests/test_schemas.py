"""The JSON Schemas shipped in the package describe the documents bncheck reads and writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")

from bncheck.cases import CaseError, case_from_dict, shipped_suites_dir  # noqa: E402
from bncheck.generate import random_cases  # noqa: E402

SCHEMAS = Path(__file__).resolve().parents[1] / "src" / "bncheck" / "schemas"


def validator(name: str):
    """A validator for one shipped schema (itself checked against its metaschema)."""
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_every_shipped_and_generated_case_fits_the_case_schema():
    v = validator("case")
    rows = [json.loads(line) for f in shipped_suites_dir().glob("*.jsonl") for line in f.read_text().splitlines()
            if line.strip()]
    rows += [{**c.to_dict(), "meta": c.meta} for c in random_cases(300, seed=3)]
    assert len(rows) > 500
    for row in rows:
        errors = sorted(v.iter_errors(row), key=str)
        assert not errors, (row, errors[0].message)


@pytest.mark.parametrize("bad", [
    {}, {"shape": [8]}, {"shape": [8, 3], "layout": "channels_last"}, {"shape": [8, 3], "dtype": "int8"},
    {"shape": [8, 3], "mode": "eval", "steps": 1}, {"shape": [8, 3], "mode": "trajectory", "steps": 65},
    {"shape": [8, 3], "momentum": 1.5}, {"shape": [8, 3], "eps": -1}, {"shape": [8, 3], "colour": 1},
    {"shape": [8, 3], "regime": {"x": {"dist": "normal", "loc": 0}}},
    {"shape": [8, 3], "regime": {"x": {"dist": "normal", "loc": 0, "scale": 1, "inject": {"value": "nan"}}}},
    {"shape": [8, 3], "regime": {"data": {"file": "../x.npz", "sha256": "0" * 64}}},
    {"shape": [8, 3], "regime": {"data": {"file": "x.npz", "sha256": "0" * 64}, "x": {"dist": "constant", "value": 1}}},
])
def test_what_the_loader_rejects_the_schema_rejects(bad):
    """Both the schema and case_from_dict refuse these: the schema is not looser than the loader on them."""
    with pytest.raises(CaseError):
        case_from_dict(bad)
    assert list(validator("case").iter_errors(bad))


def test_baselines_bncheck_writes_fit_the_baseline_schema():
    """make_baseline's output, from a run with findings and pseudo-findings, validates; a broken one does not."""
    from datetime import date

    from bncheck.gate import make_baseline

    doc = {"schema": "bncheck.results", "run": {"run_id": "r", "sources": ["smoke"], "manifest": {"frameworks": {
        "torch": {"version": "2.13.0"}}}},
        "findings": [{"signature": "abc", "target": "t@cpu", "quantity": "y", "hypothesis": "h",
                      "classification": "precision", "regime": "standard", "count": 2, "cases": ["c1", "c2"],
                      "worst": {"case_id": "c1", "ratio": "inf"}}],
        "executions": [{"case_id": "c3", "target": "t@cpu", "status": "crash", "message": "died"}]}
    base = json.loads(json.dumps(make_baseline(doc, date(2026, 12, 3), "known", date(2027, 1, 1))))
    v = validator("baseline")
    assert not list(v.iter_errors(base))
    base["accepted"][0]["worst_ratio"] = -1
    assert list(v.iter_errors(base))


def test_results_written_by_a_run_fit_the_results_schema_and_parse_typed(tmp_path):
    """A real run (faulty plugin: a finding, an error) writes a results.json the schema and the typed model accept;
    a document missing a required field is refused in one line."""
    from bncheck.results import Results, ResultsError
    from conftest import run_cli, write_jsonl

    cases = write_jsonl(tmp_path / "c.jsonl", [{"shape": [6, 3, 4], "seed": s} for s in (1, 120, 101)])
    r = run_cli("run", str(cases), "--targets", "faulty.*", "--plugin", "faulty_plugin", "--out", str(tmp_path / "o"))
    assert r.returncode == 1, r.stderr
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    errors = sorted(validator("results").iter_errors(doc), key=str)
    assert not errors, (list(errors[0].absolute_path), errors[0].message)
    typed = Results.typed(doc)
    assert typed.to_json() == doc and typed.findings and any(e.status == "error" for e in typed.executions)
    del doc["findings"][0]["worst"]
    with pytest.raises(ResultsError, match=r"findings\[0\]: \"worst\" is missing"):
        Results.from_json(doc)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text(json.dumps(doc))
    r = run_cli("gate", "--baseline", str(tmp_path / "none.json"), str(bad))
    assert r.returncode == 2 and "\"worst\" is missing" in r.stderr, r.stderr
