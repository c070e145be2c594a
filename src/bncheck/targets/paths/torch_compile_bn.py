"""PyTorch's compiled BN path: torch.nn.BatchNorm1d/2d/3d under torch.compile (Dynamo, AOTAutograd, Inductor's CPU
C++ backend), training with gradients through AOTAutograd's compiled backward, and evaluation.

Compiled once per (rank, shape, dtypes, eps, momentum, affine, tracking) with dynamic=False: Inductor picks the
variance algorithm from the static reduction size (two-pass sums up to config.cpp.use_two_step_variance_threshold
elements per channel, Welford above it, and Welford whenever the size is symbolic), so a compilation that turned
dynamic after an earlier case would change the numerics of later ones; with static shapes a case's result does not
depend on the cases run before it. The module and its compiled wrapper are kept in `cache` and reused: each case
copies its parameters and running statistics into the same tensors, so Dynamo's guards hold and nothing recompiles.

A kernel-path module: the adapter (bncheck.targets.torch_compile_targets) calls `torch_compile_bn` in the
torch-compile worker, and a reproduction script embeds this file verbatim and calls the same function. No bncheck
import; torch is imported inside the functions.
"""
from typing import Any

import numpy as np

TORCH_COMPILE_MODULES = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}
# every configuration is a recompilation of the one BatchNorm forward: Dynamo's default limit (8) would silently
# fall back to eager after the eighth, so the limit is raised and hitting it is made an error
TORCH_COMPILE_RECOMPILE_LIMIT = 100000


def torch_compile_setup() -> None:
    """Dynamo settings of this process: no silent eager fallback after many configurations."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = TORCH_COMPILE_RECOMPILE_LIMIT
    torch._dynamo.config.accumulated_recompile_limit = TORCH_COMPILE_RECOMPILE_LIMIT
    torch._dynamo.config.fail_on_recompile_limit_hit = True


def torch_compile_module(case: dict, cache: dict) -> tuple:
    """(module, compiled module) for the case's configuration, from `cache` or built and compiled now."""
    import torch

    key = ("torch.compile", tuple(case["shape"]), case["dtype"], case["param_dtype"], case["eps"], case["momentum"],
           case["affine"], case["track_running_stats"])
    if key not in cache:
        torch_compile_setup()
        cls = getattr(torch.nn, TORCH_COMPILE_MODULES[len(case["shape"])])
        module = cls(case["shape"][1], eps=case["eps"], momentum=case["momentum"], affine=case["affine"],
                     track_running_stats=case["track_running_stats"], dtype=getattr(torch, case["param_dtype"]))
        cache[key] = (module, torch.compile(module, dynamic=False))
    return cache[key]


def torch_compile_bn(case: dict, inputs: dict, phases: list, device: str, cache: dict) -> dict:
    """Every phase of `case` through the compiled module: y, running statistics after each training step, and
    with gradients dx, dgamma, dbeta from the compiled backward."""
    import torch

    pd, dt, last = case["param_dtype"], case["dtype"], case["layout"] == "channels_last"
    module, compiled = torch_compile_module(case, cache)

    def tensor(a: np.ndarray, dtype: str) -> Any:
        return torch.tensor(np.ascontiguousarray(a)).to(dtype=getattr(torch, dtype))

    def batch(a: np.ndarray) -> Any:
        return tensor(np.moveaxis(a, -1, 1) if last else a, dt).contiguous()

    def physical(t: Any) -> np.ndarray:
        a = t.detach().double().numpy().copy()
        return np.ascontiguousarray(np.moveaxis(a, 1, -1) if last else a)

    with torch.no_grad():  # this case's values into the cached module's own tensors (same objects: no recompile)
        if case["affine"]:
            module.weight.copy_(tensor(inputs["gamma"], pd))
            module.bias.copy_(tensor(inputs["beta"], pd))
        if case["track_running_stats"]:
            module.running_mean.copy_(tensor(inputs["running_mean"], pd))
            module.running_var.copy_(tensor(inputs["running_var"], pd))
            module.num_batches_tracked.zero_()
    out = {}
    for phase in phases:
        training = phase != "eval"
        x = batch(inputs[phase + ".x"]).requires_grad_(case["grad"])
        for p in (module.weight, module.bias):
            if p is not None:
                p.grad = None
        module.train(training)
        y = compiled(x)
        out[phase + ".y"] = physical(y)
        if training and case["track_running_stats"]:
            out[phase + ".running_mean"] = module.running_mean.detach().double().numpy().copy()
            out[phase + ".running_var"] = module.running_var.detach().double().numpy().copy()
        if case["grad"]:
            y.backward(batch(inputs[phase + ".dy"]))
            out[phase + ".dx"] = physical(x.grad)
            if case["affine"]:
                out[phase + ".dgamma"] = module.weight.grad.detach().double().numpy().copy()
                out[phase + ".dbeta"] = module.bias.grad.detach().double().numpy().copy()
    return out
