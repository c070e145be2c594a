"""A finding on an exported path names its source path and says whether the source agrees on the finding's case
(tests/plugins/conversion_plugin: a correct source, an exported path that drops eps); no framework needed."""

from __future__ import annotations

import json

from conftest import run_cli, write_jsonl


def test_conversion_finding_names_its_source_and_that_the_source_agrees(tmp_path):
    cases = write_jsonl(tmp_path / "c.jsonl", [{"shape": [8, 4, 5], "mode": "eval", "dtype": "float64",
                                                "param_dtype": "float64", "eps": 0.1}])
    out = tmp_path / "out"
    r = run_cli("run", str(cases), "--plugin", "conversion_plugin", "--targets", "conversion.*", "--shrink", "0",
                "--out", str(out))
    assert r.returncode == 1, r.stderr
    doc = json.loads((out / "results.json").read_text())
    (finding,) = doc["findings"]
    assert finding["target"] == "conversion.exported@cpu"
    assert finding["conversion"] == {"kind": "exported", "source": "conversion.source@cpu", "source_on_case": "agrees",
                                     "case_id": finding["worst"]["case_id"]}
    kinds = {t["name"]: (t["path_kind"], t["source_family"]) for t in doc["targets"]}
    assert kinds == {"conversion.source@cpu": ("eager", None), "conversion.exported@cpu": ("exported", "conversion.source")}
    page = (out / "findings" / f"{finding['signature']}.html").read_text()
    assert 'data-source-on-case="agrees"' in page and "conversion.source@cpu" in page
    index = (out / "index.html").read_text()
    assert 'data-path-kind="exported"' in index and 'data-group="conversion"' in index
