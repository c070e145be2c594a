"""The HTML report of a run: index.html and one page per finding under findings/, fully offline.

Everything a page needs is inline: CSS, the small vanilla-JavaScript filters and pager, and the charts,
drawn as SVG in Python (`svg.py`). No page loads anything from the network. The templates are Jinja2
files shipped as package data.

index.html stays small for big runs: the executions are embedded once as compact JSON and paged
client-side; the per-verdict details of every execution are in results.json.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import jinja2

from . import svg
from ..files import write_atomic
from .paths import framework_group, matrix_order, source_target
from ..results import json_float
from .results import first_deviation, plugin_args, root_causes

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("bncheck", "report/templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

FINDINGS_DIR = "findings"
MAX_CONDITIONING_ELEMENTS = 1_000_000  # inputs drawn at render time for a trajectory chart's initial statistics
MAX_INLINE_REPRO = 256 * 1024  # bytes of a reproduction script shown inline on its finding page
MAX_PROBLEMS_LISTED = 200  # errors, crashes and timeouts with their stderr on index.html
MAX_CASES_LISTED = 60  # cases of one finding listed on its page
TRAJECTORY_CHANNELS = 6  # channels drawn in a running-statistics trajectory chart
# worst first: the colour of a matrix cell is its worst execution
SEVERITY = ("failed", "suspected-bug", "deviating", "precision", "out-of-range", "convention", "ok", "refused",
            "unsupported", "none")
SEVERITY_LABEL = {"failed": "error / crash / timeout", "suspected-bug": "suspected bug", "deviating": "deviating (undiagnosed)",
                  "precision": "precision", "out-of-range": "out of the format's range", "convention": "convention",
                  "ok": "agrees", "refused": "refused (documented)", "unsupported": "unsupported only", "none": "not run"}
EXEC_STATES = ("ok", "deviating", "error", "refused", "crash", "timeout", "unsupported")
CASE_FIELDS = ("shape", "layout", "dtype", "param_dtype", "mode", "steps", "eps", "momentum", "affine",
               "track_running_stats", "grad", "regime", "seed")
CHAIN = ("batch_mean", "batch_var", "batch_var_unbiased", "batch_invstd", "y", "running_mean", "running_var",
         "dx", "dgamma", "dbeta")


def _fmt(x: Any) -> str:
    """Three significant digits; None as '-', other strings pass through."""
    if x is None:
        return "-"
    if isinstance(x, str) and x not in ("inf", "-inf", "nan"):
        return x
    return svg.fmt(x)


_env.filters["g"] = _fmt
_env.filters["when"] = lambda t: datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _script_json(obj: Any) -> str:
    """JSON safe inside a <script> element (no '</script>', no HTML-significant characters)."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _ratio_json(x: Any) -> Any:
    """A ratio for the embedded table: 3 significant digits, non-finite as a string."""
    if x is None:
        return None
    v = svg.num(x)
    return json_float(float(f"{v:.3g}") if math.isfinite(v) else v)


def _exec_state(e: dict[str, Any]) -> str:
    if e["status"] == "ok":
        return "deviating" if e["deviations"] else "ok"
    return e["status"]


def _exec_class(e: dict[str, Any]) -> str:
    """The severity bucket of one execution."""
    if e["status"] in ("error", "crash", "timeout"):
        return "failed"
    if e["status"] in ("unsupported", "refused"):
        return e["status"]
    if not e["deviations"]:
        return "ok"
    diag = next((v["diagnosis"] for v in e["deviations"] if isinstance(v.get("diagnosis"), dict)), None)
    return diag["classification"] if diag and diag.get("classification") in SEVERITY else "deviating"


def _case_sources(doc: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The run's sources (suites, files) and which one each case came from, as `load_cases` attributes them.

    With one source every case is its own. With several, each source is loaded again (best effort: a file
    that moved since the run leaves its cases under 'other').
    """
    sources = [str(s) for s in doc["run"].get("sources") or []] or ["cases"]
    if len(sources) == 1:
        return sources, {cid: sources[0] for cid in doc["cases"]}
    owner: dict[str, str] = {}
    try:
        from ..cases import load_case_file, resolve_case_source
    except ImportError:  # pragma: no cover
        return sources + ["other"], {}
    for s in sources:
        try:
            for c in load_case_file(resolve_case_source(s)):
                owner.setdefault(c.case_id, s)
        except Exception:  # noqa: BLE001 - the report must render whatever happened to the files
            continue
    return sources, owner


def _matrix(doc: dict[str, Any]) -> dict[str, Any]:
    """Targets x sources: per cell the execution counts by state and the worst severity."""
    sources, owner = _case_sources(doc)
    cells: dict[tuple[str, str], Counter[str]] = {}
    used_other = False
    for e in doc["executions"]:
        src = owner.get(e["case_id"], "other")
        used_other |= src == "other"
        c = cells.setdefault((e["target"], src), Counter())
        c[_exec_class(e)] += 1
        c["state:" + _exec_state(e)] += 1
        c["total"] += 1
    cols = sources + (["other"] if used_other else [])
    names = [t["name"] for t in sorted(doc["targets"], key=matrix_order)]  # grouped by framework and path kind
    names += sorted({e["target"] for e in doc["executions"]} - set(names))
    tinfo = {t["name"]: t for t in doc["targets"]}
    rows = []
    for name in names:
        t = tinfo.get(name, {"name": name, "available": True, "reason": "", "version": "", "description": "",
                             "conventions": {}, "observed": {}})
        row_cells = []
        for src in cols:
            c = cells.get((name, src), Counter())
            worst = next((s for s in SEVERITY if c.get(s)), "none")
            run = c["total"] - c["state:unsupported"] - c["state:refused"]
            dev = c["state:deviating"]
            failed = c["state:error"] + c["state:crash"] + c["state:timeout"]
            if not c["total"]:
                text = "not run" if t.get("available", True) else "unavailable"
            elif not run:
                text = ", ".join(f"{c['state:' + k]} {k}" for k in ("refused", "unsupported") if c["state:" + k])
            else:
                text = f"{dev + failed} / {run}" if dev + failed else f"{run} ok"
            tip = ", ".join(f"{c['state:' + s]} {s}" for s in EXEC_STATES if c["state:" + s])
            breakdown = ", ".join(f"{c[s]} {SEVERITY_LABEL[s]}" for s in SEVERITY
                                  if c.get(s) and s not in ("ok", "unsupported", "refused"))
            sub = ", ".join(f"{n} {label}" for n, label in ((failed, "failed"), (dev, "deviating")) if n) if run else ""
            row_cells.append({"cls": worst, "text": text, "sub": sub,
                              "tip": (tip + (f" ({breakdown})" if breakdown else "")) or "no executions"})
        obs = (t.get("observed") or {}).get("running_var")
        rows.append({"t": t, "cells": row_cells, "observed": obs, "group": framework_group(t),
                     "kind": t.get("path_kind") or "eager", "source": source_target(t) if "device" in t else None})
    return {"cols": cols, "rows": rows}


def page_name(signature: str) -> str:
    """The file name of a finding's page (signatures are hex; anything else is made file-name safe)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(signature)) + ".html"


def _finding_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for f in doc["findings"]:
        cases = [doc["cases"].get(cid) for cid in f["cases"]]
        dtypes = sorted({c["dtype"] for c in cases if c})
        modes = sorted({c["mode"] for c in cases if c}) or [str(f.get("mode", ""))]  # the modes of its cases
        minimal = doc["cases"].get(f.get("minimal_case") or "") or {}
        out.append({"f": f, "page": f"{FINDINGS_DIR}/{page_name(f['signature'])}", "dtypes": dtypes, "modes": modes,
                    "minimal": minimal.get("description", f.get("minimal_case") or "-"),
                    "minimal_shape": str(tuple(minimal["shape"])) if "shape" in minimal else "-"})
    return out


def _options(rows: list[dict[str, Any]], key) -> list[tuple[str, int]]:
    c: Counter[str] = Counter()
    for r in rows:
        for v in key(r):
            c[v] += 1
    return sorted(c.items())


def _executions_json(doc: dict[str, Any]) -> str:
    """Every execution as a compact row: [case index, target index, state, class, worst ratio, deviating keys, message index]."""
    case_index: dict[str, int] = {}
    cases: list[list[str]] = []
    targets: list[str] = []
    target_index: dict[str, int] = {}
    messages: list[str] = [""]
    message_index: dict[str, int] = {"": 0}
    rows = []
    for e in doc["executions"]:
        cid = e["case_id"]
        if cid not in case_index:
            case_index[cid] = len(cases)
            cases.append([cid, doc["cases"].get(cid, {}).get("description", cid)])
        if e["target"] not in target_index:
            target_index[e["target"]] = len(targets)
            targets.append(e["target"])
        msg = (e.get("message") or "")[:300]
        if msg not in message_index:
            message_index[msg] = len(messages)
            messages.append(msg)
        keys = " ".join(v["key"] for v in e["deviations"])
        rows.append([case_index[cid], target_index[e["target"]], EXEC_STATES.index(_exec_state(e)),
                     SEVERITY.index(_exec_class(e)), _ratio_json(e.get("worst_ratio")), keys, message_index[msg]])
    return _script_json({"cases": cases, "targets": targets, "messages": messages, "states": EXEC_STATES,
                         "classes": SEVERITY, "rows": rows})


def _unsupported(doc: dict[str, Any], status: str = "unsupported") -> list[tuple[tuple[str, str], int]]:
    c: Counter[tuple[str, str]] = Counter()
    for e in doc["executions"]:
        if e["status"] == status:
            c[(e["target"], e["message"])] += 1
    return sorted(c.items())


def _frameworks(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, fw in sorted((manifest.get("frameworks") or {}).items()):
        if isinstance(fw, dict):
            details = fw.get("details") or {}
            out.append({"name": name, "installed": fw.get("installed", True), "version": fw.get("version", ""),
                        "devices": ", ".join(map(str, fw.get("devices") or [])), "reason": fw.get("reason", ""),
                        "details": ", ".join(f"{k}={v}" for k, v in details.items()) if isinstance(details, dict) else str(details)})
    return out


def _host(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, str(v)) for k, v in manifest.items() if k != "frameworks" and not isinstance(v, (dict, list))]


def render_index(doc: dict[str, Any]) -> str:
    """index.html as text."""
    rows = _finding_rows(doc)
    problems = [e for e in doc["executions"] if e["status"] in ("error", "crash", "timeout")]
    filters = [
        ("target", "target", _options(rows, lambda r: [r["f"]["target"]])),
        ("classification", "class", _options(rows, lambda r: [r["f"]["classification"]])),
        ("severity", "severity", _options(rows, lambda r: [r["f"].get("severity", "minor")])),
        ("quantity", "quantity", _options(rows, lambda r: [r["f"]["quantity"]])),
        ("dtype", "dtype", _options(rows, lambda r: r["dtypes"])),
        ("mode", "mode", _options(rows, lambda r: r["modes"])),
    ]
    manifest = doc["run"].get("manifest") or {}
    return _env.get_template("index.html").render(
        doc=doc, s=doc["summary"], matrix=_matrix(doc), findings=rows, filters=filters, causes=root_causes(doc["findings"]),
        problems=problems[:MAX_PROBLEMS_LISTED], problems_total=len(problems), unsupported=_unsupported(doc),
        refused=_unsupported(doc, "refused"), peers=doc["summary"].get("peers"),
        executions_json=_executions_json(doc), frameworks=_frameworks(manifest), host=_host(manifest),
        manifest_json=json.dumps(manifest, indent=1, default=str), severity=SEVERITY, severity_label=SEVERITY_LABEL,
        style=_env.get_template("style.css").render(), root="", hyp_page=_catalogue_page,
    )


# ---- one finding ----------------------------------------------------------------------------------
def _case_object(d: dict[str, Any] | None):
    """The Case of a results-document case entry, or None when it does not validate."""
    if not d:
        return None
    try:
        from ..cases import case_from_dict
        return case_from_dict({k: v for k, v in d.items() if k in CASE_FIELDS or k == "meta"})
    except Exception:  # noqa: BLE001
        return None


def _inputs(case) -> dict[str, Any] | None:
    """The case's input arrays, drawn again (deterministic), for cases small enough to draw at render time."""
    if case is None or math.prod(case.shape) * len(case.phases) > MAX_CONDITIONING_ELEMENTS:
        return None
    try:
        from ..inputs import make_inputs
        return make_inputs(case)
    except Exception:  # noqa: BLE001 - e.g. a data file that is no longer there
        return None


def _verdict_order(case, key: str) -> tuple[int, int, str]:
    phase, _, q = key.partition(".")
    phases = list(case.phases) if case is not None else []
    return (phases.index(phase) if phase in phases else 99, CHAIN.index(q) if q in CHAIN else 99, key)


def _trajectory(case, verdicts: list[dict[str, Any]], inputs: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Running-statistics charts for a case with two or more training steps: values and error per step."""
    if case is None:
        return []
    steps = [p for p in case.phases if p.startswith("train")]
    by_key = {v["key"]: v for v in verdicts}
    charts = []
    for q in ("running_mean", "running_var"):
        present = [p for p in steps if f"{p}.{q}" in by_key]
        if len(present) < 2:
            continue
        vs = [by_key[f"{p}.{q}"] for p in present]
        nch = max(len(v.get("channel_ratios") or []) for v in vs)
        worst = [max((svg.num((v.get("channel_ratios") or [])[c]) if c < len(v.get("channel_ratios") or []) else 0.0)
                     for v in vs) for c in range(nch)]
        deviating = sorted({c for v in vs for c in v.get("channels") or []})
        order = deviating + sorted((c for c in range(nch) if c not in deviating),
                                   key=lambda c: -(worst[c] if math.isfinite(worst[c]) else 1e308))
        chans = sorted(order[:TRAJECTORY_CHANNELS])
        init = None
        if inputs is not None and q in inputs:
            init = [float(x) for x in inputs[q]]
        labels = (["initial"] if init else []) + present
        value_series, ratio_series, legend = [], [], []
        for c in chans:
            color = svg.PALETTE[c % len(svg.PALETTE)]  # a channel keeps its colour in every chart
            obs = [(v.get("observed") or [None] * nch)[c] if c < len(v.get("observed") or []) else None for v in vs]
            exp = [(v.get("expected") or [None] * nch)[c] if c < len(v.get("expected") or []) else None for v in vs]
            head = [init[c]] if init and c < len(init) else ([None] if init else [])
            if any(o is not None for o in obs):
                value_series.append({"name": f"channel {c} observed", "ys": head + obs, "color": color})
                value_series.append({"name": f"channel {c} expected", "ys": head + exp, "color": color, "dash": True})
            ratios = [(v.get("channel_ratios") or [])[c] if c < len(v.get("channel_ratios") or []) else None for v in vs]
            ratio_series.append({"name": f"channel {c}", "ys": ratios, "color": color})
            legend.append((f"ch {c}", color, "line"))
        entry = {"quantity": q, "channels": chans, "of": nch, "values": None,
                 "errors": svg.line_chart(ratio_series, xlabels=present, title=f"{q}: error / bound after each step",
                                          xlabel="step", ylabel="error / bound", log=True, bound=1.0, legend=legend,
                                          kind="trajectory-error")}
        if value_series:
            entry["values"] = svg.line_chart(
                value_series, xlabels=labels, title=f"{q} after each step", xlabel="step", ylabel=q,
                legend=legend + [("observed", svg.INK, "line"), ("expected", svg.INK, "dash")], kind="trajectory")
        charts.append(entry)
    return charts


def _replay_out(command: str) -> str:
    try:
        argv = shlex.split(command or "")
    except ValueError:
        return "reports"
    for i, a in enumerate(argv):
        if a == "--out" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--out="):
            return a.split("=", 1)[1]
    return "reports"


def _finding_context(doc: dict[str, Any], f: dict[str, Any], out_dir: Path | None) -> dict[str, Any]:
    w = f["worst"]
    case_d = doc["cases"].get(w["case_id"])
    case = _case_object(case_d)
    verdicts = sorted(w.get("verdicts") or [], key=lambda v: _verdict_order(case, v["key"]))
    first = next((v for v in verdicts if v["key"] == w["first"]), None)
    inputs = _inputs(case)
    charts: dict[str, Any] = {}
    # every number the page states about the worst case comes from this one record (results.FirstDeviation)
    fd = f.get("first_deviation") or first_deviation(w)
    cr = fd["channel_ratios"]
    if cr:
        charts["channels"] = svg.bar_chart(cr, labels=[str(i) for i in range(len(cr))], log=True, bound=1.0,
                                           title=f"{fd['key']}: worst error / bound per channel",
                                           xlabel="channel", ylabel="error / bound (log)", kind="channel-errors",
                                           highlight=[fd["channel"]] if fd["channel"] is not None else [])
    # error versus conditioning: the recorded |mean| / std of every channel, the worst channel ringed
    offsets = [svg.num(x) for x in fd.get("channel_mean_over_std") or []]
    phase = fd["key"].split(".")[0]
    cond_note = ""
    if cr and offsets:
        pts = [(offsets[c], cr[c], f"channel {c}") for c in range(min(len(cr), len(offsets)))]
        hi = [fd["channel"]] if fd["channel"] is not None and fd["channel"] < len(pts) else []
        charts["conditioning"] = svg.scatter_chart(
            pts, title=f"{fd['key']}: error / bound against |mean| / std per channel", xlabel="|mean| / std of the "
            f"{phase} batch (log)", ylabel="error / bound (log)", highlight=hi, kind="conditioning")
        skipped = [c for c in range(len(pts)) if not (math.isfinite(offsets[c]) and offsets[c] > 0)]
        if skipped:
            cond_note = (f"Not drawn (|mean|/std zero, infinite or undefined): channel{'s' if len(skipped) > 1 else ''} "
                         + ", ".join(map(str, skipped[:16])) + (" ..." if len(skipped) > 16 else "") + ".")
    # which quantities deviate on which channels
    hm_rows = [v for v in verdicts if v.get("channel_ratios")]
    if hm_rows:
        nch = max(len(v["channel_ratios"]) for v in hm_rows)
        charts["heatmap"] = svg.heatmap([v["key"] for v in hm_rows], [str(c) for c in range(nch)],
                                        [v["channel_ratios"] for v in hm_rows],
                                        title="Every observed quantity of the worst case: error / bound per channel",
                                        xlabel="channel", kind="verdict-heatmap")
    trajectory = _trajectory(case, verdicts, inputs)
    stats_table = None
    if first and first.get("observed") and first.get("expected"):
        stats_table = list(zip(range(len(first["observed"])), first["observed"], first["expected"],
                               cr or [None] * len(first["observed"])))
    repro_text, repro_size = None, None
    if f.get("repro") and out_dir is not None:
        p = out_dir / f["repro"]
        try:
            repro_size = p.stat().st_size
            if repro_size <= MAX_INLINE_REPRO:
                repro_text = p.read_text(encoding="utf-8", errors="replace")
        except OSError:
            repro_size = None
    minimal_d = doc["cases"].get(f.get("minimal_case") or "")
    canon = lambda d: {k: d[k] for k in CASE_FIELDS if k in d} if d else None  # noqa: E731
    tinfo = next((t for t in doc["targets"] if t["name"] == f["target"]), None)
    manifest = doc["run"].get("manifest") or {}
    alternatives = list(f.get("alternatives") or []) or [  # a document written before the rules were recorded
        {"hypothesis": a[0], "residual": a[1], "explains": svg.num(a[1]) <= 1, "kind": "", "rule": "", "reason": ""}
        for a in (w.get("alternatives") or []) if isinstance(a, (list, tuple)) and a]
    replay_args = f" --out {shlex.quote(_replay_out(doc['run'].get('command', '')))}{plugin_args(doc)}"  # both replays'
    return {
        "f": f, "w": w, "fd": fd, "case": case_d, "first": first, "verdicts": verdicts, "charts": charts,
        "cond_note": cond_note, "trajectory": trajectory,
        "stats_table": stats_table, "alternatives": alternatives,
        "minimal": minimal_d, "minimal_json": json.dumps(canon(minimal_d), separators=(", ", ": ")) if minimal_d else None,
        "worst_json": json.dumps(canon(case_d), separators=(", ", ": ")) if case_d else None,
        "repro_text": repro_text, "repro_size": repro_size,
        "repro_href": f"../{f['repro']}" if f.get("repro") else None,
        "replay": f"bncheck replay {w['case_id']} --target {f['target']}{replay_args}",
        "replay_minimal": f"bncheck replay {f.get('minimal_case') or w['case_id']} --target {f['target']}{replay_args}",
        "case_list": [(cid, doc["cases"].get(cid, {}).get("description", cid)) for cid in f["cases"][:MAX_CASES_LISTED]],
        "target_info": tinfo, "conventions_json": json.dumps((tinfo or {}).get("conventions", {}), indent=1),
        "frameworks": _frameworks(manifest), "host": _host(manifest),
        "manifest_json": json.dumps(manifest, indent=1, default=str),
    }


HYPOTHESES_DIR = "hypotheses"


def _catalogue_page(name: str) -> str:
    from .. import catalogue

    return catalogue.page_name(name)


def hypothesis_href(name: str, root: str = "../") -> str:
    """The link from a page `root` below the report's top to the page of hypothesis or class `name`."""
    from .. import catalogue

    return f"{root}{HYPOTHESES_DIR}/{catalogue.page_name(name)}"


def _hypothesis_pages(doc: dict[str, Any]) -> dict[str, str]:
    """hypotheses/<name>.html for every hypothesis and class of the catalogue, and for any other hypothesis a finding
    names (a plugin's), plus hypotheses/index.html: file name -> text."""
    from .. import catalogue
    from ..diagnose import WHY_NOT

    rows = _finding_rows(doc)
    for r in rows:
        r["hyp_page"] = catalogue.page_name(r["f"]["hypothesis"])
        r["class_page"] = catalogue.page_name(r["f"]["classification"])
    known = [*catalogue.entries(), *catalogue.classes()]
    names = {e.name for e in known}
    for f in doc["findings"]:  # a hypothesis the catalogue does not know still gets its page
        if f["hypothesis"] not in names:
            names.add(f["hypothesis"])
            known.append(catalogue.Entry(f["hypothesis"], "unknown", f.get("explanation", ""),
                                         "not described by this bncheck's catalogue", "-"))
    style = _env.get_template("style.css").render()
    page = _env.get_template("hypothesis.html")
    counts = Counter(f["hypothesis"] for f in doc["findings"]) + Counter(f["classification"] for f in doc["findings"])
    out = {}
    for e in known:
        mine = [r for r in rows if (r["f"]["classification"] if e.kind == "class" else r["f"]["hypothesis"]) == e.name]
        out[catalogue.page_name(e.name)] = page.render(doc=doc, e=e, rows=mine, rules=list(WHY_NOT.items()),
                                                       style=style, root="../")
    out["index.html"] = _env.get_template("hypotheses.html").render(
        doc=doc, classes=catalogue.classes(), hypotheses=[e for e in known if e.kind != "class"],
        rules=list(WHY_NOT.items()), counts=counts, page=catalogue.page_name, style=style, root="../")
    return out


def render_finding(doc: dict[str, Any], index: int, out_dir: Path | None = None) -> str:
    """findings/<signature>.html as text."""
    fs = doc["findings"]
    f = fs[index]
    ctx = _finding_context(doc, f, out_dir)
    nav = {"prev": page_name(fs[index - 1]['signature']) if index > 0 else None,
           "next": page_name(fs[index + 1]['signature']) if index + 1 < len(fs) else None,
           "n": index + 1, "of": len(fs)}
    return _env.get_template("finding.html").render(
        doc=doc, nav=nav, style=_env.get_template("style.css").render(), root="../",
        hyp_href=hypothesis_href(f["hypothesis"]), class_href=hypothesis_href(f["classification"]),
        rules_href=f"../{HYPOTHESES_DIR}/index.html#choosing", **ctx)


def render_html(doc: dict[str, Any]) -> str:
    """The report's index page as text (kept for callers that want one page)."""
    return render_index(doc)


def write_html(doc: dict[str, Any], path: Path) -> None:
    """Write index.html and findings/<signature>.html beside it, each atomically; stale finding pages go."""
    path = Path(path)
    out_dir = path.parent
    fdir = out_dir / FINDINGS_DIR
    wanted = set()
    if doc["findings"]:
        fdir.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(doc["findings"]):
            name = page_name(f["signature"])
            wanted.add(name)
            write_atomic(fdir / name, render_finding(doc, i, out_dir))
    if fdir.is_dir():
        for old in fdir.glob("*.html"):
            if old.name not in wanted:
                old.unlink(missing_ok=True)
    hdir = out_dir / HYPOTHESES_DIR
    pages = _hypothesis_pages(doc)
    hdir.mkdir(parents=True, exist_ok=True)
    for name, text in pages.items():
        write_atomic(hdir / name, text)
    for old in hdir.glob("*.html"):
        if old.name not in pages:
            old.unlink(missing_ok=True)
    write_atomic(path, render_index(doc))
