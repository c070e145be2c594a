"""TensorFlow targets: tf.nn.moments + tf.nn.batch_normalization, and the fused kernel tf.raw_ops.FusedBatchNormV3.

Both run eagerly (no tf.function), as a user calling these ops directly would. tensorflow is imported only
inside `probe` and `run`, which execute in the tensorflow worker process.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..cases import Case
from ..inputs import Inputs
from .base import (Accumulation, BesselRule, Conventions, Elementwise, EpsPlacement, Observation, ParameterPrecision, Refusal,
                   RefusalCondition, StatisticsDtype, Subnormals, Summation, Target, VarianceAlgorithm)

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

_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32", "float64": "float64"}
_TRANSPORT = {"float16": np.float16, "bfloat16": np.float32, "float32": np.float32, "float64": np.float64}


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


def _tf_device(device: str) -> str:
    """TensorFlow device string for a bncheck device kind ('cuda' placement is unverified on this machine)."""
    return "/GPU:0" if device == "cuda" else "/CPU:0"


def _tensor(tf: Any, a: np.ndarray, dtype: str) -> Any:
    """NumPy transport array -> a new tensor of `dtype` on the current device (exact; never aliases `a`)."""
    t = tf.convert_to_tensor(np.array(a, dtype=_TRANSPORT[dtype], copy=True))
    # bfloat16 travels as float32 holding representable values: the cast is exact; identity places and copies
    return tf.identity(tf.cast(t, getattr(tf, _DTYPES[dtype])))


def _numpy(tf: Any, t: Any) -> np.ndarray:
    """tensor -> a fresh float64 NumPy array (exact)."""
    return np.array(tf.cast(t, tf.float64).numpy(), dtype=np.float64, copy=True)


class _TfBase(Target):
    """Shared machinery: device placement, tensors in and out, gradients through tf.GradientTape."""

    framework: ClassVar[str] = "tensorflow"
    devices: ClassVar[tuple[str, ...] | None] = ("cpu", "cuda")

    def repro_source(self) -> str:
        """Standalone code defining run(case, inputs) for reproduction scripts (numpy and tensorflow only)."""
        return REPRO_SOURCE.format(fused=isinstance(self, TfFused))

    def _gradients(self, tf: Any, case: Case, phase: str, inputs: Inputs, tape: Any, y: Any, x: Any,
                   params: list[Any], obs: Observation) -> None:
        """dx, dgamma, dbeta of sum(y * dy): the tape's gradients with dy as the output gradient."""
        dy = _tensor(tf, inputs[f"{phase}.dy"], case.dtype)
        grads = tape.gradient(y, [x, *params], output_gradients=dy)
        obs[f"{phase}.dx"] = _numpy(tf, grads[0])
        if case.affine:
            obs[f"{phase}.dgamma"] = _numpy(tf, grads[1])
            obs[f"{phase}.dbeta"] = _numpy(tf, grads[2])


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

    def run(self, case: Case, inputs: Inputs) -> Observation:
        """Run every phase of the case through tf.nn and collect what it exposes."""
        import tensorflow as tf

        obs: Observation = {}
        axes = [a for a in range(len(case.shape)) if a != case.channel_axis]
        bshape = [1] * len(case.shape)
        bshape[case.channel_axis] = case.channels
        pdt = getattr(tf, _DTYPES[case.param_dtype])
        with tf.device(_tf_device(self.device)):
            gamma = _tensor(tf, inputs["gamma"], case.param_dtype) if case.affine else None
            beta = _tensor(tf, inputs["beta"], case.param_dtype) if case.affine else None
            rm = _tensor(tf, inputs["running_mean"], case.param_dtype) if case.track_running_stats else None
            rv = _tensor(tf, inputs["running_var"], case.param_dtype) if case.track_running_stats else None
            for phase in case.phases:
                batch_stats = phase != "eval" or not case.track_running_stats
                x = _tensor(tf, inputs[f"{phase}.x"], case.dtype)
                params = [gamma, beta] if case.affine else []
                with tf.GradientTape(persistent=False, watch_accessed_variables=False) as tape:
                    tape.watch([x, *params])
                    if batch_stats:
                        mean, var = tf.nn.moments(x, axes=axes, keepdims=True)
                        stats = (mean, var)
                        if mean.dtype != pdt:  # half moments with float32 parameters: exact upcast
                            mean, var = tf.cast(mean, pdt), tf.cast(var, pdt)
                    else:
                        mean, var = tf.reshape(rm, bshape), tf.reshape(rv, bshape)
                    scale = tf.reshape(gamma, bshape) if case.affine else None
                    offset = tf.reshape(beta, bshape) if case.affine else None
                    y = tf.nn.batch_normalization(x, mean, var, offset, scale, variance_epsilon=case.eps)
                obs[f"{phase}.y"] = _numpy(tf, y)
                if batch_stats:
                    obs[f"{phase}.batch_mean"] = _numpy(tf, tf.reshape(stats[0], [case.channels]))
                    obs[f"{phase}.batch_var"] = _numpy(tf, tf.reshape(stats[1], [case.channels]))
                if case.grad:
                    self._gradients(tf, case, phase, inputs, tape, y, x, params, obs)
        return obs


class TfFused(_TfBase):
    """tf.raw_ops.FusedBatchNormV3, eagerly, carrying running statistics from step to step."""

    family: ClassVar[str] = "tf.fused"
    description: ClassVar[str] = (
        "tf.raw_ops.FusedBatchNormV3 (is_training, exponential_avg_factor = momentum), eager, "
        "NHWC/NCHW/NDHWC/NCDHW"
    )
    conventions: ClassVar[Conventions] = TF_FUSED_CONVENTIONS

    def _data_format(self, case: Case) -> str:
        """The data_format attribute that matches the case's physical layout and rank."""
        rank = len(case.shape)  # ranks 2 and 3 get the 4-D formats: the kernel refuses them (not reshaped here)
        if case.layout == "channels_last":
            return "NDHWC" if rank == 5 else "NHWC"
        return "NCDHW" if rank == 5 else "NCHW"

    def run(self, case: Case, inputs: Inputs) -> Observation:
        """Run every phase of `case` through FusedBatchNormV3 and collect its outputs."""
        import tensorflow as tf

        obs: Observation = {}
        C = case.channels
        fmt = self._data_format(case)
        factor = float(case.momentum)  # "new" form: the weight of the batch statistic
        pd = case.param_dtype  # U as the case says: the kernel itself refuses anything but float32
        with tf.device(_tf_device(self.device)):
            pdt = getattr(tf, _DTYPES[pd])
            scale = _tensor(tf, inputs["gamma"], pd) if case.affine else tf.ones([C], pdt)
            offset = _tensor(tf, inputs["beta"], pd) if case.affine else tf.zeros([C], pdt)
            if case.track_running_stats:
                rm = _tensor(tf, inputs["running_mean"], pd)
                rv = _tensor(tf, inputs["running_var"], pd)
            for phase in case.phases:
                training = phase != "eval"
                batch_stats = training or not case.track_running_stats
                x = _tensor(tf, inputs[f"{phase}.x"], case.dtype)
                if batch_stats and case.track_running_stats:
                    mean, var, f = rm, rv, factor
                elif batch_stats:  # no running statistics: batch statistics, factor 1 (mean/variance unused)
                    mean, var, f = tf.zeros([0], pdt), tf.zeros([0], pdt), 1.0
                else:
                    mean, var, f = rm, rv, 1.0
                params = [scale, offset] if case.affine else []
                with tf.GradientTape(persistent=False, watch_accessed_variables=False) as tape:
                    tape.watch([x, *params])
                    out = tf.raw_ops.FusedBatchNormV3(
                        x=x, scale=scale, offset=offset, mean=mean, variance=var, epsilon=case.eps,
                        exponential_avg_factor=f, data_format=fmt, is_training=batch_stats,
                    )
                y = out.y
                obs[f"{phase}.y"] = _numpy(tf, y)
                if batch_stats:
                    obs[f"{phase}.batch_mean"] = _numpy(tf, out.reserve_space_1)
                    if self.device == "cuda":  # cuDNN saves 1/sqrt(var + eps) (unverified here)
                        obs[f"{phase}.batch_invstd"] = _numpy(tf, out.reserve_space_2)
                    else:
                        obs[f"{phase}.batch_var"] = _numpy(tf, out.reserve_space_2)
                    if f == 1.0:  # the batch_variance output is then the Bessel-corrected batch variance
                        obs[f"{phase}.batch_var_unbiased"] = _numpy(tf, out.batch_variance)
                if training and case.track_running_stats:
                    rm, rv = out.batch_mean, out.batch_variance
                    obs[f"{phase}.running_mean"] = _numpy(tf, rm)
                    obs[f"{phase}.running_var"] = _numpy(tf, rv)
                if case.grad:
                    self._gradients(tf, case, phase, inputs, tape, y, x, params, obs)
        return obs


REPRO_SOURCE = '''
import tensorflow as tf

FUSED = {fused!r}  # True: tf.raw_ops.FusedBatchNormV3; False: tf.nn.moments + tf.nn.batch_normalization
TRANSPORT = {{"float16": np.float16, "bfloat16": np.float32, "float32": np.float32, "float64": np.float64}}


def _tensor(a, dtype):
    t = tf.convert_to_tensor(np.array(a, dtype=TRANSPORT[dtype], copy=True))
    return tf.identity(tf.cast(t, getattr(tf, dtype)))  # bfloat16 values travel as float32: the cast is exact


def _out(t):
    return np.array(tf.cast(t, tf.float64).numpy(), dtype=np.float64, copy=True)


def run(case, inputs):
    """Every phase through TensorFlow, eagerly, collecting what bncheck compares."""
    C, rank, tracked = case["shape"][1], len(case["shape"]), case["track_running_stats"]
    last = case["layout"] == "channels_last"
    ch = rank - 1 if last else 1
    axes = [a for a in range(rank) if a != ch]
    bshape = [C if a == ch else 1 for a in range(rank)]
    fmt = ("NDHWC" if rank == 5 else "NHWC") if last else ("NCDHW" if rank == 5 else "NCHW")
    pd = case["param_dtype"]  # the fused kernel refuses parameters other than float32 itself
    gamma = beta = rm = rv = None
    out = {{}}
    with tf.device("/GPU:0" if DEVICE == "cuda" else "/CPU:0"):
        if case["affine"]:
            gamma, beta = _tensor(inputs["gamma"], pd), _tensor(inputs["beta"], pd)
        elif FUSED:
            gamma, beta = tf.ones([C], getattr(tf, pd)), tf.zeros([C], getattr(tf, pd))
        if tracked:
            rm, rv = _tensor(inputs["running_mean"], pd), _tensor(inputs["running_var"], pd)
        for phase in PHASES:
            training = phase != "eval"
            batch = training or not tracked
            x = _tensor(inputs[phase + ".x"], case["dtype"])
            params = [gamma, beta] if case["affine"] else []
            with tf.GradientTape(persistent=False, watch_accessed_variables=False) as tape:
                tape.watch([x, *params])
                if FUSED:
                    # exponential_avg_factor weights the NEW batch statistic (bncheck's momentum); factor 1 and
                    # empty mean/variance when there are no running statistics
                    if batch and tracked:
                        mean, var, f = rm, rv, float(case["momentum"])
                    elif batch:
                        mean, var, f = tf.zeros([0], getattr(tf, pd)), tf.zeros([0], getattr(tf, pd)), 1.0
                    else:
                        mean, var, f = rm, rv, 1.0
                    res = tf.raw_ops.FusedBatchNormV3(
                        x=x, scale=gamma, offset=beta, mean=mean, variance=var, epsilon=case["eps"],
                        exponential_avg_factor=f, data_format=fmt, is_training=batch)
                    y = res.y
                else:
                    if batch:
                        mean, var = stats = tf.nn.moments(x, axes=axes, keepdims=True)
                        if mean.dtype != getattr(tf, pd):  # half moments with float32 parameters: exact upcast
                            mean, var = tf.cast(mean, getattr(tf, pd)), tf.cast(var, getattr(tf, pd))
                    else:
                        mean, var = tf.reshape(rm, bshape), tf.reshape(rv, bshape)
                    scale = tf.reshape(gamma, bshape) if case["affine"] else None
                    offset = tf.reshape(beta, bshape) if case["affine"] else None
                    y = tf.nn.batch_normalization(x, mean, var, offset, scale, variance_epsilon=case["eps"])
            out[phase + ".y"] = _out(y)
            if batch and FUSED:
                out[phase + ".batch_mean"] = _out(res.reserve_space_1)  # batch mean
                # reserve_space_2: the biased batch variance on CPU, 1/sqrt(var + eps) under cuDNN
                out[phase + (".batch_invstd" if DEVICE == "cuda" else ".batch_var")] = _out(res.reserve_space_2)
                if f == 1.0:  # batch_variance is then the Bessel-corrected batch variance
                    out[phase + ".batch_var_unbiased"] = _out(res.batch_variance)
            elif batch:
                out[phase + ".batch_mean"] = _out(tf.reshape(stats[0], [C]))
                out[phase + ".batch_var"] = _out(tf.reshape(stats[1], [C]))
            if FUSED and training and tracked:  # the fused outputs batch_mean/batch_variance: updated running stats
                rm, rv = res.batch_mean, res.batch_variance
                out[phase + ".running_mean"], out[phase + ".running_var"] = _out(rm), _out(rv)
            if phase + ".dy" in inputs:
                grads = tape.gradient(y, [x, *params], output_gradients=_tensor(inputs[phase + ".dy"], case["dtype"]))
                out[phase + ".dx"] = _out(grads[0])
                if case["affine"]:
                    out[phase + ".dgamma"], out[phase + ".dbeta"] = _out(grads[1]), _out(grads[2])
    return out
'''
