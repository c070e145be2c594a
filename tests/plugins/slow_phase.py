"""Run the bncheck CLI with one phase of a run slowed down and announced, so that a test can signal it there.

    python tests/plugins/slow_phase.py PHASE SECONDS bncheck-arguments...

PHASE is one of start, shrink, repro, reports. On entering it the script prints `PHASE <name>` on stderr, then
sleeps SECONDS before doing the real work (the sleep is where the test's signal lands).
"""

from __future__ import annotations

import sys
import time


def _slowed(module: object, name: str, phase: str, seconds: float) -> None:
    real = getattr(module, name)

    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        print(f"PHASE {phase}", file=sys.stderr, flush=True)
        time.sleep(seconds)
        return real(*args, **kwargs)

    setattr(module, name, wrapper)


def main() -> None:
    """Patch the phase's function, then run the CLI with the remaining arguments."""
    phase, seconds, *args = sys.argv[1:]
    from bncheck import cli, repro, runner
    from bncheck.report import html

    where = {"start": (runner, "discover"), "shrink": (runner, "shrink_in_parallel"),
             "repro": (repro, "write_finding_repros"), "reports": (html, "write_html")}
    module, name = where[phase]
    _slowed(module, name, phase, float(seconds))
    sys.argv = ["bncheck", *args]
    cli.entry()


if __name__ == "__main__":
    main()
