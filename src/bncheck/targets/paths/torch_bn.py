"""PyTorch's eager BN path: torch.nn.BatchNorm1d/2d/3d (contiguous or channels_last) and torch.nn.functional.batch_norm.

A kernel-path module: the adapter (bncheck.targets.torch_targets) calls `torch_bn` in the torch worker, and a
reproduction script embeds this file verbatim and calls the same function. So it imports no bncheck module and
imports torch only inside its functions; a case is the plain dictionary of its canonical JSON.
"""
from typing import Any

import numpy as np

TORCH_MODULES = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}


def torch_tensor(a: np.ndarray, dtype: str, device: str) -> Any:
    """NumPy transport array -> a new torch tensor of `dtype` on `device` (exact; never shares the input's memory)."""
    import torch

    return torch.tensor(np.ascontiguousarray(a)).to(device=device, dtype=getattr(torch, dtype))


def torch_numpy(t: Any) -> np.ndarray:
    """torch tensor -> a float64 NumPy copy (exact; a view would change when torch updates the buffer in place)."""
    return t.detach().to("cpu").double().numpy().copy()


def torch_batch(case: dict, a: np.ndarray, device: str, channels_last: bool, grad: bool) -> Any:
    """A physical batch array as an (N, C, ...) tensor, in channels_last memory format when asked."""
    import torch

    if case["layout"] == "channels_last":
        a = np.moveaxis(a, -1, 1)
    t = torch_tensor(a, case["dtype"], device)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)
    else:
        t = t.contiguous()
    return t.requires_grad_(grad)


def torch_physical(case: dict, t: Any) -> np.ndarray:
    """An (N, C, ...) tensor back in the case's physical layout, as a contiguous float64 array."""
    a = torch_numpy(t)
    return np.ascontiguousarray(np.moveaxis(a, 1, -1) if case["layout"] == "channels_last" else a)


def torch_bn(case: dict, inputs: dict, phases: list, device: str, cache: dict, api: str = "module",
             channels_last: bool = False, cudnn: bool = True) -> dict:
    """Every phase of `case` through torch.nn.BatchNormNd (api='module') or torch.nn.functional.batch_norm
    ('functional'): y, the batch statistics autograd saved, the running statistics, and gradients with dy."""
    import torch

    pd, momentum = case["param_dtype"], case["momentum"]  # torch's momentum is the weight of the batch statistic
    tracked, affine = case["track_running_stats"], case["affine"]
    weight = bias = rm = rv = None
    if api == "module":
        cls = getattr(torch.nn, TORCH_MODULES[len(case["shape"])])
        bn = cls(case["shape"][1], eps=case["eps"], momentum=momentum, affine=affine, track_running_stats=tracked,
                 device=device, dtype=getattr(torch, pd))
        with torch.no_grad():
            if affine:
                bn.weight.copy_(torch_tensor(inputs["gamma"], pd, device))
                bn.bias.copy_(torch_tensor(inputs["beta"], pd, device))
            if tracked:
                bn.running_mean.copy_(torch_tensor(inputs["running_mean"], pd, device))
                bn.running_var.copy_(torch_tensor(inputs["running_var"], pd, device))
        weight, bias, rm, rv = bn.weight, bn.bias, bn.running_mean, bn.running_var
    else:
        if affine:
            weight = torch_tensor(inputs["gamma"], pd, device).requires_grad_(case["grad"])
            bias = torch_tensor(inputs["beta"], pd, device).requires_grad_(case["grad"])
        if tracked:
            rm, rv = torch_tensor(inputs["running_mean"], pd, device), torch_tensor(inputs["running_var"], pd, device)
    out = {}
    with torch.backends.cudnn.flags(enabled=cudnn):
        for phase in phases:
            training = phase != "eval"
            batch = training or not tracked
            # requiring a gradient keeps the native kernel's saved batch statistics observable
            x = torch_batch(case, inputs[phase + ".x"], device, channels_last, case["grad"] or batch)
            for p in (weight, bias):
                if p is not None:
                    p.grad = None
            if api == "module":
                bn.train(training)
                y = bn(x)
            else:
                y = torch.nn.functional.batch_norm(x, rm, rv, weight, bias, training=batch, momentum=momentum,
                                                   eps=case["eps"])
            out[phase + ".y"] = torch_physical(case, y)
            node = y.grad_fn
            if batch and node is not None and hasattr(node, "_saved_result1"):
                mean, invstd = node._saved_result1, node._saved_result2
                if mean is not None and mean.numel() == case["shape"][1]:
                    out[phase + ".batch_mean"] = torch_numpy(mean)
                    out[phase + ".batch_invstd"] = torch_numpy(invstd)
            if training and tracked:
                out[phase + ".running_mean"] = torch_numpy(rm)
                out[phase + ".running_var"] = torch_numpy(rv)
            if case["grad"]:
                y.backward(torch_batch(case, inputs[phase + ".dy"], device, channels_last, False))
                out[phase + ".dx"] = torch_physical(case, x.grad)
                if affine:
                    out[phase + ".dgamma"] = torch_numpy(weight.grad)
                    out[phase + ".dbeta"] = torch_numpy(bias.grad)
    return out
