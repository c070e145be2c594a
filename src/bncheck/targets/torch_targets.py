"""PyTorch targets: torch.nn.BatchNorm1d/2d/3d (contiguous and channels_last) and torch.nn.functional.batch_norm.

The kernel path is bncheck/targets/paths/torch_bn.py (shared with the reproduction scripts); torch is imported
only inside `probe` and that module's functions, which execute in the torch worker process.
"""

from __future__ import annotations

from typing import Any

from .base import (Accumulation, Conventions, MomentumForm, ParameterPrecision, Refusal, RefusalCondition, RunningVar,
                   Summation, VarianceAlgorithm)
from .kernel import PathTarget

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


class _TorchBase(PathTarget):
    """torch's eager BN path (paths/torch_bn.py) with the family's API, memory format and cuDNN setting."""

    framework = "torch"
    conventions = TORCH_CONVENTIONS
    path_modules = ("torch_bn",)
    path_entry = "torch_bn"
    api = "module"
    channels_last = False
    cudnn = True

    def path_options(self) -> dict[str, Any]:
        """The API (module or functional), the memory format and whether cuDNN is enabled."""
        return {"api": self.api, "channels_last": self.channels_last, "cudnn": self.cudnn}


class TorchModule(_TorchBase):
    """torch.nn.BatchNorm1d/2d/3d on contiguous tensors."""

    family = "torch.nn"
    description = "torch.nn.BatchNorm1d/2d/3d (module), contiguous memory format"


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
    api = "functional"
