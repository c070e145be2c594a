"""Keras 3 targets: keras.layers.BatchNormalization on the TensorFlow, JAX and PyTorch backends.

Keras chooses its backend once per process from KERAS_BACKEND, so each family runs in its own worker
("tensorflow", "keras-jax", "keras-torch"; the framework records set the variable). One base class drives
the same layer the same way; the subclasses differ only in how gradients are taken (tf.GradientTape,
jax.vjp over Layer.stateless_call, torch autograd), which mirrors what each backend's own Keras trainer
does in train_step. keras and the backend framework are imported only inside `probe` and `run`.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np

from ..cases import Case
from ..inputs import Inputs
from .base import (Accumulation, Conventions, EpsPlacement, MomentumForm, Observation, ParameterPrecision, RunningVar,
                   Subnormals, Summation, Target, Unsupported, VarianceAlgorithm)

_KERAS = "keras/src/layers/normalization/batch_normalization.py (keras 3.15)"

_COMMON_SOURCES = (
    f"{_KERAS}: BatchNormalization.__init__ defaults momentum=0.99, epsilon=1e-3; call() upcasts the input to "
    "backend.result_type(inputs.dtype, 'float32'), casts gamma/beta/moving statistics to that dtype, in training "
    "takes (mean, variance) = ops.moments(inputs, reduction axes) and assigns moving = moving * momentum + "
    "batch * (1 - momentum), then ops.batch_normalization(..., epsilon) and casts the output to the compute dtype",
    f"{_KERAS}: build() creates gamma/beta (scale/center) and moving_mean/moving_variance with autocast=False, "
    "so under a mixed_float16/mixed_bfloat16 policy they stay float32 while the output is float16/bfloat16",
    "https://keras.io/api/layers/normalization_layers/batch_normalization/ (old-form momentum; training=True uses "
    "batch statistics, training=False the moving ones; no switch to normalise with batch statistics in inference)",
)

_TF_SOURCES = _COMMON_SOURCES + (
    "keras/src/backend/tensorflow/nn.py: moments -> tf.nn.moments (two-pass: reduce_mean, then reduce_mean of "
    "squared_difference(x, stop_gradient(mean)), divides by n); batch_normalization -> tf.nn.batch_normalization "
    "(inv = rsqrt(var + eps) * gamma; y = x * inv + (beta - mean * inv))",
    "keras/src/backend/tensorflow/trainer.py: train_step calls self(x, training=True) under tf.GradientTape",
)

_JAX_SOURCES = _COMMON_SOURCES + (
    "keras/src/backend/jax/nn.py: moments -> jnp.mean and jnp.var (two-pass, ddof=0); batch_normalization: "
    "inv = lax.rsqrt(var + eps) * gamma; y = x * inv + (beta - mean * inv)",
    "keras/src/backend/common/dtypes.py: BIT64_TO_BIT32_DTYPE maps float64 to float32 in result_type on every "
    "backend but TensorFlow, so call()'s compute dtype result_type(float64, float32) is float32",
    "keras/src/backend/jax/trainer.py: compute_loss_and_updates runs self.stateless_call(...) under "
    "jax.value_and_grad and writes the returned non-trainable variables back",
)

_TORCH_SOURCES = _COMMON_SOURCES + (
    "keras/src/backend/torch/nn.py: moments computes variance = mean(square(x)) - square(mean) (one pass, "
    "divides by n; the comment says 'faster but less numerically stable'); batch_normalization: "
    "(x - mean) * (rsqrt(var + eps) * gamma) + beta",
    "keras/src/backend/common/dtypes.py: BIT64_TO_BIT32_DTYPE maps float64 to float32 in result_type on every "
    "backend but TensorFlow, so call()'s compute dtype result_type(float64, float32) is float32",
    "keras/src/backend/torch/trainer.py: train_step calls self(x, training=True) then loss.backward()",
)

_NOTES = (
    "Layer: keras.layers.BatchNormalization(axis=1 for channels_first rank>=3, axis=-1 for channels_last and "
    "for (N, C), momentum=1-case.momentum, epsilon=case.eps, center=scale=affine), built on the physical shape; "
    "gamma/beta/moving_mean/moving_variance are assigned from the inputs. Policy: dtype=case.dtype when the "
    "parameters share the input dtype (float16/bfloat16 variables), 'mixed_float16'/'mixed_bfloat16' for half "
    "inputs with float32 parameters. Half inputs are upcast to float32 inside call() and the output is rounded "
    "once to the half dtype; in an all-half layer the new moving statistics are rounded to the half dtype. "
    "Eager execution (what layer(x, training=...) runs); model.fit() jit-compiles on TF/JAX by default, "
    "which may fuse differently. The layer does not expose its batch statistics. Gradients are the "
    "vector-Jacobian product with the drawn dy (= gradient of sum(y * dy)). Device 'cuda' is placed with "
    "keras.device('gpu:0') and was not verified here."
)


def _import_keras(backend: str) -> Any:
    """Import keras for this worker's backend (JAX first gets x64 so float64 arrays stay float64)."""
    active = os.environ.get("KERAS_BACKEND", "")
    if backend == "jax" and active == "jax":
        import jax

        # float64 arrays exist in JAX only with x64 on; it must be set before the first array is created
        jax.config.update("jax_enable_x64", True)
    import keras

    if keras.backend.backend() != backend:
        raise Unsupported(f"this worker runs Keras on the {keras.backend.backend()} backend; the family needs "
                          f"KERAS_BACKEND={backend} (Keras picks its backend once per process)")
    return keras


def probe() -> dict[str, Any]:
    """Keras version, its backend's version and the backend's devices (imports keras; runs in the worker)."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    keras = _import_keras(backend)
    details: dict[str, Any] = {"backend": backend}
    devices = ["cpu"]
    if backend == "jax":
        import jax

        details["jax"] = jax.__version__
        details["jaxlib"] = getattr(__import__("jaxlib"), "__version__", "")
        details["x64"] = bool(jax.config.jax_enable_x64)
        platforms = sorted({d.platform for d in jax.devices()})
        details["platforms"] = platforms
        if any(p in ("gpu", "cuda") for p in platforms):
            devices.append("cuda")
    elif backend == "torch":
        import torch

        details["torch"] = torch.__version__
        if torch.cuda.is_available():
            devices.append("cuda")
            details["cuda"] = torch.version.cuda
            details["gpu"] = torch.cuda.get_device_name(0)
    elif backend == "tensorflow":
        import tensorflow as tf

        details["tensorflow"] = tf.__version__
        if tf.config.list_physical_devices("GPU"):
            devices.append("cuda")
    return {"version": keras.__version__, "devices": devices, "details": details}


def _conventions(variance_algorithm: VarianceAlgorithm, accumulation: Accumulation, summation: Summation,
                 subnormals: Subnormals, parameter_precision: ParameterPrecision, notes: str,
                 sources: tuple[str, ...]) -> Conventions:
    """The conventions the three backends share, with their own arithmetic facts."""
    return Conventions(
        momentum=MomentumForm.OLD,
        running_var=RunningVar.BIASED,
        eps_placement=EpsPlacement.INSIDE,
        default_eps=1e-3,
        default_momentum=0.99,
        variance_algorithm=variance_algorithm,
        accumulation=accumulation,
        summation=summation,
        subnormals=subnormals,
        parameter_precision=parameter_precision,
        dtypes=("float16", "bfloat16", "float32", "float64"),
        param_dtypes="same-or-float32",
        ranks=(2, 3, 4, 5),
        layouts=("channels_first", "channels_last"),
        modes=("train", "eval"),
        untracked=False,  # inference always uses the moving statistics; there is no track_running_stats=False
        gradients=True,
        quantities=("y", "running_mean", "running_var", "dx", "dgamma", "dbeta"),
        notes=notes,
        sources=sources,
    )


_PARAMS_F32 = ("epsilon and momentum are Python floats that meet float32 tensors as weak scalars, so they act "
               "as float32 values (1 - momentum is formed in Python float64 first)")

TF_CONVENTIONS = _conventions(
    VarianceAlgorithm.TWO_PASS, Accumulation.FLOAT32_OR_WIDER, Summation.SEQUENTIAL, Subnormals.FLUSHED,
    ParameterPrecision.INPUT_DTYPE,
    "Variance: two-pass (tf.nn.moments: mean, then mean of squared deviations; TensorFlow's CPU reduction over "
    "the batch axis is sequential). Arithmetic: float32 for float16/bfloat16/float32 inputs (call() upcasts), "
    "float64 for float64. " + _PARAMS_F32 + "; float64 in a float64 layer. Subnormal float32 inputs are flushed "
    "to zero (measured: hazards suite, subnormal-inputs). " + _NOTES,
    _TF_SOURCES,
)

_F64_NOTE = (" float64: the layer accepts float64 and returns float64 with float64 variables, but "
             "keras.backend.result_type(float64, float32) is float32 on this backend, so call() computes "
             "everything in float32 and casts back: float64 results carry float32 errors (a real precision "
             "property, left visible).")

JAX_CONVENTIONS = _conventions(
    VarianceAlgorithm.TWO_PASS, Accumulation.FLOAT32, Summation.UNSPECIFIED, Subnormals.FLUSHED,
    ParameterPrecision.FLOAT32_ATTRIBUTES,
    "Variance: two-pass (jnp.var). Arithmetic: float32 for every input dtype, float64 included (Keras maps "
    "float64 to float32 in result_type). " + _PARAMS_F32 + ", float64 layers included. XLA flushes subnormal "
    "float32 inputs to zero (measured: hazards suite, subnormal-inputs). " + _NOTES + _F64_NOTE +
    " Runs with jax_enable_x64 on (set by the worker before the first array). "
    "Gradients and training use Layer.stateless_call under jax.vjp, as the Keras JAX trainer does, and the "
    "returned moving statistics are assigned back to the layer.",
    _JAX_SOURCES,
)

TORCH_CONVENTIONS = _conventions(
    VarianceAlgorithm.ONE_PASS, Accumulation.FLOAT32, Summation.BLOCKED, Subnormals.PRESERVED,
    ParameterPrecision.FLOAT32_ATTRIBUTES,
    "Variance: one-pass E[x^2]-E[x]^2 (keras torch backend nn.moments), not clamped. Arithmetic: float32 for "
    "every input dtype, float64 included (Keras maps float64 to float32 in result_type). " + _PARAMS_F32 +
    ", float64 layers included. " + _NOTES + _F64_NOTE + " The one-pass variance cancels catastrophically when "
    "|mean| >> std (and can go negative, giving NaN).",
    _TORCH_SOURCES,
)


def _policy(case: Case) -> str:
    """The Keras dtype policy of a case: the input dtype, or mixed_<half> for half inputs with float32 parameters."""
    return case.dtype if case.param_dtype == case.dtype else f"mixed_{case.dtype}"


def _axis(case: Case) -> int:
    """The layer's axis: 1 for channels_first with spatial dimensions, -1 otherwise (what users write)."""
    return 1 if case.layout == "channels_first" and len(case.shape) > 2 else -1


class _KerasBase(Target):
    """keras.layers.BatchNormalization on one backend: layer setup, phases and output copying are shared."""

    backend: ClassVar[str] = ""
    devices: ClassVar[tuple[str, ...] | None] = ("cpu", "cuda")

    def repro_source(self) -> str:
        """Standalone code defining run(case, inputs) for reproduction scripts (numpy, keras and its backend only)."""
        return REPRO_SOURCE.format(backend=self.backend)

    # ---- conversions ---------------------------------------------------------------------------
    def _tensor(self, keras: Any, a: np.ndarray, dtype: str) -> Any:
        """NumPy transport array -> a new backend tensor of `dtype` (bfloat16 from float32 is exact)."""
        t = keras.ops.convert_to_tensor(np.array(a, copy=True), dtype=str(np.asarray(a).dtype))
        return t if str(np.asarray(a).dtype) == dtype else keras.ops.cast(t, dtype)

    @staticmethod
    def _numpy(keras: Any, t: Any) -> np.ndarray:
        """Backend tensor or variable -> a fresh float64 NumPy array (half types widened exactly first)."""
        dt = keras.backend.standardize_dtype(t.dtype)
        if dt in ("float16", "bfloat16"):
            t = keras.ops.cast(t, "float32")
        return np.array(keras.ops.convert_to_numpy(t), dtype=np.float64, copy=True)

    def _device_name(self) -> str:
        """The keras.device() name of this target's device."""
        return "gpu:0" if self.device == "cuda" else "cpu:0"

    # ---- the layer -----------------------------------------------------------------------------
    def _layer(self, keras: Any, case: Case, inputs: Inputs) -> Any:
        """A built layer with the case's parameters and running statistics assigned."""
        layer = keras.layers.BatchNormalization(
            axis=_axis(case), momentum=self.conventions.to_framework_momentum(case.momentum), epsilon=case.eps,
            center=case.affine, scale=case.affine, dtype=_policy(case),
        )
        layer.build(case.physical_shape)
        names = (("gamma", "gamma"), ("beta", "beta")) if case.affine else ()
        names += (("moving_mean", "running_mean"), ("moving_variance", "running_var"))
        for attr, key in names:
            getattr(layer, attr).assign(self._tensor(keras, inputs[key], case.param_dtype))
        return layer

    def _call(self, keras: Any, layer: Any, x: Any, training: bool, dy: Any | None,
              affine: bool) -> tuple[Any, list[Any] | None]:
        """Call the layer (updating its moving statistics in training); with dy, also (dx, dgamma, dbeta)."""
        raise NotImplementedError

    def run(self, case: Case, inputs: Inputs) -> Observation:
        """Run every phase of the case through one Keras layer and collect what it exposes."""
        keras = _import_keras(self.backend)
        if not case.track_running_stats:
            raise Unsupported("Keras BatchNormalization always keeps moving statistics")
        obs: Observation = {}
        with keras.device(self._device_name()):
            layer = self._layer(keras, case, inputs)
            for phase in case.phases:
                training = phase != "eval"
                x = self._tensor(keras, inputs[f"{phase}.x"], case.dtype)
                dy = self._tensor(keras, inputs[f"{phase}.dy"], case.dtype) if case.grad else None
                y, grads = self._call(keras, layer, x, training, dy, case.affine)
                obs[f"{phase}.y"] = self._numpy(keras, y)
                if training:
                    obs[f"{phase}.running_mean"] = self._numpy(keras, layer.moving_mean.value)
                    obs[f"{phase}.running_var"] = self._numpy(keras, layer.moving_variance.value)
                if grads is not None:
                    obs[f"{phase}.dx"] = self._numpy(keras, grads[0])
                    if case.affine:
                        obs[f"{phase}.dgamma"] = self._numpy(keras, grads[1])
                        obs[f"{phase}.dbeta"] = self._numpy(keras, grads[2])
        return obs


class KerasOnTensorflow(_KerasBase):
    """keras.layers.BatchNormalization with the TensorFlow backend; gradients by tf.GradientTape."""

    family = "tf.keras"
    framework = "tensorflow"
    backend = "tensorflow"
    description = "keras.layers.BatchNormalization (Keras 3, TensorFlow backend, eager layer call)"
    conventions = TF_CONVENTIONS

    def _call(self, keras: Any, layer: Any, x: Any, training: bool, dy: Any | None,
              affine: bool) -> tuple[Any, list[Any] | None]:
        """layer(x, training) under a GradientTape; the tape's output_gradients give the VJP with dy."""
        if dy is None:
            return layer(x, training=training), None
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
        sources = [x] + ([layer.gamma.value, layer.beta.value] if affine else [])
        return y, tape.gradient(y, sources, output_gradients=dy)


class KerasOnJax(_KerasBase):
    """keras.layers.BatchNormalization with the JAX backend; stateless_call under jax.vjp."""

    family = "keras.jax"
    framework = "keras-jax"
    backend = "jax"
    description = "keras.layers.BatchNormalization (Keras 3, JAX backend, eager Layer.stateless_call)"
    conventions = JAX_CONVENTIONS

    def _call(self, keras: Any, layer: Any, x: Any, training: bool, dy: Any | None,
              affine: bool) -> tuple[Any, list[Any] | None]:
        """Layer.stateless_call (under jax.vjp when dy is given); the new moving statistics are assigned back."""
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        state = [v.value for v in layer.non_trainable_variables]

        def forward(x_: Any, params: list[Any]) -> tuple[Any, list[Any]]:
            """(y, new non-trainable values) of the layer for input x_ and trainable values params."""
            return layer.stateless_call(params, state, x_, training=training)

        if dy is None:
            y, new_state = forward(x, trainable)
            grads = None
        else:
            y, vjp, new_state = jax.vjp(forward, x, trainable, has_aux=True)
            dx, dparams = vjp(dy)
            grads = [dx]
            if affine:
                index = {id(v): i for i, v in enumerate(layer.trainable_variables)}
                grads += [dparams[index[id(layer.gamma)]], dparams[index[id(layer.beta)]]]
        for var, value in zip(layer.non_trainable_variables, new_state):
            var.assign(value)
        return y, grads


class KerasOnTorch(_KerasBase):
    """keras.layers.BatchNormalization with the PyTorch backend; gradients by torch autograd."""

    family = "keras.torch"
    framework = "keras-torch"
    backend = "torch"
    description = "keras.layers.BatchNormalization (Keras 3, PyTorch backend, eager layer call)"
    conventions = TORCH_CONVENTIONS

    def _device_name(self) -> str:
        """'cpu' or 'cuda' without an index: Keras creates variables as Parameter(...).to(device), and a
        device that differs from the tensor's in name only ('cpu:0' vs 'cpu') makes a non-leaf copy without .grad."""
        return "cuda" if self.device == "cuda" else "cpu"

    def _call(self, keras: Any, layer: Any, x: Any, training: bool, dy: Any | None,
              affine: bool) -> tuple[Any, list[Any] | None]:
        """layer(x, training); with dy, y.backward(dy) and the .grad of x, gamma and beta."""
        if dy is None:
            return layer(x, training=training), None
        x = x.detach().requires_grad_(True)
        params = [layer.gamma.value, layer.beta.value] if affine else []
        for p in params:
            p.grad = None
        y = layer(x, training=training)
        y.backward(dy)
        return y, [x.grad] + [p.grad for p in params]


REPRO_SOURCE = '''
import os

BACKEND = {backend!r}
os.environ["KERAS_BACKEND"] = BACKEND  # Keras picks its backend once, at import
if BACKEND == "jax":
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 arrays exist only with x64, set before the first array
import keras


def _tensor(a, dtype):
    t = keras.ops.convert_to_tensor(np.array(a, copy=True), dtype=str(np.asarray(a).dtype))
    return t if str(np.asarray(a).dtype) == dtype else keras.ops.cast(t, dtype)  # bfloat16 from float32: exact


def _out(t):
    if keras.backend.standardize_dtype(t.dtype) in ("float16", "bfloat16"):
        t = keras.ops.cast(t, "float32")
    return np.array(keras.ops.convert_to_numpy(t), dtype=np.float64, copy=True)


def _call(layer, x, training, dy, affine):
    """y = layer(x, training), and with dy the gradients (dx, dgamma, dbeta) as the backend's trainer takes them."""
    if BACKEND == "jax":  # Layer.stateless_call under jax.vjp, new moving statistics assigned back
        trainable = [v.value for v in layer.trainable_variables]
        state = [v.value for v in layer.non_trainable_variables]
        forward = lambda x_, params: layer.stateless_call(params, state, x_, training=training)
        grads = None
        if dy is None:
            y, new_state = forward(x, trainable)
        else:
            y, vjp, new_state = jax.vjp(forward, x, trainable, has_aux=True)
            dx, dparams = vjp(dy)
            grads = [dx]
            if affine:
                index = {{id(v): i for i, v in enumerate(layer.trainable_variables)}}
                grads += [dparams[index[id(layer.gamma)]], dparams[index[id(layer.beta)]]]
        for var, value in zip(layer.non_trainable_variables, new_state):
            var.assign(value)
        return y, grads
    if dy is None:
        return layer(x, training=training), None
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
        sources = [x] + ([layer.gamma.value, layer.beta.value] if affine else [])
        return y, tape.gradient(y, sources, output_gradients=dy)
    x = x.detach().requires_grad_(True)  # torch: autograd
    params = [layer.gamma.value, layer.beta.value] if affine else []
    for p in params:
        p.grad = None
    y = layer(x, training=training)
    y.backward(dy)
    return y, [x.grad] + [p.grad for p in params]


def run(case, inputs):
    """Every phase through one keras.layers.BatchNormalization, collecting what bncheck compares."""
    dt, pd = case["dtype"], case["param_dtype"]
    last, rank = case["layout"] == "channels_last", len(case["shape"])
    device = ("cuda" if BACKEND == "torch" else "gpu:0") if DEVICE == "cuda" else ("cpu" if BACKEND == "torch" else "cpu:0")
    out = {{}}
    with keras.device(device):
        layer = keras.layers.BatchNormalization(
            axis=1 if not last and rank > 2 else -1,
            momentum=1.0 - case["momentum"],  # Keras weights the OLD moving value: 1 - bncheck's momentum
            epsilon=case["eps"], center=case["affine"], scale=case["affine"],
            dtype=dt if pd == dt else "mixed_" + dt)  # half inputs with float32 parameters: a mixed policy
        layer.build(np.shape(inputs[PHASES[0] + ".x"]))
        names = [("gamma", "gamma"), ("beta", "beta")] if case["affine"] else []
        for attr, key in names + [("moving_mean", "running_mean"), ("moving_variance", "running_var")]:
            getattr(layer, attr).assign(_tensor(inputs[key], pd))
        for phase in PHASES:
            training = phase != "eval"
            x = _tensor(inputs[phase + ".x"], dt)
            dy = _tensor(inputs[phase + ".dy"], dt) if case["grad"] else None
            y, grads = _call(layer, x, training, dy, case["affine"])
            out[phase + ".y"] = _out(y)
            if training:
                out[phase + ".running_mean"] = _out(layer.moving_mean.value)
                out[phase + ".running_var"] = _out(layer.moving_variance.value)
            if grads is not None:
                out[phase + ".dx"] = _out(grads[0])
                if case["affine"]:
                    out[phase + ".dgamma"], out[phase + ".dbeta"] = _out(grads[1]), _out(grads[2])
    return out
'''
