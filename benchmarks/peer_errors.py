"""How far each target's error lies from its peers', on stored runs: the measurement behind peers.RULE.

    python benchmarks/peer_errors.py OUT_DIR [OUT_DIR ...] [--top N]

For every (case, quantity) of the runs stored in each OUT_DIR/results.sqlite, and every target whose verdict on
it passes its bound and that has at least three peers (other targets that ran the case and observed the
quantity), it computes the target's error over the median of its peers' errors (the factor) and the error in
ULPs at the quantity's scale, exactly as peers.outliers_of_case does. It prints the distribution of the
factors, how many (case, target, quantity) triples each candidate (factor, floor) would flag, per target, and
the largest factors with the case's regime, so that the rule's factor can be chosen above what correct
kernels reach and below what known weaker algorithms (sequential float32 sums, half-precision arithmetic) do.
Nothing is re-run: the figures come from the stored verdicts (max_abs and scale_ulp of every quantity).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

FACTORS = (10.0, 30.0, 100.0, 300.0, 1000.0)
FLOORS = (0.0, 2.0, 8.0, 32.0)


def triples(out_dir: Path) -> list[dict]:
    """Every judged (case, target, key) of the latest run stored in `out_dir`, with its factor and ULPs."""
    from bncheck.store import Store

    store = Store(out_dir / "results.sqlite")
    run_id = store.latest_run()
    cases = dict(store.cases(run_id))
    by_case: dict[str, list[dict]] = {}
    for e in store.executions(run_id):
        if e["status"] == "ok":
            by_case.setdefault(e["case_id"], []).append(e)
    store.close()
    out = []
    for case_id, execs in by_case.items():
        table: dict[str, dict[str, dict]] = {}
        for e in execs:
            for v in e["verdicts"]:
                table.setdefault(v["key"], {})[e["target"]] = v
        for key, by_target in table.items():
            errors = {t: _num(v.get("max_abs")) for t, v in by_target.items()}
            for t, v in by_target.items():
                peers = [p for p in by_target if p != t]
                if not v.get("passed") or len(peers) < 3 or _num(v.get("bound_max", 0.0)) >= _num(v.get("scale", math.inf)):
                    continue  # as peers.outliers_of_case: passing, three peers, a bound below the quantity's scale
                med = statistics.median(errors[p] for p in peers)
                err, scale = errors[t], _num(v.get("scale_ulp"))
                out.append({"case": case_id, "regime": cases[case_id]["regime"]["name"], "dtype": cases[case_id]["dtype"],
                            "target": t, "key": key, "error": err, "median": med,
                            "factor": (err / med) if med > 0 else (math.inf if err > 0 else 0.0),
                            "ulps": err / scale if scale and scale > 0 else math.nan})
    return out


def _num(x: object) -> float:
    try:
        return float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.inf


def main() -> None:
    """Print the distribution and the candidate rules' counts."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dirs", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=40)
    a = ap.parse_args()
    rows = [r for d in a.out_dirs for r in triples(d)]
    finite = sorted(r["factor"] for r in rows if math.isfinite(r["factor"]))
    print(f"{len(rows)} (case, target, quantity) triples judged against 3+ peers, from {', '.join(map(str, a.out_dirs))}")
    if finite:
        q = lambda p: finite[min(len(finite) - 1, int(p * len(finite)))]  # noqa: E731
        print(f"error / median of the peers' errors: median {q(0.5):.3g}, 99% {q(0.99):.3g}, 99.9% {q(0.999):.3g}, "
              f"max {finite[-1]:.3g}; infinite (peers exact) {sum(1 for r in rows if math.isinf(r['factor']))}")
    print("\ntriples flagged by factor F and floor K (ULPs at the quantity's scale):")
    print("  " + "".join(f"{'K=' + format(k, 'g'):>10}" for k in FLOORS))
    for f in FACTORS:
        cells = [sum(1 for r in rows if r["factor"] > f and not (r["ulps"] < k)) for k in FLOORS]
        print(f"F={f:<6g}" + "".join(f"{c:>10}" for c in cells))
    for f, k in ((100.0, 8.0), (30.0, 8.0)):
        flagged = Counter(r["target"] for r in rows if r["factor"] > f and not (r["ulps"] < k))
        print(f"\nper target at F={f:g}, K={k:g}: " + (", ".join(f"{t} {n}" for t, n in flagged.most_common()) or "none"))
    print(f"\nthe {a.top} largest factors (ULPs >= 2):")
    ranked = sorted((r for r in rows if not (r["ulps"] < 2)), key=lambda r: -r["factor"])[:a.top]
    for r in ranked:
        print(f"  {r['factor']:>10.3g} x  {r['ulps']:>10.3g} ULP  {r['target']:<26} {r['key']:<22} {r['dtype']:<9} "
              f"{r['regime']} ({r['case']})")


if __name__ == "__main__":
    main()
