"""Writing the reports of a run on large cases: reproduction scripts and report files, before and after.

    python benchmarks/reports.py [--per-channel N]

1. Side by side, in this process: rendering one reproduction script for a case with N elements per channel
   (default 2,097,152, two channels, float32) the way bncheck did before (the whole .npz as base64, wrapped
   with textwrap.wrap, which is quadratic in the length of one long word) and as it does now
   (repro.render_files: literal values for tiny inputs, base64 cut into fixed-width lines up to 1 MiB, an .npz
   beside the script beyond). Prints both times and their ratio. The old way is measured on an input a
   quarter of that size too, so the quadratic growth shows (it takes minutes at full size: pass --old-full).
2. A whole `bncheck run` (through bncheck.api) of that case on the test plugin's faulty target (seed 120:
   every y scaled by 1.01, so there is a finding whose report is written), printing the run's phases.
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _old_render_payload(inputs: dict) -> str:
    """The inputs payload as bncheck wrote it until 2026-12-03 (repro.render before the change)."""
    from bncheck.repro import npz_bytes

    return "\n".join(textwrap.wrap(base64.b64encode(npz_bytes(inputs)).decode(), 100))


def main() -> None:
    """Print the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-channel", type=int, default=2_097_152)
    p.add_argument("--old-full", action="store_true", help="also time the old way at full size (minutes)")
    args = p.parse_args()
    import os

    plugins = str(ROOT / "tests" / "plugins")
    sys.path.insert(0, plugins)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [plugins, os.environ.get("PYTHONPATH")]))  # the workers
    from bncheck import api
    from bncheck.cases import case_from_dict
    from bncheck.inputs import make_inputs
    from bncheck.repro import render_files
    from bncheck.targets.torch_targets import TorchModule

    n = args.per_channel
    case = case_from_dict({"shape": [n // 1024, 2, 1024], "seed": 120, "regime": {"name": "many-elements"}})
    inputs = make_inputs(case)
    size = sum(a.nbytes for a in inputs.values())
    print(f"case: {case.describe()}; inputs {size / 2**20:.1f} MiB")
    t0 = time.perf_counter()
    text, npz = render_files(case, inputs, TorchModule("cpu"), ["train0.y"], "t", "e", {}, "x.inputs.npz")
    new = time.perf_counter() - t0
    print(f"now:    render_files {new:.3f} s (script {len(text) / 1024:.0f} KiB, .npz beside it "
          f"{(len(npz) if npz else 0) / 2**20:.1f} MiB)")
    quarter_case = case.replace(shape=[max(1, n // 4096), 2, 1024])  # a quarter of the elements, a case of its own
    quarter = make_inputs(quarter_case)
    t0 = time.perf_counter()
    _old_render_payload(quarter)
    old_quarter = time.perf_counter() - t0
    t0 = time.perf_counter()
    render_files(quarter_case, quarter, TorchModule("cpu"), ["train0.y"], "t", "e", {}, None)  # all inline, for scale
    new_quarter = time.perf_counter() - t0
    print(f"before: textwrap payload of a quarter of the inputs {old_quarter:.2f} s (now, inline: {new_quarter:.3f} s; "
          f"ratio {old_quarter / max(new_quarter, 1e-9):.0f}x)")
    if args.old_full:
        t0 = time.perf_counter()
        _old_render_payload(inputs)
        old = time.perf_counter() - t0
        print(f"before: textwrap payload of the whole inputs {old:.1f} s (ratio to now {old / max(new, 1e-9):.0f}x)")
    with tempfile.TemporaryDirectory(prefix="bncheck-reports-") as tmp:
        cases = Path(tmp) / "c.jsonl"
        cases.write_text(case.canonical_json() + "\n")
        t0 = time.perf_counter()
        said: list[str] = []
        try:
            result = api.run([str(cases)], out=Path(tmp) / "out", log=said.append,
                             options=api.RunOptions(targets="faulty.*", plugins=("faulty_plugin",), shrink=0))
        except api.BncheckError as e:
            print(f"run failed: {e}")
            return
        wall = time.perf_counter() - t0
        times = next((line for line in said if line.startswith("bncheck: times:")), "")
        print(f"bncheck run of that case on faulty.numpy@cpu: {wall:.1f} s wall, {len(result.findings)} finding(s); "
              f"{times[len('bncheck: '):]}")


if __name__ == "__main__":
    main()
