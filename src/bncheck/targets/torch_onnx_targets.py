"""The conversion path torch.nn -> torch.onnx.export -> ONNX Runtime: a BatchNormNd module exported with torch's
default (dynamo) exporter and run by an onnxruntime InferenceSession, as models are deployed.

Its worker group is 'torch-onnx': the path needs torch, onnxscript (the exporter's translator) and onnxruntime in
one process. It is not the torch group, which must stay usable without onnxruntime and onnxscript (and would run
the exporter's slow first import in the lane of the eager torch targets), nor the onnxruntime group, which imports
no torch. The kernel path embeds bncheck/targets/paths/onnx_bn.py (the runtime) and paths/torch_onnx_bn.py (the
export).
"""

from __future__ import annotations

from typing import Any, ClassVar

from .base import (Accumulation, Conventions, ParameterPrecision, Refusal, RefusalCondition, VarianceAlgorithm)
from .kernel import PathTarget

_SOURCES = (
    "torch/onnx/__init__.py (torch 2.13): export(..., dynamo=True) is the default; the 'training' argument is "
    "documented for the TorchScript exporter (dynamo=False) only",
    "experiment (2026-12-03, torch 2.13.0, onnxscript 0.7.2): exporting BatchNorm2d in training mode, with "
    "training=TrainingMode.TRAINING or PRESERVE, writes the same inference-mode BatchNormalization node as in eval "
    "mode (no training_mode attribute, one output; torch.export's graph still has aten.batch_norm(training=True)); "
    "the model is opset 20, IR 10, epsilon and momentum float attributes (epsilon 9.999999747378752e-06 for 1e-5); "
    "parameters and running statistics are initializers named weight, bias, running_mean, running_var",
    "experiment (same): a module without running statistics exports a node that normalises with batch statistics "
    "(eval y matches the batch-statistics reference at float32 rounding); bfloat16: ORT has no CPU kernel for the "
    "exported BatchNormalization(15) node (NOT_IMPLEMENTED)",
    "onnxruntime/core/providers/cpu/nn/batch_norm.h: BatchNorm<T>::Compute (see ort.opset15): inference y = "
    "x * (scale * inv_std) + (B - mean * scale * inv_std) in T; float16 is cast to float32 by ORT",
    "https://pytorch.org/docs/stable/onnx_export.html",
)

_NOTES = (
    "Per phase: the torch.nn.BatchNormNd module (case parameters, eps, momentum, dtype) in the phase's mode and "
    "in the state its earlier training steps left it (run eagerly in torch, torch's own running update with the "
    "unbiased variance) is exported with torch.onnx.export(dynamo=True), every dimension but C dynamic, and run in "
    "onnxruntime (CPU, default optimisations); Y is the only output. One export per (rank, C, dtypes, affine, "
    "tracking, mode, eps, momentum) is kept as a template and the module's current weight, bias, running_mean and "
    "running_var are written into its initializers by name (an export whose initializers lack one of them is "
    "an error, not a substitution). Training phases: the exporter writes an INFERENCE node for a module in training "
    "mode, so the exported model normalises with the running statistics where torch normalises with batch "
    "statistics; that deviation is what a user deploying a model exported in training mode gets, and is left "
    "visible. Running statistics and gradients are not observed (the exported model has neither). ONNX is "
    "channels-first: channels_last cases are transposed with NumPy (exact)."
)

CONVENTIONS = Conventions(
    momentum="new",  # the torch module's (it trains); the exported inference model has no running update
    running_var="unbiased",  # torch's running update feeds the statistics a later phase exports
    eps_placement="inside_sqrt",
    default_eps=1e-5,
    default_momentum=0.1,
    variance_algorithm=VarianceAlgorithm.TWO_PASS,
    accumulation=Accumulation.FLOAT32_OR_WIDER,
    # torch's own refusals, run (measured 2026-12-03: torch.export traces the module and wraps torch's ValueError, whose message keeps torch's text)
    refusals=(
        Refusal(RefusalCondition.ONE_VALUE_PER_CHANNEL_TRAINING, "TorchExportError", "Expected more than 1 value per channel"),
        Refusal(RefusalCondition.EPS_ZERO_TRAINING, "TorchExportError", "eps must be positive"),
    ),
    parameter_precision=ParameterPrecision.FLOAT32_ATTRIBUTES,
    dtypes=("float16", "bfloat16", "float32", "float64"),
    param_dtypes="same-or-float32",
    ranks=(2, 3, 4, 5),
    layouts=("channels_first", "channels_last"),
    modes=("train", "eval"),
    untracked=True,
    gradients=False,
    quantities=("y",),
    notes=(
        "Variance: none in the exported model (inference node: running statistics); torch's two-pass CPU "
        "kernel for the running statistics of training steps. Arithmetic: ONNX Runtime's kernel in the input "
        'dtype (float32, float64); float16 cast to float32 by ORT. Parameters: epsilon is a float32 attribute'
        ' of the exported node. '
    ) + _NOTES,
    sources=_SOURCES,
)


def probe() -> dict[str, Any]:
    """torch, onnxscript, onnx and onnxruntime versions (imports them; runs in the worker): CPU only."""
    import onnx
    import onnxruntime
    import onnxscript
    import torch

    return {"version": torch.__version__, "devices": ["cpu"],
            "details": {"onnxscript": onnxscript.__version__, "onnx": onnx.__version__,
                        "onnxruntime": onnxruntime.__version__}}


class TorchOnnxExport(PathTarget):
    """torch.nn.BatchNormNd -> torch.onnx.export (dynamo) -> onnxruntime InferenceSession on the CPU."""

    family: ClassVar[str] = "torch.onnx.export+ort"
    framework: ClassVar[str] = "torch-onnx"
    description: ClassVar[str] = ("torch.nn.BatchNorm1d/2d/3d exported with torch.onnx.export (dynamo exporter) "
                                  "and run in onnxruntime, per phase in the module's mode and state")
    conventions: ClassVar[Conventions] = CONVENTIONS
    devices: ClassVar[tuple[str, ...] | None] = ("cpu",)
    path_kind: ClassVar[str] = "exported"
    source_family: ClassVar[str | None] = "torch.nn"
    path_modules: ClassVar[tuple[str, ...]] = ("onnx_bn", "torch_onnx_bn")
    path_entry: ClassVar[str] = "torch_onnx_bn"

    def path_functions(self) -> dict[str, str]:
        """The runtime: onnx_bn.onnx_run_model (ONNX Runtime)."""
        return {"run_model": "onnx_run_model"}

