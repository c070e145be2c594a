"""ONNX's reference evaluator (onnx.reference.ReferenceEvaluator) on the one-node BatchNormalization models of the
ONNX Runtime targets: opsets 15 and 14 in training and inference mode, opset 9 in inference mode.

What converter authors test against. The kernel path is bncheck/targets/paths/onnx_bn.py with runtime='reference'
(the same model builder as ort.opset*); onnx is imported only inside `probe` and that module's functions, in the
'onnx' worker, which needs the onnx distribution alone (not onnxruntime).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..cases import Case
from .base import (Accumulation, Conventions, Elementwise, ParameterPrecision, StatisticsDtype, Summation,
                   VarianceAlgorithm)
from .kernel import PathTarget

_REF = "onnx/reference/ops/op_batch_normalization.py (onnx 1.23)"

_SOURCES = (
    f"{_REF}: _batchnorm_test_mode: y = s * (x - mean) / np.sqrt(var + epsilon) + bias, cast to x.dtype (NumPy "
    "arithmetic in the promoted dtype of the operands)",
    f"{_REF}: _batchnorm_training_mode: saved_mean = x.mean(axis), saved_var = x.var(axis) (two-pass, biased, "
    "NumPy's pairwise sums; float16 data reduced with float32 intermediates); output_mean = mean * momentum + "
    "saved_mean * (1 - momentum), likewise the variance; y normalised with the batch statistics; every output "
    "cast to x.dtype",
    f"{_REF}: BatchNormalization_14 (opsets 14 and 15): training_mode=0 is the test mode, otherwise the training "
    "mode, returning (Y, running_mean, running_var)",
    f"{_REF}: BatchNormalization_9: when the momentum attribute is present it computes batch statistics and "
    "normalises with the BLENDED statistics mean * momentum + batch * (1 - momentum), even though opset 9 "
    "inference is specified as normalising with the given mean and var; it returns Y alone, so opset 9's "
    "training outputs are not produced",
    "ONNX operator spec, docs/Operators.md#BatchNormalization (opsets 9, 14, 15): epsilon and momentum are float "
    "attributes (defaults 1e-5, 0.9); current_var is the population variance",
    "experiment (tests/test_onnx_reference_targets.py): float32 and float64 outputs against the float64 "
    "reference under both running-variance conventions; float64 running statistics off by ~1e-8 (float32 "
    "momentum); opset 9 inference y matches the blended-statistics formula",
)

_NOTES = (
    "The one-node model of ort.opset* (same builder: symbolic N, C and spatial dimensions, IR 8, momentum = "
    "1 - case momentum, epsilon = case eps), evaluated by NumPy code in onnx.reference instead of a runtime. "
    "ONNX is channels-first: channels_last cases are transposed with NumPy before the run and Y back (exact); "
    "affine=false is fed as scale=1, B=0. epsilon and momentum reach the evaluator as the float32 values of the "
    "attributes, so float64 running statistics carry a relative error of about 1e-8. In training mode the "
    "running statistics are cast to the dtype of X: with float16 X and float32 parameters (opset 15) they are "
    "rounded to float16. float16 data: mean and variance with float32 intermediates, then rounded to float16; "
    "the normalisation runs in NumPy float16 arithmetic when every operand is float16. Opset 9: the evaluator "
    "normalises with blended statistics whenever the model carries a momentum attribute (bncheck's models, and "
    "exporters', always do): an evaluator deviation from the opset-9 specification, left visible."
)


def probe() -> dict[str, Any]:
    """onnx's version (imports onnx and onnx.reference; runs in the worker): the evaluator runs on the CPU."""
    import numpy
    import onnx
    import onnx.reference  # noqa: F401 - the evaluator must import

    return {"version": onnx.__version__, "devices": ["cpu"], "details": {"numpy": numpy.__version__}}


def _conventions(modes: tuple[str, ...], param_dtypes: str) -> Conventions:
    """The evaluator's conventions at an opset, with its modes and parameter typing."""
    return Conventions(
        momentum="old",
        running_var="biased",
        eps_placement="inside_sqrt",
        default_eps=1e-5,
        default_momentum=0.9,
        variance_algorithm=VarianceAlgorithm.TWO_PASS,
        summation=Summation.PAIRWISE,
        accumulation=Accumulation.FLOAT32_OR_WIDER,
        statistics_dtype=StatisticsDtype.INPUT,
        elementwise=Elementwise.INPUT_DTYPE,
        parameter_precision=ParameterPrecision.FLOAT32_ATTRIBUTES,
        dtypes=("float16", "float32", "float64"),
        param_dtypes=param_dtypes,
        ranks=(2, 3, 4, 5),
        layouts=("channels_first", "channels_last"),
        modes=modes,
        untracked=False,
        gradients=False,
        quantities=("y", "running_mean", "running_var"),
        notes=(
            'Variance: two-pass (NumPy x.mean, x.var: pairwise summation). Arithmetic: NumPy in the dtype of the '
            'operands (promoted); float16 reductions use float32 intermediates and are rounded to float16; the '
            'normalisation of all-float16 cases runs in float16 arithmetic. Parameters: epsilon and momentum are '
            'float32 attributes. '
        ) + _NOTES,
        sources=_SOURCES,
    )


class _OnnxReference(PathTarget):
    """A one-node BatchNormalization model evaluated by onnx.reference.ReferenceEvaluator (paths/onnx_bn.py)."""

    framework: ClassVar[str] = "onnx"
    devices: ClassVar[tuple[str, ...] | None] = ("cpu",)
    path_modules: ClassVar[tuple[str, ...]] = ("onnx_bn",)
    path_entry: ClassVar[str] = "onnx_bn"
    path_kind: ClassVar[str] = "reference"
    opset: ClassVar[int] = 15

    def path_options(self) -> dict[str, Any]:
        """The opset of the model; the runtime is the reference evaluator (one evaluator per model, cached)."""
        return {"opset": self.opset, "runtime": "reference"}


class OnnxReferenceOpset15(_OnnxReference):
    """Opset 15: training_mode=1 for training steps, inference for eval; X, scale and mean typed separately."""

    family: ClassVar[str] = "onnx.reference.opset15"
    description: ClassVar[str] = ("ONNX BatchNormalization opset 15 in onnx.reference.ReferenceEvaluator, "
                                  "training_mode=1 for training steps and inference mode for evaluation")
    conventions: ClassVar[Conventions] = _conventions(("train", "eval"), "same-or-float32")


class OnnxReferenceOpset14(_OnnxReference):
    """Opset 14 (training_mode introduced; one type T for every input)."""

    family: ClassVar[str] = "onnx.reference.opset14"
    description: ClassVar[str] = ("ONNX BatchNormalization opset 14 in onnx.reference.ReferenceEvaluator, "
                                  "training_mode=1 for training steps and inference mode for evaluation")
    opset: ClassVar[int] = 14
    conventions: ClassVar[Conventions] = _conventions(("train", "eval"), "same")


class OnnxReferenceOpset9(_OnnxReference):
    """Opset 9 in inference mode (the evaluator's BatchNormalization_9 returns Y alone)."""

    family: ClassVar[str] = "onnx.reference.opset9"
    description: ClassVar[str] = "ONNX BatchNormalization opset 9 in onnx.reference.ReferenceEvaluator, inference"
    opset: ClassVar[int] = 9
    conventions: ClassVar[Conventions] = _conventions(("eval",), "same")

    def supports(self, case: Case) -> str | None:
        """Inference only: opset 9 has no training_mode, and the evaluator's BatchNormalization_9 returns Y alone
        (no running statistics), so a training step cannot be expressed."""
        if any(p != "eval" for p in case.phases):
            return ("no train-mode path: opset 9 has no training_mode and onnx.reference's BatchNormalization_9 "
                    "returns Y alone (no running statistics)")
        return super().supports(case)
