"""PyTorch targets: torch.nn.BatchNorm1d/2d/3d (contiguous and channels_last) and torch.nn.functional.batch_norm.

torch is imported only inside `probe` and `run`, which execute in the torch worker process.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cases import Case
from ..inputs import Inputs
from .base import (Accumulation, Conventions, MomentumForm, Observation, ParameterPrecision, Refusal, RefusalCondition,
                   RunningVar, Summation, Target, VarianceAlgorithm, from_channels_first, to_channels_first)

TORCH_CONVENTIONS = Conventions(
    momentum=MomentumForm.NEW,
    running_var=RunningVar.UNBIASED,
    default_eps=1e-5,
    default_momentum=0.1,
    variance_algorithm=VarianceAlgorithm.TWO_PASS,
    accumulation=Accumulation.FLOAT32_OR_WIDER,
    summation=Summation.BLOCKED,
    parameter_precision=ParameterPrecision.FLOAT64,
    refusals=(
        Refusal(RefusalCondition.ONE_VALUE_PER_CHANNEL_TRAINING, "ValueError", "Expected more than 1 value per channel"),
        Refusal(RefusalCondition.EPS_ZERO_TRAINING, "ValueError", "eps must be positive"),
    ),
    param_dtypes="same-or-float32",
    quantities=("y", "batch_mean", "batch_invstd", "running_mean", "running_var", "dx", "dgamma", "dbeta"),
    notes="Variance: two-pass on CPU (batch_norm_cpu_collect_stats: vectorised partial sums per channel, "
          "accumulated in opmath float32 for float16/bfloat16 inputs); Welford on CUDA. eps and momentum reach "
          "the kernel as float64 (Python floats). In eval mode without running statistics, batch statistics "
          "normalise. Training refuses one value per channel ('Expected more than 1 value per channel when "
          "training') and eps = 0; both are run, and recorded as refused when torch raises.",
    sources=(
        "https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html (momentum, unbiased running variance)",
        "aten/src/ATen/native/Normalization.cpp (batch_norm_cpu_update_stats_template)",
        "aten/src/ATen/native/cpu/batch_norm_kernel.cpp (collect stats, opmath accumulation)",
        "torch/nn/functional.py: _verify_batch_size raises ValueError('Expected more than 1 value per channel when "
        "training, got input size ...') and, in batch_norm, ValueError('batch_norm eps must be positive during training')",
    ),
)

_DTYPE_NAMES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32", "float64": "float64"}


def probe() -> dict[str, Any]:
    """Import torch and report its version, devices and backend flags."""
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    details: dict[str, Any] = {"threads": torch.get_num_threads(), "mkldnn": torch.backends.mkldnn.is_available()}
    if torch.cuda.is_available():
        details["cuda"] = torch.version.cuda
        details["cudnn"] = torch.backends.cudnn.version()
        details["gpu"] = torch.cuda.get_device_name(0)
    return {"version": torch.__version__, "devices": devices, "details": details}


def _tensor(torch: Any, a: np.ndarray, dtype: str, device: str) -> Any:
    """NumPy transport array -> a new torch tensor of `dtype` on `device` (exact; never shares the input's memory)."""
    return torch.tensor(np.ascontiguousarray(a)).to(device=device, dtype=getattr(torch, _DTYPE_NAMES[dtype]))


def _numpy(t: Any) -> np.ndarray:
    """torch tensor -> a float64 NumPy copy (exact; a view would change when torch updates the buffer in place)."""
    return t.detach().to("cpu").double().numpy().copy()


REPRO_SOURCE = '''
import torch

API = {api!r}  # "module" (torch.nn.BatchNormNd) or "functional" (torch.nn.functional.batch_norm)
CHANNELS_LAST = {channels_last!r}
CUDNN = {cudnn!r}


def _tensor(a, dtype):
    return torch.tensor(np.ascontiguousarray(a)).to(device=DEVICE, dtype=getattr(torch, dtype))


def _batch(case, a, grad):
    if case["layout"] == "channels_last":
        a = np.moveaxis(a, -1, 1)
    t = _tensor(a, case["dtype"])
    if CHANNELS_LAST:
        t = t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)
    else:
        t = t.contiguous()
    return t.requires_grad_(grad)


def _out(case, t):
    a = t.detach().cpu().double().numpy().copy()
    return np.moveaxis(a, 1, -1) if case["layout"] == "channels_last" else a


def run(case, inputs):
    """Every phase through torch, collecting what bncheck compares."""
    pd, momentum = case["param_dtype"], case["momentum"]  # torch's momentum is the weight of the batch statistic
    w = b = rm = rv = None
    if case["affine"]:
        w, b = _tensor(inputs["gamma"], pd).requires_grad_(case["grad"]), _tensor(inputs["beta"], pd).requires_grad_(case["grad"])
    if case["track_running_stats"]:
        rm, rv = _tensor(inputs["running_mean"], pd), _tensor(inputs["running_var"], pd)
    if API == "module":
        cls = {{2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}}[len(case["shape"])]
        bn = cls(case["shape"][1], eps=case["eps"], momentum=momentum, affine=case["affine"],
                 track_running_stats=case["track_running_stats"], device=DEVICE, dtype=getattr(torch, pd))
        with torch.no_grad():
            if w is not None:
                bn.weight.copy_(w); bn.bias.copy_(b)
            if rm is not None:
                bn.running_mean.copy_(rm); bn.running_var.copy_(rv)
        w, b = bn.weight, bn.bias
        if rm is not None:
            rm, rv = bn.running_mean, bn.running_var
    out = {{}}
    with torch.backends.cudnn.flags(enabled=CUDNN):
        for phase in PHASES:
            training = phase != "eval"
            batch = training or not case["track_running_stats"]
            x = _batch(case, inputs[phase + ".x"], True)
            for p in (w, b):
                if p is not None:
                    p.grad = None
            if API == "module":
                bn.train(training)
                y = bn(x)
            else:
                y = torch.nn.functional.batch_norm(x, rm, rv, w, b, training=batch, momentum=momentum, eps=case["eps"])
            out[phase + ".y"] = _out(case, y)
            node = y.grad_fn
            if batch and node is not None and hasattr(node, "_saved_result1"):
                out[phase + ".batch_mean"] = node._saved_result1.detach().cpu().double().numpy()
                out[phase + ".batch_invstd"] = node._saved_result2.detach().cpu().double().numpy()
            if training and rm is not None:
                out[phase + ".running_mean"] = rm.detach().cpu().double().numpy().copy()
                out[phase + ".running_var"] = rv.detach().cpu().double().numpy().copy()
            if phase + ".dy" in inputs:
                y.backward(_batch(case, inputs[phase + ".dy"], False))
                out[phase + ".dx"] = _out(case, x.grad)
                if case["affine"]:
                    out[phase + ".dgamma"] = w.grad.detach().cpu().double().numpy()
                    out[phase + ".dbeta"] = b.grad.detach().cpu().double().numpy()
    return out
'''


class _TorchBase(Target):
    """Shared machinery: tensors in and out, phases, gradients, and batch statistics from the autograd node."""

    framework = "torch"
    conventions = TORCH_CONVENTIONS
    channels_last = False
    cudnn = True

    def repro_source(self) -> str:
        """Standalone code defining run(case, inputs) for reproduction scripts (numpy and torch only)."""
        api = "functional" if isinstance(self, TorchFunctional) else "module"
        return REPRO_SOURCE.format(api=api, channels_last=self.channels_last, cudnn=self.cudnn)

    def _input(self, torch: Any, case: Case, arr: np.ndarray, grad: bool) -> Any:
        t = _tensor(torch, to_channels_first(case, arr), case.dtype, self.device)
        if self.channels_last:
            fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
            t = t.contiguous(memory_format=fmt)
        else:
            t = t.contiguous()
        return t.requires_grad_(grad)

    def _forward(self, torch: Any, case: Case, x: Any, training: bool) -> Any:
        raise NotImplementedError

    def _parameters(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def _running(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def _setup(self, torch: Any, case: Case, inputs: Inputs) -> None:
        raise NotImplementedError

    def run(self, case: Case, inputs: Inputs) -> Observation:
        """Run every phase of the case through torch and collect what it exposes."""
        import torch

        self._setup(torch, case, inputs)
        obs: Observation = {}
        for phase in case.phases:
            training = phase != "eval"
            batch_stats = training or not case.track_running_stats
            # requiring a gradient keeps the native kernel's saved batch statistics observable
            x = self._input(torch, case, inputs[f"{phase}.x"], grad=case.grad or batch_stats)
            weight, bias = self._parameters()
            for p in (weight, bias):
                if p is not None and p.grad is not None:
                    p.grad = None
            y = self._forward(torch, case, x, training)
            obs[f"{phase}.y"] = from_channels_first(case, _numpy(y))
            node = y.grad_fn
            if batch_stats and node is not None and hasattr(node, "_saved_result1"):
                mean, invstd = node._saved_result1, node._saved_result2
                if mean is not None and mean.numel() == case.channels:
                    obs[f"{phase}.batch_mean"] = _numpy(mean)
                    obs[f"{phase}.batch_invstd"] = _numpy(invstd)
            if training and case.track_running_stats:
                rm, rv = self._running()
                obs[f"{phase}.running_mean"] = _numpy(rm)
                obs[f"{phase}.running_var"] = _numpy(rv)
            if case.grad:
                dy = self._input(torch, case, inputs[f"{phase}.dy"], grad=False)
                y.backward(dy)
                obs[f"{phase}.dx"] = from_channels_first(case, _numpy(x.grad))
                if case.affine:
                    obs[f"{phase}.dgamma"] = _numpy(weight.grad)
                    obs[f"{phase}.dbeta"] = _numpy(bias.grad)
        return obs


class TorchModule(_TorchBase):
    """torch.nn.BatchNorm1d/2d/3d on contiguous tensors."""

    family = "torch.nn"
    description = "torch.nn.BatchNorm1d/2d/3d (module), contiguous memory format"

    def _setup(self, torch: Any, case: Case, inputs: Inputs) -> None:
        cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}[len(case.shape)]
        pdt = getattr(torch, _DTYPE_NAMES[case.param_dtype])
        self.module = cls(case.channels, eps=case.eps, momentum=self.conventions.to_framework_momentum(case.momentum),
                          affine=case.affine, track_running_stats=case.track_running_stats, device=self.device, dtype=pdt)
        with torch.no_grad():
            if case.affine:
                self.module.weight.copy_(_tensor(torch, inputs["gamma"], case.param_dtype, self.device))
                self.module.bias.copy_(_tensor(torch, inputs["beta"], case.param_dtype, self.device))
            if case.track_running_stats:
                self.module.running_mean.copy_(_tensor(torch, inputs["running_mean"], case.param_dtype, self.device))
                self.module.running_var.copy_(_tensor(torch, inputs["running_var"], case.param_dtype, self.device))

    def _forward(self, torch: Any, case: Case, x: Any, training: bool) -> Any:
        self.module.train(training)
        return self.module(x)

    def run(self, case: Case, inputs: Inputs) -> Observation:
        """Run with cuDNN as torch's default leaves it (enabled), unless the family disables it."""
        import torch

        with torch.backends.cudnn.flags(enabled=self.cudnn):
            return super().run(case, inputs)

    def _parameters(self) -> tuple[Any, Any]:
        return self.module.weight, self.module.bias

    def _running(self) -> tuple[Any, Any]:
        return self.module.running_mean, self.module.running_var


class TorchModuleChannelsLast(TorchModule):
    """torch.nn.BatchNorm2d/3d on tensors in channels_last memory format."""

    family = "torch.nn.channels_last"
    description = "torch.nn.BatchNorm2d/3d (module), channels_last / channels_last_3d memory format"
    channels_last = True
    conventions = Conventions(**{**TORCH_CONVENTIONS.to_dict(), "ranks": (4, 5)})


class TorchModuleNoCudnn(TorchModule):
    """torch.nn.BatchNorm1d/2d/3d on CUDA with cuDNN disabled (torch's native CUDA kernels)."""

    family = "torch.nn.nocudnn"
    description = "torch.nn.BatchNorm1d/2d/3d (module) on CUDA with torch.backends.cudnn disabled: native kernels"
    devices = ("cuda",)
    cudnn = False


class TorchFunctional(_TorchBase):
    """torch.nn.functional.batch_norm with explicit parameter and running-statistic tensors."""

    family = "torch.functional"
    description = "torch.nn.functional.batch_norm"

    def _setup(self, torch: Any, case: Case, inputs: Inputs) -> None:
        self.weight = self.bias = self.running_mean = self.running_var = None
        if case.affine:
            self.weight = _tensor(torch, inputs["gamma"], case.param_dtype, self.device).requires_grad_(case.grad)
            self.bias = _tensor(torch, inputs["beta"], case.param_dtype, self.device).requires_grad_(case.grad)
        if case.track_running_stats:
            self.running_mean = _tensor(torch, inputs["running_mean"], case.param_dtype, self.device)
            self.running_var = _tensor(torch, inputs["running_var"], case.param_dtype, self.device)

    def _forward(self, torch: Any, case: Case, x: Any, training: bool) -> Any:
        use_batch = training or self.running_mean is None
        return torch.nn.functional.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=use_batch,
            momentum=self.conventions.to_framework_momentum(case.momentum), eps=case.eps,
        )

    def _parameters(self) -> tuple[Any, Any]:
        return self.weight, self.bias

    def _running(self) -> tuple[Any, Any]:
        return self.running_mean, self.running_var
