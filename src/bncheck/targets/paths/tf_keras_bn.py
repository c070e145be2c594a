"""Keras 2's BN path: tf.keras.layers.BatchNormalization from the tf_keras package (fused=True: the layer calls
FusedBatchNormV3; fused=False: tf.nn.moments and tf.nn.batch_normalization), eagerly, gradients by
tf.GradientTape as Keras 2's train_step takes them.

TensorFlow 2.16+ routes tf.keras to Keras 3 unless TF_USE_LEGACY_KERAS is set before tensorflow is imported, when
tf.keras is tf_keras (Keras 2): the worker's framework record sets it, and this module sets it by default for a
reproduction script. The module checks that tf.keras really is Keras 2 before it builds a layer.

A kernel-path module: the adapter (bncheck.targets.tf_keras_targets) calls `tf_keras_bn` in the tf-keras worker,
and a reproduction script embeds this file verbatim and calls the same function. So it imports no bncheck module
and imports tensorflow only inside its functions; a case is the plain dictionary of its canonical JSON.
"""
import os
from typing import Any

import numpy as np


class PathUnsupported(Exception):
    """This process cannot run the case (the adapter records it as unsupported, with this reason)."""


def tf_keras_import() -> tuple:
    """(tensorflow, tf.keras) with tf.keras being Keras 2, or PathUnsupported when this process has Keras 3."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # read once, when tensorflow is first imported
    import tensorflow as tf

    where = tf.keras.layers.BatchNormalization.__module__  # tf_keras.src... for Keras 2, keras.src... for Keras 3
    if not where.startswith("tf_keras."):
        raise PathUnsupported(f"tf.keras is not Keras 2 in this process (its BatchNormalization is {where}); Keras 2 "
                              "needs tf_keras installed and TF_USE_LEGACY_KERAS=1 set before tensorflow is imported")
    return tf, tf.keras


def tf_keras_version() -> str:
    """The version of the tf_keras package that tf.keras is (import it after tf_keras_import)."""
    import tf_keras

    return tf_keras.__version__


def tf_keras_tensor(tf: Any, a: np.ndarray, dtype: str) -> Any:
    """NumPy transport array -> a new tensor of `dtype` (bfloat16 travels as float32: the cast is exact)."""
    t = tf.convert_to_tensor(np.array(a, copy=True))
    return tf.identity(tf.cast(t, getattr(tf, dtype)))


def tf_keras_numpy(tf: Any, t: Any) -> np.ndarray:
    """tensor or variable -> a fresh float64 NumPy array (exact)."""
    return np.array(tf.cast(tf.convert_to_tensor(t), tf.float64).numpy(), dtype=np.float64, copy=True)


def tf_keras_bn(case: dict, inputs: dict, phases: list, device: str, cache: dict, fused: bool = True) -> dict:
    """Every phase of `case` through one Keras 2 BatchNormalization(fused=fused): y, the moving statistics after
    each training step, and with gradients dx, dgamma, dbeta."""
    tf, keras = tf_keras_import()
    if not case["track_running_stats"]:
        raise PathUnsupported("Keras BatchNormalization always keeps moving statistics")
    dt, pd, affine = case["dtype"], case["param_dtype"], case["affine"]
    last, rank = case["layout"] == "channels_last", len(case["shape"])
    out = {}
    with tf.device("/GPU:0" if device == "cuda" else "/CPU:0"):
        # a half layer keeps float32 variables either way (BatchNormalization._param_dtype); float32 parameters
        # with half inputs is the mixed policy users write
        policy = dt if pd == dt else keras.mixed_precision.Policy("mixed_" + dt)
        layer = keras.layers.BatchNormalization(
            axis=1 if not last and rank > 2 else -1, momentum=1.0 - case["momentum"],  # Keras: weight of the OLD value
            epsilon=case["eps"], center=affine, scale=affine, fused=fused, dtype=policy)
        layer.build(tuple(np.shape(inputs[phases[0] + ".x"])))
        names = [("gamma", "gamma"), ("beta", "beta")] if affine else []
        for attr, key in names + [("moving_mean", "running_mean"), ("moving_variance", "running_var")]:
            var = getattr(layer, attr)
            var.assign(tf_keras_tensor(tf, inputs[key], var.dtype.name))
        for phase in phases:
            training = phase != "eval"
            x = tf_keras_tensor(tf, inputs[phase + ".x"], dt)
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=training)
            out[phase + ".y"] = tf_keras_numpy(tf, y)
            if training:
                out[phase + ".running_mean"] = tf_keras_numpy(tf, layer.moving_mean)
                out[phase + ".running_var"] = tf_keras_numpy(tf, layer.moving_variance)
            if case["grad"]:
                dy = tf_keras_tensor(tf, inputs[phase + ".dy"], dt)
                grads = tape.gradient(y, [x] + ([layer.gamma, layer.beta] if affine else []), output_gradients=dy)
                out[phase + ".dx"] = tf_keras_numpy(tf, grads[0])
                if affine:
                    out[phase + ".dgamma"], out[phase + ".dbeta"] = tf_keras_numpy(tf, grads[1]), tf_keras_numpy(tf, grads[2])
    return out
