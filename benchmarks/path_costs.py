"""What each target costs on a suite, cold: a fresh worker per family, its import, then every case it supports.

Prints, per family: the cases it ran, the worker's start (spawn + framework import + probe), the wall time of its
executions, and the worker process's CPU seconds (user + system, from /proc) at the end. Families run one after
another, so the figures are not shared with other workers (the audit runs them in parallel on the same cores).
A fresh JAX compilation cache is used unless --keep-cache, so compiled paths pay their compilations.

    python benchmarks/path_costs.py --targets 'tf.nn*,equinox.*'
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bncheck.generate import SUITES
from bncheck.inputs import make_inputs
from bncheck.pool import WorkerHandle
from bncheck.targets import family_class, family_names, framework_status, frameworks, match_targets


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a live process (Linux /proc; children not included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(family: str, cases: list, timeout: float) -> tuple[int, float, float, float, int]:
    """(cases run, start seconds, execution wall seconds, worker CPU seconds, non-ok outcomes) of one family."""
    cls = family_class(family)
    target = cls("cpu")
    fw = frameworks()[cls.framework]
    start = time.perf_counter()
    worker = WorkerHandle(cls.framework, env=dict(fw.env))
    try:
        probe = worker.request({"op": "probe"}, timeout)
        if probe.status != "ok":
            raise RuntimeError(f"{family}: probe {probe.status}: {probe.message}")
        started = time.perf_counter() - start
        ran = bad = 0
        t0 = time.perf_counter()
        for case in cases:
            if target.supports(case) is not None:
                continue
            out = worker.request({"op": "run", "family": family, "device": "cpu", "case": case.to_dict(),
                                  "inputs": make_inputs(case)}, timeout)
            ran += 1
            bad += out.status != "ok"
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(worker.proc.pid) if worker.proc is not None else float("nan")
    finally:
        worker.stop()
    return ran, started, wall, cpu, bad


def main() -> None:
    """Parse options, measure each selected family, print one row each and the totals."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="default", choices=sorted(SUITES))
    ap.add_argument("--targets", default="", help="comma-separated glob patterns of families (default: all)")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--keep-cache", action="store_true", help="use the environment's JAX compilation cache")
    args = ap.parse_args()
    if not args.keep_cache:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="bncheck-jax-cold-")
    cases = list(SUITES[args.suite]())
    names = [f for f in match_targets(family_names(), args.targets or None)
             if (family_class(f).devices is None or "cpu" in family_class(f).devices)
             and framework_status(frameworks()[family_class(f).framework])[0]]
    print(f"{len(cases)} cases of the {args.suite} suite; one fresh worker per family, one family at a time")
    print(f"{'family':24s} {'cases':>5s} {'start s':>8s} {'exec s':>8s} {'cpu s':>8s} {'not ok':>6s}")
    totals = [0.0, 0.0, 0.0]
    for family in names:
        ran, started, wall, cpu, bad = measure(family, cases, args.timeout)
        totals = [totals[0] + started, totals[1] + wall, totals[2] + cpu]
        print(f"{family:24s} {ran:5d} {started:8.1f} {wall:8.1f} {cpu:8.1f} {bad:6d}", flush=True)
    print(f"{'total':24s} {'':5s} {totals[0]:8.1f} {totals[1]:8.1f} {totals[2]:8.1f}")


if __name__ == "__main__":
    main()
