"""A test plugin: NumPy BN kernels that are all correct (within their bounds) but not equally accurate.

Registered with `--plugin peer_bn_targets` (tests put this folder on PYTHONPATH). The kernels are the NumPy
emulation of tests/test_bounds.py:

* `peerbn.pairwise` - float32 arithmetic (float64 for float64 cases), pairwise sums;
* `peerbn.fold` - the same with the affine transform folded into y = x * a + b;
* `peerbn.wide` - float64 arithmetic for every case, outputs rounded to the case dtypes;
* `peerbn.sequential` - float32 arithmetic with one accumulator per channel (sequential sums): within the
  bound, but over a million elements per channel hundreds of times less accurate than the others;
* `peerbn.onepass` - float32 one-pass variance, run only on PEER_NAN_CASE, where the variance cancels to
  a negative value and the output is NaN (a critical finding whatever its class).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests folder: the kernel emulation lives there

from test_bounds import Kernel, emulate  # noqa: E402

from bncheck.cases import Case, case_from_dict  # noqa: E402
from bncheck.targets import register_framework, register_target  # noqa: E402
from bncheck.targets.base import Conventions, Framework, Target  # noqa: E402

FAMILY = "peerbn"
# many elements per channel: the hazards suite's many-elements shape, float32
MANY = {"shape": [16, 2, 256, 256], "regime": {"name": "many-elements-offset", "x": {"dist": "normal", "loc": 3.0, "scale": 1.0}},
        "seed": 107}
# a float32 one-pass kernel at a mean offset of 3e3: some channels' variance cancels below zero (NaN output)
PEER_NAN_CASE = {"shape": [8, 6, 6, 6], "grad": True, "regime": {"name": "offset3e3", "x": {"dist": "normal", "loc": 3e3, "scale": 1.0}}}
# float32 values of spread 2e19: the exact variance (4e38) exceeds float32's maximum (3.4e38)
VARIANCE_OVERFLOW_CASE = {"shape": [8, 6, 6, 6], "grad": True, "regime": {"name": "spread2e19", "x": {"dist": "normal", "loc": 0.0, "scale": 2e19}}}
DECLARED = Conventions(momentum="new", running_var="unbiased")
WIDE = Conventions(momentum="new", running_var="unbiased", accumulation="float64")


def probe() -> dict:
    """The peer BN framework runs on the CPU only."""
    return {"version": "0.0-test", "devices": ["cpu"]}


register_framework(Framework(FAMILY, ("numpy",), "nothing to install", "peer_bn_targets:probe"))


class _PeerBN(Target):
    """An emulated kernel; `acc` None: float32, or float64 for float64 cases."""

    framework = FAMILY
    conventions = DECLARED
    kernel: dict[str, Any] = {}
    acc: Any = None
    only: str | None = None  # the one case id it runs, if any

    def supports(self, case: Case) -> str | None:
        """Every case the emulation expresses (or only its own)."""
        if self.only is not None and case.case_id != self.only:
            return "not this target's case"
        return super().supports(case)

    def run(self, case: Case, inputs: Any) -> dict[str, np.ndarray]:
        """The emulated kernel's observation."""
        acc = self.acc or (np.float64 if case.dtype == "float64" else np.float32)
        return emulate(case, inputs, Kernel(acc=acc, **self.kernel))


def _target(suffix: str, description: str, **attrs: Any) -> None:
    register_target(type(f"PeerBN_{suffix}", (_PeerBN,), {"family": f"{FAMILY}.{suffix}", "description": description, **attrs}))


_target("pairwise", "float32 (float64 for float64 cases), pairwise sums")
_target("fold", "float32 (float64 for float64 cases), pairwise sums, folded affine", kernel={"fold": True})
_target("wide", "float64 arithmetic for every case", acc=np.float64, conventions=WIDE)
_target("sequential", "float32 (float64 for float64 cases), one accumulator per channel", kernel={"summation": "sequential"})
_target("onepass", "float32 one-pass variance, on one case", kernel={"variance": "one-pass"},
        only=case_from_dict(PEER_NAN_CASE).case_id)
