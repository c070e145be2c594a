"""The parent's work per outcome, replayed without the frameworks: inputs, reference and bounds, comparison, diagnosis, peers.

    python benchmarks/judging.py [--cases N] [--seed S | --suite NAME] [--targets PATTERN] [--repeats R]

A whole run's timings mix the parent's judging with the workers' kernels on shared cores, and move by tens
of percent from run to run. This benchmark separates the parent's part. It runs N generated cases
(`bncheck generate random`, seed S), or a shipped suite, once on the targets, as `bncheck run` does, and keeps every observation
the workers return. Then, in this process alone, it replays the judging of those outcomes R times: each case's
inputs and expected values (float64 reference and bounds under both running-variance conventions, built
once per case), then per outcome the comparison, the diagnosis where something deviates, and the verdicts as
the store receives them; then, per case, the peer judgement (peers.py: precision outliers, and the same-format
check of out-of-range diagnoses) on those verdict rows, as the report builds it from the store. For each stage
it prints the CPU time, best of R (time.process_time), in total, per case and per outcome, and the peer
judgement's share of the per-outcome judging CPU (the issue's target: at most 10 %).

The default targets have kernels of a millisecond or less, where the parent's work is the larger part of a
run (see benchmarks/overhead.py and the README's Speed section).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def capture(pattern: str, cases: list[Any]) -> tuple[list[tuple[str, Any, dict[str, Any]]], list[str]]:
    """Run the cases on the targets once; (case_id, target, observation) of every ok outcome, and the target names."""
    from bncheck import runner
    from bncheck.store import Store

    captured: list[tuple[str, Any, dict[str, Any]]] = []

    def keep(case_id: str, target: Any, out: Any) -> None:
        """Keep the observation; the run then judges it as usual."""
        if out.status == "ok":
            captured.append((case_id, target, out.reply.get("observation", {})))

    d = runner.discover(pattern)
    try:
        runner.check_plan(d, pattern)
        with tempfile.TemporaryDirectory(prefix="bncheck-judging-") as tmp:
            store = Store(Path(tmp) / "results.sqlite")
            runner.execute(store, store.begin_run("benchmark", ["generated"], {}), cases, d, timeout=600,
                           on_outcome=keep)
            store.close()
    finally:
        d.close()
    return captured, [t.name for t in d.runnable]


def replay(cases: list[Any], captured: list[tuple[str, Any, dict[str, Any]]]) -> tuple[dict[str, float], int]:
    """CPU seconds of each judging stage over every captured outcome, with fresh per-case state; and how many deviate."""
    from bncheck import peers
    from bncheck.compare import compare
    from bncheck.diagnose import diagnose
    from bncheck.inputs import make_inputs
    from bncheck.judging import expected_values

    by_id = {c.case_id: c for c in cases}
    t = dict.fromkeys(("inputs", "reference + bounds", "compare", "diagnosis", "verdicts to dicts", "peers"), 0.0)
    rows: dict[str, list[dict[str, Any]]] = {}  # case -> the executions as the store holds them
    per_case: dict[str, tuple[Any, Any]] = {}
    deviating = 0
    clock = time.process_time
    for case_id, target, obs in captured:
        case = by_id[case_id]
        if case_id not in per_case:
            t0 = clock()
            inputs = make_inputs(case)
            t1 = clock()
            per_case[case_id] = (inputs, expected_values(case, inputs))
            t["inputs"] += t1 - t0
            t["reference + bounds"] += clock() - t1
        inputs, e = per_case[case_id]
        t0 = clock()
        verdicts = compare(case, obs, e.references, e.bounds, target.conventions, e.dependent, plans=e.plans)
        t1 = clock()
        if not all(v.passed for v in verdicts):
            deviating += 1
            d = diagnose(case, inputs, obs, e.references, target.conventions, verdicts, target.family, bounds=e.bounds,
                         memo=e.hypotheses)
        else:
            d = None
        t2 = clock()
        dicts = [v.to_dict() for v in verdicts]
        if d is not None:
            dicts[next(i for i, v in enumerate(verdicts) if v.key == d.first)]["diagnosis"] = d.to_dict()
        t["compare"] += t1 - t0
        t["diagnosis"] += t2 - t1
        t["verdicts to dicts"] += clock() - t2
        rows.setdefault(case_id, []).append({"case_id": case_id, "target": target.name, "status": "ok", "verdicts": dicts})
    targets = [{"name": tg.name, "conventions": tg.conventions.to_dict()} for tg in {x[1].name: x[1] for x in captured}.values()]
    case_docs = {cid: {**by_id[cid].to_dict(), "description": ""} for cid in rows}
    t0 = clock()
    for case_id, execs in rows.items():  # what build_results does, case by case
        peers.revise_out_of_range(execs, {case_id: case_docs[case_id]}, targets)
        peers.outliers_of_case(case_id, execs)
    t["peers"] += clock() - t0
    return t, deviating


def main() -> None:
    """Capture once, replay --repeats times, print the best time of each stage."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--suite", help="a shipped suite (or case file) instead of generated cases")
    ap.add_argument("--targets", default="torch.*,ort.*,tf.nn*,tf.fused*", help="target pattern ('*': every target)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    from bncheck.cases import load_cases
    from bncheck.generate import random_cases

    cases = load_cases([a.suite]) if a.suite else random_cases(a.cases, a.seed)
    source = f"cases of {a.suite}" if a.suite else f"generated cases (seed {a.seed})"
    captured, names = capture(a.targets, cases)
    best: dict[str, float] = {}
    deviating = 0
    for _ in range(a.repeats):
        times, deviating = replay(cases, captured)
        best = {k: min(best.get(k, float("inf")), v) for k, v in times.items()}
    n_cases = len({c for c, _, _ in captured})
    print(f"{len(captured)} outcomes ({deviating} deviating) of {n_cases} {source} on "
          f"{len(names)} targets: {', '.join(names)}")
    print(f"the parent's CPU per stage, best of {a.repeats}:")
    print(f"  {'stage':<20} {'total':>8} {'per case':>10} {'per outcome':>12}")
    for k, v in [*best.items(), ("total", sum(best.values()))]:
        print(f"  {k:<20} {v:7.3f}s {1000 * v / n_cases:8.3f}ms {1000 * v / len(captured):10.3f}ms")
    if deviating:
        print(f"  diagnosis per deviating outcome: {1000 * best['diagnosis'] / deviating:.2f} ms")
    judging = sum(v for k, v in best.items() if k != "peers")
    print(f"  peer judgement: {100 * best['peers'] / judging:.1f} % of the other stages' CPU per outcome "
          f"({1000 * best['peers'] / len(captured):.3f} ms of {1000 * judging / len(captured):.3f} ms)")


if __name__ == "__main__":
    main()
