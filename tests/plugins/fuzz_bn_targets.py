"""A test plugin for fuzzing campaigns: cheap NumPy BN targets whose faults show only in some regimes.

Registered with `--plugin fuzz_bn_targets` (tests put this folder on PYTHONPATH). The kernels are the NumPy emulation
of tests/test_bounds.py, on every case it expresses:

* `fuzzbn.onepass` - float32 (float64 for float64 cases) with a one-pass variance E[x^2] - E[x]^2: deviates on
  mean offsets (precision, a NaN where the variance cancels below zero) and agrees elsewhere;
* `fuzzbn.epsout` - eps outside the square root: deviates where eps is not negligible against the variance;
* `fuzzbn.correct` - a correct float32 (float64) kernel.

With FUZZBN_SLEEP=S in the environment each execution first sleeps S seconds, so that a test can signal a campaign
while a batch runs.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests folder: the kernel emulation lives there

from test_bounds import Kernel, emulate  # noqa: E402

from bncheck.cases import Case  # noqa: E402
from bncheck.targets import register_framework, register_target  # noqa: E402
from bncheck.targets.base import Conventions, Framework, Target  # noqa: E402

FAMILY = "fuzzbn"


def probe() -> dict:
    """The fuzzing test framework runs on the CPU only."""
    return {"version": "0.0-test", "devices": ["cpu"]}


register_framework(Framework(FAMILY, ("numpy",), "nothing to install", "fuzz_bn_targets:probe"))


class _FuzzBN(Target):
    """An emulated kernel in float32, or float64 for float64 cases."""

    framework = FAMILY
    conventions = Conventions(momentum="new", running_var="unbiased")
    kernel: dict[str, Any] = {}

    def run(self, case: Case, inputs: Any) -> dict[str, np.ndarray]:
        """The emulated kernel's observation."""
        time.sleep(float(os.environ.get("FUZZBN_SLEEP", "0")))
        acc = np.float64 if case.dtype == "float64" else np.float32
        return emulate(case, inputs, Kernel(acc=acc, **self.kernel))


def _target(suffix: str, description: str, **kernel: Any) -> None:
    register_target(type(f"FuzzBN_{suffix}", (_FuzzBN,), {"family": f"{FAMILY}.{suffix}", "description": description,
                                                          "kernel": kernel}))


_target("onepass", "one-pass variance in float32 (float64 for float64 cases)", variance="one-pass")
_target("epsout", "eps outside the square root", eps_placement="outside")
_target("correct", "a correct float32 (float64) kernel")
