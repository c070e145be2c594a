"""JAX targets: flax.linen.BatchNorm (default one-pass and two-pass variance), flax.nnx.BatchNorm, and a BN
written with jax.numpy / jax.lax under jax.jit.

jax and flax are imported only inside `probe` and `run` (and the helpers they call), which execute in the
jax worker process. Both switch on `jax_enable_x64` before any array is created, so float64 cases really
run in float64. Every path is compiled once per static configuration (layout, dtypes, eps/momentum where
the framework bakes them in, affine, tracking, mode, gradients) and jax.jit re-traces only for new shapes.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import numpy as np

from ..cases import Case
from ..inputs import Inputs
from .base import (Accumulation, Conventions, Elementwise, EpsPlacement, MomentumForm, Observation, ParameterPrecision,
                   RunningVar, StatisticsDtype, Subnormals, Target, Unsupported, VarianceAlgorithm)

# ---- conventions --------------------------------------------------------------------------------
_FLAX_LINEN_SRC = "flax/linen/normalization.py (flax 0.12.8)"
_FLAX_NNX_SRC = "flax/nnx/nn/normalization.py (flax 0.12.8)"

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
    "bncheck/targets/jax_targets.py: JaxJit._build (this target is defined here: two-pass jnp.mean of "
    "squared deviations, lax.rsqrt, PyTorch-form running update with var * n/(n-1))",
    "https://docs.jax.dev/en/latest/_autosummary/jax.lax.rsqrt.html",
    "https://docs.jax.dev/en/latest/default_dtypes.html (jax_enable_x64)",
)

_State = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]  # params, running statistics, scalars

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
)

LINEN_TWO_PASS_CONVENTIONS = Conventions(**{
    **LINEN_CONVENTIONS.to_dict(),
    "variance_algorithm": VarianceAlgorithm.TWO_PASS,
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


# ---- jax plumbing (every function below imports jax lazily) ------------------------------------
def _enable_x64() -> None:
    """Switch on 64-bit arrays (idempotent); must happen before any float64 array is created."""
    import jax

    if not jax.config.read("jax_enable_x64"):
        jax.config.update("jax_enable_x64", True)


def _gpu_devices() -> list[Any]:
    """JAX's GPU devices, or [] when there is no GPU backend."""
    import jax

    try:
        return list(jax.devices("gpu"))
    except RuntimeError:
        return []


def probe() -> dict[str, Any]:
    """Import jax and flax (64-bit enabled) and report versions, devices and backend details."""
    _enable_x64()
    import flax
    import jax
    import jaxlib

    gpus = _gpu_devices()
    devices = ["cpu"] + (["cuda"] if gpus else [])
    details: dict[str, Any] = {
        "flax": flax.__version__, "jaxlib": getattr(jaxlib, "__version__", ""),
        "default_backend": jax.default_backend(), "x64": bool(jax.config.read("jax_enable_x64")),
    }
    if gpus:
        details["gpu"] = [str(getattr(d, "device_kind", d)) for d in gpus]
    return {"version": jax.__version__, "devices": devices, "details": details}


def _jax_device(device: str) -> Any:
    """The jax.Device a bncheck device name refers to ('cuda' is the first GPU; unverified without one)."""
    import jax

    if device == "cuda":
        gpus = _gpu_devices()
        if not gpus:
            raise Unsupported("jax sees no GPU (jax.devices('gpu') is empty)")
        return gpus[0]
    return jax.devices("cpu")[0]


def _jdtype(name: str) -> Any:
    """jax.numpy dtype for a bncheck dtype name."""
    import jax.numpy as jnp

    return {"float16": jnp.float16, "bfloat16": jnp.bfloat16, "float32": jnp.float32, "float64": jnp.float64}[name]


def _put(a: np.ndarray, dtype: str, device: Any) -> Any:
    """NumPy transport array -> a jax array of `dtype` on `device` (exact: the values are representable)."""
    import jax

    host = np.array(a, dtype=np.dtype(_jdtype(dtype)))  # float32 -> bfloat16 of representable values is exact
    return jax.device_put(host, device)


def _numpy(a: Any) -> np.ndarray:
    """jax array -> a fresh float64 NumPy array (a copy, never a view of a device buffer)."""
    import jax

    return np.array(np.asarray(jax.device_get(a)), dtype=np.float64, copy=True)


def _stats_dtype(case: Case) -> str:
    """Storage of Flax's running statistics: float32 (force_float32_reductions), float64 for float64 cases."""
    return "float64" if case.param_dtype == "float64" else "float32"


class _JaxBase(Target):
    """Shared run loop: inputs onto the device, one cached jitted step per phase kind, results back."""

    framework: ClassVar[str] = "jax"
    devices: ClassVar[tuple[str, ...] | None] = ("cpu", "cuda")

    def __init__(self, device: str = "cpu") -> None:
        super().__init__(device)
        self._compiled: dict[tuple[Any, ...], Callable[..., Any]] = {}

    # subclasses -----------------------------------------------------------------------------
    def _key(self, case: Case, use_batch: bool, update: bool) -> tuple[Any, ...]:
        """Static configuration of one phase kind (shapes are left to jax.jit's own cache)."""
        raise NotImplementedError

    def _build(self, case: Case, use_batch: bool, update: bool) -> Callable[..., Any]:
        """A jitted step(x, dy, params, stats, scalars) -> dict of arrays for this configuration."""
        raise NotImplementedError

    def _initial_state(self, case: Case, inputs: Inputs, device: Any) -> _State:
        """(params, running statistics, scalars) as jax arrays on `device`."""
        raise NotImplementedError

    def _batch_statistics(self, out: dict[str, Any]) -> dict[str, Any]:
        """The batch statistics a step exposes, keyed by quantity (none for Flax)."""
        return {}

    def repro_source(self) -> str:
        """Standalone code defining run(case, inputs) for reproduction scripts (numpy, jax and flax only)."""
        api = "jit" if isinstance(self, JaxJit) else "nnx" if isinstance(self, FlaxNnx) else "linen"
        return REPRO_SOURCE.format(api=api, use_fast_variance=getattr(self, "use_fast_variance", None))

    # shared ---------------------------------------------------------------------------------
    def _step(self, case: Case, use_batch: bool, update: bool) -> Callable[..., Any]:
        key = self._key(case, use_batch, update)
        fn = self._compiled.get(key)
        if fn is None:
            fn = self._compiled[key] = self._build(case, use_batch, update)
        return fn

    def run(self, case: Case, inputs: Inputs) -> Observation:
        """Run every phase, carrying the running statistics the framework returns from step to step."""
        _enable_x64()
        import jax

        device = _jax_device(self.device)
        obs: Observation = {}
        with jax.default_device(device):
            params, stats, scalars = self._initial_state(case, inputs, device)
            for phase in case.phases:
                training = phase != "eval"
                use_batch = training or not case.track_running_stats
                update = training  # jax.jit updates only then; Flax whenever it uses batch statistics (see _key)
                x = _put(inputs[f"{phase}.x"], case.dtype, device)
                dy = _put(inputs[f"{phase}.dy"], case.dtype, device) if case.grad else None
                out = self._step(case, use_batch, update)(x, dy, params, stats, scalars)
                obs[f"{phase}.y"] = _numpy(out["y"])
                for q, v in self._batch_statistics(out).items():
                    obs[f"{phase}.{q}"] = _numpy(v)
                if training:
                    if case.track_running_stats:
                        stats = out["stats"]
                        obs[f"{phase}.running_mean"] = _numpy(stats["mean"])
                        obs[f"{phase}.running_var"] = _numpy(stats["var"])
                if case.grad:
                    obs[f"{phase}.dx"] = _numpy(out["dx"])
                    if case.affine:
                        obs[f"{phase}.dgamma"] = _numpy(out["dgamma"])
                        obs[f"{phase}.dbeta"] = _numpy(out["dbeta"])
        return obs


def _with_vjp(forward: Callable[..., Any], affine: bool, grad: bool) -> Callable[..., Any]:
    """step(x, dy, params, stats, scalars) from forward(x, params, stats, scalars) -> (y, aux dict).

    With gradients, the vjp is taken of `forward` itself (training-mode forward in training phases, so the
    batch statistics depend on x) w.r.t. x and, when affine, params['scale'] and params['bias'].
    """
    import jax

    def step(x: Any, dy: Any, params: Any, stats: Any, scalars: Any) -> dict[str, Any]:
        if not grad:
            y, aux = forward(x, params, stats, scalars)
            return {"y": y, **aux}
        if affine:
            y, pullback, aux = jax.vjp(lambda x_, p_: forward(x_, p_, stats, scalars), x, params, has_aux=True)
            dx, dp = pullback(dy)
            return {"y": y, **aux, "dx": dx, "dgamma": dp["scale"], "dbeta": dp["bias"]}
        y, pullback, aux = jax.vjp(lambda x_: forward(x_, params, stats, scalars), x, has_aux=True)
        (dx,) = pullback(dy)
        return {"y": y, **aux, "dx": dx}

    return jax.jit(step)


# ---- flax.linen ---------------------------------------------------------------------------------
class FlaxLinen(_JaxBase):
    """flax.linen.BatchNorm with its default settings (one-pass 'fast' variance)."""

    family: ClassVar[str] = "flax.linen"
    description: ClassVar[str] = (
        "flax.linen.BatchNorm with default settings (use_fast_variance=True, momentum in the 'old' form), "
        "applied with Module.apply under jax.jit; running statistics via mutable=['batch_stats']"
    )
    conventions: ClassVar[Conventions] = LINEN_CONVENTIONS
    use_fast_variance: ClassVar[bool | None] = None  # None: leave Flax's default (True in flax 0.12)

    def _key(self, case: Case, use_batch: bool, update: bool) -> tuple[Any, ...]:
        # the module bakes eps and momentum in; Flax updates running statistics whenever it uses batch ones
        return (case.layout, case.dtype, case.param_dtype, case.eps, case.momentum, case.affine, use_batch, case.grad)

    def _module(self, case: Case) -> Any:
        import flax.linen as nn

        kwargs: dict[str, Any] = dict(
            axis=-1 if case.layout == "channels_last" else 1,
            momentum=self.conventions.to_framework_momentum(case.momentum), epsilon=case.eps,
            dtype=_jdtype(case.dtype), param_dtype=_jdtype(case.param_dtype),
            use_bias=case.affine, use_scale=case.affine,
        )
        if self.use_fast_variance is not None:
            kwargs["use_fast_variance"] = self.use_fast_variance
        return nn.BatchNorm(**kwargs)

    def _build(self, case: Case, use_batch: bool, update: bool) -> Callable[..., Any]:
        module = self._module(case)
        affine = case.affine

        def forward(x: Any, params: Any, stats: Any, scalars: Any) -> tuple[Any, dict[str, Any]]:
            variables = {"params": params, "batch_stats": stats} if affine else {"batch_stats": stats}
            if use_batch:
                y, updated = module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
                return y, {"stats": updated["batch_stats"]}
            return module.apply(variables, x, use_running_average=True), {"stats": stats}

        return _with_vjp(forward, affine, case.grad)

    def _initial_state(self, case: Case, inputs: Inputs, device: Any) -> _State:
        C, sdt = case.channels, _stats_dtype(case)
        params = {}
        if case.affine:
            params = {"scale": _put(inputs["gamma"], case.param_dtype, device),
                      "bias": _put(inputs["beta"], case.param_dtype, device)}
        if case.track_running_stats:
            stats = {"mean": _put(inputs["running_mean"], sdt, device), "var": _put(inputs["running_var"], sdt, device)}
        else:  # Flax always has the collection: start it as Flax's initialisers do, and never report it
            stats = {"mean": _put(np.zeros(C), sdt, device), "var": _put(np.ones(C), sdt, device)}
        return params, stats, {}


class FlaxLinenTwoPass(FlaxLinen):
    """flax.linen.BatchNorm with use_fast_variance=False (two-pass variance)."""

    family: ClassVar[str] = "flax.linen.two_pass"
    description: ClassVar[str] = "flax.linen.BatchNorm(use_fast_variance=False), otherwise as flax.linen"
    conventions: ClassVar[Conventions] = LINEN_TWO_PASS_CONVENTIONS
    use_fast_variance: ClassVar[bool | None] = False


# ---- flax.nnx -----------------------------------------------------------------------------------
class FlaxNnx(_JaxBase):
    """flax.nnx.BatchNorm with its default settings, used through nnx.split / nnx.merge under jax.jit."""

    family: ClassVar[str] = "flax.nnx"
    description: ClassVar[str] = (
        "flax.nnx.BatchNorm with default settings (use_fast_variance=True), merged and called inside "
        "jax.jit with use_running_average per phase; running statistics read from its BatchStat variables"
    )
    conventions: ClassVar[Conventions] = NNX_CONVENTIONS

    def _key(self, case: Case, use_batch: bool, update: bool) -> tuple[Any, ...]:
        return (case.channels, case.layout, case.dtype, case.param_dtype, case.eps, case.momentum, case.affine,
                use_batch, case.grad)

    def _build(self, case: Case, use_batch: bool, update: bool) -> Callable[..., Any]:
        import jax
        from flax import nnx

        module = nnx.BatchNorm(
            case.channels, axis=-1 if case.layout == "channels_last" else 1,
            momentum=self.conventions.to_framework_momentum(case.momentum), epsilon=case.eps,
            dtype=_jdtype(case.dtype), param_dtype=_jdtype(case.param_dtype),
            use_bias=case.affine, use_scale=case.affine, rngs=nnx.Rngs(0),
        )
        graphdef, params_t, stats_t = nnx.split(module, nnx.Param, nnx.BatchStat)
        # rebuild the Param/BatchStat states from plain dicts of arrays (leaf order of the template states)
        layout = [(jax.tree_util.tree_structure(t), [path[0].key for path, _ in jax.tree_util.tree_flatten_with_path(t)[0]])
                  for t in (params_t, stats_t)]

        def state(i: int, values: dict[str, Any]) -> Any:
            treedef, keys = layout[i]
            return jax.tree_util.tree_unflatten(treedef, [values[k] for k in keys])

        def forward(x: Any, params: Any, stats: Any, scalars: Any) -> tuple[Any, dict[str, Any]]:
            m = nnx.merge(graphdef, state(0, params), state(1, stats))
            y = m(x, use_running_average=not use_batch)
            return y, {"stats": {"mean": m.mean[...], "var": m.var[...]}}

        return _with_vjp(forward, case.affine, case.grad)

    _initial_state = FlaxLinen._initial_state


# ---- jax.jit ------------------------------------------------------------------------------------
class JaxJit(_JaxBase):
    """A two-pass BN written with jax.numpy/jax.lax under jax.jit, with PyTorch's running-statistic conventions."""

    family: ClassVar[str] = "jax.jit"
    description: ClassVar[str] = (
        "BN written directly with jax.numpy/jax.lax under jax.jit: two-pass variance, lax.rsqrt, float32 "
        "statistics for half inputs, PyTorch-form running update with the unbiased variance"
    )
    conventions: ClassVar[Conventions] = JIT_CONVENTIONS

    def _key(self, case: Case, use_batch: bool, update: bool) -> tuple[Any, ...]:
        return (len(case.shape), case.layout, case.dtype, case.param_dtype, case.affine, case.track_running_stats, use_batch,
                update and case.track_running_stats, case.grad)

    def _build(self, case: Case, use_batch: bool, update: bool) -> Callable[..., Any]:
        import jax.numpy as jnp
        from jax import lax

        cdt = _jdtype("float64" if case.dtype == "float64" else "float32")
        xdt, pdt = _jdtype(case.dtype), _jdtype(case.param_dtype)
        affine, update = case.affine, update and case.track_running_stats
        rank = len(case.shape)
        ch = rank - 1 if case.layout == "channels_last" else 1
        axes = tuple(i for i in range(rank) if i != ch)

        def bcast(v: Any) -> Any:  # (C,) -> broadcastable against x
            return jnp.expand_dims(v, axes)

        def forward(x: Any, params: Any, stats: Any, scalars: Any) -> tuple[Any, dict[str, Any]]:
            eps, momentum = scalars["eps"], scalars["momentum"]
            xc = x.astype(cdt)
            aux: dict[str, Any] = {}
            if use_batch:
                mean = jnp.mean(xc, axis=axes)
                var = jnp.mean(jnp.square(xc - bcast(mean)), axis=axes)
                invstd = lax.rsqrt(var + eps)
                n = xc.size // xc.shape[ch]
                var_u = var * (n / (n - 1) if n > 1 else float("inf"))  # n = 1: 0 * inf = NaN, undefined
                centre = mean
                aux.update(batch_mean=mean, batch_var=var, batch_var_unbiased=var_u, batch_invstd=invstd)
                if update:
                    rm, rv = stats["mean"].astype(cdt), stats["var"].astype(cdt)
                    aux["stats"] = {"mean": ((1 - momentum) * rm + momentum * mean).astype(pdt),
                                    "var": ((1 - momentum) * rv + momentum * var_u).astype(pdt)}
            else:
                centre = stats["mean"].astype(cdt)
                invstd = lax.rsqrt(stats["var"].astype(cdt) + eps)
            y = (xc - bcast(centre)) * bcast(invstd)
            if affine:
                y = y * bcast(params["scale"].astype(cdt)) + bcast(params["bias"].astype(cdt))
            return y.astype(xdt), aux

        return _with_vjp(forward, affine, case.grad)

    def _initial_state(self, case: Case, inputs: Inputs, device: Any) -> _State:
        params, stats = {}, {}
        if case.affine:
            params = {"scale": _put(inputs["gamma"], case.param_dtype, device),
                      "bias": _put(inputs["beta"], case.param_dtype, device)}
        if case.track_running_stats:
            stats = {"mean": _put(inputs["running_mean"], case.param_dtype, device),
                     "var": _put(inputs["running_var"], case.param_dtype, device)}
        cdt = "float64" if case.dtype == "float64" else "float32"
        scalars = {"eps": _put(np.float64(case.eps), cdt, device), "momentum": _put(np.float64(case.momentum), cdt, device)}
        return params, stats, scalars

    def _batch_statistics(self, out: dict[str, Any]) -> dict[str, Any]:
        return {q: out[q] for q in ("batch_mean", "batch_var", "batch_var_unbiased", "batch_invstd") if q in out}


REPRO_SOURCE = '''
import jax

jax.config.update("jax_enable_x64", True)  # float64 arrays need x64; set before the first array is created
import jax.numpy as jnp

API = {api!r}  # "linen" (flax.linen.BatchNorm), "nnx" (flax.nnx.BatchNorm) or "jit" (BN in jax.numpy/jax.lax)
USE_FAST_VARIANCE = {use_fast_variance!r}  # linen: None leaves Flax's default (True), False is the two-pass variance
DT = {{"float16": jnp.float16, "bfloat16": jnp.bfloat16, "float32": jnp.float32, "float64": jnp.float64}}


def _put(a, dtype, device):
    return jax.device_put(np.array(a, dtype=np.dtype(DT[dtype])), device)  # float32 -> bfloat16 values: exact


def _out(a):
    return np.array(np.asarray(jax.device_get(a)), dtype=np.float64, copy=True)


def _linen(case, use_batch, update):
    import flax.linen as nn

    kwargs = {{}} if USE_FAST_VARIANCE is None else {{"use_fast_variance": USE_FAST_VARIANCE}}
    module = nn.BatchNorm(axis=-1 if case["layout"] == "channels_last" else 1,
                          momentum=1.0 - case["momentum"],  # Flax weights the OLD running value
                          epsilon=case["eps"], dtype=DT[case["dtype"]], param_dtype=DT[case["param_dtype"]],
                          use_bias=case["affine"], use_scale=case["affine"], **kwargs)

    def forward(x, params, stats, scalars):
        variables = {{"params": params, "batch_stats": stats}} if case["affine"] else {{"batch_stats": stats}}
        if use_batch:
            y, updated = module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
            return y, {{"stats": updated["batch_stats"]}}
        return module.apply(variables, x, use_running_average=True), {{"stats": stats}}
    return forward


def _nnx(case, use_batch, update):
    from flax import nnx

    module = nnx.BatchNorm(case["shape"][1], axis=-1 if case["layout"] == "channels_last" else 1,
                           momentum=1.0 - case["momentum"],  # Flax weights the OLD running value
                           epsilon=case["eps"], dtype=DT[case["dtype"]], param_dtype=DT[case["param_dtype"]],
                           use_bias=case["affine"], use_scale=case["affine"], rngs=nnx.Rngs(0))
    graphdef, params_t, stats_t = nnx.split(module, nnx.Param, nnx.BatchStat)
    # rebuild the Param/BatchStat states from plain dicts of arrays (leaf order of the template states)
    layout = [(jax.tree_util.tree_structure(t), [p[0].key for p, _ in jax.tree_util.tree_flatten_with_path(t)[0]])
              for t in (params_t, stats_t)]
    state = lambda i, values: jax.tree_util.tree_unflatten(layout[i][0], [values[k] for k in layout[i][1]])

    def forward(x, params, stats, scalars):
        m = nnx.merge(graphdef, state(0, params), state(1, stats))
        y = m(x, use_running_average=not use_batch)
        return y, {{"stats": {{"mean": m.mean[...], "var": m.var[...]}}}}
    return forward


def _jit(case, use_batch, update):
    from jax import lax

    cdt = DT["float64" if case["dtype"] == "float64" else "float32"]
    xdt, pdt = DT[case["dtype"]], DT[case["param_dtype"]]
    rank = len(case["shape"])
    ch = rank - 1 if case["layout"] == "channels_last" else 1
    axes = tuple(i for i in range(rank) if i != ch)
    bcast = lambda v: jnp.expand_dims(v, axes)

    def forward(x, params, stats, scalars):
        eps, momentum = scalars["eps"], scalars["momentum"]  # bncheck's (new-statistic) momentum, as PyTorch
        xc = x.astype(cdt)
        aux = {{}}
        if use_batch:
            mean = jnp.mean(xc, axis=axes)
            var = jnp.mean(jnp.square(xc - bcast(mean)), axis=axes)
            invstd = lax.rsqrt(var + eps)
            n = xc.size // xc.shape[ch]
            var_u = var * (n / (n - 1) if n > 1 else float("inf"))
            centre = mean
            aux.update(batch_mean=mean, batch_var=var, batch_var_unbiased=var_u, batch_invstd=invstd)
            if update:
                rm, rv = stats["mean"].astype(cdt), stats["var"].astype(cdt)
                aux["stats"] = {{"mean": ((1 - momentum) * rm + momentum * mean).astype(pdt),
                                "var": ((1 - momentum) * rv + momentum * var_u).astype(pdt)}}
        else:
            centre = stats["mean"].astype(cdt)
            invstd = lax.rsqrt(stats["var"].astype(cdt) + eps)
        y = (xc - bcast(centre)) * bcast(invstd)
        if case["affine"]:
            y = y * bcast(params["scale"].astype(cdt)) + bcast(params["bias"].astype(cdt))
        return y.astype(xdt), aux
    return forward


def _step(case, use_batch, update):
    """jax.jit of the forward (and, with gradients, its jax.vjp w.r.t. x, scale and bias)."""
    forward = {{"linen": _linen, "nnx": _nnx, "jit": _jit}}[API](case, use_batch, update)

    def step(x, dy, params, stats, scalars):
        if not case["grad"]:
            y, aux = forward(x, params, stats, scalars)
            return {{"y": y, **aux}}
        if case["affine"]:
            y, pullback, aux = jax.vjp(lambda x_, p_: forward(x_, p_, stats, scalars), x, params, has_aux=True)
            dx, dp = pullback(dy)
            return {{"y": y, **aux, "dx": dx, "dgamma": dp["scale"], "dbeta": dp["bias"]}}
        y, pullback, aux = jax.vjp(lambda x_: forward(x_, params, stats, scalars), x, has_aux=True)
        (dx,) = pullback(dy)
        return {{"y": y, **aux, "dx": dx}}
    return jax.jit(step)


def run(case, inputs):
    """Every phase through one jitted step, carrying the running statistics it returns."""
    device = jax.devices("gpu")[0] if DEVICE == "cuda" else jax.devices("cpu")[0]
    tracked, C, pd = case["track_running_stats"], case["shape"][1], case["param_dtype"]
    with jax.default_device(device):
        params, stats, scalars = {{}}, {{}}, {{}}
        if case["affine"]:
            params = {{"scale": _put(inputs["gamma"], pd, device), "bias": _put(inputs["beta"], pd, device)}}
        if API == "jit":
            if tracked:
                stats = {{"mean": _put(inputs["running_mean"], pd, device), "var": _put(inputs["running_var"], pd, device)}}
            cdt = "float64" if case["dtype"] == "float64" else "float32"
            scalars = {{"eps": _put(np.float64(case["eps"]), cdt, device),
                       "momentum": _put(np.float64(case["momentum"]), cdt, device)}}
        else:  # Flax keeps running statistics in float32 (float64 for float64 parameters), always
            sdt = "float64" if pd == "float64" else "float32"
            rm, rv = (inputs["running_mean"], inputs["running_var"]) if tracked else (np.zeros(C), np.ones(C))
            stats = {{"mean": _put(rm, sdt, device), "var": _put(rv, sdt, device)}}
        steps, out = {{}}, {{}}
        for phase in PHASES:
            training = phase != "eval"
            use_batch = training or not tracked
            key = (use_batch, training and tracked)
            if key not in steps:
                steps[key] = _step(case, *key)
            x = _put(inputs[phase + ".x"], case["dtype"], device)
            dy = _put(inputs[phase + ".dy"], case["dtype"], device) if case["grad"] else None
            res = steps[key](x, dy, params, stats, scalars)
            out[phase + ".y"] = _out(res["y"])
            for q in ("batch_mean", "batch_var", "batch_var_unbiased", "batch_invstd"):  # jax.jit exposes them
                if q in res:
                    out[phase + "." + q] = _out(res[q])
            if training and tracked:
                stats = res["stats"]
                out[phase + ".running_mean"], out[phase + ".running_var"] = _out(stats["mean"]), _out(stats["var"])
            if case["grad"]:
                out[phase + ".dx"] = _out(res["dx"])
                if case["affine"]:
                    out[phase + ".dgamma"], out[phase + ".dbeta"] = _out(res["dgamma"]), _out(res["dbeta"])
    return out
'''
