"""Executions per second: the local executor with 1 and N judges, and the Ray executor, on one generated suite.

    python benchmarks/throughput.py [--cases 200] [--seed 0] [--targets PATTERN] [--jobs N] [--no-ray]
                                    [--ray-address ADDR]

The same generated cases (`generate.random_cases(--cases, --seed)`, cases of at most 65536 elements) run on the
same targets (default: eight fast CPU paths) in one invocation, configuration after configuration:

* local, 1 judge: judging in the bncheck process (the judging of every run before --jobs);
* local, N judges (--jobs, default: the cores available): N judge processes, each case pinned to one;
* ray, N judges: framework actors and N judge actors on a local Ray started with the cores available (or the
  cluster at --ray-address), results streamed into the driver's store.

For each: starting the frameworks is not timed (discovery, once per configuration); `executor.execute` is, from
call to return (inputs, the frameworks' work in their workers, messaging, judging, commits). exec/s = executions
/ that time; ratio = exec/s against local with 1 judge; parent CPU = CPU seconds of this process in that time
(all its threads); judge CPU and worker CPU = the CPU seconds of the local judge and worker processes over the
same time (from /proc; not measured for Ray's processes). The last line says whether every configuration stored
identical verdicts. The figures are of this machine; the 'model' lines after them, labelled as such, say what
the measured CPU per execution implies for a machine with more cores, and are not measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

FAST = ("torch.nn@cpu,torch.functional@cpu,torch.nn.channels_last@cpu,ort.opset9@cpu,ort.opset14@cpu,ort.opset15@cpu,"
        "onnx.reference.opset14@cpu,onnx.reference.opset15@cpu")
MAX_ELEMENTS = 65536


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of a live process, from /proc (0 where unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _parent_cpu() -> float:
    """CPU seconds of this process, every thread."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(label: str, executor: Any, cases: list[Any], pattern: str, out: Path) -> dict[str, Any]:
    """Discover (untimed), then execute the suite once; the figures and where the store is."""
    from bncheck import judges as judges_mod
    from bncheck.manifest import base_manifest
    from bncheck.store import Store

    discovery = executor.discover(pattern, [], None)
    out.mkdir(parents=True, exist_ok=True)
    store = Store(out / "results.sqlite")
    run_id = store.begin_run(f"throughput {label}", ["<generated>"], base_manifest())
    store.add_targets(run_id, discovery.rows)
    store.add_cases(run_id, [(c.case_id, c.canonical_json()) for c in cases])
    judge_pids: list[int] = []
    real_start = judges_mod.ProcessJudge.start

    def start(self: Any) -> None:
        """ProcessJudge.start, noting the process (its CPU is read before it exits)."""
        real_start(self)
        if self.proc is not None:
            judge_pids.append(self.proc.pid)

    judge_cpu: dict[int, float] = {}
    real_close = judges_mod.ProcessJudge.close

    def close(self: Any) -> None:
        """ProcessJudge.close, after reading its CPU."""
        if self.proc is not None:
            judge_cpu[self.proc.pid] = _cpu_of(self.proc.pid)
        real_close(self)

    judges_mod.ProcessJudge.start, judges_mod.ProcessJudge.close = start, close  # type: ignore[method-assign]
    workers = [w for w in discovery.workers.values() if getattr(w, "proc", None) is not None]
    worker_before = sum(_cpu_of(w.proc.pid) for w in workers)
    try:
        cpu0, t0 = _parent_cpu(), time.perf_counter()
        n = executor.execute(store, run_id, cases, discovery, 120.0)
        wall, cpu = time.perf_counter() - t0, _parent_cpu() - cpu0
        worker_cpu = sum(_cpu_of(w.proc.pid) for w in workers if w.proc is not None) - worker_before
    finally:
        judges_mod.ProcessJudge.start, judges_mod.ProcessJudge.close = real_start, real_close  # type: ignore[method-assign]
        store.close()
        discovery.close()
    per_fw: dict[str, int] = {}
    for t in discovery.runnable:
        per_fw[t.framework] = per_fw.get(t.framework, 0) + 1
    from bncheck.runner import TARGETS_PER_WORKER

    lanes = sum(-(-k // TARGETS_PER_WORKER) for k in per_fw.values())
    fresh_lanes = "" if workers and executor.name == "local" else " (Ray processes not measured)"
    return {"label": label, "executions": n, "wall": wall, "parent_cpu": cpu, "judge_cpu": sum(judge_cpu.values()),
            "worker_cpu": worker_cpu if executor.name == "local" else None, "store": out / "results.sqlite",
            "note": fresh_lanes, "judges": executor.jobs, "lanes": lanes}


def decided(db_path: Path) -> tuple[Any, ...]:
    """What a run stored, without times: executions and verdicts."""
    db = sqlite3.connect(db_path)
    try:
        return (sorted(db.execute("SELECT case_id, target, status, message, deviations, worst_ratio FROM executions")),
                sorted(db.execute("SELECT case_id, target, key, passed, ratio, detail FROM verdicts")))
    finally:
        db.close()


def main() -> int:
    """Measure each configuration and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", default=FAST)
    ap.add_argument("--jobs", type=int, default=None, help="N judges (default: the cores available)")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray executor")
    ap.add_argument("--ray-address", default=None, help="a Ray cluster (default: a local Ray with the cores available)")
    ap.add_argument("--keep", default=None, metavar="DIR", help="keep each configuration's store under DIR")
    args = ap.parse_args()

    from bncheck.executors import LocalExecutor
    from bncheck.generate import random_cases
    from bncheck.judges import default_jobs

    n_jobs = args.jobs or default_jobs()
    cases = []
    for c in random_cases(args.cases * 4, args.seed):
        shape = c.to_dict()["shape"]
        size = 1
        for s in shape:
            size *= s
        if size <= MAX_ELEMENTS:
            cases.append(c)
        if len(cases) == args.cases:
            break
    print(f"{len(cases)} generated cases (seed {args.seed}, at most {MAX_ELEMENTS} elements) x targets {args.targets}; "
          f"{default_jobs()} cores available; load average {os.getloadavg()[0]:.1f} at the start")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bncheck-throughput-") as scratch:
        tmp = args.keep or scratch
        rows.append(measure("local, 1 judge", LocalExecutor(1), cases, args.targets, Path(tmp) / "local1"))
        rows.append(measure(f"local, {n_jobs} judges", LocalExecutor(n_jobs), cases, args.targets, Path(tmp) / "localN"))
        if not args.no_ray:
            try:
                import ray

                from bncheck.ray_executor import RayExecutor

                if args.ray_address:
                    ray.init(address=args.ray_address, log_to_driver=False)
                else:
                    ray.init(num_cpus=default_jobs(), include_dashboard=False, log_to_driver=False)
                try:
                    rows.append(measure(f"ray, {n_jobs} judges", RayExecutor(jobs=n_jobs), cases, args.targets,
                                        Path(tmp) / "ray"))
                finally:
                    ray.shutdown()
            except ImportError:
                print("ray is not installed: pip install 'bncheck[ray]' to measure the Ray executor")
        base = rows[0]["executions"] / rows[0]["wall"]
        print(f"\n{'configuration':<18} {'executions':>10} {'wall s':>8} {'exec/s':>8} {'ratio':>6} {'parent CPU s':>13} "
              f"{'judge CPU s':>12} {'worker CPU s':>13}")
        for r in rows:
            rate = r["executions"] / r["wall"]
            workers = "-" if r["worker_cpu"] is None else f"{r['worker_cpu']:.2f}"
            print(f"{r['label']:<18} {r['executions']:>10} {r['wall']:>8.2f} {rate:>8.1f} {rate / base:>6.2f} "
                  f"{r['parent_cpu']:>13.2f} {r['judge_cpu']:>12.2f} {workers:>13}{r['note']}")
        same = all(decided(r["store"]) == decided(rows[0]["store"]) for r in rows[1:])
        print(f"verdicts identical across configurations: {'yes' if same else 'NO'}")
        one = rows[0]
        if one["worker_cpu"] and one["executions"]:
            n = one["executions"]
            parent_ms = 1000 * one["parent_cpu"] / n
            worker_ms = 1000 * one["worker_cpu"] / n
            if len(rows) > 1:
                par = rows[1]
                feed_ms = 1000 * par["parent_cpu"] / n  # what stays in the parent with judges elsewhere
                judge_ms = 1000 * par["judge_cpu"] / n
            print(f"\nmodel (not a measurement): per execution, measured above: parent CPU {parent_ms:.2f} ms with 1 judge, "
                  f"worker CPU {worker_ms:.2f} ms" + (f"; with {n_jobs} judges: parent {feed_ms:.2f} ms, judges "
                                                      f"{judge_ms:.2f} ms" if len(rows) > 1 else ""))
            if len(rows) > 1:
                lanes = one["lanes"]
                print(f"model (not a measurement): {lanes} framework workers (lanes) run in parallel at most; each bound "
                      "below is the smallest of: the parent's core, the lanes' cores, all cores busy")
                for cores in (4, 8, 16, 32):
                    frameworks = min(cores, lanes) * 1000 / worker_ms
                    one_judge = min(1000 / parent_ms, frameworks, cores * 1000 / (parent_ms + worker_ms))
                    many = min(1000 / feed_ms, frameworks, cores * 1000 / (feed_ms + judge_ms + worker_ms))
                    print(f"model (not a measurement): {cores:>2} cores: 1 judge at most {one_judge:6.0f} exec/s, "
                          f"{cores} judges at most {many:6.0f} exec/s ({many / one_judge:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
