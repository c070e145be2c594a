"""The catalogue of hypotheses and classes: complete, the source of docs/hypotheses.md, and a page per entry in the
report that every finding page links to."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bncheck import catalogue
from bncheck.diagnose import CLASSES, HYPOTHESES, WHY_NOT
from bncheck.report.html import page_name, write_html
from test_report_html import make_doc

ROOT = Path(__file__).resolve().parents[1]


def test_every_hypothesis_and_class_has_an_entry_with_every_part():
    names = {e.name for e in catalogue.entries()}
    assert names == {*HYPOTHESES, "unexplained", "peer-outlier"}
    assert {c.name for c in catalogue.classes()} == {*CLASSES, "precision-outlier"}
    for e in [*catalogue.entries(), *catalogue.classes()]:
        assert e.models and e.fitted and e.example, e.name
        assert all(u.url.startswith("https://github.com/") and u.title for u in e.upstream), e.name
    assert len({catalogue.page_name(e.name) for e in [*catalogue.entries(), *catalogue.classes()]}) == len(names) + 5


def test_docs_hypotheses_md_is_the_catalogue():
    """docs/hypotheses.md is generated: `python -m bncheck.catalogue > docs/hypotheses.md`."""
    assert (ROOT / "docs" / "hypotheses.md").read_text() == catalogue.markdown()


def test_why_not_rules_are_the_schema_enum():
    schema = json.loads((ROOT / "src" / "bncheck" / "schemas" / "results.schema.json").read_text())
    assert schema["$defs"]["alternative"]["properties"]["rule"]["enum"] == list(WHY_NOT)


def test_report_has_a_page_per_hypothesis_and_class_and_every_finding_links_to_its_own(tmp_path):
    doc = make_doc()
    doc["findings"][0]["hypothesis"] = "a-plugin-hypothesis"  # unknown to the catalogue: still a page
    write_html(doc, tmp_path / "index.html")
    pages = {p.name for p in (tmp_path / "hypotheses").glob("*.html")}
    assert {catalogue.page_name(e.name) for e in [*catalogue.entries(), *catalogue.classes()]} <= pages
    assert "a-plugin-hypothesis.html" in pages and "index.html" in pages
    for f in doc["findings"]:
        html = (tmp_path / "findings" / page_name(f["signature"])).read_text()
        links = re.findall(r'href="\.\./hypotheses/([^"#]+)"', html)
        assert catalogue.page_name(f["hypothesis"]) in links and catalogue.page_name(f["classification"]) in links
        listed = (tmp_path / "hypotheses" / catalogue.page_name(f["hypothesis"])).read_text()
        assert f'href="../findings/{page_name(f["signature"])}"' in listed
    one_pass = (tmp_path / "hypotheses" / "one-pass-variance.html").read_text()
    assert "https://github.com/google/flax/issues/1491" in one_pass and "formula-first" in one_pass
