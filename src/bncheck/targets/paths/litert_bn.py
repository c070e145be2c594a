"""LiteRT's BN path: a Keras 3 model holding one keras.layers.BatchNormalization (built by keras_bn.py, as the
tf.keras path builds it), converted by tf.lite.TFLiteConverter.from_keras_model and run for inference by the
ai_edge_litert Interpreter (with its default XNNPACK delegate). float16_weights=True converts a float32 model with
post-training float16 quantization (target_spec.supported_types = [tf.float16]: constants stored as float16 and
dequantized at load).

The converter bakes the layer's parameters into the model as constants, so a converted model (and its allocated
interpreter) is cached per (shape, layout, dtypes, eps, affine, parameter values): a case with the same parameters
reuses it, any other case converts anew.

A kernel-path module, embedded after keras_bn.py: the adapter (bncheck.targets.litert_targets) calls `litert_bn` in
the litert worker with keras_bn's keras_import, keras_layer and keras_tensor (the source path's own model building),
and a reproduction script embeds both files verbatim and makes the same call. It imports no bncheck module and
imports tensorflow, keras and ai_edge_litert only inside its functions; a case is the plain dictionary of its
canonical JSON.
"""
import hashlib
from typing import Any, Callable

import numpy as np


class PathUnsupported(Exception):
    """This process cannot run the case (the adapter records it as unsupported, with this reason)."""


def litert_model(case: dict, inputs: dict, float16_weights: bool, keras_import: Callable, keras_layer: Callable,
                 keras_tensor: Callable) -> bytes:
    """The .tflite flatbuffer of a Keras model (Input -> BatchNormalization) with the case's parameters, the layer
    built by the tf.keras path's own functions (keras_bn.py)."""
    import tensorflow as tf

    keras = keras_import("tensorflow")
    # float16 weights quantize a float32 model; otherwise the model has the case's dtypes (policy as tf.keras)
    spec = {**case, "dtype": "float32", "param_dtype": "float32"} if float16_weights else case
    shape = tuple(np.shape(inputs["eval.x"]))
    with keras.device("cpu:0"):
        inp = keras.Input(batch_shape=shape, dtype=spec["dtype"])
        layer = keras_layer(keras, spec, shape)
        model = keras.Model(inp, layer(inp))
        names = [("gamma", "gamma"), ("beta", "beta")] if case["affine"] else []
        for attr, key in names + [("moving_mean", "running_mean"), ("moving_variance", "running_var")]:
            getattr(layer, attr).assign(keras_tensor(keras, inputs[key], spec["param_dtype"]))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if float16_weights:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def litert_key(case: dict, inputs: dict, float16_weights: bool) -> tuple:
    """Everything a converted model depends on: its configuration and the bytes of the parameters it bakes in."""
    names = (["gamma", "beta"] if case["affine"] else []) + ["running_mean", "running_var"]
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(inputs[n]).tobytes() for n in names)).hexdigest()
    return ("litert", float16_weights, tuple(np.shape(inputs["eval.x"])), case["layout"], case["dtype"],
            case["param_dtype"], case["eps"], case["affine"], digest)


def litert_bn(case: dict, inputs: dict, phases: list, device: str, cache: dict, float16_weights: bool = False,
              keras_import: Any = None, keras_layer: Any = None, keras_tensor: Any = None) -> dict:
    """eval.y of the converted model run by the LiteRT interpreter (one thread); the model and its interpreter
    are reused for every case with the same key (litert_key). keras_import, keras_layer, keras_tensor: keras_bn's."""
    from ai_edge_litert.interpreter import Interpreter

    if phases != ["eval"] or not case["track_running_stats"]:
        raise PathUnsupported("a converted model runs inference only, with its moving statistics")
    if device != "cpu":
        raise PathUnsupported("the LiteRT interpreter runs on the CPU here")
    key = litert_key(case, inputs, float16_weights)
    if key not in cache:
        model = litert_model(case, inputs, float16_weights, keras_import, keras_layer, keras_tensor)
        interpreter = Interpreter(model_content=model, num_threads=1)
        interpreter.allocate_tensors()
        cache[key] = interpreter
    interpreter = cache[key]
    source, sink = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    # half values travel exactly into a float32 input (float16 weights keep float32 input and output)
    interpreter.set_tensor(source["index"], np.array(inputs["eval.x"], dtype=source["dtype"], copy=True))
    interpreter.invoke()
    return {"eval.y": np.array(interpreter.get_tensor(sink["index"]), dtype=np.float64, copy=True)}
