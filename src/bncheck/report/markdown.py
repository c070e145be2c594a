"""GitHub-ready markdown from a results document: an issue body per finding worth reporting, and a run summary.

`bncheck report --format markdown OUT` writes, beside OUT/results.json:

* `OUT/issues/<signature>.md` for every critical or suspected-bug finding: a title line, the environment of the run,
  what deviates (expected against actual per quantity), the minimal case and the commands that replay it, the
  reproduction script inline (when the run wrote one), the hypothesis with its residual and the alternatives with
  why each lost, and the known upstream issues (the hypothesis's, from bncheck.catalogue, and what the target's
  conventions record cites);
* `OUT/summary.md`: the run in a few lines and tables (counts, the gate's new/worse/expired against a baseline
  when given one, the top causes, the issue files), sized for a CI job summary (`$GITHUB_STEP_SUMMARY`) or a
  pull-request comment.

Every number is read from the finding's typed fields (`first_deviation`, `alternatives`, `worst`), as the HTML
pages read them.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

from .. import catalogue
from ..files import write_atomic
from ..gate import GateDecision, Item
from ..results import parse_float
from .results import first_deviation, plugin_args, root_causes

ISSUES_DIR = "issues"
SUMMARY = "summary.md"
MAX_INLINE_REPRO = 64 * 1024  # bytes of a reproduction script put inline in an issue body (GitHub's limit: 65536)
MAX_CAUSES = 10  # causes listed in the summary
MAX_CHANNELS = 8  # per-channel values listed in an issue body's expected-against-actual table
CASE_FIELDS = ("shape", "layout", "dtype", "param_dtype", "mode", "steps", "eps", "momentum", "affine",
               "track_running_stats", "grad", "regime", "seed")


def fmt(x: Any) -> str:
    """Three significant digits; 'NaN'/'inf' for non-finite values; '-' for None."""
    if x is None:
        return "-"
    try:
        v = parse_float(x)
    except ValueError:
        return str(x)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    s = f"{v:.3g}"
    if "e" in s:
        mant, exp = s.split("e")
        s = f"{mant}e{int(exp)}"
    return s


def _cell(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def worth_reporting(f: dict[str, Any]) -> bool:
    """A finding that gets an issue body: critical, or a suspected bug."""
    return f.get("severity") == "critical" or f["classification"] == "suspected-bug"


def issue_title(f: dict[str, Any]) -> str:
    """'<target>: <first quantity> <what> (<hypothesis>, <regime>)', one line."""
    fd = f.get("first_deviation") or first_deviation(f["worst"])
    what = ("is NaN/Inf where the reference is finite" if fd["nonfinite_mismatch"]
            else f"is {fmt(fd['ratio'])} times its error bound")
    return f"{f['target']}: BatchNorm {fd['key']} {what} ({f['hypothesis']}, {f['regime']})"


def _environment(doc: dict[str, Any], f: dict[str, Any]) -> list[str]:
    manifest = doc["run"].get("manifest") or {}
    target = next((t for t in doc["targets"] if t["name"] == f["target"]), {})
    rows = [("target", f"`{f['target']}` {target.get('version', '')}: {target.get('description', '')}")]
    fw = (manifest.get("frameworks") or {}).get(target.get("framework", ""), {})
    if isinstance(fw, dict) and fw:
        details = fw.get("details") or {}
        extra = ", ".join(f"{k}={v}" for k, v in details.items()) if isinstance(details, dict) else str(details)
        rows.append(("framework", f"{target.get('framework')} {fw.get('version', '')}" + (f" ({extra})" if extra else "")))
    for key in ("bncheck", "python", "numpy", "platform", "cpu", "cpu_count"):
        if key in manifest:
            rows.append((key, str(manifest[key])))
    rows.append(("run", f"`{doc['run']['run_id']}`: `{doc['run'].get('command', '')}`"))
    return ["| | |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in rows]


def _expected_actual(f: dict[str, Any], fd: dict[str, Any]) -> list[str]:
    w = f["worst"]
    verdicts = {v["key"]: v for v in w.get("verdicts") or []}
    keys = [k for k in (w.get("deviating") or [fd["key"]]) if k in verdicts] or [fd["key"]]
    out = ["Every deviating quantity of the worst case, against bncheck's float64 reference (error / bound above 1 "
           "deviates; the bound is derived from rounding-error analysis, docs/tolerances.md):", "",
           "| quantity | error / bound | max abs error | max rel error | max ULP | NaN/Inf mismatches | verdict |",
           "|---|---|---|---|---|---|---|"]
    for k in keys:
        v = verdicts.get(k, {})
        out.append(f"| `{k}` | {fmt(v.get('ratio'))} | {fmt(v.get('max_abs'))} | {fmt(v.get('max_rel'))} | "
                   f"{fmt(v.get('max_ulp'))} | {v.get('nonfinite_mismatch', 0)} | "
                   f"{'passes' if v.get('passed') else 'deviates'} |")
    first = verdicts.get(fd["key"], {})
    obs, exp = first.get("observed") or [], first.get("expected") or []
    if obs and exp:
        out += ["", f"`{fd['key']}` per channel (expected = reference, actual = `{f['target']}`):", "",
                "| channel | expected | actual | error / bound |", "|---|---|---|---|"]
        ratios = fd["channel_ratios"]
        for c in range(min(len(obs), len(exp), MAX_CHANNELS)):
            out.append(f"| {c} | {_num(exp[c])} | {_num(obs[c])} | {fmt(ratios[c]) if c < len(ratios) else '-'} |")
        if len(obs) > MAX_CHANNELS:
            out.append(f"| ... | {len(obs) - MAX_CHANNELS} more channels in results.json | | |")
    if fd["channel"] is not None:
        out += ["", f"Worst channel of `{fd['key']}`: {fd['channel']} (error / bound {fmt(fd['channel_ratio'])}; "
                    f"|mean| / std {fmt(fd['mean_over_std'])}, eps / var {fmt(fd['eps_over_var'])}, "
                    f"gamma {fmt(fd['gamma'])})."]
    return out


def _num(x: Any) -> str:
    """A value at full precision (17 significant digits), 'NaN'/'inf' for non-finite ones."""
    try:
        v = parse_float(x)
    except ValueError:
        return str(x)
    return fmt(v) if not math.isfinite(v) else f"{v:.17g}"


def _repro(f: dict[str, Any], out_dir: Path | None) -> list[str]:
    if not f.get("repro") or out_dir is None:
        return ["No standalone script was written for this finding (`--no-repro`, or a class that has none); the "
                "replay commands above re-run it with bncheck."]
    p = out_dir / f["repro"]
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return [f"The script `{f['repro']}` is not beside the results any more."]
    if len(text.encode()) > MAX_INLINE_REPRO:
        return [f"The script `{f['repro']}` ({len(text.encode()) // 1024} KiB) is too large to inline; attach it."]
    fence = "````" if "```" in text else "```"
    return [f"`{f['repro']}` (needs only NumPy and the framework):", "", f"{fence}python", text.rstrip("\n"), fence]


def _upstream(f: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    out = []
    e = catalogue.entry(f["hypothesis"])
    if e and e.upstream:
        out += [f"Known upstream issues about `{f['hypothesis']}`:", ""] + [f"* [{u.title}]({u.url})" for u in e.upstream]
    else:
        out.append(f"No known upstream issue about `{f['hypothesis']}` is recorded in bncheck's catalogue.")
    target = next((t for t in doc["targets"] if t["name"] == f["target"]), {})
    conventions = target.get("conventions") or {}
    cited = conventions.get("upstream_issues") or []
    if cited:
        out += ["", f"Known upstream issues `{f['target']}`'s conventions record cites:", ""] + [f"* {u}" for u in cited]
    sources = conventions.get("sources") or []
    if sources:
        out += ["", f"The sources `{f['target']}`'s conventions record is drawn from:", ""] + [f"* {_cell(s)}" for s in sources]
    return out


def issue_body(doc: dict[str, Any], f: dict[str, Any], out_dir: Path | None = None) -> str:
    """The markdown of one issue, ready to paste: the title on the first line (as a heading), then the body."""
    fd = f.get("first_deviation") or first_deviation(f["worst"])
    w = f["worst"]
    cases = doc["cases"]
    worst_case = cases.get(w["case_id"], {})
    minimal_id = f.get("minimal_case") or w["case_id"]
    minimal = cases.get(minimal_id, {})
    canon = json.dumps({k: minimal[k] for k in CASE_FIELDS if k in minimal})
    plugins = plugin_args(doc)
    lines = [f"# {issue_title(f)}", ""]
    if fd["nonfinite_mismatch"]:
        lead = (f"`{fd['key']}` is NaN or infinite in {fd['nonfinite_mismatch']} elements where the reference is "
                "finite (or finite where it is not)")
    else:
        lead = f"`{fd['key']}`'s largest error is {fmt(fd['ratio'])} times its error bound"
    lines += [f"On `{worst_case.get('description', w['case_id'])}`, {lead}: it is the first quantity of BatchNorm's "
              f"chain (batch statistics, output, running statistics, gradients) to deviate"
              + (f"; the worst quantity of the case is `{fd['case_key']}`, at {fmt(fd['case_ratio'])} times its bound"
                 if fd["case_key"] != fd["key"] else "") + ".", "",
              f"Class **{f['classification']}**, severity **{f.get('severity', 'minor')}**"
              + "".join(f"; {r.get('reason')}: {', '.join(r.get('keys') or [])}" for r in f.get("severity_reasons") or [])
              + f". Seen in {f['count']} execution{'s' if f['count'] != 1 else ''} (regime `{f['regime']}`), found by "
              "bncheck's differential testing against a float64 reference and the other frameworks.", "",
              "## Environment", ""]
    lines += _environment(doc, f)
    lines += ["", "## Expected against actual", ""] + _expected_actual(f, fd)
    agree, dev = w.get("agreeing_targets") or [], w.get("deviating_targets") or []
    if agree or dev:
        lines += ["", f"On the same case, agreeing with the reference: {', '.join(f'`{t}`' for t in agree) or 'none'}; "
                      f"deviating: {', '.join(f'`{t}`' for t in dev) or 'none'}."]
    lines += ["", "## Minimal case", "", f"Case `{minimal_id}`: `{minimal.get('description', '')}`", "",
              "```json", canon, "```", "",
              f"Re-run it with bncheck (`pip install bncheck`; the line above as `case.jsonl`): "
              f"`bncheck run case.jsonl --targets {shlex.quote(f['target'])}{plugins}`", "",
              "## Minimal reproduction", ""] + _repro(f, Path(out_dir) if out_dir is not None else None)
    if w.get("residual") is None:
        fit = ("No hypothesis bncheck knows brings every deviating quantity back within its bound; the closest are "
               "below, with their residuals (the worst error / bound of the deviating quantities each models).")
    else:
        fit = (f"Residual {fmt(w['residual'])} (the worst error / bound of the deviating quantities it models once it "
               "is applied to the reference; at most 1: it explains them)."
               + (" The conventions record declares this behaviour." if f.get("documented") else ""))
    lines += ["", "## Hypothesis", "", f"**{f['hypothesis']}**: {f['explanation']}. {fit}", ""]
    alts = f.get("alternatives") or []
    if alts:
        lines += ["| alternative | kind | residual | explains | why it was not chosen |", "|---|---|---|---|---|"]
        lines += [f"| {a['hypothesis']} | {a['kind']} | {fmt(a['residual'])} | {'yes' if a['explains'] else 'no'} | "
                  f"{_cell(a['reason'])} |" for a in alts]
        lines.append("")
    lines += [f"What `{f['hypothesis']}` models and how bncheck fits it: docs/hypotheses.md#{catalogue.anchor(f['hypothesis'])}.",
              "", "## Related", ""] + _upstream(f, doc)
    return "\n".join(lines).rstrip() + "\n"


def _item_row(it: Item) -> str:
    ratio = "NaN/Inf" if it.nonfinite else fmt(it.ratio)
    return (f"| `{it.signature}` | `{it.target}` | {it.quantity} | {it.hypothesis} | {it.classification} | "
            f"{it.severity or '-'} | {ratio} | {_cell('; '.join(it.why))} |")


def summary(doc: dict[str, Any], decision: GateDecision | None = None, issues: dict[str, str] | None = None) -> str:
    """The run summary: counts, the gate against a baseline (when given its decision), the top causes, the issues."""
    s = doc["summary"]
    run = doc["run"]
    by = s.get("by_status") or {}
    findings = doc["findings"]
    lines = [f"## bncheck: {len(findings)} finding{'s' if len(findings) != 1 else ''}"
             + (f", gate {'passed' if decision.passed else 'FAILED'}" if decision is not None else ""), "",
             f"Run `{run['run_id']}` ({run.get('status', '')}): `{run.get('command', '')}`; {s.get('cases', 0)} cases on "
             f"{s.get('targets', 0)} targets, {s.get('executions', 0)} executions: {s.get('deviating_executions', 0)} "
             f"deviate, {by.get('error', 0)} errors, {by.get('crash', 0)} crashes, {by.get('timeout', 0)} timeouts, "
             f"{by.get('refused', 0)} refused (documented), {by.get('unsupported', 0)} unsupported.", ""]
    by_class = s.get("findings") or {}
    by_sev = s.get("findings_by_severity") or {}
    lines += ["| class | findings |  | severity | findings |", "|---|---|---|---|---|"]
    classes, sevs = list(by_class.items()), list(by_sev.items())
    for i in range(max(len(classes), len(sevs))):
        c = classes[i] if i < len(classes) else ("", "")
        v = sevs[i] if i < len(sevs) else ("", "")
        lines.append(f"| {c[0]} | {c[1]} |  | {v[0]} | {v[1]} |")
    if decision is not None:
        failing = decision.failing
        lines += ["", f"### Against the baseline: {len(failing)} failing "
                      f"({len([i for i in decision.new if i.fails])} new, {len([i for i in decision.worse if i.fails])} "
                      f"worse, {len([i for i in decision.expired if i.fails])} expired), {len(decision.accepted)} "
                      f"accepted, {len(decision.fixed)} fixed, {len(decision.not_run)} not run", ""]
        lines += [f"* note: {c}" for c in decision.context] + [f"* FAIL run: {p}" for p in decision.problems]
        if failing:
            lines += ["| signature | target | quantity | hypothesis | class | severity | worst ratio | why |",
                      "|---|---|---|---|---|---|---|---|"] + [_item_row(it) for it in failing]
        if decision.fixed:
            lines += ["", "Fixed: " + ", ".join(f"`{it.signature}` ({it.target} {it.hypothesis})" for it in decision.fixed)]
    causes = root_causes(findings)
    if causes:
        lines += ["", f"### Top causes ({min(len(causes), MAX_CAUSES)} of {len(causes)})", "",
                  "| class | severity | target | hypothesis | quantities | regimes | executions | worst ratio |",
                  "|---|---|---|---|---|---|---|---|"]
        for g in causes[:MAX_CAUSES]:
            regimes = ", ".join(g["regimes"][:3]) + (f" +{len(g['regimes']) - 3} more" if len(g["regimes"]) > 3 else "")
            lines.append(f"| {g['classification']} | {g['severity']} | `{g['target']}` | {g['hypothesis']} | "
                         f"{', '.join(g['quantities'])} | {regimes} | {g['count']} | "
                         f"{'NaN/Inf' if g['nonfinite'] else fmt(g['worst_ratio'])} |")
    if issues:
        lines += ["", f"### Issue bodies ({len(issues)}: critical or suspected-bug findings)", ""]
        lines += [f"* `{ISSUES_DIR}/{name}`: {_cell(title)}" for name, title in issues.items()]
    return "\n".join(lines).rstrip() + "\n"


def write_markdown(doc: dict[str, Any], out_dir: Path, decision: GateDecision | None = None) -> list[Path]:
    """Write OUT/issues/<signature>.md for every finding worth reporting and OUT/summary.md; stale issue files go.
    Returns the paths written, the summary last."""
    out_dir = Path(out_dir)
    idir = out_dir / ISSUES_DIR
    written, titles = [], {}
    for f in doc["findings"]:
        if not worth_reporting(f):
            continue
        from .html import page_name  # the same file-name-safe signature

        name = page_name(f["signature"])[: -len(".html")] + ".md"
        idir.mkdir(parents=True, exist_ok=True)
        write_atomic(idir / name, issue_body(doc, f, out_dir))
        written.append(idir / name)
        titles[name] = issue_title(f)
    if idir.is_dir():
        for old in idir.glob("*.md"):
            if old.name not in titles:
                old.unlink(missing_ok=True)
    write_atomic(out_dir / SUMMARY, summary(doc, decision, titles))
    written.append(out_dir / SUMMARY)
    return written
