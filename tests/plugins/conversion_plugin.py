"""A test plugin: a NumPy 'source' BN path and two 'exported' paths made from it, one of which changes BN.

`conversion.source` computes BN correctly in float64 (eval mode); `conversion.exported` is declared an exported
path of it that drops eps (what a faulty exporter could do); `conversion.exported_ok` is an exported path that
computes the same as its source. Registered with `--plugin conversion_plugin`; no framework is needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bncheck.cases import Case
from bncheck.targets import register_framework, register_target
from bncheck.targets.base import Conventions, Framework, Target, flatten_channels

FRAMEWORK = "conversion-numpy"
CONVENTIONS = Conventions(momentum="new", running_var="unbiased", modes=("eval",), dtypes=("float64",),
                          param_dtypes="same", untracked=False, gradients=False, quantities=("y",))


def probe() -> dict[str, Any]:
    """The CPU only."""
    return {"version": "0.0-test", "devices": ["cpu"]}


register_framework(Framework(FRAMEWORK, ("numpy",), "nothing to install", "conversion_plugin:probe"))


def _eval_y(case: Case, inputs: dict[str, np.ndarray], eps: float) -> np.ndarray:
    x = flatten_channels(case, inputs["eval.x"])
    y = inputs["gamma"] * (x - inputs["running_mean"]) / np.sqrt(inputs["running_var"] + eps) + inputs["beta"]
    shape = inputs["eval.x"].shape
    if case.layout == "channels_first":
        return np.moveaxis(y.reshape(shape[0], *shape[2:], shape[1]), -1, 1)
    return y.reshape(shape)


@register_target
class Source(Target):
    """Correct float64 BN in eval mode."""

    family = "conversion.source"
    framework = FRAMEWORK
    description = "NumPy float64 BN, eval"
    conventions = CONVENTIONS

    def run(self, case: Case, inputs: Any) -> dict[str, np.ndarray]:
        return {"eval.y": _eval_y(case, inputs, case.eps)}


@register_target
class ExportedWithoutEps(Source):
    """An 'exported' model of conversion.source that lost eps."""

    family = "conversion.exported"
    description = "exported from conversion.source; drops eps"
    path_kind = "exported"
    source_family = "conversion.source"

    def run(self, case: Case, inputs: Any) -> dict[str, np.ndarray]:
        return {"eval.y": _eval_y(case, inputs, 0.0)}
