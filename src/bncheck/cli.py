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
from .cases import CaseFileError
from .files import advice, disk_failure
from .store import FILENAME

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


repro_option = click.option("--repro/--no-repro", "repro", default=True, show_default=True,
                            help="Write a standalone reproduction script per finding under OUT/repro/.")
timeout_option = click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(min=0.1),
                              help="Seconds one case may take on one target before its worker is killed.")


class _Commands(click.Group):
    """The command group: a full, read-only or failing disk ends any command with one line and exit status 3."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a disk failure becomes a Failure (a traceback would also exit 1, "deviations found"), and
        Ctrl-C or SIGTERM exits 130 or 143 (click's own "Aborted!" would exit 1)."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            import signal

            signum = signal.SIGTERM if isinstance(e, _Terminated) else signal.SIGINT
            click.echo(f"bncheck: interrupted ({signal.Signals(signum).name})", err=True)
            sys.exit(128 + signum)
        except (OSError, sqlite3.Error) as e:
            what = disk_failure(e)
            if what is None:
                raise
            raise Failure(f"{what}{advice(e)}", EXIT_INFRA) from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bncheck")
def main() -> None:
    """bncheck: does Batch Normalization mean the same thing in every framework?"""


# ---- backends -----------------------------------------------------------------------------------
@main.command()
@click.option("--conventions", is_flag=True, help="Also print each target's conventions record.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@targets_option
@plugin_option
def backends(conventions: bool, as_json: bool, pattern: str | None, plugins: tuple[str, ...]) -> None:
    """List every known target (or those --targets names): available or not and why, version, device."""
    from . import api
    from .runner import discover

    _load_plugins(plugins)
    try:
        api.check_target_patterns(pattern)
    except api.InputError as e:
        raise Failure(str(e), EXIT_USAGE) from None
    d = discover(pattern, list(plugins), keep_workers=False)
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


@main.command()
@click.option("--path", "as_path", is_flag=True, help="Print where the file lies instead of its contents.")
def constraints(as_path: bool) -> None:
    """Print the versions bncheck is tested with, for 'pip install -c FILE' (e.g. bncheck constraints > c.txt)."""
    from importlib.resources import files

    resource = files("bncheck").joinpath("constraints.txt")
    click.echo(str(resource) if as_path else resource.read_text(encoding="utf-8"), nl=as_path)


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


def _report(result: Any) -> None:
    """The run's summary on stdout: the per-target table, the totals, the causes, where the files are."""
    doc, out_dir = result.document, result.out
    click.echo(_summary_table(doc))
    for name, reason in sorted(result.broken.items()):
        click.echo(f"{name}: broken: {reason}")
    s = doc["summary"]
    bad = s["by_status"]["error"] + s["by_status"]["crash"] + s["by_status"]["timeout"]
    click.echo(f"\n{s['executions']} executions: {s['deviating_executions']} deviate from the reference, "
               f"{bad} errors/crashes/timeouts, {s['by_status'].get('refused', 0)} refused (documented), "
               f"{s['by_status']['unsupported']} unsupported.")
    pj = s.get("peers") or {}
    if pj:
        click.echo(f"peer comparison: {pj['judged']} quantities judged against {pj['rule']['min_peers']}+ peers, "
                   f"{pj['not_judged_fewer_peers'] + pj.get('not_judged_no_digit_guaranteed', 0)} not judged (fewer "
                   f"peers, or a bound that guarantees no digit), {pj['outliers']} precision outliers; "
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
    if result.status != "complete":
        click.echo(f"run {result.run_id} is incomplete; complete it with: bncheck run --resume {result.run_id} "
                   f"--out {shlex.quote(str(out_dir))}")
    click.echo(f"results: {out_dir / FILENAME}, {out_dir / 'results.json'}, {out_dir / 'index.html'}, "
               f"{out_dir / 'results.xml'} (run {result.run_id})")


def _execute_run(call: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Call api.run/audit/resume with the CLI's log and progress; print the summary; the exit status."""
    from . import api

    log = lambda message: click.echo(message, err=True)  # noqa: E731
    try:
        result = call(*args, log=log, progress=_progress, **kwargs)
    except api.Interrupted as e:
        if e.result is not None:
            _report(e.result)
        click.echo(f"bncheck: {e}", err=True)
        return e.status
    except api.BncheckError as e:
        raise Failure(str(e), e.status) from None
    _report(result)
    return api.exit_status(result)


memory_option = click.option("--memory-limit", "memory_limit", default=None, type=click.FloatRange(min=0), metavar="GIB",
                             help="Memory cap of each worker process in GiB (RLIMIT_DATA; 0: no cap) "
                                  "[default: 16, or 3/4 of the physical memory where that is less].")


executor_options = [
    click.option("--executor", "executor", default="local", show_default=True, type=click.Choice(["local", "ray"]),
                 help="Where the plan runs: worker processes on this machine, or Ray actors on a Ray cluster "
                      "(needs 'bncheck[ray]'; docs/executors.md)."),
    click.option("--address", "address", default=None, metavar="ADDR",
                 help="The Ray cluster for --executor ray (HOST:6379 or ray://HOST:10001) [default: RAY_ADDRESS, "
                      "else a local Ray started for the run]."),
    click.option("--jobs", "jobs", default=None, type=click.IntRange(min=1), metavar="N",
                 help="Judging processes (Ray: judge actors), each case judged by one; 1 judges in the bncheck process "
                      "[default: the cores available (a run of fewer than 500 executions: 1); Ray: the cluster's CPUs]."),
]


def executor_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """--executor, --address and --jobs."""
    for opt in reversed(executor_options):
        f = opt(f)
    return f


def _executor_given(executor: str, address: str | None) -> None:
    """--address only goes with --executor ray."""
    if address and executor != "ray":
        raise Failure("--address names a Ray cluster: add --executor ray", EXIT_USAGE)


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
@repro_option
@executor_option
@plugin_option
@click.pass_context
def run(ctx: click.Context, casefiles: tuple[str, ...], pattern: str | None, out: str, timeout: float, shrink: int,
        shrink_time: float, memory_limit: float | None, resume: str | None, repro: bool, executor: str,
        address: str | None, jobs: int | None, plugins: tuple[str, ...]) -> None:
    """Run case files (or shipped suite names such as 'smoke') on every matching available target."""
    _executor_given(executor, address)
    if resume and casefiles:
        raise Failure("--resume takes no CASEFILE (the run's cases and targets are in its store)", EXIT_USAGE)
    if resume and pattern:
        raise Failure("--resume takes no --targets (a resumed run completes the targets it started with)", EXIT_USAGE)
    if not resume and not casefiles:
        raise Failure("give at least one CASEFILE or suite name (e.g. 'bncheck run smoke'), or --resume RUN_ID", EXIT_USAGE)
    from . import api

    if resume:
        given = _given(ctx, "timeout", "shrink", "shrink_time", "memory_limit", "repro", "executor", "address", "jobs")
        values = {"timeout": timeout, "shrink": shrink, "shrink_time": shrink_time, "memory_limit": memory_limit,
                  "repro": repro, "executor": executor, "address": address, "jobs": jobs}
        overrides: dict[str, Any] = {k: v for k, v in values.items() if k in given}
        if plugins:
            overrides["plugins"] = plugins
        sys.exit(_execute_run(api.resume, resume, out=out, overrides=overrides))
    options = api.RunOptions(targets=pattern, timeout=timeout, shrink=shrink, shrink_time=shrink_time,
                             memory_limit=memory_limit, plugins=plugins, repro=repro, executor=executor, jobs=jobs,
                             address=address)
    sys.exit(_execute_run(api.run, list(casefiles), out=out, options=options))


@main.command()
@click.option("--suite", default="default", show_default=True, help="Shipped suite to audit with.")
@targets_option
@out_option
@timeout_option
@shrink_option
@shrink_time_option(20.0)
@memory_option
@repro_option
@executor_option
@plugin_option
def audit(suite: str, pattern: str | None, out: str, timeout: float, shrink: int, shrink_time: float,
          memory_limit: float | None, repro: bool, executor: str, address: str | None, jobs: int | None,
          plugins: tuple[str, ...]) -> None:
    """Run the shipped default suite on every available target and write the report (complete an interrupted
    audit with 'bncheck run --resume latest --out DIR'); it shrinks findings for 20 s, a run for 90 s."""
    from . import api

    _executor_given(executor, address)
    options = api.RunOptions(targets=pattern, timeout=timeout, shrink=shrink, shrink_time=shrink_time,
                             memory_limit=memory_limit, plugins=plugins, repro=repro, executor=executor, jobs=jobs,
                             address=address)
    sys.exit(_execute_run(api.audit, suite, out=out, options=options))


# ---- fuzz ---------------------------------------------------------------------------------------
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """'90', '90s', '2m', '1h', '1h30m' -> seconds; ValueError for anything else (or for zero)."""
    import re

    t = text.strip().lower()
    parts = re.fullmatch(r"((?:\d+(?:\.\d+)?[hms])+|\d+(?:\.\d+)?)", t)
    if not parts:
        raise ValueError(text)
    if t[-1].isdigit():
        seconds = float(t)
    else:
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", t))
    if not seconds > 0:
        raise ValueError(text)
    return seconds


def _fuzz_report(result: Any) -> None:
    """The campaign's signatures on stdout, new ones marked, then its totals and where the files are."""
    doc = result.document
    fz = doc["summary"]["fuzz"]
    new = set(result.new_signatures)
    sigs = fz["signatures"]
    click.echo(f"campaign {fz['campaign_id']}: {doc['summary']['cases']} cases, {doc['summary']['executions']} executions "
               f"in {fz['batches']} batches, {fz['elapsed_s']:.0f} s in all ({result.status})")
    click.echo(f"{_plural(len(sigs), 'signature')}, {len(new)} new in this session:")
    for g in sigs:
        mark = "new " if g["signature"] in new else "    "
        what = (f"{g['classification']:<17} {g.get('severity', ''):<8} {g['target']:<26} {g.get('quantity', '-'):<12} "
                f"{g['hypothesis'][:60]} [{g.get('regime', '-')}]")
        shrunk = f", shrunk to {g['minimal_case']}" if g["shrunk"] else ""
        click.echo(f"  {mark}{g['signature']} {what}: {_plural(g['count'], 'execution')}, first case {g['first_case']} "
                   f"({g['arm']}){shrunk}")
    top = sorted(fz["arms"].items(), key=lambda kv: -kv[1]["weight"])[:3]
    click.echo("steering: " + ", ".join(f"{a} weight {v['weight']:.2f} ({v['new']} new of {v['cases']} cases)"
                                        for a, v in top))
    if result.status != "complete":
        click.echo(f"campaign {fz['campaign_id']} was interrupted; continue it with: bncheck fuzz --resume --out "
                   f"{shlex.quote(str(result.out))}")
    out = result.out
    click.echo(f"results: {out / 'results.json'}, {out / 'index.html'}, {out / 'results.xml'}, {out / 'fuzz.json'}")


@main.command("fuzz")
@click.option("--time", "time_text", default=None, metavar="DURATION",
              help="Time budget of the campaign over all its sessions: 90s, 2m, 1h, 1h30m (seconds if no unit).")
@click.option("--max-cases", "max_cases", default=None, type=click.IntRange(min=1), metavar="N",
              help="Case budget of the campaign over all its sessions (with a seed: the same cases every time).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the case stream.")
@targets_option
@click.option("--out", "out", default="fuzz", show_default=True, type=click.Path(file_okay=False),
              help="Campaign folder: fuzz.json (its state), results.json, index.html, results.xml.")
@click.option("--resume", "resume", is_flag=True,
              help="Continue the campaign in --out with its seed and targets (a pending batch first); --time and "
                   "--max-cases then replace its totals.")
@timeout_option
@shrink_option
@click.option("--shrink-time", "shrink_time", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds at the end of each session (at most a fifth of --time) for shrinking the first case of "
                   "each new signature.")
@click.option("--max-batch", "max_batch", default=256, show_default=True, type=click.IntRange(min=1),
              help="Most cases in one batch (batches start at 8 and double).")
@memory_option
@repro_option
@executor_option
@plugin_option
@click.pass_context
def fuzz_cmd(ctx: click.Context, time_text: str | None, max_cases: int | None, seed: int, pattern: str | None, out: str,
             resume: bool, timeout: float, shrink: int, shrink_time: float, max_batch: int, memory_limit: float | None,
             repro: bool, executor: str, address: str | None, jobs: int | None, plugins: tuple[str, ...]) -> None:
    """Generate random cases (every regime and hazard) until the budget is spent; report each new root-cause
    signature with its first case, shrunk; steer toward the regimes that found new signatures recently."""
    from . import api, fuzz

    seconds = None
    if time_text is not None:
        try:
            seconds = parse_duration(time_text)
        except ValueError:
            raise Failure(f"--time {time_text!r}: expected a duration such as 90s, 2m, 1h or 1h30m", EXIT_USAGE) from None
    _executor_given(executor, address)
    log = lambda message: click.echo(message, err=True)  # noqa: E731
    try:
        if resume:
            fixed = _given(ctx, "seed", "pattern", "max_batch", "plugins")
            if fixed:
                name = {"pattern": "--targets", "max_batch": "--max-batch", "plugins": "--plugin"}.get(min(fixed), f"--{min(fixed)}")
                raise Failure(f"--resume takes no {name} (the campaign keeps the ones it started with)", EXIT_USAGE)
            given = _given(ctx, "timeout", "shrink", "shrink_time", "memory_limit", "repro", "executor", "address",
                           "jobs")
            values = {"timeout": timeout, "shrink": shrink, "shrink_time": shrink_time, "memory_limit": memory_limit,
                      "repro": repro, "executor": executor, "address": address, "jobs": jobs}
            result = fuzz.resume(out, time_s=seconds, max_cases=max_cases,
                                 overrides={k: v for k, v in values.items() if k in given}, log=log)
        else:
            run = api.RunOptions(targets=pattern, timeout=timeout, shrink=shrink, shrink_time=shrink_time,
                                 memory_limit=memory_limit, plugins=plugins, repro=repro, executor=executor, jobs=jobs,
                                 address=address)
            result = fuzz.fuzz(fuzz.FuzzOptions(time=seconds, max_cases=max_cases, seed=seed, max_batch=max_batch,
                                                run=run), out=out, log=log)
    except api.BncheckError as e:
        raise Failure(str(e), e.status) from None
    _fuzz_report(result)
    if result.signal:
        import signal

        click.echo(f"bncheck: interrupted ({signal.Signals(result.signal).name})", err=True)
    sys.exit(fuzz.exit_status(result))


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
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Folder to write the suites into [default: the package's own suites folder].")
def generate_suites(out_dir: str | None) -> None:
    """Rewrite every shipped suite from its definition (into the package's suites folder by default)."""
    from .cases import shipped_suites_dir
    from .generate import SUITES

    for name, build in SUITES.items():
        _write_suite(out_dir or str(shipped_suites_dir()), name, build())


# ---- import -------------------------------------------------------------------------------------
@main.group("import")
def import_() -> None:
    """Build suites from other projects' test data."""


@import_.command("onnx")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for onnx-conformance.jsonl and its data files [default: the package's suites folder].")
def import_onnx_cmd(out_dir: str | None) -> None:
    """The onnx-conformance suite from the BatchNormalization tests the installed onnx package ships."""
    from .cases import shipped_suites_dir
    from .onnx_import import OnnxImportError, format_report, import_onnx

    try:
        report = import_onnx(Path(out_dir) if out_dir else shipped_suites_dir())
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
    from .results import Results, ResultsError

    try:
        Results.from_json(doc)  # the required fields of every record, or one line naming the first missing one
    except ResultsError as e:
        raise Failure(f"{path}: {e}", EXIT_USAGE) from None
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
    if until is not None and until < date.today():
        raise Failure(f"--expires {expires}: that day has passed, so every acceptance would already have expired "
                      "(give a date from today on)", EXIT_USAGE)
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


fail_on_option = click.option("--fail-on", "fail_on", default=None, metavar="CLASSES",
                              help="Comma-separated classes that can fail the gate (default: all of suspected-bug, "
                                   "precision, precision-outlier, out-of-range, convention, error, crash, timeout). A "
                                   "critical finding (NaN/Inf, negative variance, collapsed output) fails whatever the "
                                   "classes, unless --allow-critical.")
allow_critical_option = click.option("--allow-critical", "allow_critical", is_flag=True,
                                     help="Let --fail-on decide for critical findings too (by default they always can "
                                          "fail the gate).")


def _decision(doc: dict[str, Any], run_dir: str, baseline_file: str, worse_factor: float, fail_on: str | None,
              allow_critical: bool = False) -> Any:
    """The gate's decision on a results document against a baseline file (usage errors exit 2)."""
    from datetime import date

    from .gate import GateInputError, Policy, decide, parse_classes

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
        return decide(doc, base, policy, date.today())
    except GateInputError as e:
        raise Failure(f"{baseline_file if str(e).startswith('baseline') else run_dir}: {e}", EXIT_USAGE) from None


@main.command("gate")
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--baseline", "baseline_file", required=True, type=click.Path(dir_okay=False),
              help="Baseline JSON (written by 'bncheck baseline').")
@factor_option
@fail_on_option
@allow_critical_option
def gate_cmd(run_dir: str, baseline_file: str, worse_factor: float, fail_on: str | None, allow_critical: bool) -> None:
    """Fail (exit 1) when RUN_DIR has findings that are new, worse than accepted, or whose acceptance expired."""
    doc, _ = _read_results(run_dir)
    decision = _decision(doc, run_dir, baseline_file, worse_factor, fail_on, allow_critical)
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
@click.option("--baseline", "baseline_file", default=None, type=click.Path(dir_okay=False),
              help="Judge as 'bncheck gate' does: only what fails the gate is a failure (accepted deviations pass).")
@factor_option
@fail_on_option
@allow_critical_option
def junit_cmd(run_dir: str, out_file: str | None, baseline_file: str | None, worse_factor: float,
              fail_on: str | None, allow_critical: bool) -> None:
    """Write JUnit XML (one test case per case and target) from the results in RUN_DIR."""
    from .report.junit import write_junit

    doc, path = _read_results(run_dir)
    decision = _decision(doc, run_dir, baseline_file, worse_factor, fail_on, allow_critical) if baseline_file else None
    target = Path(out_file) if out_file else path.with_name("results.xml")
    try:
        write_junit(doc, target, path.parent, decision)
    except (KeyError, TypeError, AttributeError) as e:
        raise Failure(f"cannot write {target}: {e}", EXIT_USAGE) from None
    failures = "" if decision is None else f" ({len(decision.failing)} failing the gate)"
    click.echo(f"{target}: {len(doc.get('executions') or [])} test cases{failures}")


REPORT_FORMATS = ("html", "markdown")


@main.command("report")
@click.argument("run_dir", metavar="OUT")
@click.option("--format", "fmt", default="html", show_default=True, metavar="FORMAT",
              help="html: index.html and the finding and hypothesis pages again; markdown: OUT/summary.md and "
                   "OUT/issues/<signature>.md (one per critical or suspected-bug finding).")
@click.option("--baseline", "baseline_file", default=None, type=click.Path(dir_okay=False),
              help="markdown: the summary lists what fails the gate against this baseline (new, worse, expired).")
@factor_option
@fail_on_option
@allow_critical_option
def report_cmd(run_dir: str, fmt: str, baseline_file: str | None, worse_factor: float, fail_on: str | None,
               allow_critical: bool) -> None:
    """Write the report of the run in OUT again from its results.json: HTML, or markdown for issues and CI summaries."""
    if fmt not in REPORT_FORMATS:
        raise Failure(f"--format {fmt!r}: choose one of {', '.join(REPORT_FORMATS)}", EXIT_USAGE)
    doc, path = _read_results(run_dir)
    decision = _decision(doc, run_dir, baseline_file, worse_factor, fail_on, allow_critical) if baseline_file else None
    if fmt == "html":
        from .report.html import write_html

        write_html(doc, path.with_name("index.html"))
        click.echo(f"{path.with_name('index.html')}: {len(doc['findings'])} finding pages")
        return
    from .report.markdown import write_markdown

    written = write_markdown(doc, path.parent, decision)
    click.echo(f"{written[-1]}: run summary; {len(written) - 1} issue bodies under {path.parent / 'issues'}")


# ---- replay -------------------------------------------------------------------------------------
@main.command()
@click.argument("case_id", required=False)
@click.option("--target", "target_name", required=True, help="Target name, e.g. torch.nn@cpu.")
@click.option("--against", "against", default=None, metavar="TARGET",
              help="A second target: print both side by side, each against the other and the reference, and the "
                   "conventions that differ between them.")
@click.option("--case", "inline", default=None, metavar="JSON",
              help="The case itself, as one JSON object (e.g. '{\"shape\": [8, 4]}'), instead of CASE_ID.")
@click.option("--cases", "sources", multiple=True, metavar="SOURCE",
              help="Case file or suite to find the case in (default: the --out store, then every shipped suite).")
@out_option
@timeout_option
@plugin_option
@click.option("--elements", default=6, show_default=True, help="Elements of each tensor quantity to print.")
def replay(case_id: str | None, target_name: str, against: str | None, inline: str | None, sources: tuple[str, ...],
           out: str, timeout: float, plugins: tuple[str, ...], elements: int) -> None:
    """Re-run one case (CASE_ID, or --case JSON) on one target bit for bit and print every quantity next to the
    reference; with --against, on two targets side by side."""
    from .replay import CaseInputError, find_case, parse_inline_case, replay_case, replay_pair

    if (case_id is None) == (inline is None):
        raise Failure("give a CASE_ID or --case JSON (one of them)", EXIT_USAGE)
    _load_plugins(plugins)
    stored_digest = None
    try:
        if inline is not None:
            case = parse_inline_case(inline)
        else:
            case, stored_digest = find_case(case_id, list(sources), Path(out) / FILENAME)
    except CaseInputError as e:
        raise Failure(str(e), EXIT_USAGE) from None
    except (CaseFileError, LookupError) as e:
        raise Failure(str(e).strip("'\""), EXIT_USAGE) from None
    from .inputs import InputDataError

    try:
        if against is not None:
            status = replay_pair(case, target_name, against, timeout, list(plugins), click.echo)
        else:
            status = replay_case(case, target_name, timeout, list(plugins), stored_digest, elements, click.echo)
    except InputDataError as e:
        raise Failure(f"{e}; or pass the case file with --cases", EXIT_USAGE) from None
    except LookupError as e:
        raise Failure(str(e).strip("'\""), EXIT_USAGE) from None
    except RuntimeError as e:
        raise Failure(str(e), EXIT_INFRA) from None
    sys.exit(status)


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside a run's own handling: stops the command like Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def entry() -> None:
    """The console script: SIGTERM stops any command like Ctrl-C from the start (a run installs its own handling)."""
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)
    main()


if __name__ == "__main__":
    entry()
