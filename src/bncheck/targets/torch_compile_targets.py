"""torch.compile (Inductor, CPU): torch.nn.BatchNorm1d/2d/3d compiled by Dynamo + AOTAutograd + Inductor's C++
backend, trained with gradients through the compiled backward and evaluated.

Its worker group is 'torch-compile': the torch distribution alone, but a process of its own, so that Inductor's
compilation (gcc, seconds per configuration) runs beside the eager torch targets instead of in their lane, and with
TORCHINDUCTOR_COMPILE_THREADS=1: on a 2-core machine the default pool of compile workers (each importing torch)
cost more than it saved. The kernel path is bncheck/targets/paths/torch_compile_bn.py.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .base import (Accumulation, Conventions, ParameterPrecision, Refusal, RefusalCondition, VarianceAlgorithm)
from .kernel import PathTarget

_DECOMP = "torch/_decomp/decompositions.py (torch 2.13): native_batch_norm_helper"
_LOWER = "torch/_inductor/lowering.py (torch 2.13): var_mean, use_two_step_variance"

CONVENTIONS = Conventions(
    momentum="new",
    running_var="unbiased",
    eps_placement="inside_sqrt",
    default_eps=1e-5,
    default_momentum=0.1,
    variance_algorithm=VarianceAlgorithm.TWO_PASS,
    accumulation=Accumulation.FLOAT32_OR_WIDER,
    # torch's own refusals, run (measured 2026-12-03: Dynamo runs torch.nn.functional.batch_norm on fake tensors while tracing and wraps its ValueError, whose message keeps torch's text)
    refusals=(
        Refusal(RefusalCondition.ONE_VALUE_PER_CHANNEL_TRAINING, "TorchRuntimeError", "Expected more than 1 value per channel"),
        Refusal(RefusalCondition.EPS_ZERO_TRAINING, "TorchRuntimeError", "eps must be positive"),
    ),
    parameter_precision=ParameterPrecision.INPUT_DTYPE,
    dtypes=("float16", "bfloat16", "float32", "float64"),
    param_dtypes="same-or-float32",
    ranks=(2, 3, 4, 5),
    layouts=("channels_first", "channels_last"),
    modes=("train", "eval"),
    untracked=True,
    gradients=True,
    quantities=("y", "running_mean", "running_var", "dx", "dgamma", "dbeta"),
    notes=(
        'Variance: var_mean(correction=0) lowered by Inductor: two-pass sums (var_mean_sum_) when the static '
        'reduction size per channel is at most config.cpp.use_two_step_variance_threshold = 1024 elements, a '
        'Welford reduction above it (and for any symbolic size); the running variance is biased_var * (n / (n'
        " - 1)), not eager's direct division by n - 1. Arithmetic: float32 (get_computation_dtype) for "
        'float16/bfloat16 inputs: statistics from input.to(float32), output (input - mean) * rstd promoted to'
        ' float32 and cast back once. Parameters: eps, momentum and n/(n-1) are Python floats folded into the'
        ' generated C++ as constants of the computation dtype. '
    ) + (
        "torch.compile(module, dynamic=False) of a torch.nn.BatchNormNd (case eps, momentum, affine, tracking, "
        "parameter dtype), one compilation per (shape, dtypes, eps, momentum, affine, tracking) and mode (Dynamo "
        "guards on module.training), reused across cases by copying each case's parameters into the same tensors. "
        "Training: y = (x - mean) * rsqrt(biased_var + eps) * weight + bias; running_mean = momentum * mean + "
        "(1 - momentum) * running_mean, running_var = momentum * biased_var * n/(n-1) + (1 - momentum) * "
        "running_var, the running update applied to the module's buffers by AOTAutograd's input mutation. Eval: "
        "invstd = 1 / sqrt(running_var + eps) (not rsqrt). Gradients: AOTAutograd's compiled backward of the "
        "decomposition (y.backward(dy)). Batch statistics are internal to the compiled graph and not reported. "
        "channels_last cases are transposed to (N, C, ...) and made contiguous, as for torch.nn. Static shapes on "
        "purpose: a compilation that turned dynamic (automatic dynamic after a second shape) switches the "
        "variance to Welford, so results would depend on the order of cases. Dynamo's recompile limit is raised "
        "and hitting it is an error (the default, 8, silently falls back to eager)."
    ),
    sources=(
        f"{_DECOMP}: training: var_mean(input.to(computation_dtype), correction=0), rsqrt(biased_var + eps), "
        "(input - mean) * rstd, new_running_mean = momentum * save_mean + (1 - momentum) * running_mean, "
        "unbiased_var = squeezed_var * (n / (n - 1)) ('doesn't strictly match eager's numerics'); eval: "
        "invstd = 1 / torch.sqrt(running_var + eps); weight and bias applied after",
        f"{_LOWER}: var_mean_sum_ (two-step) when use_two_step_variance (static numel <= "
        "config.cpp.use_two_step_variance_threshold, 1024, in torch/_inductor/config.py), else var_mean_welford_",
        "torch/_dynamo/config.py: recompile_limit = 8, fail_on_recompile_limit_hit = False (the eager fallback)",
        "experiment (tests/test_torch_compile_targets.py): y, running statistics and gradients of float32 "
        "trajectories against the float64 reference under the unbiased convention; one compilation reused across "
        "cases of one configuration",
    ),
)


def probe() -> dict[str, Any]:
    """torch's version and Inductor's C++ settings (imports torch; runs in the worker): CPU only."""
    import torch
    import torch._inductor.config as inductor

    return {"version": torch.__version__, "devices": ["cpu"],
            "details": {"compile_threads": inductor.compile_threads, "cpp_compiler": inductor.cpp.cxx[-1] if
                        isinstance(inductor.cpp.cxx, tuple) else str(inductor.cpp.cxx),
                        "two_step_variance_threshold": inductor.cpp.use_two_step_variance_threshold}}


class TorchCompile(PathTarget):
    """torch.nn.BatchNormNd under torch.compile (Inductor, CPU, static shapes)."""

    family: ClassVar[str] = "torch.compile"
    framework: ClassVar[str] = "torch-compile"
    description: ClassVar[str] = ("torch.nn.BatchNorm1d/2d/3d under torch.compile (Dynamo + AOTAutograd + Inductor "
                                  "C++ on the CPU, dynamic=False), training with compiled backward, and eval")
    conventions: ClassVar[Conventions] = CONVENTIONS
    devices: ClassVar[tuple[str, ...] | None] = ("cpu",)
    path_kind: ClassVar[str] = "compiled"
    path_modules: ClassVar[tuple[str, ...]] = ("torch_compile_bn",)
    path_entry: ClassVar[str] = "torch_compile_bn"

