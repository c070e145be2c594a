"""TensorFlow's BN paths: tf.nn.moments + tf.nn.batch_normalization, and the fused kernel
tf.raw_ops.FusedBatchNormV3, run eagerly (no tf.function), as a user calling these ops directly would, or
traced once per signature into tf.function(jit_compile=True), so that XLA compiles them.

A kernel-path module: the adapter (bncheck.targets.tf_targets) calls `tf_bn` in the tensorflow worker, and a
reproduction script embeds this file verbatim and calls the same function. So it imports no bncheck module and
imports tensorflow only inside its functions; a case is the plain dictionary of its canonical JSON.
"""
from typing import Any, Callable

import numpy as np

TF_TRANSPORT = {"float16": np.float16, "bfloat16": np.float32, "float32": np.float32, "float64": np.float64}


def tf_tensor(a: np.ndarray, dtype: str) -> Any:
    """NumPy transport array -> a new tensor of `dtype` on the current device (exact; never aliases `a`)."""
    import tensorflow as tf

    t = tf.convert_to_tensor(np.array(a, dtype=TF_TRANSPORT[dtype], copy=True))
    # bfloat16 travels as float32 holding representable values: the cast is exact; identity places and copies
    return tf.identity(tf.cast(t, getattr(tf, dtype)))


def tf_numpy(t: Any) -> np.ndarray:
    """tensor -> a fresh float64 NumPy array (exact)."""
    import tensorflow as tf

    return np.array(tf.cast(t, tf.float64).numpy(), dtype=np.float64, copy=True)


def tf_data_format(case: dict) -> str:
    """The FusedBatchNormV3 data_format that matches the case's physical layout and rank."""
    rank = len(case["shape"])  # ranks 2 and 3 get the 4-D formats: the kernel refuses them (they are not reshaped)
    if case["layout"] == "channels_last":
        return "NDHWC" if rank == 5 else "NHWC"
    return "NCDHW" if rank == 5 else "NCHW"


def tf_bn_step(case: dict, fused: bool, training: bool, device: str) -> Callable:
    """One phase kind's step(x, dy, gamma, beta, rm, rv) -> {name: tensor}: the forward call under
    tf.GradientTape and, with dy, the gradients of sum(y * dy). Static facts (eps, momentum, layout, flags) are
    read from the case, so a traced step serves every case of its signature."""
    import tensorflow as tf

    C, rank, tracked, affine = case["shape"][1], len(case["shape"]), case["track_running_stats"], case["affine"]
    ch = rank - 1 if case["layout"] == "channels_last" else 1
    axes = [a for a in range(rank) if a != ch]
    bshape = [C if a == ch else 1 for a in range(rank)]
    pd = case["param_dtype"]  # as the case says: the fused kernel itself refuses anything but float32 (U = float)
    batch = training or not tracked
    eps, momentum, grad = case["eps"], float(case["momentum"]), case["grad"]

    def step(x: Any, dy: Any, gamma: Any, beta: Any, rm: Any, rv: Any) -> dict:
        params = [gamma, beta] if affine else []
        with tf.GradientTape(persistent=False, watch_accessed_variables=False) as tape:
            tape.watch([x, *params])
            if fused:
                if not affine:  # affine=false is fed as scale=1, offset=0
                    gamma, beta = tf.ones([C], getattr(tf, pd)), tf.zeros([C], getattr(tf, pd))
                # exponential_avg_factor weights the NEW batch statistic (bncheck's momentum); factor 1 and
                # empty mean/variance when there are no running statistics
                if batch and tracked:
                    mean, var, f = rm, rv, momentum
                elif batch:
                    mean, var, f = tf.zeros([0], getattr(tf, pd)), tf.zeros([0], getattr(tf, pd)), 1.0
                else:
                    mean, var, f = rm, rv, 1.0
                res = tf.raw_ops.FusedBatchNormV3(
                    x=x, scale=gamma, offset=beta, mean=mean, variance=var, epsilon=eps,
                    exponential_avg_factor=f, data_format=tf_data_format(case), is_training=batch)
                y = res.y
            else:
                if batch:
                    mean, var = stats = tf.nn.moments(x, axes=axes, keepdims=True)
                    if mean.dtype != getattr(tf, pd):  # half moments with float32 parameters: exact upcast
                        mean, var = tf.cast(mean, getattr(tf, pd)), tf.cast(var, getattr(tf, pd))
                else:
                    mean, var = tf.reshape(rm, bshape), tf.reshape(rv, bshape)
                scale = tf.reshape(gamma, bshape) if affine else None
                offset = tf.reshape(beta, bshape) if affine else None
                y = tf.nn.batch_normalization(x, mean, var, offset, scale, variance_epsilon=eps)
        out = {"y": y}
        if batch and fused:
            out["batch_mean"] = res.reserve_space_1  # the batch mean
            # reserve_space_2: the biased batch variance on CPU, 1/sqrt(var + eps) under cuDNN (unverified)
            out["batch_invstd" if device == "cuda" else "batch_var"] = res.reserve_space_2
            if f == 1.0:  # batch_variance is then the Bessel-corrected batch variance
                out["batch_var_unbiased"] = res.batch_variance
        elif batch:
            out["batch_mean"], out["batch_var"] = tf.reshape(stats[0], [C]), tf.reshape(stats[1], [C])
        if fused and training and tracked:  # outputs batch_mean/batch_variance: the UPDATED running statistics
            out["running_mean"], out["running_var"] = res.batch_mean, res.batch_variance
        if grad:
            grads = tape.gradient(y, [x, *params], output_gradients=dy)
            out["dx"] = grads[0]
            if affine:
                out["dgamma"], out["dbeta"] = grads[1], grads[2]
        return out

    return step


def tf_bn(case: dict, inputs: dict, phases: list, device: str, cache: dict, fused: bool = False,
          jit_compile: bool = False) -> dict:
    """Every phase of `case` through FusedBatchNormV3 (fused=True) or tf.nn.moments + tf.nn.batch_normalization,
    with gradients of sum(y * dy) from tf.GradientTape; eagerly, or (jit_compile=True) through one
    tf.function(jit_compile=True) per signature, kept in `cache` and reused by every case that has it."""
    import tensorflow as tf

    tracked, affine = case["track_running_stats"], case["affine"]
    pd = case["param_dtype"]
    gamma = beta = rm = rv = None
    out = {}
    with tf.device("/GPU:0" if device == "cuda" else "/CPU:0"):
        if affine:
            gamma, beta = tf_tensor(inputs["gamma"], pd), tf_tensor(inputs["beta"], pd)
        if tracked:
            rm, rv = tf_tensor(inputs["running_mean"], pd), tf_tensor(inputs["running_var"], pd)
        for phase in phases:
            training = phase != "eval"
            if jit_compile:
                # everything the trace bakes in; the shape keeps each traced function to one XLA compilation
                key = ("tf_bn", fused, device, tuple(case["shape"]), case["layout"], case["dtype"], case["param_dtype"],
                       case["eps"], case["momentum"], affine, tracked, case["grad"], training)
                if key not in cache:
                    cache[key] = tf.function(tf_bn_step(case, fused, training, device), jit_compile=True)
                step = cache[key]
            else:
                step = tf_bn_step(case, fused, training, device)
            x = tf_tensor(inputs[phase + ".x"], case["dtype"])
            dy = tf_tensor(inputs[phase + ".dy"], case["dtype"]) if case["grad"] else None
            res = step(x, dy, gamma, beta, rm, rv)
            if "running_mean" in res:  # carried to the next phase
                rm, rv = res["running_mean"], res["running_var"]
            out.update({phase + "." + k: tf_numpy(v) for k, v in res.items()})
    return out
