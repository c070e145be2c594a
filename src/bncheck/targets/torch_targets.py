"""PyTorch targets: torch.nn.BatchNorm1d/2d/3d (contiguous and channels_last) and torch.nn.functional.batch_norm.

The kernel path is bncheck/targets/paths/torch_bn.py (shared with the reproduction scripts); torch is imported
only inside `probe` and that module's functions, which execute in the torch worker process.
"""

from __future__ import annotations

from typing import Any

from ..cases import Case
from .base import Conventions
from .kernel import PathTarget

TORCH_CONVENTIONS = Conventions(
    momentum="new",
    running_var="unbiased",
    default_eps=1e-5,
    default_momentum=0.1,
    variance_algorithm="two-pass on CPU (batch_norm_cpu_collect_stats); Welford on CUDA",
    accumulation="float32 (opmath) for float16/bfloat16 inputs",
    parameter_precision="eps and momentum reach the kernel as float64",
    param_dtypes="same-or-float32",
    quantities=("y", "batch_mean", "batch_invstd", "running_mean", "running_var", "dx", "dgamma", "dbeta"),
    notes="In eval mode without running statistics, batch statistics normalise; "
          "training needs more than one value per channel.",
    sources=(
        "https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html (momentum, unbiased running variance)",
        "aten/src/ATen/native/Normalization.cpp (batch_norm_cpu_update_stats_template)",
        "aten/src/ATen/native/cpu/batch_norm_kernel.cpp (collect stats, opmath accumulation)",
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

    def supports(self, case: Case) -> str | None:
        """The generic checks, plus torch's refusal of eps = 0 in training."""
        training = any(p != "eval" for p in case.phases) or not case.track_running_stats
        if case.eps == 0 and training:
            return "torch rejects eps=0 in training (ValueError: batch_norm eps must be positive)"
        if case.per_channel == 1 and training:
            return "torch refuses training on one value per channel (ValueError: Expected more than 1 value per channel)"
        return super().supports(case)


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
