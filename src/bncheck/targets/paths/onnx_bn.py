"""The ONNX BN path: a one-node BatchNormalization model (opsets 9, 14, 15), run by ONNX Runtime or by ONNX's own
reference evaluator (onnx.reference.ReferenceEvaluator).

A kernel-path module: the adapters (bncheck.targets.ort_targets, bncheck.targets.onnx_reference_targets) call
`onnx_bn` in their worker, and a reproduction script embeds this file verbatim and calls the same function. So it
imports no bncheck module and imports onnx/onnxruntime only inside its functions; a case is the plain dictionary
of its canonical JSON. `onnx_run_model` also runs models that another path exported (torch.onnx.export).
"""
from typing import Any

import numpy as np

# IR version written into every model. onnx 1.23 writes IR 14 by default, which ORT 1.31 refuses (it reads at
# most IR 13). IR 8 is the version released with opset 15 (ONNX 1.10; onnx.helper.VERSION_TABLE), the
# smallest that may import opset 15, and it may import the older opsets 14 and 9 as well; the checker accepts
# all three combinations and every ORT release that implements opset 15 reads it.
ONNX_IR_VERSION = 8
ONNX_NP_DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64}


class PathUnsupported(Exception):
    """The runtime has no kernel for this model (the adapter records the case as unsupported, with this reason)."""


def onnx_bn_model(opset: int, training: bool, rank: int, dtype: str, param_dtype: str, eps: float,
                  momentum: float) -> bytes:
    """Serialised one-node BatchNormalization model; ONNX momentum is the weight of the running value."""
    import onnx
    from onnx import helper

    xt = helper.np_dtype_to_tensor_dtype(np.dtype(ONNX_NP_DTYPES[dtype]))
    pt = helper.np_dtype_to_tensor_dtype(np.dtype(ONNX_NP_DTYPES[param_dtype]))
    # symbolic dimensions (the checker wants a shape): one session serves every shape of a given rank
    dims = ["N", "C", *(f"D{i}" for i in range(1, rank - 1))]
    inputs = [helper.make_tensor_value_info("X", xt, dims)]
    inputs += [helper.make_tensor_value_info(n, pt, ["C"]) for n in ("scale", "B", "input_mean", "input_var")]
    outputs = [helper.make_tensor_value_info("Y", xt, dims)]
    attrs: dict = {"epsilon": float(eps), "momentum": float(momentum)}
    if training:
        attrs["training_mode"] = 1
        outputs += [helper.make_tensor_value_info(n, pt, ["C"]) for n in ("running_mean", "running_var")]
    node = helper.make_node("BatchNormalization", ["X", "scale", "B", "input_mean", "input_var"],
                            [o.name for o in outputs], **attrs)
    graph = helper.make_graph([node], f"bncheck_bn_opset{opset}", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ONNX_IR_VERSION,
                              producer_name="bncheck")
    onnx.checker.check_model(model)
    return model.SerializeToString()


def onnx_first_line(e: BaseException) -> str:
    """First line of an exception message."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def onnx_ort_session(model: bytes, device: str, what: str) -> Any:
    """An onnxruntime InferenceSession with default graph optimisations (what users run) on `device`."""
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    # idle pool threads sleep instead of spinning: spinning only changes speed, never results, and on a small
    # machine it steals the CPU the rest of the worker (and bncheck's judging) needs after each run
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if device == "cuda":
        providers = ["CUDAExecutionProvider"]
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    else:
        providers = ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(model, options, providers=providers)
    except OrtNotImplemented as e:
        raise PathUnsupported(f"onnxruntime has no {device} kernel for {what}: {onnx_first_line(e)}") from None
    except Exception as e:
        if "fallback to CPU EP has been explicitly disabled" in str(e):
            raise PathUnsupported(f"onnxruntime has no CUDA kernel for {what}") from None
        raise
    if providers[0] not in session.get_providers():
        raise PathUnsupported(f"{providers[0]} is not usable in this onnxruntime (session got {session.get_providers()})")
    return session


def onnx_reference_session(model: bytes, what: str) -> Any:
    """An onnx.reference.ReferenceEvaluator of the model, with the same run(None, feeds) call as onnxruntime."""
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model)


def onnx_run_model(runtime: str, model: bytes, device: str, what: str, cache: dict, key: Any, feeds: dict) -> list:
    """Run a serialised model on `runtime` ('ort' or 'reference'), its session cached in `cache` under `key`."""
    if key not in cache:
        cache[key] = onnx_ort_session(model, device, what) if runtime == "ort" else onnx_reference_session(model, what)
    return cache[key].run(None, feeds)


def onnx_bn(case: dict, inputs: dict, phases: list, device: str, cache: dict, opset: int = 15,
            runtime: str = "ort") -> dict:
    """Every phase of `case` through the one-node model of `opset` on `runtime`, carrying running statistics
    from step to step (training_mode=1 for training steps, inference for eval); float64 arrays."""
    xdt, pdt, C = ONNX_NP_DTYPES[case["dtype"]], ONNX_NP_DTYPES[case["param_dtype"]], case["shape"][1]
    scale = np.asarray(inputs["gamma"], dtype=pdt) if case["affine"] else np.ones(C, pdt)
    bias = np.asarray(inputs["beta"], dtype=pdt) if case["affine"] else np.zeros(C, pdt)
    rmean = np.ascontiguousarray(inputs["running_mean"], dtype=pdt)
    rvar = np.ascontiguousarray(inputs["running_var"], dtype=pdt)
    momentum = 1.0 - case["momentum"]  # ONNX momentum weights the OLD running value: 1 - bncheck's canonical one
    last, rank = case["layout"] == "channels_last", len(case["shape"])
    out = {}
    for phase in phases:
        training = phase != "eval"
        x = np.asarray(inputs[phase + ".x"], dtype=xdt)
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1) if last else x)  # ONNX is channels-first: exact transpose
        key = (runtime, opset, training, rank, case["dtype"], case["param_dtype"], case["eps"], momentum, device)
        what = (f"BatchNormalization opset {opset} {'training' if training else 'inference'} "
                f"{case['dtype']}/{case['param_dtype']}")
        model = None if key in cache else onnx_bn_model(opset, training, rank, case["dtype"], case["param_dtype"],
                                                        case["eps"], momentum)
        feeds = {"X": x, "scale": scale, "B": bias, "input_mean": rmean, "input_var": rvar}
        results = onnx_run_model(runtime, model, device, what, cache, key, feeds)
        y = np.asarray(results[0], dtype=np.float64)
        out[phase + ".y"] = np.ascontiguousarray(np.moveaxis(y, 1, -1) if last else y)
        if training:
            rmean, rvar = results[1], results[2]
            out[phase + ".running_mean"] = np.asarray(rmean, dtype=np.float64)
            out[phase + ".running_var"] = np.asarray(rvar, dtype=np.float64)
    return out
