"""Keras 3's BN path: keras.layers.BatchNormalization, eagerly, on the TensorFlow, JAX or PyTorch backend.

Keras picks its backend once per process, from KERAS_BACKEND; the caller sets it (the worker's framework record,
or the reproduction script before it embeds this file). Gradients are taken as each backend's own Keras trainer
takes them in train_step: tf.GradientTape, jax.vjp over Layer.stateless_call (the new moving statistics assigned
back), torch autograd. On TensorFlow the layer call (with its tape) can also be traced into
tf.function(jit_compile=True), as model.fit compiles train_step with XLA: one layer and one traced function per
signature, reused by every case that has it (its variables are assigned from each case first).

A kernel-path module: the adapter (bncheck.targets.keras_targets) calls `keras_bn` in its worker, and a
reproduction script embeds this file verbatim and calls the same function. So it imports no bncheck module and
imports keras and its backend only inside its functions; a case is the plain dictionary of its canonical JSON.
"""
import os
from typing import Any

import numpy as np


class PathUnsupported(Exception):
    """This process cannot run the case (the adapter records it as unsupported, with this reason)."""


def keras_import(backend: str) -> Any:
    """Import keras for `backend` (JAX first gets x64 so float64 arrays stay float64)."""
    os.environ.setdefault("KERAS_BACKEND", backend)  # a worker has it set already; a reproduction script not
    if backend == "jax" and os.environ.get("KERAS_BACKEND", "") == "jax":
        import jax

        # float64 arrays exist in JAX only with x64 on; it must be set before the first array is created
        jax.config.update("jax_enable_x64", True)
    import keras

    if keras.backend.backend() != backend:
        raise PathUnsupported(f"this process runs Keras on the {keras.backend.backend()} backend; the path needs "
                              f"KERAS_BACKEND={backend} (Keras picks its backend once per process)")
    return keras


def keras_tensor(keras: Any, a: np.ndarray, dtype: str) -> Any:
    """NumPy transport array -> a new backend tensor of `dtype` (bfloat16 from float32 is exact)."""
    t = keras.ops.convert_to_tensor(np.array(a, copy=True), dtype=str(np.asarray(a).dtype))
    return t if str(np.asarray(a).dtype) == dtype else keras.ops.cast(t, dtype)


def keras_numpy(keras: Any, t: Any) -> np.ndarray:
    """Backend tensor or variable -> a fresh float64 NumPy array (half types widened exactly first)."""
    if keras.backend.standardize_dtype(t.dtype) in ("float16", "bfloat16"):
        t = keras.ops.cast(t, "float32")
    return np.array(keras.ops.convert_to_numpy(t), dtype=np.float64, copy=True)


def keras_call(keras: Any, backend: str, layer: Any, x: Any, training: bool, dy: Any, affine: bool) -> tuple:
    """y = layer(x, training) (updating its moving statistics in training) and, with dy, [dx, dgamma, dbeta]."""
    if backend == "jax":  # Layer.stateless_call under jax.vjp, as the Keras JAX trainer does
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        state = [v.value for v in layer.non_trainable_variables]

        def forward(x_: Any, params: list) -> tuple:
            """(y, new non-trainable values) of the layer for input x_ and trainable values params."""
            return layer.stateless_call(params, state, x_, training=training)

        grads = None
        if dy is None:
            y, new_state = forward(x, trainable)
        else:
            y, vjp, new_state = jax.vjp(forward, x, trainable, has_aux=True)
            dx, dparams = vjp(dy)
            grads = [dx]
            if affine:
                index = {id(v): i for i, v in enumerate(layer.trainable_variables)}
                grads += [dparams[index[id(layer.gamma)]], dparams[index[id(layer.beta)]]]
        for var, value in zip(layer.non_trainable_variables, new_state):
            var.assign(value)
        return y, grads
    if dy is None:
        return layer(x, training=training), None
    if backend == "tensorflow":  # tf.GradientTape; output_gradients give the VJP with dy
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
        sources = [x] + ([layer.gamma.value, layer.beta.value] if affine else [])
        return y, tape.gradient(y, sources, output_gradients=dy)
    x = x.detach().requires_grad_(True)  # torch autograd: y.backward(dy) and the .grad of x, gamma and beta
    params = [layer.gamma.value, layer.beta.value] if affine else []
    for p in params:
        p.grad = None
    y = layer(x, training=training)
    y.backward(dy)
    return y, [x.grad] + [p.grad for p in params]


def keras_device(backend: str, device: str) -> str:
    """The keras.device() name of a device: 'cpu'/'cuda' for torch (Keras creates variables as
    Parameter(...).to(device), and a name that differs only by ':0' makes a non-leaf copy without .grad),
    'cpu:0'/'gpu:0' otherwise."""
    if backend == "torch":
        return "cuda" if device == "cuda" else "cpu"
    return "gpu:0" if device == "cuda" else "cpu:0"


def keras_layer(keras: Any, case: dict, shape: tuple) -> Any:
    """A built keras.layers.BatchNormalization configured as the case says, as users write it for their layout."""
    dt, pd, affine = case["dtype"], case["param_dtype"], case["affine"]
    last, rank = case["layout"] == "channels_last", len(case["shape"])
    layer = keras.layers.BatchNormalization(
        axis=1 if not last and rank > 2 else -1,  # what users write for their layout
        momentum=1.0 - case["momentum"],  # Keras weights the OLD moving value: 1 - bncheck's momentum
        epsilon=case["eps"], center=affine, scale=affine,
        dtype=dt if pd == dt else "mixed_" + dt)  # half inputs with float32 parameters: a mixed policy
    layer.build(shape)
    return layer


def keras_xla_call(keras: Any, layer: Any, training: bool, affine: bool, grad: bool) -> Any:
    """tf.function(jit_compile=True) of keras_call on the TensorFlow backend: call(x, dy) -> (y, grads)."""
    import tensorflow as tf

    def call(x: Any, dy: Any) -> tuple:
        return keras_call(keras, "tensorflow", layer, x, training, dy if grad else None, affine)

    return tf.function(call, jit_compile=True)


def keras_bn(case: dict, inputs: dict, phases: list, device: str, cache: dict, backend: str = "tensorflow",
             jit_compile: bool = False) -> dict:
    """Every phase of `case` through one keras.layers.BatchNormalization: y, the moving statistics after each
    training step, and with gradients dx, dgamma, dbeta. jit_compile (TensorFlow only): each phase through a
    cached tf.function(jit_compile=True) of the layer call, one layer and one trace per signature."""
    keras = keras_import(backend)
    if not case["track_running_stats"]:
        raise PathUnsupported("Keras BatchNormalization always keeps moving statistics")
    if jit_compile and backend != "tensorflow":
        raise PathUnsupported(f"jit_compile is tf.function(jit_compile=True), TensorFlow only (backend {backend})")
    dt, pd, affine = case["dtype"], case["param_dtype"], case["affine"]
    shape = tuple(np.shape(inputs[phases[0] + ".x"]))
    key = ("keras_bn", device, shape, case["layout"], dt, pd, case["eps"], case["momentum"], affine, case["grad"])
    out = {}
    with keras.device(keras_device(backend, device)):
        if not jit_compile:
            layer = keras_layer(keras, case, shape)
        elif key not in cache:  # the layer and its traced calls (training and evaluation), reused per signature
            layer = keras_layer(keras, case, shape)
            cache[key] = (layer, {t: keras_xla_call(keras, layer, t, affine, case["grad"]) for t in (True, False)})
        if jit_compile:
            layer, calls = cache[key]
        names = [("gamma", "gamma"), ("beta", "beta")] if affine else []
        for attr, key_ in names + [("moving_mean", "running_mean"), ("moving_variance", "running_var")]:
            getattr(layer, attr).assign(keras_tensor(keras, inputs[key_], pd))
        for phase in phases:
            training = phase != "eval"
            x = keras_tensor(keras, inputs[phase + ".x"], dt)
            dy = keras_tensor(keras, inputs[phase + ".dy"], dt) if case["grad"] else None
            if jit_compile:
                y, grads = calls[training](x, dy)
            else:
                y, grads = keras_call(keras, backend, layer, x, training, dy, affine)
            out[phase + ".y"] = keras_numpy(keras, y)
            if training:
                out[phase + ".running_mean"] = keras_numpy(keras, layer.moving_mean.value)
                out[phase + ".running_var"] = keras_numpy(keras, layer.moving_variance.value)
            if grads is not None:
                out[phase + ".dx"] = keras_numpy(keras, grads[0])
                if affine:
                    out[phase + ".dgamma"] = keras_numpy(keras, grads[1])
                    out[phase + ".dbeta"] = keras_numpy(keras, grads[2])
    return out
