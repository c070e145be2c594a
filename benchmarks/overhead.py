"""How much time does bncheck add to the frameworks it runs? Wall times, cases per second, and overhead ratios.

    python benchmarks/overhead.py [--suites smoke,default] [--targets PATTERN] [--no-cli] [--warm] [--runs N]

1. Whole runs: `bncheck audit` (the default suite) or `bncheck run SUITE` as a user runs it (framework imports,
   discovery, execution, shrinking of findings, reports), and again with --shrink 0, each with a fresh JAX
   compilation cache (cold) and, with --warm, again with that cache filled by the first run.
2. Per target, on each suite: bncheck's time against a floor.
   * bncheck: in this process, `runner.discover` starts and probes each framework's worker (imports, not
     timed), then `runner.execute` runs the suite on that one target alone, timed from call to return:
     input generation, the float64 reference and bounds, messaging and pickling, the framework's own work
     in the worker, comparison, diagnosis and SQLite commits (each execution at once, unless
     results queue up: then runner.COMMIT_EVERY at a time).
   * floor: one fresh subprocess per framework, with the environment a worker gets (pool.worker_environment
     and the JAX cache settings), imports the framework (not timed), instantiates each target
     class, builds every case's inputs (not timed), and times `target.run(case, inputs)` over the cases the
     target supports, target after target, in the same order as the worker runs them.
   Both sides start with their own empty JAX compilation cache, so both compile every kernel once.
   ratio = bncheck / floor; cases/s = suite cases / bncheck's time for the target; parent-cpu = CPU seconds
   of bncheck's own process (all its threads) during that time: with the worker's, it is the work two cores
   share, so (in-worker + parent-cpu) / 2 / floor is a lower bound on the ratio for that target.

added/case = (bncheck - floor) / cases run: the overhead in absolute terms (noisy for the JAX targets, whose
floor and bncheck each compile every kernel). With --runs N the per-target tables are measured N times, each
time with new workers on both sides and new JAX caches, and a table of each target's median ratio and median
added/case follows: on a shared 2-core machine one run of a 2 ms floor moves by a factor of 1.5. (Repeating
passes inside one run instead would measure a warm state users never see: targets keep per-case artifacts, ORT
sessions and torch modules, and a second pass of the floor took a thirtieth of the first.) The last line is
`max overhead ratio: <r>` over every target on the smoke suite (with --runs, of the targets' medians).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


# ---- the floor: one subprocess per framework -----------------------------------------------------
def floor_main(framework: str, suite: str, names: list[str]) -> None:
    """Child process: time target.run over the suite for each named target of one framework; print JSON."""
    from bncheck import targets as registry
    from bncheck.cases import load_cases
    from bncheck.inputs import make_inputs

    fw = registry.frameworks()[framework]
    registry.resolve(fw.probe)()  # imports the framework (not timed)
    cases = load_cases([suite])
    inputs = [make_inputs(c) for c in cases]
    out: dict[str, Any] = {}
    for name in names:
        family, _, device = name.partition("@")
        target = registry.family_class(family)(device)
        total, ran = 0.0, 0
        from bncheck.targets.base import Unsupported

        for case, inp in zip(cases, inputs):
            if target.supports(case):
                continue
            t0 = time.perf_counter()
            try:
                target.run(case, inp)
            except Unsupported:
                pass
            except Exception:  # an error is work done too; bncheck records it
                pass
            total += time.perf_counter() - t0
            ran += 1
        out[name] = {"floor_s": total, "ran": ran}
    print(json.dumps(out))


def run_floor(framework: str, suite: str, names: list[str], cache: Path) -> dict[str, Any]:
    """Run floor_main in a fresh process with the framework's worker environment and its own JAX cache."""
    from bncheck import targets as registry
    from bncheck.pool import worker_environment
    from bncheck.worker import jax_cache_env, uses_jax

    env = worker_environment(dict(registry.frameworks()[framework].env))  # exactly what a worker gets
    if uses_jax(framework):  # what a worker of this framework sets for itself, with this side's own cache
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
        env.update(jax_cache_env(env))
    r = subprocess.run([sys.executable, __file__, "--floor", framework, "--suite", suite, "--names", ",".join(names)],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"floor for {framework} failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- bncheck's side ---------------------------------------------------------------------------------
def run_bncheck(framework: str, suite: str, names: list[str], cache: Path, tmp: Path) -> dict[str, Any]:
    """Per target: wall time of runner.execute on the suite with that target alone, workers already started."""
    from bncheck.cases import load_cases
    from bncheck.runner import Discovery, discover, execute
    from bncheck.store import Store

    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache)  # the worker inherits it (and keeps it)
    cases = load_cases([suite])
    d = discover(",".join(names))
    out: dict[str, Any] = {}
    try:
        store = Store(tmp / f"{framework}-{suite}.sqlite")
        for name in names:
            t = next(t for t in d.runnable if t.name == name)
            run_id = store.begin_run("benchmark", [suite], {})
            one = Discovery(rows=[], runnable=[t], workers=d.workers, frameworks=d.frameworks)
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            execute(store, run_id, cases, one, timeout=600)
            wall = time.perf_counter() - t0
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            rows = store.db.execute("SELECT status, elapsed FROM executions WHERE run_id=?", (run_id,)).fetchall()
            ran = [r for r in rows if r[0] != "unsupported"]
            out[name] = {"bncheck_s": wall, "parent_cpu_s": cpu, "worker_run_s": sum(r[1] for r in ran), "ran": len(ran),
                         "cases": len(cases),
                         "bad": sum(1 for r in rows if r[0] in ("error", "crash", "timeout"))}
        store.close()
    finally:
        d.close()
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    return out


def targets_by_framework(pattern: str | None) -> dict[str, list[str]]:
    """Available target names per framework (probed in workers, as `bncheck backends` does)."""
    from bncheck.runner import discover

    d = discover(pattern, keep_workers=False)
    by_fw: dict[str, list[str]] = {}
    for t in d.runnable:
        by_fw.setdefault(t.framework, []).append(t.name)
    return by_fw


# ---- the parent's work per execution ------------------------------------------------------------------
def parent_stages(suite: str, repeats: int = 3) -> dict[str, float]:
    """Milliseconds per case of each stage the parent runs, best of `repeats`, judging a correct observation.

    The observation is the reference itself rounded to each quantity's output dtype (what an exact target
    returns), so it passes and needs no diagnosis: the cost of judging a deviating one comes on top.
    """
    from bncheck.cases import load_cases
    from bncheck.compare import compare
    from bncheck.dtypes import round_as_float64
    from bncheck.inputs import make_inputs
    from bncheck.judging import expected_values
    from bncheck.store import Store
    from bncheck.targets.base import Conventions
    from bncheck.tolerance import output_dtype

    cases = load_cases([suite])
    conventions = Conventions(momentum="new", running_var="unbiased")
    inputs = [make_inputs(c) for c in cases]
    expected = [expected_values(c, i) for c, i in zip(cases, inputs)]
    observations = [{k: round_as_float64(v, output_dtype(c, k.split(".", 1)[1]))
                     for k, v in e.references["unbiased"].values.items()} for c, e in zip(cases, expected)]
    verdicts = [compare(c, o, e.references, e.bounds, conventions, e.dependent) for c, o, e in zip(cases, observations, expected)]
    rows = [[{**v.to_dict(), "ratio_value": v.ratio} for v in vs] for vs in verdicts]
    tmp = Path(tempfile.mkdtemp(prefix="bncheck-stages-"))
    store = Store(tmp / "s.sqlite")
    run_id = store.begin_run("benchmark", [suite], {})

    def store_all(commit_each: bool = True) -> None:
        for c, r in zip(cases, rows):
            store.add_execution(run_id, c.case_id, "t", "ok", "", "", 0.0, "", r, commit=commit_each)
        store.commit()

    stages = {
        "inputs": lambda: [make_inputs(c) for c in cases],
        "reference+bounds": lambda: [expected_values(c, i) for c, i in zip(cases, inputs)],
        # the first target to be judged on a case also flattens the case's reference (compare's plan) ...
        "compare (first target)": lambda: [compare(c, o, e.references, e.bounds, conventions, e.dependent, plans={})
                                           for c, o, e in zip(cases, observations, expected)],
        # ... which every further target reuses
        "compare (further targets)": lambda: [compare(c, o, e.references, e.bounds, conventions, e.dependent, plans=e.plans)
                                              for c, o, e in zip(cases, observations, expected)],
        "verdicts to JSON-ready dicts": lambda: [[v.to_dict() for v in vs] for vs in verdicts],
        "store (one commit each)": store_all,
        "store (one commit in all)": lambda: store_all(False),
    }
    out = {}
    try:
        for name, fn in stages.items():
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            out[name] = 1000 * best / len(cases)
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---- whole runs --------------------------------------------------------------------------------------
def cli_run(args: list[str], cache: Path, out: Path) -> tuple[float, dict[str, Any]]:
    """Wall time of one `bncheck` command (imports included) and its results.json."""
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "bncheck.cli", *args, "--out", str(out)], capture_output=True, text=True,
                       env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode not in (0, 1):
        raise RuntimeError(f"bncheck {' '.join(args)} exited {r.returncode}: {r.stderr[-2000:]}")
    return wall, json.loads((out / "results.json").read_text())


def main() -> None:
    """Run the benchmark and print its tables; the last line is the smoke suite's maximum overhead ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", default="smoke,default")
    ap.add_argument("--targets", default=None, help="target pattern (default: every available target)")
    ap.add_argument("--no-cli", action="store_true", help="skip the whole-run timings")
    ap.add_argument("--warm", action="store_true", help="also time whole runs with the JAX cache already filled")
    ap.add_argument("--runs", type=int, default=1,
                    help="measure the per-target tables this many times, each with fresh workers and caches; the "
                         "last line is then the largest of the targets' median ratios")
    ap.add_argument("--floor", help=argparse.SUPPRESS)
    ap.add_argument("--suite", help=argparse.SUPPRESS)
    ap.add_argument("--names", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.floor:
        floor_main(a.floor, a.suite, a.names.split(","))
        return
    suites = [s for s in a.suites.split(",") if s]
    tmp = Path(tempfile.mkdtemp(prefix="bncheck-bench-"))
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; python {sys.version.split()[0]}")
    try:
        if not a.no_cli:
            print("\nwhole runs (python -m bncheck.cli ..., imports, discovery, shrinking and reports included)")
            for suite in suites:
                command = ["audit", "--suite", suite] if suite == "default" else ["run", suite]
                # (label, JAX cache folder, extra options): a fresh folder is a cold cache
                variants = [("cold", "a", []), ("cold", "b", ["--shrink", "0"])]
                if a.warm:
                    variants += [("warm", "a", []), ("warm", "b", ["--shrink", "0"])]
                for label, folder, extra in variants:
                    args = command + extra + (["--targets", a.targets] if a.targets else [])
                    wall, doc = cli_run(args, tmp / f"cli-cache-{suite}-{folder}", tmp / f"cli-{suite}-{label}-{folder}")
                    s = doc["summary"]
                    print(f"  bncheck {' '.join(args):<32} {label} JAX cache: {wall:6.1f} s wall, {s['executions']} executions "
                          f"({s['cases']} cases x {s['targets']} targets), {s['executions'] / wall:5.1f} executions/s", flush=True)
        print("\nthe parent's work per case (ms, best of 3; a correct observation, so no diagnosis)")
        for suite in suites:
            st = parent_stages(suite)
            # one target judging the case alone, committing each execution (the worst case)
            alone = sum(v for k, v in st.items() if "further" not in k and "in all" not in k)
            print(f"  {suite:<10} " + ", ".join(f"{k} {v:.2f}" for k, v in st.items()) + f"; total for one target {alone:.2f}")
        by_fw = targets_by_framework(a.targets)
        ratios: dict[tuple[str, str], list[float]] = {}  # (suite, target) -> ratio of each run
        added_ms: dict[tuple[str, str], list[float]] = {}  # (suite, target) -> milliseconds added per case, each run
        for run in range(1, a.runs + 1):
            for suite in suites:
                of = f", run {run} of {a.runs}" if a.runs > 1 else ""
                print(f"\nper target on '{suite}' (each framework alone; times in seconds{of})")
                print(f"  {'target':<28} {'ran':>4} {'floor':>8} {'in-worker':>9} {'bncheck':>8} {'parent-cpu':>10} {'ratio':>6} "
                      f"{'cases/s':>8} {'added/case':>10}")
                for fw, names in sorted(by_fw.items()):
                    mine = run_bncheck(fw, suite, names, tmp / f"bn-cache-{suite}-{fw}-{run}", tmp)
                    floor = run_floor(fw, suite, names, tmp / f"floor-cache-{suite}-{fw}-{run}")
                    for n in names:
                        b, f = mine[n], floor[n]
                        ratio = b["bncheck_s"] / f["floor_s"] if f["floor_s"] > 0 else float("inf")
                        ratios.setdefault((suite, n), []).append(ratio)
                        added = 1000 * (b["bncheck_s"] - f["floor_s"]) / b["ran"] if b["ran"] else float("nan")
                        if b["ran"]:
                            added_ms.setdefault((suite, n), []).append(added)
                        bad = f"  ({b['bad']} error/crash/timeout)" if b["bad"] else ""
                        print(f"  {n:<28} {b['ran']:>4} {f['floor_s']:8.3f} {b['worker_run_s']:9.3f} {b['bncheck_s']:8.3f} "
                              f"{b['parent_cpu_s']:10.3f} {ratio:6.2f} {b['cases'] / b['bncheck_s']:8.1f} {added:7.1f} ms{bad}",
                              flush=True)
        if a.runs > 1:
            for suite in suites:
                print(f"\nratio and time added per case, per target on '{suite}': median of {a.runs} runs (min-max)")
                for (s_, n), rs in ratios.items():
                    if s_ == suite:
                        ms = added_ms.get((s_, n), [float("nan")])
                        print(f"  {n:<28} {statistics.median(rs):6.2f} ({min(rs):.2f}-{max(rs):.2f})  "
                              f"{statistics.median(ms):6.1f} ms ({min(ms):.1f} to {max(ms):.1f})")
        smoke = [statistics.median(rs) for (s_, _), rs in ratios.items() if s_ == "smoke"]
        if smoke:
            print("\nlargest over the targets of their median ratio on 'smoke'" if a.runs > 1 else "")
            print(f"max overhead ratio: {max(smoke):.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
