"""Keras 3 targets: keras.layers.BatchNormalization on the TensorFlow, JAX and PyTorch backends.

Keras chooses its backend once per process from KERAS_BACKEND, so each family runs in its own worker
("tensorflow", "keras-jax", "keras-torch"; the framework records set the variable). One base class drives
the same layer the same way; the subclasses differ only in how gradients are taken (tf.GradientTape,
jax.vjp over Layer.stateless_call, torch autograd), which mirrors what each backend's own Keras trainer
does in train_step. The kernel path is bncheck/targets/paths/keras_bn.py (shared with the reproduction
scripts); keras and the backend framework are imported only inside `probe` and that module's functions.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, ClassVar

from .base import (Accumulation, Conventions, EpsPlacement, MomentumForm, ParameterPrecision, RunningVar, Subnormals,
                   Summation, VarianceAlgorithm)
from .kernel import PathTarget

_KERAS = "keras/src/layers/normalization/batch_normalization.py (keras 3.15)"

_COMMON_SOURCES = (
    f"{_KERAS}: BatchNormalization.__init__ defaults momentum=0.99, epsilon=1e-3; call() upcasts the input to "
    "backend.result_type(inputs.dtype, 'float32'), casts gamma/beta/moving statistics to that dtype, in training "
    "takes (mean, variance) = ops.moments(inputs, reduction axes) and assigns moving = moving * momentum + "
    "batch * (1 - momentum), then ops.batch_normalization(..., epsilon) and casts the output to the compute dtype",
    f"{_KERAS}: build() creates gamma/beta (scale/center) and moving_mean/moving_variance with autocast=False, "
    "so under a mixed_float16/mixed_bfloat16 policy they stay float32 while the output is float16/bfloat16",
    "https://keras.io/api/layers/normalization_layers/batch_normalization/ (old-form momentum; training=True uses "
    "batch statistics, training=False the moving ones; no switch to normalise with batch statistics in inference)",
)

_TF_SOURCES = _COMMON_SOURCES + (
    "keras/src/backend/tensorflow/nn.py: moments -> tf.nn.moments (two-pass: reduce_mean, then reduce_mean of "
    "squared_difference(x, stop_gradient(mean)), divides by n); batch_normalization -> tf.nn.batch_normalization "
    "(inv = rsqrt(var + eps) * gamma; y = x * inv + (beta - mean * inv))",
    "keras/src/backend/tensorflow/trainer.py: train_step calls self(x, training=True) under tf.GradientTape",
)

_JAX_SOURCES = _COMMON_SOURCES + (
    "keras/src/backend/jax/nn.py: moments -> jnp.mean and jnp.var (two-pass, ddof=0); batch_normalization: "
    "inv = lax.rsqrt(var + eps) * gamma; y = x * inv + (beta - mean * inv)",
    "keras/src/backend/common/dtypes.py: BIT64_TO_BIT32_DTYPE maps float64 to float32 in result_type on every "
    "backend but TensorFlow, so call()'s compute dtype result_type(float64, float32) is float32",
    "keras/src/backend/jax/trainer.py: compute_loss_and_updates runs self.stateless_call(...) under "
    "jax.value_and_grad and writes the returned non-trainable variables back",
)

_TORCH_SOURCES = _COMMON_SOURCES + (
    "keras/src/backend/torch/nn.py: moments computes variance = mean(square(x)) - square(mean) (one pass, "
    "divides by n; the comment says 'faster but less numerically stable'); batch_normalization: "
    "(x - mean) * (rsqrt(var + eps) * gamma) + beta",
    "keras/src/backend/common/dtypes.py: BIT64_TO_BIT32_DTYPE maps float64 to float32 in result_type on every "
    "backend but TensorFlow, so call()'s compute dtype result_type(float64, float32) is float32",
    "keras/src/backend/torch/trainer.py: train_step calls self(x, training=True) then loss.backward()",
)

_NOTES = (
    "Layer: keras.layers.BatchNormalization(axis=1 for channels_first rank>=3, axis=-1 for channels_last and "
    "for (N, C), momentum=1-case.momentum, epsilon=case.eps, center=scale=affine), built on the physical shape; "
    "gamma/beta/moving_mean/moving_variance are assigned from the inputs. Policy: dtype=case.dtype when the "
    "parameters share the input dtype (float16/bfloat16 variables), 'mixed_float16'/'mixed_bfloat16' for half "
    "inputs with float32 parameters. Half inputs are upcast to float32 inside call() and the output is rounded "
    "once to the half dtype; in an all-half layer the new moving statistics are rounded to the half dtype. "
    "Eager execution (what layer(x, training=...) runs); model.fit() jit-compiles on TF/JAX by default, "
    "which may fuse differently. The layer does not expose its batch statistics. Gradients are the "
    "vector-Jacobian product with the drawn dy (= gradient of sum(y * dy)). Device 'cuda' is placed with "
    "keras.device('gpu:0') and was not verified here."
)


def probe() -> dict[str, Any]:
    """Keras version, its backend's version and the backend's devices (imports keras; runs in the worker)."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    from .paths.keras_bn import keras_import

    keras = keras_import(backend)
    details: dict[str, Any] = {"backend": backend}
    devices = ["cpu"]
    if backend == "jax":
        import jax

        details["jax"] = jax.__version__
        details["jaxlib"] = getattr(__import__("jaxlib"), "__version__", "")
        details["x64"] = bool(jax.config.jax_enable_x64)
        platforms = sorted({d.platform for d in jax.devices()})
        details["platforms"] = platforms
        if any(p in ("gpu", "cuda") for p in platforms):
            devices.append("cuda")
    elif backend == "torch":
        import torch

        details["torch"] = torch.__version__
        if torch.cuda.is_available():
            devices.append("cuda")
            details["cuda"] = torch.version.cuda
            details["gpu"] = torch.cuda.get_device_name(0)
    elif backend == "tensorflow":
        import tensorflow as tf

        details["tensorflow"] = tf.__version__
        if tf.config.list_physical_devices("GPU"):
            devices.append("cuda")
    return {"version": keras.__version__, "devices": devices, "details": details}


def _conventions(variance_algorithm: VarianceAlgorithm, accumulation: Accumulation, summation: Summation,
                 subnormals: Subnormals, parameter_precision: ParameterPrecision, notes: str,
                 sources: tuple[str, ...]) -> Conventions:
    """The conventions the three backends share, with their own arithmetic facts."""
    return Conventions(
        momentum=MomentumForm.OLD,
        running_var=RunningVar.BIASED,
        eps_placement=EpsPlacement.INSIDE,
        default_eps=1e-3,
        default_momentum=0.99,
        variance_algorithm=variance_algorithm,
        accumulation=accumulation,
        summation=summation,
        subnormals=subnormals,
        parameter_precision=parameter_precision,
        dtypes=("float16", "bfloat16", "float32", "float64"),
        param_dtypes="same-or-float32",
        ranks=(2, 3, 4, 5),
        layouts=("channels_first", "channels_last"),
        modes=("train", "eval"),
        untracked=False,  # inference always uses the moving statistics; there is no track_running_stats=False
        gradients=True,
        quantities=("y", "running_mean", "running_var", "dx", "dgamma", "dbeta"),
        notes=notes,
        sources=sources,
    )


_PARAMS_F32 = ("epsilon and momentum are Python floats that meet float32 tensors as weak scalars, so they act "
               "as float32 values (1 - momentum is formed in Python float64 first)")

TF_CONVENTIONS = _conventions(
    VarianceAlgorithm.TWO_PASS, Accumulation.FLOAT32_OR_WIDER, Summation.SEQUENTIAL, Subnormals.FLUSHED,
    ParameterPrecision.INPUT_DTYPE,
    "Variance: two-pass (tf.nn.moments: mean, then mean of squared deviations; TensorFlow's CPU reduction over "
    "the batch axis is sequential). Arithmetic: float32 for float16/bfloat16/float32 inputs (call() upcasts), "
    "float64 for float64. " + _PARAMS_F32 + "; float64 in a float64 layer. Subnormal float32 inputs are flushed "
    "to zero (measured: hazards suite, subnormal-inputs). " + _NOTES,
    _TF_SOURCES,
)

_F64_NOTE = (" float64: the layer accepts float64 and returns float64 with float64 variables, but "
             "keras.backend.result_type(float64, float32) is float32 on this backend, so call() computes "
             "everything in float32 and casts back: float64 results carry float32 errors (a real precision "
             "property, left visible).")

_XLA_SOURCES = (
    "https://www.tensorflow.org/api_docs/python/tf/function (jit_compile=True: the function is compiled by XLA "
    "or the call fails; no silent fallback to the graph executor)",
    "keras/src/backend/tensorflow/trainer.py (keras 3.15): make_train_function wraps train_step in "
    "tf.function(reduce_retracing=True, jit_compile=self.jit_compile); keras/src/trainers/trainer.py "
    "_resolve_auto_jit_compile: jit_compile='auto' means XLA on TensorFlow only when a non-CPU device exists "
    "('Disable XLA on CPU-only machines'), so on CPU this path is what compile(jit_compile=True) runs",
    "experiment (tests/test_tf_xla_targets.py): the same declared conventions pass the benign cases as tf.keras; "
    "at mean 1e4 with 65536 values per channel tf.keras deviates (sequential float32 sums: running_mean ratio "
    "3.25, running_var 5.31) while tf.keras.xla passes (worst ratio 0.0103)",
)

TF_XLA_CONVENTIONS = replace(
    TF_CONVENTIONS,
    summation=Summation.UNSPECIFIED,  # XLA's CPU reduction, not the eager kernel's sequential one (measured)
    notes=_NOTES.replace("Eager execution (what layer(x, training=...) runs); model.fit() jit-compiles on TF/JAX by "
                         "default, which may fuse differently.",
                         "The layer call, with its tf.GradientTape, is traced into tf.function(jit_compile=True) "
                         "and compiled by XLA, as model.fit compiles train_step under compile(jit_compile=True) (or 'auto' with a "
                         "GPU present); one layer and one traced function "
                         "per signature (shape, layout, dtypes, eps, momentum, affine, gradients, training or "
                         "evaluation), kept in the worker and reused, its four variables assigned from each case "
                         "before the call; the moving statistics are read after each compiled training call.")
    + " eps and momentum are baked into the trace as constants. Variance: two-pass (tf.nn.moments traced and "
    "compiled by XLA); XLA's CPU reduction does not add the batch rows one after another as TensorFlow's eager "
    "kernel does, so large float32 batches at a large offset stay within the bound where tf.keras deviates "
    "(measured). Subnormal float32 inputs are flushed to zero.",
    sources=_TF_SOURCES + _XLA_SOURCES,
)

JAX_CONVENTIONS = _conventions(
    VarianceAlgorithm.TWO_PASS, Accumulation.FLOAT32, Summation.UNSPECIFIED, Subnormals.FLUSHED,
    ParameterPrecision.FLOAT32_ATTRIBUTES,
    "Variance: two-pass (jnp.var). Arithmetic: float32 for every input dtype, float64 included (Keras maps "
    "float64 to float32 in result_type). " + _PARAMS_F32 + ", float64 layers included. XLA flushes subnormal "
    "float32 inputs to zero (measured: hazards suite, subnormal-inputs). " + _NOTES + _F64_NOTE +
    " Runs with jax_enable_x64 on (set by the worker before the first array). "
    "Gradients and training use Layer.stateless_call under jax.vjp, as the Keras JAX trainer does, and the "
    "returned moving statistics are assigned back to the layer.",
    _JAX_SOURCES,
)

TORCH_CONVENTIONS = _conventions(
    VarianceAlgorithm.ONE_PASS, Accumulation.FLOAT32, Summation.BLOCKED, Subnormals.PRESERVED,
    ParameterPrecision.FLOAT32_ATTRIBUTES,
    "Variance: one-pass E[x^2]-E[x]^2 (keras torch backend nn.moments), not clamped. Arithmetic: float32 for "
    "every input dtype, float64 included (Keras maps float64 to float32 in result_type). " + _PARAMS_F32 +
    ", float64 layers included. " + _NOTES + _F64_NOTE + " The one-pass variance cancels catastrophically when "
    "|mean| >> std (and can go negative, giving NaN).",
    _TORCH_SOURCES,
)
# ops.nn.moments' fast one-pass variance (keras-core#866), and the numerical fix of the TF and JAX moments (#18795),
# whose title names those two backends only
TORCH_CONVENTIONS = replace(TORCH_CONVENTIONS, upstream_issues=(
    "https://github.com/keras-team/keras-core/pull/866", "https://github.com/keras-team/keras/pull/18795"))


class _KerasBase(PathTarget):
    """keras.layers.BatchNormalization on one backend (paths/keras_bn.py); the family names the backend."""

    package = "keras"

    backend: ClassVar[str] = ""
    devices: ClassVar[tuple[str, ...] | None] = ("cpu", "cuda")
    path_modules: ClassVar[tuple[str, ...]] = ("keras_bn",)
    path_entry: ClassVar[str] = "keras_bn"
    jit_compile: ClassVar[bool] = False

    def path_options(self) -> dict[str, Any]:
        """The Keras backend this family runs on (the worker's KERAS_BACKEND), and for TensorFlow whether the
        layer call is traced into tf.function(jit_compile=True)."""
        return {"backend": self.backend, **({"jit_compile": True} if self.jit_compile else {})}


class KerasOnTensorflow(_KerasBase):
    """keras.layers.BatchNormalization with the TensorFlow backend; gradients by tf.GradientTape."""

    family = "tf.keras"
    framework = "tensorflow"
    backend = "tensorflow"
    description = "keras.layers.BatchNormalization (Keras 3, TensorFlow backend, eager layer call)"
    conventions = TF_CONVENTIONS


class KerasOnJax(_KerasBase):
    """keras.layers.BatchNormalization with the JAX backend; stateless_call under jax.vjp."""

    family = "keras.jax"
    framework = "keras-jax"
    backend = "jax"
    description = "keras.layers.BatchNormalization (Keras 3, JAX backend, eager Layer.stateless_call)"
    conventions = JAX_CONVENTIONS


class KerasOnTorch(_KerasBase):
    """keras.layers.BatchNormalization with the PyTorch backend; gradients by torch autograd."""

    family = "keras.torch"
    framework = "keras-torch"
    backend = "torch"
    description = "keras.layers.BatchNormalization (Keras 3, PyTorch backend, eager layer call)"
    conventions = TORCH_CONVENTIONS


class KerasOnTensorflowXla(KerasOnTensorflow):
    """keras.layers.BatchNormalization (TensorFlow backend) called inside tf.function(jit_compile=True)."""

    family = "tf.keras.xla"
    description = ("keras.layers.BatchNormalization (Keras 3, TensorFlow backend) called with its gradient tape inside "
                   "tf.function(jit_compile=True), as model.fit(jit_compile=True) compiles train_step; one trace per signature")
    conventions = TF_XLA_CONVENTIONS
    path_kind = "compiled"
    jit_compile = True
