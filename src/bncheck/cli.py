"""The `bncheck` command line: parses, delegates, sets the exit status; nothing else.

Exit status: 0 success and nothing to report; 1 deviations, errors, crashes or timeouts found;
2 usage or input error; 3 infrastructure error (no requested target available, store unusable, a full,
read-only or failing disk);
128 + the signal (130 SIGINT, 143 SIGTERM) for a run interrupted with its results stored.
"""

from __future__ import annotations

import json
import shlex
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click

from . import targets as registry
from .cases import CaseFileError, load_cases
from .files import disk_failure
from .store import FILENAME, Store, StoreError

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_INFRA = 0, 1, 2, 3
MAX_CAUSES_PRINTED = 20


def _plural(n: int, noun: str) -> str:
    """'1 finding', '3 findings'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


class Failure(click.ClickException):
    """A one-line error with a chosen exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.exit_code = status

    def show(self, file: Any = None) -> None:
        """Print 'bncheck: error: <message>' on stderr."""
        click.echo(f"bncheck: error: {self.message}", err=True)


def _load_plugins(plugins: tuple[str, ...]) -> list[str]:
    try:
        for p in plugins:
            registry.load_plugin(p)
        registry.families()
    except registry.RegistryError as e:
        raise Failure(str(e), EXIT_USAGE) from None
    return list(plugins)


plugin_option = click.option("--plugin", "plugins", multiple=True, metavar="MODULE",
                             help="Import MODULE (from PYTHONPATH or the current directory) to register more targets.")
targets_option = click.option("--targets", "pattern", default=None, metavar="PATTERN",
                              help="Comma-separated glob patterns of target names, e.g. 'torch.*' or 'ort.opset15@cpu'.")
out_option = click.option("--out", "out", default="reports", show_default=True, type=click.Path(file_okay=False),
                          help="Output directory for results.sqlite, results.json and index.html.")
shrink_option = click.option("--shrink", "shrink", default=12, show_default=True, type=click.IntRange(min=0),
                             help="Executions each finding may spend shrinking its case (0: do not shrink).")


def shrink_time_option(default: float) -> Callable[[Any], Any]:
    """--shrink-time, with the command's own default."""
    return click.option("--shrink-time", "shrink_time", default=default, show_default=True,
                        type=click.FloatRange(min=0),
                        help="Seconds of shrinking per run (frameworks shrink in parallel; each stops after the "
                             "execution it is on once the time is up).")


timeout_option = click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(min=0.1),
                              help="Seconds one case may take on one target before its worker is killed.")


class _Commands(click.Group):
    """The command group: a full, read-only or failing disk ends any command with one line and exit status 3."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a disk failure becomes a Failure (a traceback would also exit 1, "deviations found")."""
        try:
            return super().invoke(ctx)
        except (OSError, sqlite3.Error) as e:
            what = disk_failure(e)
            if what is None:
                raise
            raise Failure(f"{what}; free some space, check the permissions, or choose another location", EXIT_INFRA) from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bncheck")
def main() -> None:
    """bncheck: does Batch Normalization mean the same thing in every framework?"""


# ---- backends -----------------------------------------------------------------------------------
@main.command()
@click.option("--conventions", is_flag=True, help="Also print each target's conventions record.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@plugin_option
def backends(conventions: bool, as_json: bool, plugins: tuple[str, ...]) -> None:
    """List every known target: available or not and why, version, device."""
    from .runner import discover

    _load_plugins(plugins)
    d = discover(None, list(plugins), keep_workers=False)
    if as_json:
        click.echo(json.dumps({"frameworks": d.frameworks, "targets": d.rows}, indent=1, default=str))
        return
    width = max((len(r["name"]) for r in d.rows), default=10)
    click.echo(f"{'target':<{width}}  {'status':<11}  {'version':<14}  detail")
    for r in sorted(d.rows, key=lambda r: r["name"]):
        status = "available" if r["available"] else "unavailable"
        detail = r["info"]["description"] if r["available"] else r["reason"]
        click.echo(f"{r['name']:<{width}}  {status:<11}  {r['version'] or '-':<14}  {detail}")
        if conventions:
            cv = r["info"]["conventions"]
            for k, v in cv.items():
                if k == "sources":
                    for s in v:
                        click.echo(f"{'':<{width}}    source: {s}")
                elif k == "refusals":
                    for ref in v:
                        click.echo(f"{'':<{width}}    refusal: {ref['condition']} -> {ref['exception']}"
                                   + (f" ({ref['message']!r})" if ref.get("message") else ""))
                else:
                    click.echo(f"{'':<{width}}    {k}: {', '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}")


# ---- run / audit --------------------------------------------------------------------------------
def _progress(total: int):  # noqa: ANN202 - returns a callback
    """A progress callback: a bar on a terminal, a line every 10% otherwise."""
    tty = sys.stderr.isatty()
    state = {"done": 0, "next": 0.1, "start": time.monotonic()}
    bar = click.progressbar(length=total, label="executing", file=sys.stderr, show_pos=True) if tty else None
    if bar is not None:
        bar.__enter__()

    def update(_result: Any) -> None:
        state["done"] += 1
        if bar is not None:
            bar.update(1)
            if state["done"] == total:
                bar.__exit__(None, None, None)
        elif total and state["done"] / total >= state["next"]:
            state["next"] += 0.1
            click.echo(f"  {state['done']}/{total} executions ({time.monotonic() - state['start']:.0f} s)", err=True)

    return update


def _summary_table(doc: dict[str, Any]) -> str:
    rows = [("target", "ok", "deviating", "error", "refused", "crash", "timeout", "unsupp.", "running var (declared/observed)")]
    for t in doc["targets"]:
        if not t["available"]:
            continue
        c = doc["summary"]["by_target"].get(t["name"], {})
        o = t["observed"]["running_var"]
        conv = t["conventions"].get("running_var", "")
        if o:
            conv += f" / {o['follows']} ({o['matched'].get(o['follows'], 0)} of {o['checked']})" if o["follows"] in o["matched"] else f" / {o['follows']}"
        rows.append((t["name"], *(str(c.get(k, 0)) for k in ("ok", "deviating", "error", "refused", "crash", "timeout",
                                                              "unsupported")), conv))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    last = len(rows[0]) - 1
    return "\n".join("  ".join(v.ljust(w) if i in (0, last) else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows)


def _resume_plan(out: str, resume: str) -> tuple[Store, str]:
    """Open the store of a run to resume: (store, run id); usage errors name what exists."""
    path = Path(out) / FILENAME
    if not path.is_file():
        raise Failure(f"--resume {resume}: no results store at {path} (nothing to resume; pass the --out directory "
                      "of the interrupted run)", EXIT_USAGE)
    try:
        store = Store(path)
    except StoreError as e:
        raise Failure(f"cannot use output directory {out}: {e}", EXIT_INFRA) from None
    runs = store.runs()
    if resume == "latest":
        run_id = store.latest_run()
    else:
        matches = [r for r in runs if r.startswith(resume)]
        run_id = matches[0] if len(matches) == 1 else None
    if run_id is None:
        store.close()
        listed = ", ".join(runs[-5:]) or "none"
        raise Failure(f"--resume {resume}: no such run in {path} (latest runs: {listed}; or use --resume latest)", EXIT_USAGE)
    return store, run_id


class _Interrupted(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run is recorded as interrupted and its reports are written."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Interrupted()


class _PhaseClock:
    """Wall time of a command's phases, in order: lap(name) closes the phase that began at the previous lap."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, name: str) -> None:
        """The phase `name` ends now."""
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.last
        self.last = now

    def laps(self, until_now: str | None = None) -> dict[str, float]:
        """Every phase in seconds (rounded to 0.1 ms), `until_now` (when given) ending now, and the total."""
        if until_now:
            self.lap(until_now)
        return {**{k: round(v, 4) for k, v in self.phases.items()}, "total": round(self.last - self.start, 4)}


def _run(sources: list[str], pattern: str | None, out: str, timeout: float, plugins: tuple[str, ...], shrink: int = 12,
         memory_limit: float | None = None, resume: str | None = None, given: frozenset[str] = frozenset(),
         shrink_time: float = 90.0) -> int:
    """Run (or, with `resume`, complete) a suite; `given` names the options the user set explicitly."""
    import signal

    from .cases import CaseError, case_from_dict
    from .pool import memory_limit_bytes
    from .report.html import write_html
    from .report.junit import write_junit
    from .report.results import build_results, finalise_findings, write_results
    from .repro import write_finding_repros
    from .runner import (PlanError, check_plan, discover, execute, manifest_for, pending_pairs, resume_state,
                         shrink_in_parallel)

    store: Store | None = None
    run_id = ""
    interrupted = 0  # 128 + the signal that ended the run early
    resumable = bool(resume)  # the run's cases are stored: --resume can complete it
    clock = _PhaseClock()
    if resume:
        store, run_id = _resume_plan(out, resume)
        opts = store.run_options(run_id)
        plugins = tuple(dict.fromkeys([*opts.get("plugins", []), *plugins]))
        timeout = timeout if "timeout" in given else opts.get("timeout", timeout)
        memory_limit = memory_limit if "memory_limit" in given else opts.get("memory_limit_gib", memory_limit)
        shrink = shrink if "shrink" in given else opts.get("shrink", shrink)
        shrink_time = shrink_time if "shrink_time" in given else opts.get("shrink_time", shrink_time)
        try:
            cases = [case_from_dict(d) for _, d in store.cases(run_id)]
        except CaseError as e:
            store.close()
            raise Failure(f"run {run_id}: a stored case no longer validates ({e}); start a new run", EXIT_USAGE) from None
        wanted = [t["name"] for t in store.targets(run_id) if t["available"]]
        pattern = ",".join(wanted)
        sources = store.run(run_id)["sources"]
        if not cases or not wanted:
            store.close()
            raise Failure(f"run {run_id} has no cases or no available targets to complete", EXIT_USAGE)
    else:
        try:
            cases = load_cases(sources)
        except CaseFileError as e:
            raise Failure(str(e), EXIT_USAGE) from None
        if not cases:
            raise Failure(f"no cases in {', '.join(sources)} (add one JSON object per line)", EXIT_USAGE)
    try:
        _load_plugins(plugins)
    except Failure:
        if store is not None:
            store.close()
        raise
    limit = memory_limit_bytes(memory_limit)
    discovery = discover(pattern, list(plugins), memory_limit=limit)
    clock.lap("starting frameworks")
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (an embedding caller): no handler
        pass
    try:
        try:
            check_plan(discovery, pattern)
        except PlanError as e:
            raise Failure(str(e), e.status) from None
        out_dir = Path(out)
        done: set[tuple[str, str]] = set()
        broken: dict[str, str] = {}
        consecutive: dict[str, int] = {}
        if store is None:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
                store = Store(out_dir / FILENAME)
            except (OSError, StoreError) as e:
                raise Failure(f"cannot use output directory {out}: {e}", EXIT_INFRA) from None
            command = "bncheck " + " ".join(shlex.quote(a) for a in sys.argv[1:])
            run_id = store.begin_run(command, sources, manifest_for(discovery))
            store.set_run_options(run_id, {"plugins": list(plugins), "pattern": pattern, "timeout": timeout,
                                           "memory_limit_gib": memory_limit, "shrink": shrink,
                                           "shrink_time": shrink_time})
            store.add_targets(run_id, discovery.rows)
            store.add_cases(run_id, [(c.case_id, c.canonical_json()) for c in cases])
            resumable = True
            click.echo(f"bncheck: {len(cases)} cases x {len(discovery.runnable)} targets "
                       f"({', '.join(t.name for t in discovery.runnable)})", err=True)
        else:
            done, broken, consecutive = resume_state(store, run_id)
            have = {t.name for t in discovery.runnable}
            stored = {t["name"]: t for t in store.targets(run_id)}
            for name in sorted(set(pattern.split(",")) - have):
                click.echo(f"bncheck: warning: {name} of run {run_id} is not available now; its missing executions stay missing", err=True)
            for r in discovery.rows:
                if r["available"] and r["name"] in stored and stored[r["name"]]["version"] != r["version"]:
                    click.echo(f"bncheck: warning: {r['name']} is {r['version']} now, {stored[r['name']]['version']} in run "
                               f"{run_id}: the run mixes versions", err=True)
            store.reopen_run(run_id)
            missing = pending_pairs(cases, discovery.runnable, done)
            store.add_event(run_id, "resumed", "", f"{missing} executions missing")
            click.echo(f"bncheck: resuming run {run_id}: {missing} of {len(cases) * len(discovery.runnable)} executions "
                       f"missing ({len(cases)} cases x {len(discovery.runnable)} targets)", err=True)
        skipped: dict[str, list[str]] = {}
        for r in discovery.rows:
            if not r["available"]:
                skipped.setdefault(r["reason"], []).append(r["name"])
        for reason, names in sorted(skipped.items()):
            click.echo(f"bncheck: skipping {', '.join(names)}: {reason}", err=True)
        status = "interrupted"
        try:
            total = pending_pairs(cases, discovery.runnable, done)
            try:
                execute(store, run_id, cases, discovery, timeout, on_result=_progress(total), done=done, broken=broken,
                        consecutive=consecutive)
            except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: what is stored stays, the reports say 'interrupted'
                interrupted = 128 + (signal.SIGTERM if isinstance(e, _Interrupted) else signal.SIGINT)
                click.echo(f"\nbncheck: interrupted; {len(store.execution_statuses(run_id))} executions are stored", err=True)
            clock.lap("executing")
            complete = pending_pairs(cases, discovery.runnable, {(c, t) for c, t, _ in store.execution_statuses(run_id)}) == 0
            status = "complete" if not interrupted and complete and (not resume or set(pattern.split(",")) <= {t.name for t in discovery.runnable}) else "interrupted"
        finally:
            store.finish_run(run_id, status)
            broken = store.broken_targets(run_id)
            doc = build_results(store, run_id)
            clock.lap("reports")
            by_name = {t.name: t for t in discovery.runnable}
            if shrink and status == "complete" and doc["findings"]:
                click.echo(f"bncheck: shrinking {min(len(doc['findings']), 50)} findings (budget {shrink} executions each)", err=True)
                shrink_in_parallel(doc, discovery, timeout, budget=shrink, seconds=shrink_time)
                clock.lap("shrinking")
            write_finding_repros(doc, out_dir, by_name)
            finalise_findings(store, run_id, doc, out_dir)  # case files, the store's findings table
            # this invocation's phases (a resumed run's: the resuming one's), up to writing the report files
            doc["run"]["timings_s"] = clock.laps(until_now="reports")
            write_results(doc, out_dir / "results.json")
            write_html(doc, out_dir / "index.html")
            write_junit(doc, out_dir / "results.xml")
            store.close()
            clock.lap("writing reports")
            click.echo("bncheck: times: " + ", ".join(f"{k} {v:.1f} s" for k, v in clock.laps().items()), err=True)
    except (OSError, sqlite3.Error) as e:  # the disk filled up (or failed) under the store or the reports
        what = disk_failure(e)
        if what is None:
            raise
        where = f" ({Path(out) / FILENAME})" if isinstance(e, sqlite3.Error) else ""
        if not (Path(out) / FILENAME).exists():  # the output folder itself was removed
            kept = "; the results store is gone too: run the command again"
        elif resumable:
            kept = (f"; run {run_id} keeps every execution committed before, and 'bncheck run --resume {run_id} --out "
                    f"{out}' completes it once there is room")
        else:
            kept = "; run the command again once there is room"
        raise Failure(f"cannot write{where}: {what}{kept}", EXIT_INFRA) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        discovery.close()
        if store is not None:
            store.close()  # a no-op when the run's own finally closed it
    click.echo(_summary_table(doc))
    for name, reason in sorted(broken.items()):
        click.echo(f"{name}: broken: {reason}")
    s = doc["summary"]
    bad = s["by_status"]["error"] + s["by_status"]["crash"] + s["by_status"]["timeout"]
    click.echo(f"\n{s['executions']} executions: {s['deviating_executions']} deviate from the reference, "
               f"{bad} errors/crashes/timeouts, {s['by_status'].get('refused', 0)} refused (documented), "
               f"{s['by_status']['unsupported']} unsupported.")
    pj = s.get("peers") or {}
    if pj:
        click.echo(f"peer comparison: {pj['judged']} quantities judged against {pj['rule']['min_peers']}+ peers, "
                   f"{pj['not_judged_fewer_peers']} not judged (fewer peers), {pj['outliers']} precision outliers; "
                   f"out-of-range: {pj['out_of_range_kept']} kept, {pj['out_of_range_revised']} revised by a same-format peer.")
    fc = s["findings"]
    if doc["findings"]:
        causes = doc["root_causes"]
        by_class = ", ".join(f"{n} {c}" for c, n in fc.items() if n)
        by_sev = ", ".join(f"{n} {v}" for v, n in s.get("findings_by_severity", {}).items() if n)
        click.echo(f"{len(doc['findings'])} findings: {by_class} ({by_sev}); {len(causes)} causes (target x hypothesis):")
        for g in causes[:MAX_CAUSES_PRINTED]:
            regimes = ", ".join(g["regimes"][:3]) + (f" +{len(g['regimes']) - 3} more" if len(g["regimes"]) > 3 else "")
            nan = "NaN/Inf, " if g.get("nonfinite") else ""
            click.echo(f"  {g['classification']:<17} {g.get('severity', 'minor'):<8} {g['target']:<26} {g['hypothesis']:<42} "
                       f"{','.join(g['quantities'])} in {regimes} ({nan}{_plural(g['count'], 'execution')}, "
                       f"{_plural(len(g['findings']), 'finding')})")
        if len(causes) > MAX_CAUSES_PRINTED:
            click.echo(f"  ... {len(causes) - MAX_CAUSES_PRINTED} more in results.json and index.html")
    if status != "complete":
        click.echo(f"run {run_id} is incomplete; complete it with: bncheck run --resume {run_id} --out {out}")
    click.echo(f"results: {out_dir / FILENAME}, {out_dir / 'results.json'}, {out_dir / 'index.html'}, {out_dir / 'results.xml'} (run {run_id})")
    if interrupted:
        return interrupted
    return EXIT_FINDINGS if s["deviating_executions"] or bad or doc["findings"] else EXIT_OK


memory_option = click.option("--memory-limit", "memory_limit", default=None, type=click.FloatRange(min=0), metavar="GIB",
                             help="Memory cap of each worker process in GiB (RLIMIT_DATA; 0: no cap) "
                                  "[default: 16, or 3/4 of the physical memory where that is less].")


def _given(ctx: click.Context, *names: str) -> frozenset[str]:
    """The options among `names` that the user set on the command line (not defaults)."""
    return frozenset(n for n in names if ctx.get_parameter_source(n) not in (None, click.core.ParameterSource.DEFAULT))


@main.command()
@click.argument("casefiles", nargs=-1, required=False, metavar="CASEFILE...")
@targets_option
@out_option
@timeout_option
@shrink_option
@shrink_time_option(90.0)
@memory_option
@click.option("--resume", "resume", default=None, metavar="RUN_ID",
              help="Complete an interrupted run stored in --out (a run id, a unique prefix, or 'latest'): only the "
                   "missing executions run, then the reports are rewritten.")
@plugin_option
@click.pass_context
def run(ctx: click.Context, casefiles: tuple[str, ...], pattern: str | None, out: str, timeout: float, shrink: int,
        shrink_time: float, memory_limit: float | None, resume: str | None, plugins: tuple[str, ...]) -> None:
    """Run case files (or shipped suite names such as 'smoke') on every matching available target."""
    if resume and casefiles:
        raise Failure("--resume takes no CASEFILE (the run's cases and targets are in its store)", EXIT_USAGE)
    if resume and pattern:
        raise Failure("--resume takes no --targets (a resumed run completes the targets it started with)", EXIT_USAGE)
    if not resume and not casefiles:
        raise Failure("give at least one CASEFILE or suite name (e.g. 'bncheck run smoke'), or --resume RUN_ID", EXIT_USAGE)
    given = _given(ctx, "timeout", "shrink", "shrink_time", "memory_limit")
    sys.exit(_run(list(casefiles), pattern, out, timeout, plugins, shrink, memory_limit, resume, given, shrink_time))


@main.command()
@click.option("--suite", default="default", show_default=True, help="Shipped suite to audit with.")
@targets_option
@out_option
@timeout_option
@shrink_option
@shrink_time_option(20.0)
@memory_option
@plugin_option
def audit(suite: str, pattern: str | None, out: str, timeout: float, shrink: int, shrink_time: float,
          memory_limit: float | None, plugins: tuple[str, ...]) -> None:
    """Run the shipped default suite on every available target and write the report (complete an interrupted
    audit with 'bncheck run --resume latest --out DIR'); it shrinks findings for 20 s, a run for 90 s."""
    sys.exit(_run([suite], pattern, out, timeout, plugins, shrink, memory_limit, shrink_time=shrink_time))


# ---- generate -----------------------------------------------------------------------------------
def _parse_axis(text: str) -> tuple[str, list[Any]]:
    """'eps=1e-5,1e-3' or 'shape=[[8,4,5,5],[16,3]]' -> (name, values)."""
    name, sep, values = text.partition("=")
    if not sep or not name or not values:
        raise Failure(f"--grid {text!r}: expected AXIS=V1,V2,... (or AXIS=[JSON list])", EXIT_USAGE)
    if values.lstrip().startswith("["):
        try:
            parsed = json.loads(values)
        except json.JSONDecodeError as e:
            raise Failure(f"--grid {name}: invalid JSON list ({e.msg})", EXIT_USAGE) from None
        if not isinstance(parsed, list) or not parsed:
            raise Failure(f"--grid {name}: give a non-empty JSON list of values", EXIT_USAGE)
        return name, parsed
    out: list[Any] = []
    for v in values.split(","):
        try:
            out.append(json.loads(v))
        except json.JSONDecodeError:
            out.append(v)
    return name, out


def _write_suite(out_dir: str, name: str, cases: list[Any]) -> None:
    from .cases import write_case_file

    path = Path(out_dir) / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_case_file(path, cases)
    click.echo(f"{path}: {len(cases)} cases")


@main.group()
def generate() -> None:
    """Write case suites (JSON lines) into a cases folder."""


suite_out = click.option("--out", "out_dir", default="cases", show_default=True, type=click.Path(file_okay=False),
                         help="Folder to write NAME.jsonl into.")


@generate.command("grid")
@click.argument("name")
@click.option("--grid", "axes", multiple=True, metavar="AXIS=V1,V2", help="An axis of the product; repeat for more.")
@click.option("--base", default="{}", metavar="JSON", help='Fields shared by every case, e.g. \'{"shape": [8, 4, 5, 5]}\'.')
@click.option("--spec", type=click.Path(exists=True, dir_okay=False), help='JSON file {"base": {...}, "axes": {AXIS: [...]}}.')
@suite_out
def generate_grid(name: str, axes: tuple[str, ...], base: str, spec: str | None, out_dir: str) -> None:
    """The cartesian product of named axes applied to a base case."""
    from .cases import CaseError
    from .generate import grid

    try:
        base_d = json.loads(base)
    except json.JSONDecodeError as e:
        raise Failure(f"--base: invalid JSON ({e.msg})", EXIT_USAGE) from None
    axes_d: dict[str, list[Any]] = {}
    if spec:
        try:
            doc = json.loads(Path(spec).read_text(encoding="utf-8"))
            base_d = {**doc.get("base", {}), **base_d}
            axes_d.update(doc.get("axes", {}))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise Failure(f"{spec}: not a grid spec ({e}); expected {{\"base\": {{...}}, \"axes\": {{...}}}}", EXIT_USAGE) from None
    for a in axes:
        k, v = _parse_axis(a)
        axes_d[k] = v
    if not isinstance(base_d, dict) or "shape" not in base_d and "shape" not in axes_d:
        raise Failure("the grid needs a shape: --base '{\"shape\": [8, 4, 5, 5]}' or --grid 'shape=[[8,4,5,5]]'", EXIT_USAGE)
    try:
        cases = grid(base_d, **axes_d)
    except CaseError as e:
        raise Failure(f"grid case: {e}", EXIT_USAGE) from None
    _write_suite(out_dir, name, cases)


@generate.command("random")
@click.argument("name")
@click.option("-n", "count", default=100, show_default=True, type=click.IntRange(min=1), help="Number of cases.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the case stream.")
@suite_out
def generate_random(name: str, count: int, seed: int, out_dir: str) -> None:
    """N cases fuzzed over the whole case space from one seed (identical on every machine)."""
    from .generate import random_cases

    _write_suite(out_dir, name, random_cases(count, seed))


@generate.command("hazards")
@click.option("--only", default=None, metavar="NAMES", help="Comma-separated hazard names (default: all).")
@click.option("--name", "suite_name", default="hazards", show_default=True, help="Suite file name.")
@click.option("--list", "list_only", is_flag=True, help="List the hazard catalogue and exit.")
@suite_out
def generate_hazards(only: str | None, suite_name: str, list_only: bool, out_dir: str) -> None:
    """The catalogue of named BN hazard regimes."""
    from .generate import HAZARDS, hazard_cases

    if list_only:
        for n, (desc, _, _) in HAZARDS.items():
            click.echo(f"{n:<24} {desc}")
        return
    names = [n.strip() for n in only.split(",")] if only else list(HAZARDS)
    unknown = [n for n in names if n not in HAZARDS]
    if unknown:
        raise Failure(f"unknown hazard {unknown[0]!r} (see 'bncheck generate hazards --list')", EXIT_USAGE)
    _write_suite(out_dir, suite_name, [c for n in names for c in hazard_cases(n)])


@generate.command("suites")
@suite_out
def generate_suites(out_dir: str) -> None:
    """Rewrite every shipped suite from its definition."""
    from .generate import SUITES

    for name, build in SUITES.items():
        _write_suite(out_dir, name, build())


# ---- import -------------------------------------------------------------------------------------
@main.group("import")
def import_() -> None:
    """Build suites from other projects' test data."""


@import_.command("onnx")
@click.option("--out", "out_dir", default="cases", show_default=True, type=click.Path(file_okay=False),
              help="Folder for onnx-conformance.jsonl and its data files.")
def import_onnx_cmd(out_dir: str) -> None:
    """The onnx-conformance suite from the BatchNormalization tests the installed onnx package ships."""
    from .onnx_import import OnnxImportError, format_report, import_onnx

    try:
        report = import_onnx(Path(out_dir))
    except OnnxImportError as e:
        raise Failure(str(e), EXIT_INFRA) from None
    click.echo(format_report(report))
    sys.exit(EXIT_OK if report.ok else EXIT_FINDINGS)


# ---- CI gate: baseline / gate / diff / junit ----------------------------------------------------
def _read_results(run_dir: str) -> tuple[dict[str, Any], Path]:
    """The results document of RUN_DIR (an output directory or a results.json path) and its path.

    Exit 3 when there is no results.json, 2 when it is not a bncheck results document.
    """
    p = Path(run_dir)
    path = p / "results.json" if p.is_dir() else p
    if not path.is_file():
        raise Failure(f"{run_dir}: no results.json there (write one with 'bncheck run ... --out {run_dir}')", EXIT_INFRA)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Failure(f"{path}: not readable JSON ({getattr(e, 'msg', e)})", EXIT_USAGE) from None
    if not isinstance(doc, dict) or doc.get("schema") != "bncheck.results":
        raise Failure(f"{path}: not a bncheck results document (expected \"schema\": \"bncheck.results\")", EXIT_USAGE)
    return doc, path


def _parse_date(text: str | None, option: str) -> Any:
    from datetime import date

    if text is None:
        return None
    try:
        if len(text) != 10:
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise Failure(f"{option} {text!r}: expected a date YYYY-MM-DD", EXIT_USAGE) from None


factor_option = click.option("--worse-factor", "worse_factor", default=10.0, show_default=True, type=click.FloatRange(min=1.0),
                             help="A finding whose worst ratio grew past this factor times the accepted one is 'worse'.")


@main.command("baseline")
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--out", "out_file", default="bncheck-baseline.json", show_default=True, type=click.Path(dir_okay=False),
              help="Baseline file to write.")
@click.option("--reason", default=None, help="Why these findings are accepted (default: 'accepted from run <id>').")
@click.option("--expires", default=None, metavar="YYYY-MM-DD", help="Last day the acceptances hold (default: never).")
def baseline_cmd(run_dir: str, out_file: str, reason: str | None, expires: str | None) -> None:
    """Write a baseline accepting every finding (and error/crash/timeout) of the run in RUN_DIR."""
    from datetime import date

    from .gate import GateInputError, make_baseline
    from .files import write_atomic

    doc, _ = _read_results(run_dir)
    until = _parse_date(expires, "--expires")
    try:
        base = make_baseline(doc, date.today(), reason, until)
    except GateInputError as e:
        raise Failure(str(e), EXIT_USAGE) from None
    if (doc.get("run") or {}).get("status", "complete") != "complete":
        click.echo(f"bncheck: warning: run {base['from_run']} did not complete; its baseline may miss findings", err=True)
    try:
        write_atomic(Path(out_file), json.dumps(base, indent=1, allow_nan=False) + "\n")
    except OSError as e:
        raise Failure(f"cannot write {out_file}: {e.strerror or e}", EXIT_INFRA) from None
    acc = base["accepted"]
    pseudo = sum(1 for a in acc if a["classification"] in ("error", "crash", "timeout"))
    click.echo(f"{out_file}: {len(acc)} accepted ({len(acc) - pseudo} findings, {pseudo} errors/crashes/timeouts) "
               f"from run {base['from_run']}" + (f", expiring after {until.isoformat()}" if until else ""))


@main.command("gate")
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--baseline", "baseline_file", required=True, type=click.Path(dir_okay=False),
              help="Baseline JSON (written by 'bncheck baseline').")
@factor_option
@click.option("--fail-on", "fail_on", default=None, metavar="CLASSES",
              help="Comma-separated classes that can fail the gate (default: all of suspected-bug, precision, "
                   "precision-outlier, out-of-range, convention, error, crash, timeout). A critical finding (NaN/Inf, "
                   "negative variance, collapsed output) fails whatever the classes, unless --allow-critical.")
@click.option("--allow-critical", "allow_critical", is_flag=True,
              help="Let --fail-on decide for critical findings too (by default they always can fail the gate).")
def gate_cmd(run_dir: str, baseline_file: str, worse_factor: float, fail_on: str | None, allow_critical: bool) -> None:
    """Fail (exit 1) when RUN_DIR has findings that are new, worse than accepted, or whose acceptance expired."""
    from datetime import date

    from .gate import GateInputError, Policy, decide, parse_classes

    doc, _ = _read_results(run_dir)
    try:
        text = Path(baseline_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise Failure(f"baseline {baseline_file}: cannot read ({getattr(e, 'strerror', None) or e})", EXIT_USAGE) from None
    try:
        base = json.loads(text)
    except json.JSONDecodeError as e:
        raise Failure(f"baseline {baseline_file}: not valid JSON ({e.msg}, line {e.lineno})", EXIT_USAGE) from None
    try:
        policy = Policy(worse_factor=worse_factor, fail_on_critical=not allow_critical,
                        **({"fail_on": parse_classes(fail_on)} if fail_on is not None else {}))
        decision = decide(doc, base, policy, date.today())
    except GateInputError as e:
        raise Failure(f"{baseline_file if str(e).startswith('baseline') else run_dir}: {e}", EXIT_USAGE) from None
    for line in decision.lines():
        click.echo(line)
    sys.exit(EXIT_OK if decision.passed else EXIT_FINDINGS)


@main.command("diff")
@click.argument("run_a", metavar="RUN_A")
@click.argument("run_b", metavar="RUN_B")
@click.option("--factor", default=10.0, show_default=True, type=click.FloatRange(min=1.0),
              help="A worst ratio that changed by more than this factor (either way) is 'changed'.")
def diff_cmd(run_a: str, run_b: str, factor: float) -> None:
    """Compare the findings of two runs (say before and after a framework upgrade): new, fixed, changed."""
    from .gate import GateInputError, diff

    a, _ = _read_results(run_a)
    b, _ = _read_results(run_b)
    try:
        d = diff(a, b, factor)
    except GateInputError as e:
        raise Failure(str(e), EXIT_USAGE) from None
    for line in d.lines():
        click.echo(line)


@main.command("junit")
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--out", "out_file", default=None, type=click.Path(dir_okay=False),
              help="JUnit XML file to write (default: results.xml beside results.json).")
def junit_cmd(run_dir: str, out_file: str | None) -> None:
    """Write JUnit XML (one test case per case and target) from the results in RUN_DIR."""
    from .report.junit import write_junit

    doc, path = _read_results(run_dir)
    target = Path(out_file) if out_file else path.with_name("results.xml")
    try:
        write_junit(doc, target)
    except (OSError, KeyError, TypeError, AttributeError) as e:
        if isinstance(e, OSError):
            raise Failure(f"cannot write {target}: {e.strerror or e}", EXIT_INFRA) from None
        raise Failure(f"cannot write {target}: {e}", EXIT_USAGE) from None
    click.echo(f"{target}: {len(doc.get('executions') or [])} test cases")


# ---- replay -------------------------------------------------------------------------------------
@main.command()
@click.argument("case_id")
@click.option("--target", "target_name", required=True, help="Target name, e.g. torch.nn@cpu.")
@click.option("--cases", "sources", multiple=True, metavar="SOURCE",
              help="Case file or suite to find the case in (default: the --out store, then every shipped suite).")
@out_option
@timeout_option
@plugin_option
@click.option("--elements", default=6, show_default=True, help="Elements of each tensor quantity to print.")
def replay(case_id: str, target_name: str, sources: tuple[str, ...], out: str, timeout: float,
           plugins: tuple[str, ...], elements: int) -> None:
    """Re-run one case on one target bit for bit and print every quantity next to the reference."""
    from .replay import find_case, replay_case

    _load_plugins(plugins)
    try:
        case, stored_digest = find_case(case_id, list(sources), Path(out) / FILENAME)
    except (CaseFileError, LookupError) as e:
        raise Failure(str(e).strip("'\""), EXIT_USAGE) from None
    try:
        status = replay_case(case, target_name, timeout, list(plugins), stored_digest, elements, click.echo)
    except LookupError as e:
        raise Failure(str(e).strip("'\""), EXIT_USAGE) from None
    except RuntimeError as e:
        raise Failure(str(e), EXIT_INFRA) from None
    sys.exit(status)


if __name__ == "__main__":
    main()
