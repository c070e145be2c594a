"""Keras 2 targets: tf_keras's BatchNormalization with fused=True (FusedBatchNormV3) and fused=False (tf.nn).

Keras 2 is what tf.keras is when TF_USE_LEGACY_KERAS is set before tensorflow is imported; in the tensorflow
worker tf.keras is Keras 3, so these families run in their own worker group ("tf-keras", whose framework record
sets the variable). The kernel path is bncheck/targets/paths/tf_keras_bn.py (shared with the reproduction scripts);
tensorflow is imported only inside `probe` and that module's functions, which execute in the tf-keras worker.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from ..cases import Case
from ..inputs import Inputs
from .base import (Accumulation, BesselRule, Conventions, Observation, ParameterPrecision, Subnormals, Summation,
                   Unsupported, VarianceAlgorithm)
from .kernel import PathTarget

_TF_KERAS = "tf_keras/src/layers/normalization/batch_normalization.py (tf_keras 2.21.0)"

_COMMON_SOURCES = (
    f"{_TF_KERAS}: BatchNormalizationBase.__init__ defaults momentum=0.99, epsilon=1e-3, fused=None; the class "
    "docstring: moving_mean = moving_mean * momentum + mean(batch) * (1 - momentum)",
    f"{_TF_KERAS}: _param_dtype raises float16/bfloat16 layers' gamma, beta and moving statistics to float32",
    "tensorflow/python/util/lazy_loader.py (TF 2.21): KerasLazyLoader routes tf.keras to tf_keras.api._v2.keras "
    "when TF_USE_LEGACY_KERAS is 'true', 'True' or '1', else to Keras 3",
    "experiment (tests/test_tf_keras_targets.py): in the worker tf.keras is tf_keras.api._v2.keras (tf_keras "
    "2.21.0) and its BatchNormalization comes from tf_keras.src",
)

_NOTES = (
    "Layer: tf.keras.layers.BatchNormalization(axis=1 for channels_first rank>=3, -1 otherwise, "
    "momentum=1-case.momentum, epsilon=case.eps, center=scale=affine, fused=...) with tf.keras = Keras 2 "
    "(tf_keras), built on the physical shape; gamma/beta/moving_mean/moving_variance assigned from the inputs. "
    "Policy: dtype=case.dtype when the parameters share it, 'mixed_float16'/'mixed_bfloat16' for half inputs with "
    "float32 parameters; either way a half layer holds float32 variables (_param_dtype), so the half "
    "parameters of a case are carried exactly in float32. Eager layer calls (training=True for training steps, "
    "False for evaluation), gradients by tf.GradientTape with output_gradients=dy (Keras 2's train_step). The "
    "layer does not expose its batch statistics; it always keeps moving statistics (track_running_stats=false "
    "is unsupported)."
)

FUSED_CONVENTIONS = Conventions(
    momentum="old",
    running_var="unbiased",
    eps_placement="inside_sqrt",
    default_eps=1e-3,
    default_momentum=0.99,
    variance_algorithm=VarianceAlgorithm.TWO_PASS,
    bessel=BesselRule.CLAMPED,
    summation=Summation.SEQUENTIAL,
    subnormals=Subnormals.FLUSHED,
    accumulation=Accumulation.FLOAT32_OR_WIDER,
    parameter_precision=ParameterPrecision.FLOAT32_ATTRIBUTES,
    dtypes=("float16", "bfloat16", "float32"),
    param_dtypes="same-or-float32",
    ranks=(4, 5),
    layouts=("channels_first", "channels_last"),
    modes=("train", "eval"),
    untracked=False,
    gradients=True,
    quantities=("y", "running_mean", "running_var", "dx", "dgamma", "dbeta"),
    notes=(
        "Variance: FusedBatchNormV3's CPU kernel, as tf.fused: two-pass, sums over the batch axis added row "
        "after row into one float32 accumulator per channel. Arithmetic: float32 (FusedBatchNormV3's U) for "
        'float16/bfloat16/float32 inputs. Parameters: epsilon and exponential_avg_factor = 1 - momentum reach'
        ' the kernel as float32 attributes (1 - (1 - m) formed in Python float64 first). '
    ) + _NOTES + " fused=True: the layer calls tf.compat.v1.nn.fused_batch_norm (FusedBatchNormV3; NCHW/NCDHW "
          "for axis 1, NHWC/NDHWC for the last axis) and, executing eagerly, lets the kernel update the moving "
          "statistics itself (exponential_avg_factor = 1 - momentum): the moving variance is fed the kernel's "
          "Bessel-corrected batch variance (_bessels_correction_test_only=True leaves it so), while y is "
          "normalised with the biased one. So Keras 2's fused and unfused layers disagree on the running "
          "variance by n/(n-1). The layer refuses rank 2/3 input with fused=True ('only support 4D or 5D input "
          "tensors') and a float64 compute dtype ('only supported when the compute dtype is float16, bfloat16, "
          "or float32'); the kernel's divisor for n = 1 is max(n - 1, 1).",
    sources=_COMMON_SOURCES + (
        f"{_TF_KERAS}: _fused_batch_norm (use_fused_avg_updates when executing eagerly with a float momentum "
        "outside XLA: exponential_avg_factor = 1.0 - momentum; the new moving variance is the kernel's output "
        "variance); _raise_if_fused_cannot_be_used; build() ('fused=True only support 4D or 5D')",
        "tensorflow/core/kernels/fused_batch_norm_op.cc: the running variance gets rest_size_adjust = n/(n-1)",
        "experiment (tests/test_tf_keras_targets.py): the running variance matches only the unbiased "
        "convention, y the biased normalisation; rank 3 and float64 are refused by the layer itself",
    ),
)

UNFUSED_CONVENTIONS = replace(
    FUSED_CONVENTIONS,
    running_var="biased",
    variance_algorithm=VarianceAlgorithm.TWO_PASS,
    bessel=BesselRule.N_MINUS_1,
    accumulation=Accumulation.FLOAT32_OR_WIDER,
    parameter_precision=ParameterPrecision.INPUT_DTYPE,
    dtypes=("float16", "bfloat16", "float32", "float64"),
    ranks=(2, 3, 4, 5),
    notes=(
        'Variance: two-pass (tf.nn.moments of the input cast to float32/float64: reduce_mean, then '
        "reduce_mean of squared_difference; TensorFlow's CPU reduction adds rows one after another). "
        'Arithmetic: float32 for float16/bfloat16 inputs (call() casts them to float32 first), else the input'
        ' dtype. Parameters: epsilon is a Python float converted to the variance dtype; the moving update is '
        'var.assign_sub((var - batch) * decay) with decay = tf.convert_to_tensor(1 - momentum), a float32 '
        "tensor, cast to the variable's dtype afterwards: a float64 layer updates with the float32-rounded "
        'momentum (0.1 arrives as 0.10000000149). '
    ) + _NOTES + " fused=False: call() casts half inputs to float32, takes (mean, variance) = "
          "tf.nn.moments (biased), updates moving = moving - (moving - batch) * (1 - momentum) (assign_sub), and "
          "normalises with tf.nn.batch_normalization (folded: x * (rsqrt(var + eps) * gamma) + (beta - mean * "
          "inv)); y is cast back to the half dtype.",
    sources=_COMMON_SOURCES + (
        f"{_TF_KERAS}: call() (half inputs cast to float32; self._moments; _assign_moving_average: "
        "update_delta = (variable - value) * decay, variable.assign_sub(update_delta)); tf.nn.batch_normalization",
        "experiment (tests/test_tf_keras_targets.py): the running variance matches the biased convention; in "
        "float64 the moving mean deviates (ratio ~1e6) and equals, to 1e-14, the update with the float32-rounded "
        "weight of the batch statistic",
    ),
)


def probe() -> dict[str, Any]:
    """TensorFlow's version and tf.keras's (which must be Keras 2 here), with where its BatchNormalization lives."""
    from .paths.tf_keras_bn import tf_keras_import, tf_keras_version

    tf, keras = tf_keras_import()
    devices = ["cpu"] + (["cuda"] if tf.config.list_physical_devices("GPU") else [])
    details = {"tensorflow": tf.__version__, "tf.keras": keras.__name__,
               "batch_normalization": keras.layers.BatchNormalization.__module__}
    return {"version": tf_keras_version(), "devices": devices, "details": details}


class _TfKerasBase(PathTarget):
    """Keras 2's BatchNormalization (paths/tf_keras_bn.py), fused or not."""

    framework: ClassVar[str] = "tf-keras"
    devices: ClassVar[tuple[str, ...] | None] = ("cpu", "cuda")
    path_modules: ClassVar[tuple[str, ...]] = ("tf_keras_bn",)
    path_entry: ClassVar[str] = "tf_keras_bn"
    fused: ClassVar[bool] = True

    def path_options(self) -> dict[str, Any]:
        """The layer's fused argument."""
        return {"fused": self.fused}


class TfKerasFused(_TfKerasBase):
    """tf_keras BatchNormalization(fused=True): FusedBatchNormV3, which also updates the moving statistics."""

    family: ClassVar[str] = "tf_keras.fused"
    description: ClassVar[str] = ("tf.keras.layers.BatchNormalization(fused=True), Keras 2 (tf_keras, "
                                  "TF_USE_LEGACY_KERAS=1), eager layer call")
    conventions: ClassVar[Conventions] = FUSED_CONVENTIONS

    def supports(self, case: Case) -> str | None:
        """The layer's own refusals with fused=True (rank 2/3, float64), then the generic checks."""
        if len(case.shape) not in (4, 5):
            return f"BatchNormalization(fused=True) takes only 4-D or 5-D input; rank {len(case.shape)}"
        if case.dtype == "float64":
            return "BatchNormalization(fused=True) has no float64 compute dtype (float16, bfloat16, float32)"
        return super().supports(case)

    def run(self, case: Case, inputs: Inputs) -> Observation:
        """The path, after the layer's limits (normally refused in the parent already)."""
        reason = self.supports(case)
        if reason:
            raise Unsupported(reason)
        return super().run(case, inputs)


class TfKerasUnfused(_TfKerasBase):
    """tf_keras BatchNormalization(fused=False): tf.nn.moments, assign_sub moving update, tf.nn.batch_normalization."""

    family: ClassVar[str] = "tf_keras.unfused"
    description: ClassVar[str] = ("tf.keras.layers.BatchNormalization(fused=False), Keras 2 (tf_keras, "
                                  "TF_USE_LEGACY_KERAS=1), eager layer call")
    conventions: ClassVar[Conventions] = UNFUSED_CONVENTIONS
    fused: ClassVar[bool] = False
