"""The HTML report: index.html and one page per finding, offline, from a results document.

These tests use synthetic results documents shaped like results.json (report/results.py); tests/test_browser.py
opens a report of a real run in a real browser.
"""

from __future__ import annotations

import json
import math
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bncheck.cases import case_from_dict
from bncheck.report import svg
from bncheck.report.html import page_name, render_finding, render_index, write_html

QUANTITIES = ("y", "running_mean", "running_var", "dx", "dgamma", "dbeta")
MANIFEST = {"bncheck": "0.1.0", "python": "3.11.7", "platform": "Linux", "cpu": "test cpu", "cpu_count": 2,
            "numpy": "2.4.6", "frameworks": {"torch": {"installed": True, "version": "2.13.0+cpu", "reason": "",
                                                       "devices": ["cpu"], "details": {"threads": 2}}}}
TARGETS = ("torch.nn@cpu", "tf.keras@cpu", "flax.linen@cpu", "ort.opset15@cpu")
CLASSES = ("suspected-bug", "precision", "convention")


def make_case(**fields) -> dict:
    """A results-document case entry (canonical fields, description, metrics) and its id."""
    c = case_from_dict({"shape": [4, 3, 5], "seed": 1, **fields})
    return c.case_id, {**c.to_dict(), "description": c.describe(), "metrics": {}}


def verdict(key: str, ratio, channels: int, passed: bool | None = None, stats: bool = True) -> dict:
    q = key.split(".", 1)[1]
    r = svg.num(ratio)
    per = [r * (0.2 + 0.8 * (c % 3) / 2) if math.isfinite(r) else ratio for c in range(channels)]
    small = q in ("running_mean", "running_var", "batch_mean", "batch_var", "dgamma", "dbeta") and stats
    ok = (r <= 1) if passed is None else passed
    return {"key": key, "passed": ok, "ratio": ratio, "max_abs": 1e-6 * r if math.isfinite(r) else "inf",
            "max_rel": 1e-7, "max_ulp": 3.0, "nonfinite_mismatch": 0 if math.isfinite(r) else channels,
            "channels": [] if ok else list(range(channels)), "convention": "", "matches": [],
            "note": "" if ok else f"{channels} of {channels} channels deviate",
            "channel_ratios": per, "observed": [1.0 + 0.01 * c for c in range(channels)] if small else [],
            "expected": [1.0 + 0.0101 * c for c in range(channels)] if small else [], "quantity": q,
            "phase": key.split(".")[0]}


def make_doc(n_exec: int = 40, n_findings: int = 6, sources=("smoke",), big_case: bool = False) -> dict:
    """A results document: cases, targets, executions (ok, deviating, error, crash, timeout, unsupported), findings."""
    cases = {}
    ids = []
    for i in range(max(n_exec // len(TARGETS), 1)):
        dt = ("float32", "float64", "float16")[i % 3]
        kw = {"dtype": dt, "seed": i}
        if i % 5 == 1:
            kw.update(mode="trajectory", steps=3)
        elif i % 7 == 2:
            kw.update(mode="eval")
        cid, d = make_case(**kw)
        cases[cid] = d
        ids.append(cid)
    if big_case:  # over the render-time input budget: conditioning falls back to the recorded worst channel
        cid, d = make_case(shape=[64, 4, 64, 64], seed=999)
        cases[cid] = d
        ids[0] = cid
    executions = []
    for k in range(n_exec):
        cid, target = ids[(k // len(TARGETS)) % len(ids)], TARGETS[k % len(TARGETS)]
        kind = k % 10
        status = {7: "error", 8: "crash", 9: "unsupported"}.get(kind, "ok")
        if k % 97 == 3:
            status = "timeout"
        case = case_from_dict({f: cases[cid][f] for f in cases[cid] if f not in ("description", "metrics")})
        deviations = []
        if status == "ok" and kind in (1, 2, 3):
            cls = CLASSES[kind - 1]
            v = verdict(f"{case.phases[0]}.y", "inf" if k % 13 == 1 else 10.0 ** (kind + 1), case.channels, passed=False)
            v["diagnosis"] = {"first": v["key"], "quantity": "y", "mode": case.mode, "step": 0, "deviating": [v["key"]],
                              "channels": list(range(case.channels)), "conditioning": {}, "hypothesis": "h", "residual": 0.5,
                              "classification": cls, "explanation": "e", "alternatives": []}
            deviations.append(v)
        executions.append({
            "case_id": cid, "target": target, "status": status,
            "message": {"error": "ValueError: boom </script><script>alert(1)</script>", "crash": "worker died (signal 6)",
                        "timeout": "no answer in 60 s", "unsupported": "no bfloat16 kernel"}.get(status, ""),
            "stderr_tail": "Traceback ...\nValueError: boom" if status == "error" else "", "elapsed_s": 0.01,
            "inputs_digest": "0" * 16, "checked": [f"{p}.{q}" for p in case.phases for q in QUANTITIES] if status == "ok" else [],
            "worst_ratio": (deviations[0]["ratio"] if deviations else 0.5) if status == "ok" else None,
            "deviations": deviations,
        })
    findings = []
    for j in range(n_findings):
        cid = ids[j % len(ids)]
        cd = cases[cid]
        case = case_from_dict({f: cd[f] for f in cd if f not in ("description", "metrics")})
        first = f"{case.phases[0]}.{('y', 'running_var', 'dx')[j % 3]}"
        verdicts = []
        for p in case.phases:
            for q in QUANTITIES:
                key = f"{p}.{q}"
                r = ("inf" if j == 1 else 12.0) if key == first else (3.0 if q == "running_var" and p.startswith("train") else 0.01)
                verdicts.append(verdict(key, r, case.channels))
        deviating = [v["key"] for v in verdicts if not v["passed"]]
        findings.append({
            "signature": f"{j:012x}", "target": TARGETS[j % len(TARGETS)], "quantity": first.split(".")[1],
            "mode": case.mode if case.mode != "trajectory" else "train", "hypothesis": ("one-pass-variance", "unexplained", "params-float32")[j % 3],
            "classification": CLASSES[j % 3], "explanation": "the variance is computed in one pass", "regime": "standard",
            "count": 1 + j, "cases": [cid], "channels": [0, 1], "minimal_case": cid,
            "shrink": {"attempts": 4, "reduced": False, "from_case": cid, "deviating": deviating},
            "repro": f"repro/{j:012x}.py" if j % 2 == 0 else None,
            "worst": {"case_id": cid, "ratio": "inf" if j == 1 else 12.0, "residual": 0.4 if j % 3 else None,
                      "first": first, "step": 0, "deviating": deviating,
                      "conditioning": {"worst_channel": 1, "mean_over_std": 0.05, "eps_over_var": 1e-5, "gamma": 1.1,
                                       "relative_error": 1e-3, "error_vs_offset_rank_correlation": 0.5,
                                       "channel_mean_over_std": [0.01 * (c + 1) for c in range(case.channels)],
                                       "channel_eps_over_var": [1e-5] * case.channels,
                                       "channel_gamma": [1.0 + 0.1 * c for c in range(case.channels)]},
                      "alternatives": [["eps-outside-sqrt", 7.5], ["unbiased-normalisation", "inf"]],
                      "agreeing_targets": ["torch.nn@cpu"], "deviating_targets": [TARGETS[j % len(TARGETS)]],
                      "verdicts": verdicts},
        })
    by_status = {s: sum(e["status"] == s for e in executions) for s in ("ok", "error", "crash", "timeout", "unsupported")}
    return {
        "schema": "bncheck.results", "schema_version": 1,
        "run": {"run_id": "20260101-000000-abcdef", "started": 1.7e9, "finished": 1.7e9 + 60, "command": "bncheck run smoke --out reports",
                "sources": list(sources), "manifest": MANIFEST, "status": "complete"},
        "summary": {"cases": len(cases), "targets": len(TARGETS), "executions": len(executions), "by_status": by_status,
                    "deviating_executions": sum(bool(e["deviations"]) for e in executions),
                    "findings": {c: sum(f["classification"] == c for f in findings) for c in CLASSES},
                    "by_target": {}},
        "targets": [{"name": t, "framework": t.split(".")[0], "device": "cpu", "version": "1.0", "available": True, "reason": "",
                     "description": f"the {t} path", "conventions": {"momentum": "new", "running_var": "unbiased"},
                     "observed": {"running_var": {"declared": "unbiased", "checked": 3, "matched": {"unbiased": 3}, "follows": "unbiased"}}}
                    for t in TARGETS] + [{"name": "torch.nn@cuda", "framework": "torch", "device": "cuda", "version": "", "available": False,
                                          "reason": "runs on cuda only", "description": "", "conventions": {}, "observed": {"running_var": None}}],
        "findings": findings, "cases": cases, "executions": executions,
    }


def write_repros(doc: dict, out: Path) -> None:
    for f in doc["findings"]:
        if f["repro"]:
            (out / f["repro"]).parent.mkdir(parents=True, exist_ok=True)
            (out / f["repro"]).write_text("#!/usr/bin/env python3\nprint('x < y & z')\n")


def svgs(html: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", html, flags=re.S)


# ---- index.html ------------------------------------------------------------------------------------
def test_write_html_writes_index_and_one_page_per_finding(tmp_path):
    doc = make_doc()
    write_repros(doc, tmp_path)
    write_html(doc, tmp_path / "index.html")
    index = (tmp_path / "index.html").read_text()
    pages = sorted(p.name for p in (tmp_path / "findings").glob("*.html"))
    assert pages == sorted(page_name(f["signature"]) for f in doc["findings"])
    for f in doc["findings"]:
        assert f'href="findings/{page_name(f["signature"])}"' in index
    # the summary matrix: one row per target (the unavailable one too), one column per source
    assert 'id="matrix"' in index and "torch.nn@cuda" in index and "runs on cuda only" in index
    assert index.count('class="cell s-') == len(doc["targets"])
    for cls in ("s-failed",):
        assert f"cell {cls}" in index  # every target here has a crash or an error
    # one filter per facet, options from the findings
    for key in ("target", "class", "quantity", "dtype", "mode"):
        assert f'data-key="{key}"' in index
    assert index.count('<tr class="finding"') == len(doc["findings"])


def test_matrix_colours_cells_by_their_worst_execution(tmp_path):
    doc = make_doc(n_exec=8, n_findings=1)
    for e in doc["executions"]:  # make every execution pass except one precision deviation on tf.keras
        e["status"], e["deviations"] = "ok", []
    e = next(e for e in doc["executions"] if e["target"] == "tf.keras@cpu")
    v = verdict("train0.y", 50.0, 3, passed=False)
    v["diagnosis"] = {"classification": "precision"}
    e["deviations"] = [v]
    html = render_index(doc)
    cells = dict(re.findall(r'<code title="[^"]*">([^<]+)</code>.*?<td class="cell s-([a-z-]+)"', html, flags=re.S))
    assert cells["tf.keras@cpu"] == "precision"
    assert cells["torch.nn@cpu"] == "ok" and cells["flax.linen@cpu"] == "ok"
    assert cells["torch.nn@cuda"] == "none"


def test_matrix_attributes_cases_to_each_source(tmp_path, monkeypatch):
    doc = make_doc(n_exec=16, n_findings=1)
    ids = list(dict.fromkeys(e["case_id"] for e in doc["executions"]))
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    strip = lambda cid: {k: v for k, v in doc["cases"][cid].items() if k not in ("description", "metrics")}  # noqa: E731
    a.write_text("".join(json.dumps(strip(c)) + "\n" for c in ids[:1]))
    b.write_text("".join(json.dumps(strip(c)) + "\n" for c in ids[1:]))
    doc["run"]["sources"] = [str(a), str(b)]
    html = render_index(doc)
    head = re.search(r'<table class="matrix".*?</thead>', html, flags=re.S).group(0)
    assert str(a) in head and str(b) in head and "other" not in head
    row = re.search(r"<code[^>]*>torch.nn@cpu</code>.*?</tr>", html, flags=re.S).group(0)
    assert len(re.findall(r'class="cell ', row)) == 2


def test_index_has_no_network_reference_and_no_script_injection(tmp_path):
    doc = make_doc()
    write_repros(doc, tmp_path)
    write_html(doc, tmp_path / "index.html")
    for page in [tmp_path / "index.html", *(tmp_path / "findings").glob("*.html")]:
        html = page.read_text()
        assert not re.search(r"""\b(src|srcset|poster|data)\s*=""", html.replace("data-", "")), page
        assert "@import" not in html and "url(" not in html, page
        links = re.findall(r"<link\b[^>]*>", html)
        assert links == ['<link rel="icon" href="data:,">'], page  # no favicon request either
        for href in re.findall(r'href="([^"]*)"', html):
            assert not re.match(r"^[a-z]+:", href) or href == "data:,", (page, href)
    index = (tmp_path / "index.html").read_text()
    assert "http" not in index.replace("http-equiv", "")
    assert "<script>alert(1)" not in index
    data = re.search(r'<script type="application/json" id="exec-data">(.*?)</script>', index, flags=re.S).group(1)
    table = json.loads(data)
    assert len(table["rows"]) == len(doc["executions"])
    assert any("alert(1)" in m for m in table["messages"])


def test_stale_finding_pages_are_removed(tmp_path):
    doc = make_doc()
    write_html(doc, tmp_path / "index.html")
    (tmp_path / "findings" / "gone.html").write_text("old")
    doc["findings"] = doc["findings"][:2]
    write_html(doc, tmp_path / "index.html")
    assert sorted(p.name for p in (tmp_path / "findings").glob("*.html")) == sorted(page_name(f["signature"]) for f in doc["findings"])


# ---- finding pages ---------------------------------------------------------------------------------
def test_finding_page_has_charts_case_repro_and_manifest(tmp_path):
    doc = make_doc()
    write_repros(doc, tmp_path)
    write_html(doc, tmp_path / "index.html")
    f = doc["findings"][0]
    html = (tmp_path / "findings" / page_name(f["signature"])).read_text()
    kinds = re.findall(r'data-chart="([a-z-]+)"', html)
    assert {"channel-errors", "conditioning", "verdict-heatmap"} <= set(kinds)
    for s in svgs(html):
        ET.fromstring(s)  # well-formed
    # the worst channel is the first verdict's channel of largest error / bound (channel 2 of make_doc's ratios), not
    # the diagnosis's channel of largest relative error (1): the table, the outlined bar and the ring all name it
    first = next(v for v in f["worst"]["verdicts"] if v["key"] == f["worst"]["first"])
    worst = max(range(len(first["channel_ratios"])), key=lambda c: (first["channel_ratios"][c], -c))
    assert worst == 2
    assert f'<td data-value="channel">{worst}</td>' in html
    assert re.findall(r'class="highlight" data-highlight="(\d+)"', html) == [str(worst), str(worst)]
    assert f'<td data-value="mean-over-std">{svg.fmt(0.01 * (worst + 1))}</td>' in html
    assert 'data-value="relative-channel">channel 1 ' in html
    assert f["hypothesis"] in html and "eps-outside-sqrt" in html and "7.5" in html
    assert 'id="minimal-json"' in html and 'data-copy="repro-script"' in html
    assert "print(&#39;x &lt; y &amp; z&#39;)" in html  # the script, escaped, inline
    assert 'href="../repro/000000000000.py" download' in html
    assert "2.13.0+cpu" in html and "the whole manifest" in html
    assert 'href="../index.html#findings"' in html and 'rel="next"' in html
    minimal = json.loads(re.search(r'<pre id="minimal-json" class="wrap">(.*?)</pre>', html, flags=re.S).group(1).replace("&#34;", '"'))
    assert case_from_dict(minimal).case_id == f["minimal_case"]  # copyable as one line of a case file


def test_trajectory_finding_draws_running_statistics_per_step(tmp_path):
    doc = make_doc()
    i = next(i for i, f in enumerate(doc["findings"]) if doc["cases"][f["worst"]["case_id"]]["mode"] == "trajectory")
    html = render_finding(doc, i, tmp_path)
    assert html.count('data-chart="trajectory"') == 2 and html.count('data-chart="trajectory-error"') == 2
    assert "train2" in html and "initial" in html
    j = next(j for j, f in enumerate(doc["findings"]) if doc["cases"][f["worst"]["case_id"]]["mode"] == "train")
    assert 'data-chart="trajectory"' not in render_finding(doc, j, tmp_path)


def test_large_case_draws_conditioning_from_the_recorded_channels(tmp_path):
    """The conditioning chart of a case too large to draw its inputs at render time comes from the recorded
    per-channel conditioning, ringed at the worst channel; a document without it draws no such chart."""
    doc = make_doc(big_case=True)
    i = next(i for i, f in enumerate(doc["findings"]) if doc["cases"][f["worst"]["case_id"]]["shape"][0] == 64)
    html = render_finding(doc, i, tmp_path)
    assert 'data-chart="conditioning"' in html and re.search(r'<circle class="highlight" data-highlight="2"', html)
    del doc["findings"][i]["worst"]["conditioning"]["channel_mean_over_std"]
    assert 'data-chart="conditioning"' not in render_finding(doc, i, tmp_path)


def test_missing_repro_file_and_non_finite_values_render(tmp_path):
    doc = make_doc()
    html = render_finding(doc, 1, tmp_path)  # ratio "inf", no script on disk
    assert ">inf<" in html
    html0 = render_finding(doc, 0, tmp_path)
    assert "not beside this report any more" in html0


# ---- svg helper ------------------------------------------------------------------------------------
def test_svg_charts_are_well_formed_and_mark_non_finite_values():
    bar = svg.bar_chart([0.5, 2.0, "inf", "nan", 0.0, 1e-30], title="t <&>")
    root = ET.fromstring(bar)
    assert root.tag == "svg" and root.get("data-chart") == "bars"
    texts = [t.text for t in root.iter("text")]
    assert "inf" in texts and "NaN" in texts and "t <&>" in texts
    assert bar.count('class="ref"') == 1  # the bound line
    ET.fromstring(svg.scatter_chart([(1.0, 2.0, "a"), (0.0, 1.0, "zero x"), (10.0, "inf", "b")], title="s"))
    ET.fromstring(svg.line_chart([{"name": "a", "ys": [1, None, "nan", 3]}, {"name": "b", "ys": [1, 2, 3, 4], "dash": True}],
                                 xlabels=["0", "1", "2", "3"], log=True, bound=1.0, legend=[("a", "#000", "line")]))
    ET.fromstring(svg.heatmap(["r1", "r2"], ["0", "1", "2"], [[0.1, 5, "inf"], [None, 1e9]], title="h"))
    ET.fromstring(svg.bar_chart([], title="empty"))


def test_svg_number_format():
    assert [svg.fmt(x) for x in (0, 1, 12345.6, 1e-5, 2.5e12, "inf", "nan", -3.14159)] == \
        ["0", "1", "1.23e4", "1e-5", "2.5e12", "inf", "NaN", "-3.14"]


# ---- scale -----------------------------------------------------------------------------------------
def test_ten_thousand_executions_render_quickly_into_a_small_index(tmp_path):
    doc = make_doc(n_exec=10_000, n_findings=40)
    write_repros(doc, tmp_path)
    t0 = time.perf_counter()
    write_html(doc, tmp_path / "index.html")
    elapsed = time.perf_counter() - t0
    size = (tmp_path / "index.html").stat().st_size
    pages = sum(p.stat().st_size for p in (tmp_path / "findings").glob("*.html"))
    print(f"\n10,000 executions, {len(doc['cases'])} cases, {len(doc['findings'])} findings: write_html {elapsed:.2f} s, "
          f"index.html {size / 1e6:.2f} MB, {len(doc['findings'])} finding pages {pages / 1e6:.2f} MB")
    assert elapsed < 10.0
    assert size < 10e6
    index = (tmp_path / "index.html").read_text()
    assert index.count("<tr") < 500  # the executions are not HTML rows: they are paged from embedded JSON
    data = re.search(r'<script type="application/json" id="exec-data">(.*?)</script>', index, flags=re.S).group(1)
    assert len(json.loads(data)["rows"]) == 10_000


@pytest.mark.parametrize("sig", ["abc123", "../../etc/passwd", "a b"])
def test_page_names_are_file_names(sig):
    name = page_name(sig)
    assert "/" not in name and " " not in name and name.endswith(".html")


def test_root_causes_group_findings_by_target_and_hypothesis_across_regimes():
    """Findings of one target and hypothesis in different regimes make one cause; counts add up; worst ratio kept."""
    from bncheck.report.results import root_causes

    def finding(sig, target, hyp, cls, regime, quantity, count, ratio):
        return {"signature": sig, "target": target, "hypothesis": hyp, "classification": cls, "explanation": hyp,
                "regime": regime, "quantity": quantity, "count": count, "worst": {"ratio": ratio}}

    findings = [
        finding("a", "t1", "one-pass-variance", "precision", "mean-offset-1e2", "y", 2, 5.0),
        finding("b", "t1", "one-pass-variance", "precision", "mean-offset-1e4", "running_var", 3, "inf"),
        finding("c", "t1", "one-pass-variance", "precision", "mean-offset-1e2", "y", 1, 9.0),
        finding("d", "t1", "unexplained", "suspected-bug", "subnormal-inputs", "dx", 1, 2.0),
        finding("e", "t2", "one-pass-variance", "precision", "mean-offset-1e2", "y", 4, 3.0),
    ]
    causes = root_causes(findings)
    assert [(g["target"], g["hypothesis"]) for g in causes] == [
        ("t1", "unexplained"), ("t1", "one-pass-variance"), ("t2", "one-pass-variance")]  # suspected bugs first
    g = causes[1]
    assert g["findings"] == ["a", "b", "c"] and g["count"] == 6 and g["worst_ratio"] == "inf"
    assert g["regimes"] == ["mean-offset-1e2", "mean-offset-1e4"] and g["quantities"] == ["y", "running_var"]
    assert causes[2]["worst_ratio"] == 3.0
