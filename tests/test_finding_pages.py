"""Every finding page of a real run agrees with itself, and `bncheck report --format markdown` writes issue bodies and a
run summary from the same findings.

One run of the default and hazards suites on four cheap targets (ONNX Runtime, ONNX's reference evaluator at
opsets 15 and 9, torch.nn: conventions, precision, out-of-range and suspected bugs, critical NaN/Inf findings) is
shared by the tests of this module. The page's numbers are checked against the raw verdicts of the worst case and
against the case's inputs drawn again here, not against the record the page is rendered from.
"""

from __future__ import annotations

import html as htmlmod
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from bncheck.cases import case_from_dict
from bncheck.diagnose import HYPOTHESES
from bncheck.inputs import make_inputs
from bncheck.report import markdown, svg
from bncheck.report.html import page_name
from conftest import run_cli

TARGETS = "ort.opset15@cpu,onnx.reference.opset15@cpu,onnx.reference.opset9@cpu,torch.nn@cpu"
CASE_FIELDS = ("shape", "layout", "dtype", "param_dtype", "mode", "steps", "eps", "momentum", "affine",
               "track_running_stats", "grad", "regime", "seed")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The output folder of `bncheck run default hazards` on TARGETS (no shrinking; repro scripts written)."""
    import importlib.util

    missing = [m for m in ("torch", "onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: no run of {TARGETS}")
    out = tmp_path_factory.mktemp("pages") / "out"
    r = run_cli("run", "default", "hazards", "--targets", TARGETS, "--shrink", "0", "--out", str(out))
    assert r.returncode == 1, r.stderr[-2000:]
    return out


def value(x) -> float:
    """A verdict's number, NaN (a NaN/Inf mismatch) ranked as +inf."""
    v = svg.num(x)
    return math.inf if math.isnan(v) else v


def text(fragment: str) -> str:
    words = re.sub(r"\s+", " ", htmlmod.unescape(re.sub(r"<[^>]+>", " ", fragment))).strip()
    return re.sub(r" ([,.;:)])", r"\1", re.sub(r"\( ", "(", words))


def cell(page: str, name: str) -> str:
    """The text of the element marked data-value="name" (the first one)."""
    m = re.search(rf'data-value="{name}"[^>]*>(.*?)</(td|strong|span)>', page, flags=re.S)
    assert m, name
    return text(m.group(1))


@pytest.mark.slow
def test_every_finding_page_agrees_with_its_verdicts_and_inputs(run: Path):
    """Headline, tables and charts of every finding page name the numbers the worst case's verdicts give: the first
    deviating quantity's ratio, the case's worst quantity, the channel of largest error / bound (the table, the
    outlined bar and the ringed point), that channel's |mean| / std and gamma recomputed from the inputs; every
    alternative says which rule decided against it, and one with a smaller residual that explains is never left
    without its rule."""
    doc = json.loads((run / "results.json").read_text())
    findings = doc["findings"]
    assert len(findings) >= 30
    from bncheck.results import Results

    assert Results.typed(doc).to_json() == doc  # first_deviation and alternatives are typed records
    try:
        import jsonschema
    except ImportError:  # the test tools' extra; the typed parse above still holds
        jsonschema = None
    if jsonschema is not None:
        schema = json.loads((Path(__file__).resolve().parents[1] / "src/bncheck/schemas/results.schema.json").read_text())
        errors = list(jsonschema.Draft202012Validator(schema).iter_errors(doc))
        assert not errors, (list(errors[0].absolute_path), errors[0].message)
    kinds = set()
    for f in findings:
        w = f["worst"]
        page = (run / "findings" / page_name(f["signature"])).read_text()
        verdicts = {v["key"]: v for v in w["verdicts"]}
        first = verdicts[w["first"]]
        kinds.add((f["classification"], bool(first["nonfinite_mismatch"])))
        if f["classification"] == "precision-outlier":  # within its bound: the page states its ratio and its peers'
            assert cell(page, "first-ratio") == svg.fmt(first["ratio"])
            continue
        head = text(re.search(r'<p class="lead" id="headline">(.*?)</p>', page, flags=re.S).group(1))
        assert w["first"] in head
        if first["nonfinite_mismatch"]:
            assert f"NaN or infinite in {first['nonfinite_mismatch']} elements" in head, (f["signature"], head)
        else:
            assert f"largest error is {svg.fmt(first['ratio'])} times its bound" in head, (f["signature"], head)
        # the case's worst quantity, over the deviating ones
        dev = [k for k in w["deviating"]]
        worst_key = max(dev, key=lambda k: (value(verdicts[k]["ratio"]), -dev.index(k)))
        assert value(verdicts[worst_key]["ratio"]) == value(w["ratio"])
        n_bad = sum(int(verdicts[k]["nonfinite_mismatch"]) for k in dev)
        if worst_key != w["first"]:
            assert f"the worst quantity of the case is {worst_key}" + (
                ", with NaN/Inf mismatches" if n_bad else f", at {svg.fmt(w['ratio'])} times its bound") in head, head
        row = cell(page, "case-ratio")
        assert row == (f"NaN/Inf ({n_bad} elements)" if n_bad else svg.fmt(w["ratio"])), (f["signature"], row)
        # the worst channel of the first quantity, everywhere the page names it
        cr = [value(r) for r in first["channel_ratios"]]
        channel = max(range(len(cr)), key=lambda c: (cr[c], -c))
        assert cell(page, "channel") == str(channel), f["signature"]
        assert cell(page, "channel-ratio").startswith(svg.fmt(first["channel_ratios"][channel]))
        rings = re.findall(r'class="highlight" data-highlight="(\d+)"', page)
        assert rings and set(rings) == {str(channel)}, (f["signature"], rings)
        case = case_from_dict({k: doc["cases"][w["case_id"]][k] for k in CASE_FIELDS})
        inputs = make_inputs(case)
        x = np.moveaxis(np.asarray(inputs[f"{w['first'].split('.')[0]}.x"], np.float64), case.channel_axis, 0)
        x = x.reshape(case.channels, -1)[channel]
        with np.errstate(all="ignore"):
            offset = abs(x.mean()) / x.std()
        shown = svg.num(cell(page, "mean-over-std"))
        if math.isfinite(offset):
            assert shown == pytest.approx(offset, rel=1e-2), (f["signature"], shown, offset)
        assert svg.num(cell(page, "gamma")) == pytest.approx(float(np.asarray(inputs["gamma"], np.float64)[channel]),
                                                              rel=1e-2)
        # the alternatives: a rule per row, and the rule that ranks a formula before a better-fitting precision model
        chosen = f["hypothesis"]
        residual = value(w["residual"]) if w["residual"] is not None else math.inf
        rows = re.findall(r'<tr data-rule="([a-z-]+)"><td>([^<]+)</td>.*?</tr>', page, flags=re.S)
        assert len(rows) == len(w["alternatives"]), f["signature"]
        for rule, name in rows:
            r = value(dict((n, x) for n, x in w["alternatives"])[name])
            assert (rule == "does-not-explain") == (r > 1 or chosen == "unexplained"), (f["signature"], name, rule, r)
            if r <= 1 and r < residual and HYPOTHESES[chosen].kind == "formula" and HYPOTHESES[name].kind == "precision":
                assert rule == "formula-first", (f["signature"], name, rule)
        # the hypothesis and class pages it links to exist
        for href in re.findall(r'href="\.\./(hypotheses/[^"]+)"', page):
            assert (run / href.split("#")[0]).is_file(), href
    assert {k[0] for k in kinds} >= {"convention", "precision", "out-of-range", "suspected-bug"}
    assert any(nonfinite for _, nonfinite in kinds)


@pytest.mark.slow
def test_report_markdown_writes_issue_bodies_and_a_summary(run: Path, tmp_path: Path):
    """Issue bodies for exactly the critical and suspected-bug findings, each with the environment, expected against
    actual, the repro script inline, the hypothesis and its residual; a summary that, against a baseline missing a
    finding, lists that finding as new."""
    doc = json.loads((run / "results.json").read_text())
    r = run_cli("report", "--format", "markdown", str(run))
    assert r.returncode == 0, r.stderr
    wanted = {f["signature"] for f in doc["findings"] if f["severity"] == "critical" or f["classification"] == "suspected-bug"}
    assert wanted and {p.stem for p in (run / "issues").glob("*.md")} == wanted
    by_sig = {f["signature"]: f for f in doc["findings"]}
    for sig in wanted:
        f = by_sig[sig]
        body = (run / "issues" / f"{sig}.md").read_text()
        first = next(v for v in f["worst"]["verdicts"] if v["key"] == f["worst"]["first"])
        assert body.startswith(f"# {f['target']}: BatchNorm {f['worst']['first']} ")
        assert f"| `{first['key']}` | {svg.fmt(first['ratio'])} |" in body
        manifest = doc["run"]["manifest"]
        assert f"| python | {manifest['python']} |" in body and "## Environment" in body
        assert f"**{f['hypothesis']}**" in body
        res = f["worst"]["residual"]
        assert (f"Residual {svg.fmt(res)}" if res is not None else "No hypothesis bncheck knows brings") in body
        if f.get("repro"):
            script = (run / f["repro"]).read_text().rstrip("\n")
            if len(script.encode()) <= markdown.MAX_INLINE_REPRO:  # unshrunk cases embed their expected values too
                assert f"```python\n{script}\n```" in body
            else:
                assert f"`{f['repro']}` (" in body and "too large to inline; attach it" in body
    summary = (run / "summary.md").read_text()
    assert summary.startswith(f"## bncheck: {len(doc['findings'])} findings")
    assert all(f"`issues/{s}.md`" in summary for s in wanted)
    # against a baseline that accepts every finding but one, that one is new and the gate fails
    base = tmp_path / "base.json"
    assert run_cli("baseline", str(run), "--out", str(base)).returncode == 0
    b = json.loads(base.read_text())
    dropped = b["accepted"].pop(0)
    base.write_text(json.dumps(b))
    r = run_cli("report", "--format", "markdown", "--baseline", str(base), str(run))
    assert r.returncode == 0, r.stderr
    summary = (run / "summary.md").read_text()
    assert "gate FAILED" in summary.splitlines()[0] and "1 failing (1 new, 0 worse, 0 expired)" in summary
    assert f"| `{dropped['signature']}` |" in summary
    # --format html writes the report again from results.json, hypothesis pages included
    (run / "index.html").unlink()
    r = run_cli("report", str(run))
    assert r.returncode == 0 and (run / "index.html").is_file() and (run / "hypotheses" / "index.html").is_file(), r.stderr


def test_report_bad_input_is_one_line_and_its_exit_status(tmp_path: Path):
    """No results.json: exit 3; an unknown format: exit 2; each one line on stderr, nothing written."""
    r = run_cli("report", "--format", "markdown", str(tmp_path))
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and "no results.json" in r.stderr, r.stderr
    (tmp_path / "results.json").write_text("{}")
    r = run_cli("report", "--format", "pdf", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "choose one of html, markdown" in r.stderr, r.stderr
    r = run_cli("report", "--format", "markdown", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a bncheck results document" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_issue_body_cites_the_hypothesis_and_the_record_upstream_issues():
    """An issue body lists the known upstream issues of its hypothesis (bncheck.catalogue) and those the target's
    conventions record cites (Conventions.upstream_issues); an unknown hypothesis says none is recorded."""
    from bncheck.report.markdown import issue_body
    from bncheck.targets.keras_targets import TORCH_CONVENTIONS
    from test_report_html import make_doc

    doc = make_doc()
    f = doc["findings"][0]
    f.update(hypothesis="one-pass-variance", severity="critical", classification="precision")
    target = next(t for t in doc["targets"] if t["name"] == f["target"])
    target["conventions"] = TORCH_CONVENTIONS.to_dict()
    body = issue_body(doc, f)
    assert "https://github.com/google/flax/issues/1491" in body  # the hypothesis's
    assert all(u in body for u in TORCH_CONVENTIONS.upstream_issues) and TORCH_CONVENTIONS.upstream_issues
    f["hypothesis"] = "a-plugin-hypothesis"
    assert "No known upstream issue about `a-plugin-hypothesis`" in issue_body(doc, f)
