"""A test plugin: deliberately faulty NumPy BN targets, one per diagnosis hypothesis, plus correct ones.

Registered with `--plugin faulty_bn_targets` (tests put this folder on PYTHONPATH). Each target is a small
wrapper around the NumPy kernel emulation of tests/test_bounds.py (a correct float32 kernel by default) that
perturbs the computation in one known way: the running variance with the other Bessel factor, momentum as
1 - m, eps outside the root or ignored, the unbiased variance in the normalisation, float32 eps and momentum,
batch statistics in eval, running or blended statistics in training, a one-pass variance, float32 arithmetic
for float64 data, float16 arithmetic, and one-pass variance combined with either; eps inside the root where
the record says outside, sequential sums, flushed subnormals, half-precision moments, half-precision element-wise
arithmetic, a clamped one-pass variance on a constant channel, an autodiff backward through invstd^3; and
correct float32 kernels on cases outside float32's (or the declared float16's) range. `faultybn.correct32` and
`faultybn.correct64` compute correctly in float32 and float64.

Every faulty target runs only the case of faulty_bn_cases.FAULTS written for it (any other case is
unsupported), so the test can demand exactly one finding per target, naming its hypothesis.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests folder: the kernel emulation lives there

from faulty_bn_cases import BENIGN, FAMILY, FAULTS  # noqa: E402
from test_bounds import Kernel, emulate  # noqa: E402
from test_diagnose import nan_free_y, statistics_normalised  # noqa: E402

from bncheck.cases import Case, case_from_dict  # noqa: E402
from bncheck.targets import register_framework, register_target  # noqa: E402
from bncheck.targets.base import Conventions, Framework, Target  # noqa: E402

DECLARED = Conventions(momentum="new", running_var="unbiased")


def probe() -> dict:
    """The faulty BN framework runs on the CPU only."""
    return {"version": "0.0-test", "devices": ["cpu"]}


register_framework(Framework(FAMILY, ("numpy",), "nothing to install", "faulty_bn_targets:probe"))

# hypothesis -> (the perturbed kernel, or an observation function (case, inputs) -> quantities; the conventions record)
KERNELS: dict[str, tuple[Kernel | Callable[..., dict[str, np.ndarray]], Conventions]] = {
    "running-var-biased": (Kernel(running_var="biased"), DECLARED),
    "running-var-unbiased": (Kernel(running_var="unbiased"), Conventions(momentum="new", running_var="biased")),
    "momentum-flipped": (Kernel(momentum="flipped"), DECLARED),
    "eps-outside-sqrt": (Kernel(eps_placement="outside"), DECLARED),
    "eps-ignored": (Kernel(eps_placement="ignored"), DECLARED),
    "unbiased-normalisation": (Kernel(norm_var="unbiased"), DECLARED),
    # the emulation's Bessel factor is n / max(n - 1, 1): at one value per channel it is the clamped kernel
    "bessel-clamped": (Kernel(), Conventions(momentum="new", running_var="unbiased", bessel="max(n-1,1)")),
    "params-float32": (Kernel(acc=np.float64, float32_eps=True, float32_momentum=True),
                       Conventions(momentum="old", running_var="unbiased", parameter_precision="float32-attributes")),
    "eval-uses-batch-stats": (Kernel(eval_stats="batch"), DECLARED),
    "train-uses-running-stats": (statistics_normalised("running"), DECLARED),
    "blended-stats": (statistics_normalised("blended"), DECLARED),
    "one-pass-variance": (Kernel(variance="one-pass"), DECLARED),
    "float32-computation": (Kernel(acc=np.float32), DECLARED),
    "input-dtype-accumulation": (Kernel(acc=np.float16), DECLARED),
    "one-pass-variance+float32-computation": (Kernel(acc=np.float32, variance="one-pass"), DECLARED),
    "one-pass-variance+input-dtype-accumulation": (Kernel(acc=np.float16, variance="one-pass"), DECLARED),
    "eps-inside-sqrt": (Kernel(), Conventions(momentum="new", running_var="unbiased", eps_placement="outside_sqrt")),
    "sequential-accumulation": (Kernel(summation="sequential"), DECLARED),
    "subnormals-flushed": (Kernel(ftz=True), DECLARED),
    "half-precision-statistics": (Kernel(stats_dtype=np.float16), DECLARED),
    "elementwise-input-dtype": (Kernel(ew_dtype=np.float16), DECLARED),
    "constant-channel-cancellation": (Kernel(variance="one-pass-clamped", reciprocal=True), DECLARED),
    "invstd-cubed-overflow": (Kernel(dx_form="autodiff"), DECLARED),
    "variance-overflow": (Kernel(), DECLARED),
    "sum-of-squares-overflow": (Kernel(), DECLARED),
    "sum-overflow": (Kernel(), DECLARED),
    "variance-underflow": (Kernel(stats_dtype=np.float16), Conventions(momentum="new", running_var="unbiased",
                                                                     statistics_dtype="input-dtype")),
    "invstd-overflow": (nan_free_y, DECLARED),
}


def _case_ids(dicts: list[dict[str, Any]]) -> frozenset[str]:
    return frozenset(case_from_dict(d).case_id for d in dicts)


class _NumpyBN(Target):
    """A NumPy BN kernel emulation that runs only its own cases."""

    framework = FAMILY
    observe: Kernel | Callable[..., dict[str, np.ndarray]] = Kernel()
    case_ids: frozenset[str] = frozenset()

    def supports(self, case: Case) -> str | None:
        """Only the cases written for this target."""
        if case.case_id not in self.case_ids:
            return "not one of this self-validation target's cases"
        return super().supports(case)

    def run(self, case: Case, inputs: Any) -> dict[str, np.ndarray]:
        """The emulated kernel's observation (float64 arrays rounded to the dtypes a real kernel returns)."""
        observe = type(self).observe
        return emulate(case, inputs, observe) if isinstance(observe, Kernel) else observe(case, inputs)


def _target(suffix: str, observe: Kernel | Callable[..., dict[str, np.ndarray]], conventions: Conventions,
            cases: list[dict[str, Any]], description: str) -> type[Target]:
    name = "FaultyBN_" + "".join(c if c.isalnum() else "_" for c in suffix)
    cls = type(name, (_NumpyBN,), {
        "family": f"{FAMILY}.{suffix}", "description": description, "conventions": conventions,
        "observe": staticmethod(observe) if not isinstance(observe, Kernel) else observe, "case_ids": _case_ids(cases),
    })
    return register_target(cls)


for _hyp, _case, _first, _cls in FAULTS:
    _observe, _conv = KERNELS[_hyp]
    _target(_hyp, _observe, _conv, [_case], f"NumPy BN with an injected fault: {_hyp}")

_target("correct32", Kernel(), DECLARED, BENIGN["correct32"], "correct NumPy BN computed in float32")
_target("correct64", Kernel(acc=np.float64), DECLARED, BENIGN["correct64"], "correct NumPy BN computed in float64")
