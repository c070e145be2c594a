"""JAX targets: flax.linen.BatchNorm (default one-pass and two-pass variance), flax.nnx.BatchNorm, and a BN
written with jax.numpy / jax.lax under jax.jit.

The kernel paths are bncheck/targets/paths/jax_bn.py (shared with the reproduction scripts); jax and flax are
imported only inside `probe` and that module's functions, which execute in the jax worker process. Both switch
on `jax_enable_x64` before any array is created, so float64 cases really run in float64. Every path is compiled once per static configuration (layout, dtypes, eps/momentum where
the framework bakes them in, affine, tracking, mode, gradients) and jax.jit re-traces only for new shapes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from .base import (Accumulation, Conventions, Elementwise, EpsPlacement, MomentumForm, ParameterPrecision, RunningVar,
                   StatisticsDtype, Subnormals, VarianceAlgorithm)
from .kernel import PathTarget

# ---- conventions --------------------------------------------------------------------------------
_FLAX_LINEN_SRC = "flax/linen/normalization.py (flax 0.12.8)"
_FLAX_NNX_SRC = "flax/nnx/nn/normalization.py (flax 0.12.8)"

# the one-pass ("fast") variance going negative, then NaN after rsqrt; answered with the clip at 0
_FLAX_NEGATIVE_VARIANCE = "https://github.com/google/flax/issues/1491"
_LINEN_SOURCES = (
    f"{_FLAX_LINEN_SRC}: BatchNorm fields momentum=0.99, epsilon=1e-5, axis=-1, use_fast_variance=True, "
    "force_float32_reductions=True; running update ra = momentum * ra + (1 - momentum) * batch statistic",
    f"{_FLAX_LINEN_SRC}: _compute_stats (use_fast_variance: var = max(0, mean(x^2) - mean(x)^2); otherwise "
    "mean((x - mean)^2); x promoted to at least float32 first; mean over the reduction axes = biased variance)",
    f"{_FLAX_LINEN_SRC}: _normalize (y = (x - mean) * (rsqrt(var + epsilon) * scale) + bias, cast to dtype); "
    "batch_stats 'mean'/'var' are created as float32 when force_float32_reductions",
    "https://flax.readthedocs.io/en/latest/api_reference/flax.linen/layers.html#flax.linen.BatchNorm",
)

_NNX_SOURCES = (
    f"{_FLAX_NNX_SRC}: BatchNorm.__init__ (num_features, axis=-1, momentum=0.99, epsilon=1e-5, "
    "use_fast_variance=True, promote_dtype=dtypes.promote_dtype; BatchStat mean/var created as float32)",
    f"{_FLAX_NNX_SRC}: BatchNorm.__call__ (x, mean, var, scale, bias all cast by promote_dtype to `dtype` "
    "first; statistics by _compute_stats in at least float32; mean = m * mean + (1 - m) * batch mean, "
    "var likewise with the biased batch variance)",
    f"{_FLAX_NNX_SRC}: _compute_stats, _normalize (same formulas as linen)",
    "https://flax.readthedocs.io/en/latest/api_reference/flax.nnx/nn/normalization.html",
)

_JIT_SOURCES = (
    "bncheck/targets/paths/jax_bn.py: jax_jit_forward (this target is defined here: two-pass jnp.mean of "
    "squared deviations, lax.rsqrt, PyTorch-form running update with var * n/(n-1))",
    "https://docs.jax.dev/en/latest/_autosummary/jax.lax.rsqrt.html",
    "https://docs.jax.dev/en/latest/default_dtypes.html (jax_enable_x64)",
)

_FLAX_QUANTITIES = ("y", "running_mean", "running_var", "dx", "dgamma", "dbeta")

_LINEN_NOTES = (
    "flax.linen.BatchNorm applied with Module.apply: use_running_average=False for training steps "
    "(mutable=['batch_stats'], the updated 'mean'/'var' carried to the next step), True for evaluation. "
    "axis=-1 for channels_last and 1 for channels_first; affine=false is use_scale=use_bias=False; "
    "dtype=<case dtype>, param_dtype=<case param dtype>. The running statistics are held in float32 for "
    "half-precision parameters (what Flax creates with force_float32_reductions=True; the float16/bfloat16 "
    "values of the case are carried exactly) and in float64 for float64 cases. Flax always keeps running "
    "statistics: for track_running_stats=false the collection is initialised as Flax does (zeros, ones), "
    "updated and discarded, and eval normalises with batch statistics (use_running_average=False). "
    "Batch statistics are internal to the module and are not reported. Gradients: jax.vjp of the "
    "(training- or eval-mode) apply w.r.t. x, params['scale'], params['bias']. " +
    "float16/bfloat16 gradients: x is promoted to float32 twice (in _compute_stats and in x - mean), so "
    "autodiff rounds two float32 cotangents to half precision and adds them in half precision: dx is "
    "rounded twice (a framework property, visible as dx deviations on half cases)."
)

_NNX_NOTES = (
    "flax.nnx.BatchNorm(num_features=C, axis=1 or -1, dtype=<case dtype>, param_dtype=<case param dtype>) "
    "called functionally: nnx.split once per configuration, nnx.merge inside jax.jit, scale/bias/mean/var "
    "set from the case, use_running_average passed per call (False for training and for eval without "
    "running statistics), the BatchStat mean/var read after each training step and carried on. Unlike "
    "linen, nnx casts x, the running statistics, scale and bias to `dtype` before anything else "
    "(promote_dtype): with a float16/bfloat16 dtype the parameters are rounded to half precision, and in "
    "eval the whole normalisation (x - mean, var + eps, rsqrt) runs in half precision. Running statistics "
    "are held in float32 for half-precision parameters (as nnx creates them), float64 for float64. "
    "Batch statistics are internal and not reported. The parameter gradients come back rounded to `dtype` "
    "(the transpose of the cast of scale and bias). " +
    "float16/bfloat16 gradients: x is promoted to float32 twice (in _compute_stats and in x - mean), so "
    "autodiff rounds two float32 cotangents to half precision and adds them in half precision: dx is "
    "rounded twice (a framework property, visible as dx deviations on half cases)."
)

_LINEN_ARITHMETIC = (
    "Variance: one-pass E[x^2]-E[x]^2 clipped at 0 (use_fast_variance=True, the default). Arithmetic: float32 for "
    "float16/bfloat16 inputs (force_float32_reductions: statistics, normalisation and affine in float32, y cast to "
    "dtype); float64 for float64. epsilon and momentum are Python floats traced as weak-typed constants of the "
    "computation dtype (float32 for half/float32, float64 for float64); the weight of the batch statistic is "
    "(1 - momentum), formed in Python float64. XLA flushes subnormal float32 inputs to zero (measured: hazards "
    "suite, subnormal-inputs). "
)

LINEN_CONVENTIONS = Conventions(
    momentum=MomentumForm.OLD,
    running_var=RunningVar.BIASED,
    eps_placement=EpsPlacement.INSIDE,
    default_eps=1e-5,
    default_momentum=0.99,
    variance_algorithm=VarianceAlgorithm.ONE_PASS_CLAMPED,
    accumulation=Accumulation.FLOAT32_OR_WIDER,
    subnormals=Subnormals.FLUSHED,
    parameter_precision=ParameterPrecision.INPUT_DTYPE,
    dtypes=("float16", "bfloat16", "float32", "float64"),
    param_dtypes="same-or-float32",
    ranks=(2, 3, 4, 5),
    layouts=("channels_first", "channels_last"),
    modes=("train", "eval"),
    untracked=True,
    gradients=True,
    quantities=_FLAX_QUANTITIES,
    notes=_LINEN_ARITHMETIC + _LINEN_NOTES,
    sources=_LINEN_SOURCES,
    upstream_issues=(_FLAX_NEGATIVE_VARIANCE,),
)

LINEN_TWO_PASS_CONVENTIONS = Conventions(**{
    **LINEN_CONVENTIONS.to_dict(),
    "variance_algorithm": VarianceAlgorithm.TWO_PASS,
    "upstream_issues": (),  # the fast variance's issue is not this family's
    "notes": _LINEN_ARITHMETIC.replace("one-pass E[x^2]-E[x]^2 clipped at 0 (use_fast_variance=True, the default)",
                                       "two-pass mean((x - mean)^2) (use_fast_variance=False)") + _LINEN_NOTES +
             " This family sets use_fast_variance=False; everything else is the default.",
})

NNX_CONVENTIONS = Conventions(
    momentum=MomentumForm.OLD,
    running_var=RunningVar.BIASED,
    eps_placement=EpsPlacement.INSIDE,
    default_eps=1e-5,
    default_momentum=0.99,
    variance_algorithm=VarianceAlgorithm.ONE_PASS_CLAMPED,
    accumulation=Accumulation.FLOAT32_OR_WIDER,
    elementwise=Elementwise.INPUT_DTYPE,
    subnormals=Subnormals.FLUSHED,
    parameter_precision=ParameterPrecision.INPUT_DTYPE,
    dtypes=("float16", "bfloat16", "float32", "float64"),
    param_dtypes="same-or-float32",
    ranks=(2, 3, 4, 5),
    layouts=("channels_first", "channels_last"),
    modes=("train", "eval"),
    untracked=True,
    gradients=True,
    quantities=_FLAX_QUANTITIES,
    notes="Variance: one-pass E[x^2]-E[x]^2 clipped at 0 (use_fast_variance=True, the default). Arithmetic: "
          "statistics in float32 for float16/bfloat16 inputs; but x, scale, bias and the running statistics are "
          "first cast to dtype (promote_dtype), so with a half dtype the parameters are rounded to half precision "
          "and eval-mode normalisation runs in half precision; float64 for float64. epsilon and momentum are "
          "Python floats traced as weak-typed constants of the computation dtype; the weight of the batch "
          "statistic is (1 - momentum), formed in Python float64. XLA flushes subnormal float32 inputs to zero "
          "(measured: hazards suite, subnormal-inputs). " + _NNX_NOTES,
    sources=_NNX_SOURCES,
    upstream_issues=(_FLAX_NEGATIVE_VARIANCE,),
)

JIT_CONVENTIONS = Conventions(
    momentum=MomentumForm.NEW,
    running_var=RunningVar.UNBIASED,
    eps_placement=EpsPlacement.INSIDE,
    default_eps=1e-5,
    default_momentum=0.1,
    variance_algorithm=VarianceAlgorithm.TWO_PASS,
    accumulation=Accumulation.FLOAT32_OR_WIDER,
    statistics_dtype=StatisticsDtype.ACCUMULATION,
    subnormals=Subnormals.FLUSHED,
    parameter_precision=ParameterPrecision.INPUT_DTYPE,
    dtypes=("float16", "bfloat16", "float32", "float64"),
    param_dtypes="same-or-float32",
    ranks=(2, 3, 4, 5),
    layouts=("channels_first", "channels_last"),
    modes=("train", "eval"),
    untracked=True,
    gradients=True,
    quantities=("y", "batch_mean", "batch_var", "batch_var_unbiased", "batch_invstd", "running_mean",
                "running_var", "dx", "dgamma", "dbeta"),
    notes="Variance: two-pass, mean = jnp.mean(x); var = jnp.mean(jnp.square(x - mean)). Arithmetic: float32 for "
          "float16/bfloat16 inputs (x cast to float32 before any arithmetic, y cast back); float64 for float64. "
          "eps and momentum are passed to the jitted function as scalars of the computation dtype (float32 for "
          "half/float32, float64 for float64); the Bessel factor n/(n-1) is a weak-typed constant of that dtype. "
          "XLA flushes subnormal float32 inputs to zero (measured: hazards suite, subnormal-inputs). "
          "A BN written with jax.numpy/jax.lax under jax.jit as a careful user would, with PyTorch's "
          "conventions: y = (x - mean) * lax.rsqrt(var + eps) * gamma + beta; running = (1 - m) * running "
          "+ m * batch statistic with the unbiased variance var * n/(n-1) (NaN for n = 1); running "
          "statistics stored in the parameter dtype, batch statistics returned in the computation dtype. "
          "Gradients by jax.vjp (autodiff of the two-pass formula). One compilation per (shape, dtype, "
          "layout, flags); eps and momentum are arguments, so they do not recompile.",
    sources=_JIT_SOURCES,
)


_EAGER_NOTE = (
    " Eager: the same module, forward and jax.vjp run outside jax.jit, so JAX dispatches every primitive on its "
    "own (each compiled once per shape and dtype and cached by JAX) and XLA fuses nothing across operations. "
    "Same conventions as under jax.jit (measured), but other rounding: on float32 data about a third of the "
    "elements of y and dx differ from the jitted path's in their last bits, and where the one-pass variance "
    "cancels the two paths cancel differently."
)
_EAGER_EXPERIMENT = (
    "experiment (tests/test_flax_eager_targets.py): the benign cases pass under the declared conventions; the "
    "jitted and the eager path give different bits on the same case (measured on (8, 4, 5, 5) float32: 256 of "
    "800 y elements, max relative difference 1.5e-6)"
)
LINEN_EAGER_CONVENTIONS = replace(LINEN_CONVENTIONS, notes=LINEN_CONVENTIONS.notes + _EAGER_NOTE,
                                  sources=LINEN_CONVENTIONS.sources + (_EAGER_EXPERIMENT,))
NNX_EAGER_CONVENTIONS = replace(NNX_CONVENTIONS, notes=NNX_CONVENTIONS.notes + _EAGER_NOTE,
                                sources=NNX_CONVENTIONS.sources + (_EAGER_EXPERIMENT,))


def probe() -> dict[str, Any]:
    """Import jax and flax (64-bit enabled) and report versions, devices and backend details."""
    from .paths.jax_bn import jax_enable_x64, jax_gpu_devices

    jax_enable_x64()
    import flax
    import jax
    import jaxlib

    gpus = jax_gpu_devices()
    devices = ["cpu"] + (["cuda"] if gpus else [])
    details: dict[str, Any] = {
        "flax": flax.__version__, "jaxlib": getattr(jaxlib, "__version__", ""),
        "default_backend": jax.default_backend(), "x64": bool(jax.config.read("jax_enable_x64")),
    }
    if gpus:
        details["gpu"] = [str(getattr(d, "device_kind", d)) for d in gpus]
    return {"version": jax.__version__, "devices": devices, "details": details}


class _JaxBase(PathTarget):
    """JAX's jitted BN paths (paths/jax_bn.py): one cached jitted step per static configuration and phase kind."""

    framework: ClassVar[str] = "jax"
    devices: ClassVar[tuple[str, ...] | None] = ("cpu", "cuda")
    path_modules: ClassVar[tuple[str, ...]] = ("jax_bn",)
    path_entry: ClassVar[str] = "jax_bn"
    path_kind: ClassVar[str] = "compiled"  # every step runs under jax.jit (XLA)
    api: ClassVar[str] = "linen"

    def path_options(self) -> dict[str, Any]:
        """Which layer ('linen', 'nnx' or 'jit')."""
        return {"api": self.api}


# ---- flax.linen ---------------------------------------------------------------------------------
class FlaxLinen(_JaxBase):
    """flax.linen.BatchNorm with its default settings (one-pass 'fast' variance)."""

    package = "flax"

    family: ClassVar[str] = "flax.linen"
    description: ClassVar[str] = (
        "flax.linen.BatchNorm with default settings (use_fast_variance=True, momentum in the 'old' form), "
        "applied with Module.apply under jax.jit; running statistics via mutable=['batch_stats']"
    )
    conventions: ClassVar[Conventions] = LINEN_CONVENTIONS
    use_fast_variance: ClassVar[bool | None] = None  # None: leave Flax's default (True in flax 0.12)

    def path_options(self) -> dict[str, Any]:
        """linen, with use_fast_variance when the family sets it."""
        return {"api": "linen", "use_fast_variance": self.use_fast_variance}


class FlaxLinenTwoPass(FlaxLinen):
    """flax.linen.BatchNorm with use_fast_variance=False (two-pass variance)."""

    family: ClassVar[str] = "flax.linen.two_pass"
    description: ClassVar[str] = "flax.linen.BatchNorm(use_fast_variance=False), otherwise as flax.linen"
    conventions: ClassVar[Conventions] = LINEN_TWO_PASS_CONVENTIONS
    use_fast_variance: ClassVar[bool | None] = False


# ---- flax.nnx -----------------------------------------------------------------------------------
class FlaxNnx(_JaxBase):
    """flax.nnx.BatchNorm with its default settings, used through nnx.split / nnx.merge under jax.jit."""

    package = "flax"

    family: ClassVar[str] = "flax.nnx"
    description: ClassVar[str] = (
        "flax.nnx.BatchNorm with default settings (use_fast_variance=True), merged and called inside "
        "jax.jit with use_running_average per phase; running statistics read from its BatchStat variables"
    )
    conventions: ClassVar[Conventions] = NNX_CONVENTIONS
    api: ClassVar[str] = "nnx"


# ---- jax.jit ------------------------------------------------------------------------------------
class JaxJit(_JaxBase):
    """A two-pass BN written with jax.numpy/jax.lax under jax.jit, with PyTorch's running-statistic conventions."""

    family: ClassVar[str] = "jax.jit"
    description: ClassVar[str] = (
        "BN written directly with jax.numpy/jax.lax under jax.jit: two-pass variance, lax.rsqrt, float32 "
        "statistics for half inputs, PyTorch-form running update with the unbiased variance"
    )
    conventions: ClassVar[Conventions] = JIT_CONVENTIONS
    api: ClassVar[str] = "jit"


# ---- eager: the same flax layers outside jax.jit --------------------------------------------------
class FlaxLinenEager(FlaxLinen):
    """flax.linen.BatchNorm with its default settings, applied eagerly (no jax.jit: op-by-op dispatch)."""

    family: ClassVar[str] = "flax.linen.eager"
    description: ClassVar[str] = (
        "flax.linen.BatchNorm with default settings, applied with Module.apply and jax.vjp outside jax.jit "
        "(every primitive dispatched and compiled on its own)"
    )
    conventions: ClassVar[Conventions] = LINEN_EAGER_CONVENTIONS
    path_kind: ClassVar[str] = "eager"

    def path_options(self) -> dict[str, Any]:
        """linen, outside jax.jit."""
        return {**super().path_options(), "jit": False}


class FlaxNnxEager(FlaxNnx):
    """flax.nnx.BatchNorm with its default settings, called eagerly (no jax.jit)."""

    family: ClassVar[str] = "flax.nnx.eager"
    description: ClassVar[str] = (
        "flax.nnx.BatchNorm with default settings, merged and called with jax.vjp outside jax.jit (every "
        "primitive dispatched and compiled on its own)"
    )
    conventions: ClassVar[Conventions] = NNX_EAGER_CONVENTIONS
    path_kind: ClassVar[str] = "eager"

    def path_options(self) -> dict[str, Any]:
        """nnx, outside jax.jit."""
        return {**super().path_options(), "jit": False}
