"""TensorFlow targets: tf.nn.moments + tf.nn.batch_normalization, and the fused kernel tf.raw_ops.FusedBatchNormV3.

Both run eagerly (no tf.function), as a user calling these ops directly would; tf.nn also runs traced into
tf.function(jit_compile=True), compiled by XLA (tf.nn.xla). The kernel path is bncheck/targets/paths/tf_bn.py
(shared with the reproduction scripts); tensorflow is imported only inside `probe` and that module's functions,
which execute in the tensorflow worker process.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from ..cases import Case
from .base import (Accumulation, BesselRule, Conventions, Elementwise, EpsPlacement, ParameterPrecision, Refusal,
                   RefusalCondition, StatisticsDtype, Subnormals, Summation, VarianceAlgorithm)
from .kernel import PathTarget

TF_NN_CONVENTIONS = Conventions(
    # tf.nn has no running-statistics update, hence no momentum: "new" and "biased" are placeholders that no
    # reported quantity depends on (running statistics are never reported, trajectories with running
    # statistics are refused), "biased" naming the only batch variance tf.nn exposes (tf.nn.moments)
    momentum="new",
    running_var="biased",
    eps_placement=EpsPlacement.INSIDE,
    default_eps=None,  # tf.nn.batch_normalization requires variance_epsilon
    default_momentum=None,  # no running update, no momentum
    variance_algorithm=VarianceAlgorithm.TWO_PASS,
    accumulation=Accumulation.FLOAT32_OR_WIDER,
    summation=Summation.SEQUENTIAL,
    statistics_dtype=StatisticsDtype.INPUT,
    elementwise=Elementwise.INPUT_DTYPE,
    subnormals=Subnormals.FLUSHED,
    parameter_precision=ParameterPrecision.INPUT_DTYPE,
    dtypes=("float16", "bfloat16", "float32", "float64"),
    param_dtypes="same-or-float32",
    ranks=(2, 3, 4, 5),
    layouts=("channels_first", "channels_last"),
    modes=("train", "eval"),
    untracked=True,
    gradients=True,
    quantities=("y", "batch_mean", "batch_var", "dx", "dgamma", "dbeta"),
    notes=(
        "Variance: two-pass, mean = reduce_mean(x), var = reduce_mean(squared_difference(x, mean)); the CPU "
        "reduction over the batch axis adds row after row into one accumulator per channel (sequential "
        "summation, error growing like n*u). Arithmetic: float16 input is cast to float32 for the moments, "
        "which are cast back to float16; bfloat16 is not upcast: squared differences are rounded to bfloat16 "
        "and both moments are returned in bfloat16 (the reduction itself accumulates in float32); float32/"
        "float64 in the input dtype; gradient reductions of half inputs round partial sums to the half dtype. "
        "variance_epsilon is a Python float converted to the dtype of the variance (float16 for all-float16 "
        "cases). Subnormal float32 inputs are flushed to zero (measured: hazards suite, subnormal-inputs). "
        "Training phases: mean, var = tf.nn.moments(x, axes=all but the channel axis, keepdims=True), then "
        "tf.nn.batch_normalization(x, mean, var, beta, gamma, eps); evaluation: the same call with the given "
        "running statistics (or with batch moments when the case has none). tf.nn has no running-statistics "
        "update, so running_mean/running_var are never reported and a trajectory that evaluates with updated "
        "running statistics is unsupported. batch_normalization folds the affine transform: "
        "inv = rsqrt(var + eps) * gamma, y = x * cast(inv, x.dtype) + cast(beta - mean * inv, x.dtype), so for "
        "half inputs both coefficients are rounded to the half dtype and y is formed in half arithmetic. "
        "tf.nn.moments returns float16 moments for float16 input (computed in float32, then cast) and bfloat16 "
        "moments for bfloat16 input; with float32 parameters the adapter casts them exactly to float32, as "
        "batch_normalization rejects mixed dtypes. Channels-first parameters are reshaped to (1, C, 1, ...) "
        "for broadcasting. Gradients: tf.GradientTape with output_gradients=dy. default_eps and "
        "default_momentum are None: tf.nn has neither."
    ),
    sources=(
        "tensorflow/python/ops/nn_impl.py (TF 2.21): moments (float16 cast to float32 and back; 'sample "
        "variance, not unbiased variance'; squared_difference against stop_gradient(mean)), batch_normalization "
        "(rsqrt(variance + variance_epsilon) * scale; folded x * inv + (offset - mean * inv) cast to x.dtype)",
        "https://www.tensorflow.org/api_docs/python/tf/nn/batch_normalization and /tf/nn/moments",
        "experiment (tests/test_tf_targets.py): batch_var equals the biased (n) variance; float16/bfloat16 y "
        "deviation from the half-precision coefficients",
    ),
)

TF_FUSED_CONVENTIONS = Conventions(
    momentum="new",  # exponential_avg_factor weights the NEW batch statistic
    running_var="unbiased",
    eps_placement=EpsPlacement.INSIDE,
    default_eps=1e-4,  # FusedBatchNormV3 attr epsilon default (tf.compat.v1.nn.fused_batch_norm uses 1e-3)
    default_momentum=1.0,  # exponential_avg_factor default: running statistics = this batch's statistics
    variance_algorithm=VarianceAlgorithm.TWO_PASS,
    bessel=BesselRule.CLAMPED,  # n / max(n - 1, 1): measured finite running variance for one value per channel
    accumulation=Accumulation.FLOAT32_OR_WIDER,
    summation=Summation.SEQUENTIAL,
    subnormals=Subnormals.FLUSHED,
    parameter_precision=ParameterPrecision.FLOAT32_ATTRIBUTES,
    refusals=(
        Refusal(RefusalCondition.RANK_NOT_4_OR_5, "InvalidArgumentError", "input must be 4"),  # "4-" or "4 or 5-dimensional"
        Refusal(RefusalCondition.FLOAT64, "InvalidArgumentError", "of double is not in the list of allowed values"),
        Refusal(RefusalCondition.PARAMETERS_NOT_FLOAT32, "InvalidArgumentError", "Value for attr 'U'"),
        Refusal(RefusalCondition.PARAMETERS_NOT_FLOAT32, "NotFoundError", "Could not find device for node"),
    ),
    dtypes=("float16", "bfloat16", "float32", "float64"),  # float64 is run: the kernel refuses it
    param_dtypes="any",  # U is passed as the case's parameter dtype: the kernel refuses all but float32
    ranks=(2, 3, 4, 5),  # ranks 2 and 3 are run: the kernel refuses them
    layouts=("channels_first", "channels_last"),
    modes=("train", "eval"),
    untracked=True,
    gradients=True,
    quantities=("y", "batch_mean", "batch_var", "running_mean", "running_var", "dx", "dgamma", "dbeta"),
    optional_quantities=("batch_var_unbiased",),
    notes=(
        "Variance: two-pass (Eigen CPU kernel: sum(x) * (1/n), then sum((x - mean)^2) * (1/n)); the sums over the "
        "batch axis are sequential (one float32 accumulator per channel, error growing like n*u); the oneDNN "
        "NHWC float32 kernel sums more accurately. Arithmetic: float32 (U) for float16/bfloat16 inputs; x is "
        "cast to float32 before every reduction. epsilon and exponential_avg_factor are float32 attributes; 1/n "
        "is a float32 reciprocal multiplied in; the Bessel factor n/(n-1) is a float32. Subnormal float32 inputs "
        "are flushed to zero (measured: hazards suite, subnormal-inputs). The kernel refuses float64 (T in half, "
        "bfloat16, float), parameters other than float32 (U: attr check for half and double, no kernel for "
        "bfloat16) and ranks 2 and 3; those cases are run and recorded as refused. "
        "tf.raw_ops.FusedBatchNormV3 with data_format NHWC/NDHWC for channels_last and NCHW/NCDHW for "
        "channels_first (accepted natively; the Eigen CPU kernel transposes NCHW to NHWC internally and "
        "reshapes 5-D to 4-D, both exact). Training phases: is_training=True with "
        "exponential_avg_factor = momentum; the outputs batch_mean and batch_variance are then the UPDATED "
        "running mean and running variance ((1-f)*old + f*batch_mean; (1-f)*old + f*n/(n-1)*biased_var), "
        "reserve_space_1 is the batch mean and reserve_space_2 the biased batch variance (CPU kernels, Eigen "
        "and oneDNN). So the fused kernel normalises with the biased variance and feeds the unbiased one to "
        "the running update. With factor 1 (cases without running statistics, or momentum 1) the output "
        "batch_variance is the Bessel-corrected batch variance and is reported as batch_var_unbiased (not "
        "declared in quantities because factor != 1 does not expose it). Evaluation: is_training=False with the "
        "running statistics (cases without running statistics normalise with batch statistics: "
        "is_training=True, factor 1). affine=false is fed as scale=1, offset=0. Ranks 2 and 3 are refused "
        "by the kernel ('input must be 4 or 5-dimensional') and are not reshaped here; there is no float64 "
        "kernel and U (scale/offset/mean/variance) must be float32. On cuda (cuDNN, unverified here) "
        "reserve_space_2 is the saved inverse standard deviation and is reported as batch_invstd instead. "
        "The CPU kernel is Eigen unless oneDNN is enabled (TF_ENABLE_ONEDNN_OPTS=1, or the default on CPUs "
        "with AVX512/AMX), when eager ops are rewritten to _MklFusedBatchNormV3 (float16 falls back to Eigen "
        "without AVX-512); probe() reports which. Same conventions under both (measured); with n = 1 the "
        "Bessel divisor is max(n - 1, 1), so the running variance stays finite where the unbiased one is 0/0. "
        "Gradients: tf.GradientTape (registered FusedBatchNormGradV3, is_training as in the forward call)."
    ),
    sources=(
        "tensorflow/core/kernels/fused_batch_norm_op.cc: FusedBatchNorm<CPUDevice, T, U, true> (x cast to U; "
        "batch_mean = sum * rest_size_inv; batch_variance = sum(square(x - mean)) * rest_size_inv; "
        "rsqrt(var + epsilon) * scale; rest_size_adjust = n/(n-1) 'for Bessel's correction' applied to the "
        "running variance only; new_mean = (1-f)*old_mean + f*batch_mean); GPU functor: saved_inv_var",
        "tensorflow/core/ops/nn_ops.cc: FusedBatchNormV3 attrs (T in half/bfloat16/float, U float; "
        "epsilon=0.0001, exponential_avg_factor=1.0, data_format NHWC/NCHW/NDHWC/NCDHW)",
        "tensorflow/python/ops/nn_impl.py: fused_batch_norm docstring (running_mean = (1 - factor) * mean + "
        "factor * batch_mean)",
        "experiment (tests/test_tf_targets.py): outputs vs the float64 reference under both running-variance "
        "conventions; reserve_space_2 equals the biased batch variance",
    ),
)

TF_NN_XLA_CONVENTIONS = replace(
    TF_NN_CONVENTIONS,
    summation=Summation.UNSPECIFIED,  # XLA's CPU reduction, not the eager kernel's row after row (measured below)
    notes=TF_NN_CONVENTIONS.notes + " Under XLA: every phase is traced into tf.function(jit_compile=True) with "
          "its tf.GradientTape and compiled; one traced function per signature (shape, layout, dtypes, eps, "
          "affine, tracking, gradients, training or evaluation), kept in the worker and reused by every case "
          "with that signature; eps is baked into the trace as a constant. Variance: two-pass, as tf.nn, but "
          "XLA's CPU reduction does not add the batch rows one after another as the eager kernel does, so large "
          "float32 batches at a large offset stay within the bound where tf.nn deviates (measured). Forward "
          "arithmetic as tf.nn (half moments, y formed in half arithmetic from half coefficients); the compiled "
          "gradient reductions of half inputs lose less than eager's (measured: float16 with float32 parameters, "
          "dbeta ratio 9.9 against eager's 72.7).",
    sources=TF_NN_CONVENTIONS.sources + (
        "https://www.tensorflow.org/api_docs/python/tf/function (jit_compile=True compiles with XLA or fails)",
        "experiment (tests/test_tf_xla_targets.py): 65536 values of 1e4 + N(0, 1) per channel: tf.nn batch_mean "
        "ratio 3.26, batch_var 5.31; tf.nn.xla worst ratio 0.0103; float16 forward deviations as tf.nn",
    ),
)


def probe() -> dict[str, Any]:
    """Import tensorflow (and keras) and report versions, devices and the CPU kernel library."""
    import tensorflow as tf

    details: dict[str, Any] = {}
    try:
        import keras

        details["keras"] = keras.__version__
    except Exception as e:  # keras is a separate distribution; its absence does not stop tf.nn / tf.fused
        details["keras"] = f"unavailable: {type(e).__name__}: {e}"
    gpus = tf.config.list_physical_devices("GPU")
    devices = ["cpu"] + (["cuda"] if gpus else [])
    details["built_with_cuda"] = bool(tf.test.is_built_with_cuda())
    details["onednn"] = _onednn_enabled()
    details["intra_op_threads"] = tf.config.threading.get_intra_op_parallelism_threads()
    if gpus:
        info = tf.sysconfig.get_build_info()
        details["cuda"] = info.get("cuda_version", "")
        details["cudnn"] = info.get("cudnn_version", "")
        details["gpu"] = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    return {"version": tf.__version__, "devices": devices, "details": details}


def _onednn_enabled() -> bool | None:
    """Whether TensorFlow rewrites CPU ops to oneDNN kernels in this process (None when unknown)."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except Exception:
        return None


class _TfBase(PathTarget):
    """TensorFlow's eager BN paths (paths/tf_bn.py): tf.nn or the fused kernel."""

    framework: ClassVar[str] = "tensorflow"
    devices: ClassVar[tuple[str, ...] | None] = ("cpu", "cuda")
    path_modules: ClassVar[tuple[str, ...]] = ("tf_bn",)
    path_entry: ClassVar[str] = "tf_bn"
    fused: ClassVar[bool] = False
    jit_compile: ClassVar[bool] = False

    def path_options(self) -> dict[str, Any]:
        """fused: tf.raw_ops.FusedBatchNormV3, otherwise tf.nn.moments + tf.nn.batch_normalization; jit_compile:
        each phase through a cached tf.function(jit_compile=True) (XLA) instead of eagerly."""
        return {"fused": self.fused, "jit_compile": self.jit_compile}


class TfNn(_TfBase):
    """tf.nn.moments followed by tf.nn.batch_normalization, eagerly."""

    family: ClassVar[str] = "tf.nn"
    description: ClassVar[str] = (
        "tf.nn.moments (all axes but the channel axis) + tf.nn.batch_normalization, eager; eval uses the given "
        "running statistics; no running-statistics update"
    )
    conventions: ClassVar[Conventions] = TF_NN_CONVENTIONS

    def supports(self, case: Case) -> str | None:
        """The generic checks, plus the refusal of trajectories that evaluate with updated running statistics."""
        if case.mode == "trajectory" and case.track_running_stats:
            return "tf.nn has no running-statistics update (a trajectory would evaluate with stale statistics)"
        return super().supports(case)


class TfFused(_TfBase):
    """tf.raw_ops.FusedBatchNormV3, eagerly, carrying running statistics from step to step."""

    family: ClassVar[str] = "tf.fused"
    description: ClassVar[str] = (
        "tf.raw_ops.FusedBatchNormV3 (is_training, exponential_avg_factor = momentum), eager, "
        "NHWC/NCHW/NDHWC/NCDHW"
    )
    conventions: ClassVar[Conventions] = TF_FUSED_CONVENTIONS
    fused: ClassVar[bool] = True


class TfNnXla(TfNn):
    """tf.nn.moments + tf.nn.batch_normalization traced into tf.function(jit_compile=True): XLA compiles them."""

    family: ClassVar[str] = "tf.nn.xla"
    description: ClassVar[str] = (
        "tf.nn.moments + tf.nn.batch_normalization (as tf.nn) traced into tf.function(jit_compile=True), so XLA "
        "compiles forward and gradient; one trace per signature, reused across cases"
    )
    conventions: ClassVar[Conventions] = TF_NN_XLA_CONVENTIONS
    path_kind: ClassVar[str] = "compiled"
    jit_compile: ClassVar[bool] = True
