"""What each hypothesis and class means: the one text behind the report's hypothesis pages and docs/hypotheses.md.

For every hypothesis of `diagnose.HYPOTHESES` (and `unexplained`, and the peers' `peer-outlier`) and every class, an
`Entry`: what it models (a formula, or the arithmetic of a weaker algorithm), how bncheck fits it, an example and
the known upstream issues about it. `tests/test_catalogue.py` checks that every hypothesis has an entry and that
docs/hypotheses.md is `markdown()` of this module (regenerate it with `python -m bncheck.catalogue > docs/hypotheses.md`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .diagnose import HYPOTHESES, WHY_NOT
from .peers import PEER_OUTLIER


@dataclass(frozen=True)
class Upstream:
    """A public upstream issue or pull request about the behaviour, as its tracker titles it."""

    title: str
    url: str


@dataclass(frozen=True)
class Entry:
    """The page of one hypothesis or class."""

    name: str
    kind: str  # formula | precision | range | none (unexplained, peer-outlier) | class
    models: str  # the formula or arithmetic it models
    fitted: str  # how bncheck evaluates it against an observation
    example: str  # a case where it is the explanation
    upstream: tuple[Upstream, ...] = field(default_factory=tuple)


_FORMULA_FIT = ("bncheck evaluates the alternative formula in float64 on the same rounded inputs and parameters, "
                "keeps the correct kernel's error bounds, and computes the residual: the largest error / bound of the "
                "deviating quantities under it. It explains the execution when the residual is at most 1.")
_PRECISION_FIT = ("bncheck keeps the reference's values and widens the error bounds to those of a kernel doing the "
                  "same computation in the weaker arithmetic (docs/tolerances.md). It explains the execution when every "
                  "deviating quantity it models is within the widened bound (residual at most 1); among precision "
                  "models that explain, a declared one, then the tightest, wins.")
_RANGE_FIT = ("bncheck computes the exact intermediate in float64 (or wider) and compares it with the range of the "
              "format the target declares. The elements it makes unpredictable are left out of every hypothesis; when "
              "they hold every deviation, the range issue is the explanation (class out-of-range).")

_FLAX_1491 = Upstream("google/flax#1491: Variance can be negative in BatchNorm computation, leading to NaN's",
                      "https://github.com/google/flax/issues/1491")
_TF_3290 = Upstream("tensorflow/tensorflow#3290: I think tf.nn.moments() produces negative variance",
                    "https://github.com/tensorflow/tensorflow/issues/3290")
_KERAS_18795 = Upstream("keras-team/keras#18795: Fix numerical issues in TF and JAX `moments` implementation",
                        "https://github.com/keras-team/keras/pull/18795")
_KERAS_CORE_866 = Upstream("keras-team/keras-core#866: Add `ops.nn.moments` and speed-up normalization layers",
                           "https://github.com/keras-team/keras-core/pull/866")
_TORCH_1381 = Upstream("pytorch/pytorch#1381: BatchNorm shouldn't use Bessel's correction for a batch size of 1",
                       "https://github.com/pytorch/pytorch/issues/1381")
_TORCH_5410 = Upstream("pytorch/pytorch#5410: Numeric instability in batch_norm for constant inputs",
                       "https://github.com/pytorch/pytorch/issues/5410")
_KERAS_8982 = Upstream("keras-team/keras#8982: BatchNormalization population statistics is wrong with small minibatches",
                       "https://github.com/keras-team/keras/issues/8982")

_TEXT: dict[str, tuple[str, str, tuple[Upstream, ...]]] = {
    # name: (models, example, upstream)
    "running-var-biased": (
        "running_var <- (1 - m) running_var + m * var_b, with the biased batch variance var_b = sum (x - mean)^2 / n.",
        "ONNX BatchNormalization (current_var is the population variance) against PyTorch's unbiased update.",
        (_KERAS_8982,)),
    "running-var-unbiased": (
        "running_var <- (1 - m) running_var + m * var_b * n / (n - 1), the unbiased batch variance.",
        "PyTorch's running update, seen from a target whose record declares the biased one.", ()),
    "momentum-flipped": (
        "running <- m * running + (1 - m) * batch: the weight of the running value swapped with the batch's "
        "(Keras, Flax and ONNX call 1 - m their momentum).",
        "A converter that passes PyTorch's momentum 0.1 unchanged to a framework whose momentum is the old value's "
        "weight.", ()),
    "eps-outside-sqrt": (
        "y = gamma (x - mean) / (sqrt(var) + eps) + beta.",
        "A hand-written kernel adding eps after the square root; visible where var is comparable to eps^2.", ()),
    "eps-inside-sqrt": (
        "y = gamma (x - mean) / sqrt(var + eps) + beta, where the record declares eps outside the root.",
        "A target declared as eps-outside whose kernel follows the usual formula.", ()),
    "eps-ignored": (
        "y = gamma (x - mean) / sqrt(var) + beta: eps is not used.",
        "A small-variance channel (var comparable to eps) normalised as if eps were 0.", ()),
    "unbiased-normalisation": (
        "y = gamma (x - mean) / sqrt(var_u + eps) + beta, with var_u = var_b * n / (n - 1).",
        "A kernel that reuses the unbiased running-update variance to normalise; visible for small n.", ()),
    "bessel-clamped": (
        "The Bessel factor n / max(n - 1, 1): with one value per channel the unbiased variance is the biased one "
        "(0) instead of 0/0.",
        "Training on a (1, C) input: PyTorch refuses; a clamped kernel returns finite running statistics.",
        (_TORCH_1381,)),
    "params-float32": (
        "eps and momentum rounded to float32 before the kernel uses them (ONNX attributes are float32).",
        "float64 BN through ONNX Runtime: eps = 1e-5 becomes 9.99999974738e-06, and running statistics differ by "
        "~1e-8 relative.", ()),
    "eval-uses-batch-stats": (
        "Evaluation normalises with the batch's own statistics instead of the running ones.",
        "A layer left in training mode (or a `training` flag lost in export) at inference.", ()),
    "train-uses-running-stats": (
        "Training normalises with the running statistics instead of the batch's.",
        "torch.onnx.export of a module in training mode whose exported graph is an inference BatchNormalization.", ()),
    "blended-stats": (
        "Training (or opset 9 evaluation) normalises with the updated running statistics: (1 - m) running + m batch.",
        "onnx.reference's BatchNormalization_9 with a momentum attribute; equinox's mode='ema' training output.", ()),
    "one-pass-variance": (
        "var = E[x^2] - E[x]^2 in the accumulation format: it cancels when |mean| >> std, losing about "
        "2 log10(|mean| / std) digits, and can go negative (then NaN after rsqrt).",
        "float32 x ~ N(1e4, 1) on flax.linen (use_fast_variance=True): E[x^2] ~ 1e8 carries rounding errors of "
        "order u 1e8 ~ 6, larger than the variance (1) itself.",
        (_FLAX_1491, _TF_3290, _KERAS_CORE_866, _KERAS_18795)),
    "float32-computation": (
        "A float64 case computed in float32: every sum, the statistics and the element-wise arithmetic rounded to "
        "float32 (u = 2^-24) instead of float64.",
        "keras.jax on a float64 layer: errors ~1e-7 relative where the float64 bound is ~1e-15.", ()),
    "input-dtype-accumulation": (
        "Sums and intermediates kept in the half-precision input dtype (float16: u = 2^-11; bfloat16: 2^-8): the "
        "error of a channel sum grows with the number of its elements.",
        "float16 x on a kernel that reduces in float16 instead of float32.", ()),
    "one-pass-variance+float32-computation": (
        "Both: the one-pass variance E[x^2] - E[x]^2 computed in float32 for a float64 case.",
        "keras.torch on float64 inputs with a mean offset.", ()),
    "one-pass-variance+input-dtype-accumulation": (
        "Both: the one-pass variance computed in the half-precision input dtype.",
        "A float16 kernel with fast variance on offset inputs.", ()),
    "sequential-accumulation": (
        "Channel sums accumulated element after element (or in long blocks): the error bound grows like n u instead "
        "of the ~sqrt(n) u of independent roundings. Offered from 4096 elements per channel.",
        "A naive loop reduction over a (64, C, 32, 32) input.", ()),
    "subnormals-flushed": (
        "Subnormal inputs read as zero (DAZ) and subnormal results flushed to zero (FTZ).",
        "XLA and TensorFlow on float32 inputs of magnitude 1e-40.", ()),
    "half-precision-statistics": (
        "The batch statistics rounded to the half-precision input dtype before the output uses them (and overflowing "
        "or underflowing where they do not fit it).",
        "tf.nn.moments on float16 input returning float16 mean and variance.", ()),
    "elementwise-input-dtype": (
        "Statistics in float32, but the element-wise normalisation (x - mean) * invstd * gamma + beta, and the "
        "backward's element-wise terms, in the half-precision input dtype.",
        "Flax's half-precision dx.", ()),
    "constant-channel-cancellation": (
        "A one-pass variance clamped at 0: on a constant channel it is the cancellation residue of E[x^2] - E[x]^2 "
        "instead of 0, which moves invstd (and dx) by up to residue / (2 eps).",
        "A channel of constant value 1e3 on flax.linen: y not exactly beta, dx far from 0.", (_TORCH_5410, _FLAX_1491)),
    "invstd-cubed-overflow": (
        "The backward forms invstd^3 = (var + eps)^-1.5 (the autodiff of rsqrt), which overflows the accumulation "
        "format; a closed-form backward does not form it.",
        "float32 with var + eps ~ 1e-30: JAX, Flax and Keras gradients Inf where torch's closed form is finite.", ()),
    "sum-overflow": (
        "The exact sum of a channel's values exceeds the largest value of the declared format.",
        "float16 channel of 4096 values near 6e4.", ()),
    "sum-of-squares-overflow": (
        "The exact sum of squared deviations (n * variance) exceeds the largest value of the declared format.",
        "bfloat16 values of spread 1e19: n var = 2.9e40 > float32's maximum on every bfloat16 target.", ()),
    "variance-overflow": (
        "The exact variance exceeds the largest value of the declared format.",
        "float16 parameters with a variance of 9e4 > 65504.", ()),
    "variance-underflow": (
        "var + eps rounds to zero in the declared format: every implementation in it divides by zero.",
        "eps = 0 and a variance below float32's smallest subnormal.", ()),
    "invstd-overflow": (
        "The exact inverse standard deviation is infinite (var + eps = 0) or beyond the declared format.",
        "eps = 0 on a constant channel: 0/0, the reference is NaN.", ()),
    "unexplained": (
        "Nothing: no hypothesis brings every deviating quantity back within its bound.",
        "A kernel that drops a term, reads the wrong channel or mixes phases: a suspected bug to report.", ()),
    PEER_OUTLIER: (
        "Within its bound, but more than 100 times less accurate than the median of at least three other targets on "
        "the same quantity of the same case (docs/peers.md).",
        "flax.nnx's half-precision parameter gradients.", ()),
}

_CLASSES: dict[str, tuple[str, str, str]] = {
    "convention": (
        "An exact alternative formula that the target's conventions record declares exactly: a documented difference "
        "of meaning, not an error.", "The hypothesis is a formula and `documented` holds (diagnose.classify).",
        "ort.opset15 on float64: eps and momentum reach the kernel as float32 attributes (params-float32)."),
    "precision": (
        "The same computation in weaker arithmetic or a weaker algorithm (one-pass variance, float32 for float64, "
        "half-precision sums). `documented` says whether the record declares it.",
        "The hypothesis is a precision model.", "flax.linen's one-pass variance at large means."),
    "precision-outlier": (
        "Within the bound, but far less accurate than its peers on the same quantity of the same case.",
        "peers.py: error above 100 times the median of at least three peers and above a ULP floor.",
        "tf.nn's float16 moments."),
    "out-of-range": (
        "An exact intermediate does not fit the target's declared format, so every implementation in that format "
        "fails; kept only while no same-format peer passes.", "The hypothesis is a range issue (formats.py).",
        "bfloat16 sums of squares beyond float32's maximum."),
    "suspected-bug": (
        "An undocumented formula, nothing that explains the deviation (`unexplained`), or an out-of-range failure a "
        "same-format peer avoids: what to report upstream.",
        "A formula the record does not declare, or no hypothesis explains.",
        "torch.onnx.export+ort normalising a training-mode module with its running statistics."),
}

_KIND_FIT = {"formula": _FORMULA_FIT, "precision": _PRECISION_FIT, "range": _RANGE_FIT,
             "none": "No fit: the deviating quantities stay outside their bounds under every hypothesis bncheck has.",
             "peer": "peers.py compares the error with the median error of the other targets on the same quantity "
                     "and case, after every target of the case has run."}


def entries() -> list[Entry]:
    """Every hypothesis's entry, in the catalogue order of diagnose.HYPOTHESES, then unexplained and peer-outlier."""
    out = []
    for name in [*HYPOTHESES, "unexplained", PEER_OUTLIER]:
        models, example, upstream = _TEXT[name]
        kind = HYPOTHESES[name].kind if name in HYPOTHESES else ("peer" if name == PEER_OUTLIER else "none")
        out.append(Entry(name, kind, models, _KIND_FIT[kind], example, upstream))
    return out


def classes() -> list[Entry]:
    """Every class's entry."""
    return [Entry(name, "class", m, f, e) for name, (m, f, e) in _CLASSES.items()]


def entry(name: str) -> Entry | None:
    """The entry of a hypothesis or class name (None: unknown, e.g. from a plugin or a newer bncheck)."""
    return next((e for e in [*entries(), *classes()] if e.name == name), None)


def page_name(name: str) -> str:
    """The file name of a hypothesis's page ('class-<name>.html' for a class)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return f"class-{slug}.html" if name in _CLASSES else f"{slug}.html"


def anchor(name: str) -> str:
    """The anchor of a hypothesis or class in docs/hypotheses.md."""
    return ("class-" if name in _CLASSES else "") + re.sub(r"[^a-z0-9-]", "", name.replace("+", "").lower())


def markdown() -> str:
    """docs/hypotheses.md."""
    lines = ["# What each hypothesis and class means", "",
             "<!-- generated by `python -m bncheck.catalogue > docs/hypotheses.md` from src/bncheck/catalogue.py; "
             "tests/test_catalogue.py checks it is current -->", "",
             "Every finding names a hypothesis (what explains it) and a class; the report has one page per hypothesis "
             "and class (`hypotheses/` beside `index.html`), and every finding page links to its own. The rules that "
             "pick one hypothesis among those that explain are in `src/bncheck/diagnose.py`:", ""]
    lines += [f"* `{rule}`: {text}" for rule, text in WHY_NOT.items()]
    lines += ["", "## Classes", ""]
    for c in classes():
        lines += [f'<a id="{anchor(c.name)}"></a>', f"### class `{c.name}`", "", c.models, "",
                  f"*Decided by*: {c.fitted}", "", f"*Example*: {c.example}", ""]
    lines += ["## Hypotheses", ""]
    for e in entries():
        lines += [f'<a id="{anchor(e.name)}"></a>', f"### `{e.name}` ({e.kind})", "", f"*Models*: {e.models}", "",
                  f"*Fitted*: {e.fitted}", "", f"*Example*: {e.example}", ""]
        if e.upstream:
            lines += ["*Known upstream issues*:", ""] + [f"* [{u.title}]({u.url})" for u in e.upstream] + [""]
        else:
            lines += ["*Known upstream issues*: none recorded.", ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
