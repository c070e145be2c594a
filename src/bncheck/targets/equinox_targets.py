"""equinox targets: equinox.nn.BatchNorm in mode "ema" and in mode "batch", under equinox.filter_jit.

The kernel path is bncheck/targets/paths/equinox_bn.py (shared with the reproduction scripts); jax and equinox are
imported only inside `probe` and that module's functions, which execute in the equinox worker process (its own
group, so that a missing equinox leaves the flax targets alone). x64 is switched on before any array exists.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from .base import (Accumulation, Conventions, ParameterPrecision, StatisticsDtype, Subnormals, VarianceAlgorithm)
from .kernel import PathTarget

_EQX = "equinox/nn/_batch_norm.py (equinox 0.13.8, the same file at the repository's head, checked)"

_SOURCES = (
    f"{_EQX}: BatchNorm.__init__(input_size, axis_name, eps=1e-5, channelwise_affine=True, momentum=0.99, "
    "inference=False, dtype=None, mode='legacy' -> 'ema' with a warning); dtype sets weight, bias and the state",
    f"{_EQX}: __call__ takes one example (C, ...) inside jax.vmap(axis_name=...); _stats per channel: mean = "
    "pmean(mean(y)), var = pmean(mean((y - mean) * conj(y - mean))), var = maximum(0, var): two-pass over the "
    "per-example means, the biased variance; _norm: (y - m) / sqrt(v + eps) * w + b",
    "https://docs.kidger.site/equinox/api/nn/normalisation/ (BatchNorm: 'must be used inside of a vmap or pmap "
    "with a matching axis_name'; make_with_state; inference_mode)",
)

_COMMON_NOTES = (
    "Layer: equinox.nn.make_with_state(equinox.nn.BatchNorm)(C, axis_name='batch', eps=case.eps, "
    "channelwise_affine=affine, momentum=1-case.momentum, mode=..., dtype=<case param dtype>), applied as "
    "jax.vmap(partial(bn, inference=...), axis_name='batch', in_axes=(0, None), out_axes=(0, None))(x, state) "
    "under equinox.filter_jit, one compiled step per configuration (jax.jit re-traces for new shapes). "
    "Channels-last input is moved to channels-first and back (equinox layers take (C, ...) per example; "
    "exact). Weight and bias are replaced with the case's by equinox.tree_at; gradients by jax.vjp w.r.t. x, "
    "weight, bias. The statistics are computed in the input dtype (see accumulation), then combined with "
    "parameters of the param dtype; y has the promoted dtype (float32 for half input with float32 parameters) "
    "and the cotangent is dy cast to it (exact). Batch statistics are internal and not reported. The case's running "
    "statistics are loaded into the state as from a checkpoint, the state carried from phase to phase; "
    "without running statistics each phase starts from a fresh state and normalises with batch statistics "
    "(inference=False), as equinox's own fresh layer does on its first call. Runs with jax_enable_x64 on."
)

EMA_CONVENTIONS = Conventions(
    momentum="old",
    running_var="biased",
    eps_placement="inside_sqrt",
    default_eps=1e-5,
    default_momentum=0.99,
    variance_algorithm=VarianceAlgorithm.TWO_PASS,
    accumulation=Accumulation.FLOAT32_OR_WIDER,
    statistics_dtype=StatisticsDtype.INPUT,
    subnormals=Subnormals.FLUSHED,
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
        'Variance: two-pass: per-example means averaged over the batch axis (pmean), then the mean of squared'
        ' deviations from that mean, clipped at 0. Arithmetic: the input dtype: _stats takes jnp.mean of the '
        'half array (the mean comes back in the half dtype) and forms the squared deviations in it; float32 '
        'parameters then promote the normalisation (and y) to float32; float64 for float64. Measured (mode '
        "'batch', float16 input, float32 parameters, n = 200): y ratio 22, running_var 68. Parameters: eps "
        'and momentum are static Python floats, weak-typed constants of the computation dtype; the weight of '
        'the batch statistic is (1 - momentum), formed in Python float64. '
    ) + _COMMON_NOTES + " mode='ema': a training call blends the batch statistics into the running pair, "
          "new = (1 - momentum) * batch + momentum * running (biased variance), stores it AND normalises y with "
          "the blended pair, not with the batch statistics (equinox: 'exponential running means and variances "
          "are kept'); on a fresh state's first call (first_time) it uses and stores the batch statistics. "
          "Inference normalises with the stored pair. So training-mode y deviates from every batch-statistics "
          "reference whenever momentum is not 0 (a documented equinox design, left visible: the diagnoser's "
          "blended-stats hypothesis blends the unbiased variance, equinox the biased one). Training with a half "
          "input and float32 parameters raises inside equinox (lax.select of the half batch statistics against "
          "the float32 blended ones: 'lax.select requires arguments to have the same dtypes'), an error left "
          "visible.",
    sources=_SOURCES + (
        f"{_EQX}: mode 'ema' branch (mean = (1 - momentum) * batch_mean + momentum * running_mean; lax.select on "
        "ema_first_time_index; the blended pair is stored and used by _norm)",
        "experiment (tests/test_equinox_targets.py): the running pair after every step and evaluation after "
        "training pass under the declared conventions; training y equals the normalisation with the blended "
        "biased pair",
    ),
)

BATCH_CONVENTIONS = replace(
    EMA_CONVENTIONS,
    notes=_COMMON_NOTES + " mode='batch': training normalises with the batch statistics and updates a hidden "
          "pair, hidden = momentum * hidden + (1 - momentum) * batch (biased variance; a fresh state starts at "
          "(0, 1)), and a step counter; inference normalises with hidden / (1 - momentum**counter) (Adam-style "
          "zero-debiasing; hidden as is while counter = 0). The reported running statistics are the stored "
          "hidden pair. The debiasing assumes a zero start: after k training steps evaluation divides the "
          "loaded pair by 1 - momentum**k, and equinox's own variance start of 1 is divided too (a fresh layer "
          "evaluates after one step at momentum 0.99 with the variance 99 + v), so evaluation after training "
          "deviates from every reference (left visible). The docstring says inference uses the 'unbiased "
          "variance'; the code stores the biased one (measured).",
    sources=_SOURCES + (
        f"{_EQX}: mode 'batch' branch (init_hidden = (zeros, ones); new_hidden = hidden * momentum + batch * "
        "(1 - momentum); inference: scale = where(counter == 0, 1, 1 - momentum**counter), mean = hidden_mean / "
        "scale, var = hidden_var / scale), and commit 8d6046e (issue #1010, the counter == 0 guard)",
        "experiment (tests/test_equinox_targets.py): training y and the hidden pair after every step pass; "
        "evaluation after k steps equals the normalisation with hidden / (1 - momentum**k); a fresh layer's "
        "evaluation variance after one step is 99 + v at momentum 0.99",
    ),
)


def probe() -> dict[str, Any]:
    """Import jax and equinox (64-bit enabled) and report versions and devices."""
    from .paths.equinox_bn import equinox_enable_x64

    equinox_enable_x64()
    import equinox
    import jax

    try:
        gpus = list(jax.devices("gpu"))
    except RuntimeError:
        gpus = []
    details = {"jax": jax.__version__, "default_backend": jax.default_backend(),
               "x64": bool(jax.config.read("jax_enable_x64"))}
    return {"version": equinox.__version__, "devices": ["cpu"] + (["cuda"] if gpus else []), "details": details}


class _EquinoxBase(PathTarget):
    """equinox.nn.BatchNorm (paths/equinox_bn.py) in one mode."""

    framework: ClassVar[str] = "equinox"
    devices: ClassVar[tuple[str, ...] | None] = ("cpu", "cuda")
    path_modules: ClassVar[tuple[str, ...]] = ("equinox_bn",)
    path_entry: ClassVar[str] = "equinox_bn"
    path_kind: ClassVar[str] = "compiled"  # under equinox.filter_jit (jax.jit)
    mode: ClassVar[str] = "ema"

    def path_options(self) -> dict[str, Any]:
        """The layer's mode."""
        return {"mode": self.mode}


class EquinoxEma(_EquinoxBase):
    """equinox.nn.BatchNorm(mode='ema'): training normalises with the blended running statistics."""

    family: ClassVar[str] = "equinox.ema"
    description: ClassVar[str] = ("equinox.nn.BatchNorm(mode='ema') with its State, vmapped over the batch "
                                  "(axis_name), under equinox.filter_jit")
    conventions: ClassVar[Conventions] = EMA_CONVENTIONS


class EquinoxBatch(_EquinoxBase):
    """equinox.nn.BatchNorm(mode='batch'): batch statistics in training, zero-debiased running ones in inference."""

    family: ClassVar[str] = "equinox.batch"
    description: ClassVar[str] = ("equinox.nn.BatchNorm(mode='batch') with its State, vmapped over the batch "
                                  "(axis_name), under equinox.filter_jit")
    conventions: ClassVar[Conventions] = BATCH_CONVENTIONS
    mode: ClassVar[str] = "batch"
