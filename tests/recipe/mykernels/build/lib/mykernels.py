"""A BN kernel in NumPy registered with bncheck through its entry point; MYKERNELS_REGRESS=1 breaks it on purpose.

The kernel is what a framework repository would ship: float32 batch statistics in two passes, the PyTorch running
update. The regression puts eps outside the square root, the bug CRADLE found in a real framework.
"""

from __future__ import annotations

import os

import numpy as np

__version__ = "1.0"


def probe() -> dict:
    """The worker's probe: this package runs on the CPU."""
    return {"version": __version__, "devices": ["cpu"]}


def batch_norm(case: dict, inputs: dict) -> dict:
    """Every phase of a case: y, and the running statistics after each training step."""
    regress = os.environ.get("MYKERNELS_REGRESS") == "1"
    axis = len(case["shape"]) - 1 if case["layout"] == "channels_last" else 1
    C = case["shape"][1]
    eps, m = case["eps"], case["momentum"]
    gamma = inputs["gamma"].astype(np.float64) if case["affine"] else np.ones(C)
    beta = inputs["beta"].astype(np.float64) if case["affine"] else np.zeros(C)
    rm = inputs["running_mean"].astype(np.float64) if case["track_running_stats"] else None
    rv = inputs["running_var"].astype(np.float64) if case["track_running_stats"] else None
    phases = ["eval"] if case["mode"] == "eval" else [f"train{i}" for i in range(case["steps"])] + (
        ["eval"] if case["mode"] == "trajectory" else [])
    out = {}
    for phase in phases:
        x = np.moveaxis(inputs[f"{phase}.x"].astype(np.float64), axis, -1)
        rows = x.reshape(-1, C)
        n = rows.shape[0]
        if phase != "eval" or rm is None:
            mean = rows.mean(0)
            var = ((rows - mean) ** 2).mean(0)
        else:
            mean, var = rm, rv
        scale = 1 / (np.sqrt(var) + eps) if regress else 1 / np.sqrt(var + eps)
        y = (x - mean) * scale * gamma + beta
        out[f"{phase}.y"] = np.moveaxis(y.astype(case["dtype"]).astype(np.float64), -1, axis)
        if phase != "eval" and rm is not None:
            rm = (1 - m) * rm + m * mean
            rv = (1 - m) * rv + m * var * n / max(n - 1, 1)
            out[f"{phase}.running_mean"] = rm.astype(case["param_dtype"]).astype(np.float64)
            out[f"{phase}.running_var"] = rv.astype(case["param_dtype"]).astype(np.float64)
    return out


def register() -> None:
    """The bncheck.targets entry point: the worker group and the target."""
    from bncheck.targets import register_framework, register_target
    from bncheck.targets.base import Conventions, Framework, Target

    register_framework(Framework("mykernels", ("mykernels",), "pip install mykernels", "mykernels:probe"))

    @register_target
    class MyKernelsBN(Target):
        """mykernels.batch_norm."""

        family = "mykernels.bn"
        framework = "mykernels"
        description = "mykernels.batch_norm (NumPy, float64 arithmetic, outputs rounded to the case dtypes)"
        conventions = Conventions(momentum="new", running_var="unbiased", dtypes=("float32", "float64"),
                                  param_dtypes="same", quantities=("y", "running_mean", "running_var"))

        def run(self, case, inputs):  # noqa: ANN001, ANN201
            """Run the kernel on the case."""
            return batch_norm(case.to_dict(), inputs)
