"""ONNX Runtime targets: one-node BatchNormalization models at opsets 15 (train and eval), 14 and 9 (eval).

The kernel path (model, session, run) is bncheck/targets/paths/onnx_bn.py, shared with the reproduction scripts.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .base import (Accumulation, Conventions, EpsPlacement, MomentumForm, ParameterPrecision, RunningVar,
                   VarianceAlgorithm)
from .kernel import PathTarget

_SOURCES = (
    "ONNX operator spec, docs/Operators.md#BatchNormalization (opsets 9, 14, 15): running_mean = input_mean * "
    "momentum + current_mean * (1 - momentum); current_var is the population variance (divides by N); "
    "epsilon and momentum are float attributes; defaults epsilon=1e-5, momentum=0.9",
    "onnxruntime/core/providers/cpu/nn/batch_norm.h: BatchNorm<T>::Compute (two-pass mean and squared "
    "deviations in T; running = input * momentum_ + saved * (1 - momentum_) with float momentum_ and epsilon_; "
    "y = x * (scale * inv_std) + (B - mean * scale * inv_std))",
    "onnxruntime/core/providers/cpu/nn/batch_norm.cc: CPU kernels registered for float and double only "
    "(opset 15: T, T1, T2 each float or each double)",
    "onnxruntime/core/optimizer/insert_cast_transformer.cc: float16 nodes without a float16 CPU kernel get "
    "Cast-to-float32 inputs and Cast-to-float16 outputs (seen as 'InsertedPrecisionFreeCast_*' nodes in the "
    "optimised model); there is no such fallback for bfloat16",
)

_NOTES = (
    "ONNX is channels-first only: channels_last cases are transposed to (N, C, ...) with NumPy before the "
    "run and Y is transposed back (exact). affine=false is fed as scale=1, B=0. float16 runs in float32 "
    "(ORT inserts Casts around the float32 kernel), so float16 results are float32 results rounded once. "
    "epsilon and momentum reach the kernel as float32 attributes, so float64 running statistics carry a "
    "relative error of about 1e-8 (float32(0.9) = 0.89999997615...). The kernel folds the normalisation into "
    "y = x * s + (B - mean * s), which cancels when |mean| >> std. Device 'cuda' runs with CPU fallback "
    "disabled; its running variance follows cuDNN and was not verified here."
)


def probe() -> dict[str, Any]:
    """Version and devices of the installed onnxruntime (imports it; runs in the worker)."""
    import onnx
    import onnxruntime as ort

    providers = list(ort.get_available_providers())
    devices = ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in providers else [])
    return {"version": ort.__version__, "devices": devices,
            "details": {"onnx": onnx.__version__, "providers": providers}}


def _conventions(modes: tuple[str, ...], param_dtypes: str) -> Conventions:
    """The conventions shared by the three families, with their modes and parameter typing."""
    return Conventions(
        momentum=MomentumForm.OLD,
        running_var=RunningVar.BIASED,
        eps_placement=EpsPlacement.INSIDE,
        default_eps=1e-5,
        default_momentum=0.9,
        variance_algorithm=VarianceAlgorithm.TWO_PASS,
        accumulation=Accumulation.FLOAT32_OR_WIDER,  # in T (float32, float64); float16 runs as float32 (inserted Casts)
        parameter_precision=ParameterPrecision.FLOAT32_ATTRIBUTES,
        dtypes=("float16", "float32", "float64"),
        param_dtypes=param_dtypes,
        ranks=(2, 3, 4, 5),
        layouts=("channels_first", "channels_last"),
        modes=modes,
        untracked=False,
        gradients=False,
        quantities=("y", "running_mean", "running_var"),
        notes=_NOTES,
        sources=_SOURCES,
    )


class _OrtBatchNorm(PathTarget):
    """A one-node ONNX BatchNormalization model run by an onnxruntime InferenceSession (paths/onnx_bn.py)."""

    framework: ClassVar[str] = "onnxruntime"
    devices: ClassVar[tuple[str, ...] | None] = ("cpu", "cuda")
    path_modules: ClassVar[tuple[str, ...]] = ("onnx_bn",)
    path_entry: ClassVar[str] = "onnx_bn"
    path_kind: ClassVar[str] = "graph"  # a hand-built one-node ONNX graph in a graph runtime
    opset: ClassVar[int] = 15

    def path_options(self) -> dict[str, Any]:
        """The opset of the model and the runtime (onnxruntime); sessions are cached per (opset, mode, rank,
        dtypes, eps, momentum, device): one session serves every shape of a rank."""
        return {"opset": self.opset, "runtime": "ort"}


class OrtOpset15(_OrtBatchNorm):
    """BatchNormalization opset 15: training_mode=1 for train phases, inference for eval."""

    family: ClassVar[str] = "ort.opset15"
    description: ClassVar[str] = (
        "ONNX BatchNormalization opset 15 in onnxruntime, training_mode=1 for training steps (Y and updated "
        "running statistics) and inference mode for evaluation."
    )
    opset: ClassVar[int] = 15
    # Opset 15 types X (T), scale/B (T1) and mean/var (T2) separately; ORT CPU accepts float16 X with float32
    # parameters (checked with onnxruntime 1.31), but not float64 X with float32 parameters (NOT_IMPLEMENTED).
    conventions: ClassVar[Conventions] = _conventions(("train", "eval"), "same-or-float32")


class OrtOpset14(_OrtBatchNorm):
    """BatchNormalization opset 14 in inference mode."""

    family: ClassVar[str] = "ort.opset14"
    description: ClassVar[str] = "ONNX BatchNormalization opset 14 in onnxruntime, inference mode only."
    opset: ClassVar[int] = 14
    # Opset 14 binds X, scale, B, mean and var to one type T (mixed types fail type inference).
    conventions: ClassVar[Conventions] = _conventions(("eval",), "same")


class OrtOpset9(_OrtBatchNorm):
    """BatchNormalization opset 9 in inference mode."""

    family: ClassVar[str] = "ort.opset9"
    description: ClassVar[str] = "ONNX BatchNormalization opset 9 in onnxruntime, inference mode only."
    opset: ClassVar[int] = 9
    # Opset 9 binds every input to one type T.
    conventions: ClassVar[Conventions] = _conventions(("eval",), "same")
