"""LiteRT targets: the tf.keras BatchNormalization model converted to TFLite and run by the ai_edge_litert
Interpreter, float32/float16 as converted, and float32 with float16-quantized weights.

Why ai_edge_litert and not tf.lite.Interpreter: TensorFlow 2.21 still ships tf.lite.Interpreter, but marks it
deprecated ('scheduled for deletion in TF 2.20. Please use the LiteRT interpreter from the ai_edge_litert package',
tensorflow/lite/python/interpreter.py), and ai_edge_litert is the runtime deployed models get; the converter is
still TensorFlow's (tf.lite.TFLiteConverter). Both need TensorFlow and Keras 3 in the process, so the group
("litert") is a TensorFlow worker of its own with KERAS_BACKEND=tensorflow, which a missing ai-edge-litert leaves
unavailable without touching the tensorflow group. The kernel path is bncheck/targets/paths/litert_bn.py after
keras_bn.py (the tf.keras path's model building, shared with the reproduction scripts).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, ClassVar

from ..cases import Case
from .base import (Accumulation, Conventions, ParameterPrecision)
from .kernel import PathTarget

_LITE = "tensorflow/lite/python/lite.py (TF 2.21)"

_SOURCES = (
    f"{_LITE}: TFLiteConverter.from_keras_model (the Keras 3 model is exported as a SavedModel and converted); "
    "optimizations=[Optimize.DEFAULT] with target_spec.supported_types=[tf.float16] is float16 post-training "
    "quantization (constants stored as float16)",
    "https://ai.google.dev/edge/litert/models/post_training_float16_quant (float16 weights dequantized to "
    "float32 on a CPU)",
    "ai_edge_litert/interpreter.py (ai-edge-litert 2.3.0): Interpreter(model_content, num_threads); the default "
    "op resolver applies the XNNPACK delegate ('Created TensorFlow Lite XNNPACK delegate for CPU')",
    "keras/src/layers/normalization/batch_normalization.py (keras 3.15): the layer in inference calls "
    "ops.batch_normalization -> tf.nn.batch_normalization (inv = rsqrt(var + eps) * gamma; y = x * inv + "
    "(beta - mean * inv))",
)

_NOTES = (
    "Model: keras.Input(batch_shape = the case's shape, dtype) -> keras.layers.BatchNormalization built by the "
    "tf.keras path's own code (keras_bn.keras_layer: axis, epsilon, center/scale, dtype policy), its gamma, "
    "beta, moving_mean and moving_variance assigned from the case; converted by "
    "tf.lite.TFLiteConverter.from_keras_model and run by ai_edge_litert's Interpreter (one thread, default "
    "XNNPACK delegate). Measured: the converter folds the layer into two per-channel constants, MUL by "
    "rsqrt(var + eps) * gamma and ADD of beta - mean * that, computed at conversion in float32 (the ops left are "
    "MUL, ADD and, for a float16 model, CAST in and out). Inference only: evaluation with the moving statistics; "
    "no training mode, no gradients. The converter refuses bfloat16 input ('Unsupported TensorFlow type "
    "bfloat16') and float64 (MUL/ADD in float64 need TF Select ops) - measured, refused here in supports(). "
    "The converter bakes the parameters in, so a converted model is cached per (shape, layout, dtypes, eps, "
    "affine, parameter bytes); cases sharing parameters (same seed and channels) reuse it."
)

LITERT_CONVENTIONS = Conventions(
    momentum="old",  # the source layer's (Keras) form; no running update is observed
    running_var="biased",  # placeholder of the source layer: inference reports no running statistics
    eps_placement="inside_sqrt",
    default_eps=1e-3,  # the Keras layer's
    default_momentum=0.99,
    accumulation=Accumulation.FLOAT32_OR_WIDER,
    parameter_precision=ParameterPrecision.FLOAT32_ATTRIBUTES,
    dtypes=("float16", "float32"),
    param_dtypes="same-or-float32",
    ranks=(2, 3, 4, 5),
    layouts=("channels_first", "channels_last"),
    modes=("eval",),
    untracked=False,
    gradients=False,
    quantities=("y",),
    notes=(
        'Variance: none measured: inference only, with the given moving variance. Arithmetic: float32 '
        'constants; a float16 model casts its input to float32, computes MUL and ADD in float32 and casts y '
        'back to float16. Parameters: eps and the parameters enter the folded constants, computed in float32 '
        'by the converter (float16 parameters are widened exactly first). '
    ) + _NOTES + " float32 and float16 cases convert a model of the case's dtype (policy 'mixed_float16' "
          "for float16 input with float32 parameters, as the tf.keras path builds it).",
    sources=_SOURCES + (
        "experiment (tests/test_litert_targets.py): float32 and float16 evaluation pass under these conventions "
        "and give exactly the bits of tf.keras in the same process; bfloat16 and float64 models fail to convert",
    ),
)

LITERT_FP16_CONVENTIONS = replace(
    LITERT_CONVENTIONS,
    accumulation=Accumulation.FLOAT32_OR_WIDER,
    parameter_precision=ParameterPrecision.FLOAT32_ATTRIBUTES,
    dtypes=("float16",),
    notes=(
        'Arithmetic: float32: the float16 constants are dequantized to float32 at load and MUL/ADD run in '
        'float32 on float32 input; y is float32. Parameters: the folded constants (rsqrt(var + eps) * gamma '
        'and beta - mean * that, float32 at conversion) are stored rounded to float16. '
    ) + _NOTES + " float16 weights: a float32 model of the case's parameters converted with float16 "
          "post-training quantization, which keeps float32 input and output; it is judged on float16 cases (the "
          "precision it keeps: the constants are float16), the half input values fed exactly as float32 and y "
          "returned in float32. Measured: with float16 parameters it passes (y ratio 0.26); with float32 "
          "parameters, whose bound has no room for parameters rounded to float16, y deviates (ratio 79.8) where "
          "the as-converted mixed_float16 model passes. On float32 data the same model is far outside float32 "
          "bounds (the constants carry float16 rounding: max |y - float32 model| above 1e-4), so float32 cases "
          "are not claimed.",
    sources=_SOURCES + (
        "experiment (tests/test_litert_targets.py): float16 evaluation with float16 parameters passes, with "
        "float32 parameters deviates; on float32 input it differs from the float32 model by more than 1e-4",
    ),
)


def probe() -> dict[str, Any]:
    """TensorFlow, Keras and ai_edge_litert versions (imports them; runs in the litert worker)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from importlib.metadata import version

    import ai_edge_litert  # noqa: F401 - the interpreter's package must import
    import keras
    import tensorflow as tf

    details = {"tensorflow": tf.__version__, "keras": keras.__version__, "keras_backend": keras.backend.backend()}
    return {"version": version("ai-edge-litert"), "devices": ["cpu"], "details": details}


class _LiteRtBase(PathTarget):
    """The tf.keras BN model converted to TFLite and run by LiteRT (paths/keras_bn.py then paths/litert_bn.py)."""

    framework: ClassVar[str] = "litert"
    devices: ClassVar[tuple[str, ...] | None] = ("cpu",)
    path_kind: ClassVar[str] = "converted"
    source_family: ClassVar[str | None] = "tf.keras"
    path_modules: ClassVar[tuple[str, ...]] = ("keras_bn", "litert_bn")
    path_entry: ClassVar[str] = "litert_bn"
    float16_weights: ClassVar[bool] = False

    def path_options(self) -> dict[str, Any]:
        """Whether the float32 model is converted with float16 weights."""
        return {"float16_weights": self.float16_weights}

    def path_functions(self) -> dict[str, str]:
        """The source path's model building (keras_bn.py)."""
        return {"keras_import": "keras_import", "keras_layer": "keras_layer", "keras_tensor": "keras_tensor"}

    def supports(self, case: Case) -> str | None:
        """The converter's refusals (measured) and inference only, then the generic checks."""
        if case.dtype in ("bfloat16", "float64"):
            return (f"the TFLite converter does not convert a {case.dtype} Keras model (measured: "
                    f"{'unsupported input type bfloat16' if case.dtype == 'bfloat16' else 'float64 MUL/ADD need TF Select ops'})")
        if case.param_dtype in ("bfloat16", "float64") and case.param_dtype != case.dtype:
            return f"{case.param_dtype} parameters are not converted"
        if case.mode != "eval":
            return "a converted model runs inference only (evaluation with its moving statistics)"
        return super().supports(case)


class LiteRt(_LiteRtBase):
    """tf.keras BN model converted as it is (float32, or float16 input and output) and run by LiteRT."""

    family: ClassVar[str] = "tf.keras+litert"
    description: ClassVar[str] = ("tf.keras BatchNormalization model converted by TFLiteConverter.from_keras_model "
                                  "and run by the ai_edge_litert Interpreter (inference)")
    conventions: ClassVar[Conventions] = LITERT_CONVENTIONS


class LiteRtFloat16Weights(_LiteRtBase):
    """The float32 tf.keras BN model converted with float16 weights (post-training float16 quantization)."""

    family: ClassVar[str] = "tf.keras+litert.fp16"
    description: ClassVar[str] = ("float32 tf.keras BatchNormalization model converted with float16 weights "
                                  "(supported_types=[tf.float16]) and run by the ai_edge_litert Interpreter")
    conventions: ClassVar[Conventions] = LITERT_FP16_CONVENTIONS
    float16_weights: ClassVar[bool] = True
