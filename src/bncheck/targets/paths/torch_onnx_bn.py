"""The PyTorch-to-ONNX conversion path: torch.nn.BatchNormNd exported with torch.onnx.export (the dynamo exporter,
torch's default) and run by ONNX Runtime, as a model is deployed.

For each phase the torch module, in the state it has reached (training steps run eagerly in torch, as a user
trains before exporting), is exported in that phase's mode and the exported model is run on the phase's input.
One export per configuration is kept as a template (shapes dynamic); each phase substitutes the module's current
parameters and running statistics into the template's initializers by name, so the exporter runs once per
configuration instead of once per phase.

A kernel-path module: the adapter (bncheck.targets.torch_onnx_targets) calls `torch_onnx_bn` in the torch-onnx
worker with `run_model` = onnx_bn.onnx_run_model, and a reproduction script embeds onnx_bn.py and this file
verbatim and makes the same call. No bncheck import; torch and onnx are imported inside the functions.
"""
from typing import Any, Callable

import numpy as np

TORCH_ONNX_MODULES = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}


def torch_onnx_reuse_registry() -> None:
    """Build the exporter's aten-to-ONNX registry once per opset and reuse it.

    torch.onnx.export (torch 2.13) rebuilds ONNXRegistry.from_torchlib() from onnxscript's torchlib on every call,
    about 1 s of each 2 to 3 s export on a 2-core machine; an export only reads the registry (dispatch and
    decomposition tables), so the reused one gives the same model (tests/test_torch_onnx_targets.py compares the
    serialised bytes with and without reuse).
    """
    from torch.onnx._internal.exporter import _registration

    cls = _registration.ONNXRegistry
    if getattr(cls, "_bncheck_reused", False):
        return
    build, built = cls.from_torchlib.__func__, {}

    def from_torchlib(klass: Any, *args: Any, **kwargs: Any) -> Any:
        key = (klass, args, tuple(sorted(kwargs.items())))
        if key not in built:
            built[key] = build(klass, *args, **kwargs)
        return built[key]

    cls.from_torchlib = classmethod(from_torchlib)
    cls._bncheck_reused = True


def torch_onnx_template(module: Any, x: Any) -> Any:
    """The ModelProto torch.onnx.export writes for `module` on an input like `x`, every dimension but C dynamic."""
    import logging
    import warnings

    import torch

    dims = {0: torch.export.Dim.AUTO, **{i: torch.export.Dim.AUTO for i in range(2, x.dim())}}
    level = logging.getLogger("torch.onnx").level
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # its progress lines go to stderr otherwise
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (x,), dynamo=True, dynamic_shapes=(dims,), verbose=False)
    finally:
        logging.getLogger("torch.onnx").setLevel(level)
    return program.model_proto


def torch_onnx_with_state(template: Any, state: dict) -> bytes:
    """The template with each initializer named after a module state entry replaced by its current value."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(template)
    found = set()
    for init in model.graph.initializer:
        if init.name in state:
            value = np.ascontiguousarray(state[init.name], dtype=numpy_helper.to_array(init).dtype)
            init.CopyFrom(numpy_helper.from_array(value, init.name))
            found.add(init.name)
    missing = sorted(set(state) - found)
    if missing:  # the exporter folded a tensor away: substituting would run another model than the one exported
        raise RuntimeError(f"the exported model has no initializer for {missing}; initializers: "
                           f"{[i.name for i in model.graph.initializer]}")
    return model.SerializeToString()


def torch_onnx_bn(case: dict, inputs: dict, phases: list, device: str, cache: dict,
                  run_model: Callable = None) -> dict:
    """Every phase of `case`: export the torch module in the phase's mode and state, run the model with
    `run_model` (ONNX Runtime), report Y in the case's layout; training phases then step the torch module."""
    import torch

    pd, dt, C = case["param_dtype"], case["dtype"], case["shape"][1]
    tracked, affine, last = case["track_running_stats"], case["affine"], case["layout"] == "channels_last"
    cls = getattr(torch.nn, TORCH_ONNX_MODULES[len(case["shape"])])
    module = cls(C, eps=case["eps"], momentum=case["momentum"], affine=affine, track_running_stats=tracked,
                 dtype=getattr(torch, pd))
    names = (["weight", "bias"] if affine else []) + (["running_mean", "running_var"] if tracked else [])
    sources = {"weight": "gamma", "bias": "beta", "running_mean": "running_mean", "running_var": "running_var"}
    with torch.no_grad():
        for n in names:
            getattr(module, n).copy_(torch.tensor(np.ascontiguousarray(inputs[sources[n]])).to(getattr(torch, pd)))
    out = {}
    for phase in phases:
        training = phase != "eval"
        a = np.asarray(inputs[phase + ".x"])
        a = np.ascontiguousarray(np.moveaxis(a, -1, 1) if last else a)  # ONNX and torch are channels-first
        x = torch.tensor(a).to(getattr(torch, dt))
        module.train(training)
        key = ("torch.onnx.export", len(case["shape"]), C, dt, pd, affine, tracked, training, case["eps"],
               case["momentum"])
        if key not in cache:
            torch_onnx_reuse_registry()
            cache[key] = torch_onnx_template(module, x)
        state = {n: getattr(module, n).detach().to(torch.float64).numpy() for n in names}
        model = torch_onnx_with_state(cache[key], state)
        what = f"torch.onnx.export of {cls.__name__} ({'train' if training else 'eval'} mode) {dt}/{pd}"
        feeds = {cache[key].graph.input[0].name: x.numpy() if dt != "bfloat16" else x.float().numpy()}
        results = run_model("ort", model, device, what, {}, None, feeds)
        y = np.asarray(results[0], dtype=np.float64)
        out[phase + ".y"] = np.ascontiguousarray(np.moveaxis(y, 1, -1) if last else y)
        if training:  # the user's training step, in torch: the state a later phase exports
            with torch.no_grad():
                module(x)
    return out
