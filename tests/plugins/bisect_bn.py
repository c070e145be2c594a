"""A test plugin: a BN 'framework' whose kernel is the module `bisectbn_kernel`, found on PYTHONPATH (a git checkout
in the test), and whose reproduction script imports it as a real script imports torch, so that `git bisect run`
over the kernel's history can be tested end to end (tests/test_repro_bisect.py writes the kernel's versions)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bncheck.cases import Case
from bncheck.targets import register_framework, register_target
from bncheck.targets.base import Conventions, Framework, Target


def probe() -> dict[str, Any]:
    """The kernel's version (the checkout's), and the CPU."""
    import bisectbn_kernel

    return {"version": bisectbn_kernel.__version__, "devices": ["cpu"]}


register_framework(Framework("bisectbn", ("numpy",), "nothing to install", "bisect_bn:probe"))

REPRO_SOURCE = '''
import bisectbn_kernel  # the kernel under test, from the checkout on PYTHONPATH


def run(case, inputs):
    """Every phase of the case through bisectbn_kernel.batch_norm, as bncheck's adapter runs it."""
    return bisectbn_kernel.batch_norm(case, inputs, PHASES)
'''


@register_target
class BisectBN(Target):
    """bisectbn_kernel.batch_norm: float64 BN with the PyTorch running update."""

    family = "bisectbn.kernel"
    framework = "bisectbn"
    description = "bisectbn_kernel.batch_norm (a git checkout on PYTHONPATH)"
    conventions = Conventions(momentum="new", running_var="unbiased", dtypes=("float64",), param_dtypes="same",
                              quantities=("y", "running_mean", "running_var"))

    def run(self, case: Case, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The kernel's observation, imported in the worker."""
        import bisectbn_kernel

        return bisectbn_kernel.batch_norm(case.to_dict(), inputs, list(case.phases))

    def repro_source(self) -> str:
        """The script imports the kernel from PYTHONPATH, like a framework."""
        return REPRO_SOURCE
