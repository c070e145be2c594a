"""A test plugin: a NumPy BN target that raises, aborts, hangs or prints garbage on chosen seeds.

Registered with `--plugin faulty_plugin` (tests put this folder on PYTHONPATH). Seeds select faults:
101 raises ValueError, 102 calls os.abort(), 103 hangs, 104 prints to stdout before answering correctly,
105 exits the process with status 7; every other seed gets the reference values rounded to the case
dtypes (a correct implementation).

Deviation faults (seeds 120-129, for the CI gate tests): 120 scales every `y` by 1.01, 121 scales every `y`
by 1.5 (the same root cause as 120, about 50 times larger), 122 scales every running variance by 1.01.
With BNCHECK_FAULTY_FIXED=1 in the environment, those deviation faults and the ValueError of seed 101 are
"fixed": the target answers correctly (a kernel after its bug fix, for the gate's 'fixed' tests).
"""

from __future__ import annotations

import os
import sys
import time

from bncheck.dtypes import round_as_float64
from bncheck.reference import compute_reference
from bncheck.targets import register_framework, register_target
from bncheck.targets.base import Conventions, Framework, Target
from bncheck.tolerance import output_dtype

FAULTS = {101: "raise", 102: "abort", 103: "hang", 104: "print", 105: "exit", 106: "segfault", 107: "hog", 108: "huge"}
CHUNK = 256 << 20
SCALED = {120: ("y", 1.01), 121: ("y", 1.5), 122: ("running_var", 1.01)}  # seed -> (quantity, factor)


def probe() -> dict:
    """The faulty framework runs on the CPU only."""
    return {"version": "0.0-test", "devices": ["cpu"]}


register_framework(Framework("faulty", ("numpy",), "nothing to install", "faulty_plugin:probe"))


@register_target
class FaultyNumpy(Target):
    """A correct NumPy BN that misbehaves on purpose for some seeds."""

    family = "faulty.numpy"
    framework = "faulty"
    description = "NumPy reference rounded to the case dtypes, with injected faults"
    conventions = Conventions(momentum="new", running_var="unbiased", quantities=("y", "running_mean", "running_var"))

    def run(self, case, inputs):
        """Answer correctly, or fail as the seed says."""
        fixed = os.environ.get("BNCHECK_FAULTY_FIXED") == "1"
        fault = None if fixed and case.seed == 101 else FAULTS.get(case.seed)
        delay = float(os.environ.get("BNCHECK_FAULTY_SLEEP", "0") or 0)
        if delay:
            time.sleep(delay)
        if fault == "segfault":
            import ctypes

            ctypes.string_at(0)
        if fault == "hog":
            import numpy as np

            hoard = []
            for _ in range((64 << 30) // CHUNK):
                hoard.append(np.ones(CHUNK // 8))  # touched, so it is really resident
        if fault == "huge":
            import numpy as np

            np.ones((64 << 30) // 8)
        if fault == "raise":
            raise ValueError("injected failure")
        if fault == "abort":
            os.abort()
        if fault == "hang":
            time.sleep(3600)
        if fault == "exit":
            os._exit(7)
        if fault == "print":
            print("garbage on stdout that must not corrupt the protocol")
            sys.stdout.flush()
        ref = compute_reference(case, inputs, "unbiased")
        scaled, factor = (None, 1.0) if fixed else SCALED.get(case.seed, (None, 1.0))
        return {k: round_as_float64(v * factor if k.split(".", 1)[1] == scaled else v, output_dtype(case, k.split(".", 1)[1]))
                for k, v in ref.values.items() if k.split(".", 1)[1] in self.conventions.quantities}
