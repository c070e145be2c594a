"""ONNX Runtime targets: one-node BatchNormalization models at opsets 15 (train and eval), 14 and 9 (eval)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..cases import Case
from ..inputs import Inputs
from .base import (Accumulation, Conventions, EpsPlacement, MomentumForm, Observation, ParameterPrecision, RunningVar,
                   Target, Unsupported, VarianceAlgorithm, from_channels_first, to_channels_first)

# IR version written into every model. onnx 1.23 writes IR 14 by default, which ORT 1.31 refuses (it reads at
# most IR 13). IR 8 is the version released with opset 15 (ONNX 1.10; onnx.helper.VERSION_TABLE), the
# smallest that may import opset 15, and it may import the older opsets 14 and 9 as well; the checker accepts
# all three combinations and every ORT release that implements opset 15 reads it.
IR_VERSION = 8

_NP_DTYPES: dict[str, Any] = {"float16": np.float16, "float32": np.float32, "float64": np.float64}

_SOURCES = (
    "ONNX operator spec, docs/Operators.md#BatchNormalization (opsets 9, 14, 15): running_mean = input_mean * "
    "momentum + current_mean * (1 - momentum); current_var is the population variance (divides by N); "
    "epsilon and momentum are float attributes; defaults epsilon=1e-5, momentum=0.9",
    "onnxruntime/core/providers/cpu/nn/batch_norm.h: BatchNorm<T>::Compute (two-pass mean and squared "
    "deviations in T; running = input * momentum_ + saved * (1 - momentum_) with float momentum_ and epsilon_; "
    "y = x * (scale * inv_std) + (B - mean * scale * inv_std))",
    "onnxruntime/core/providers/cpu/nn/batch_norm.cc: CPU kernels registered for float and double only "
    "(opset 15: T, T1, T2 each float or each double)",
    "onnxruntime/core/optimizer/insert_cast_transformer.cc: float16 nodes without a float16 CPU kernel get "
    "Cast-to-float32 inputs and Cast-to-float16 outputs (seen as 'InsertedPrecisionFreeCast_*' nodes in the "
    "optimised model); there is no such fallback for bfloat16",
)

_NOTES = (
    "ONNX is channels-first only: channels_last cases are transposed to (N, C, ...) with NumPy before the "
    "run and Y is transposed back (exact). affine=false is fed as scale=1, B=0. float16 runs in float32 "
    "(ORT inserts Casts around the float32 kernel), so float16 results are float32 results rounded once. "
    "epsilon and momentum reach the kernel as float32 attributes, so float64 running statistics carry a "
    "relative error of about 1e-8 (float32(0.9) = 0.89999997615...). The kernel folds the normalisation into "
    "y = x * s + (B - mean * s), which cancels when |mean| >> std. Device 'cuda' runs with CPU fallback "
    "disabled; its running variance follows cuDNN and was not verified here."
)


def probe() -> dict[str, Any]:
    """Version and devices of the installed onnxruntime (imports it; runs in the worker)."""
    import onnx
    import onnxruntime as ort

    providers = list(ort.get_available_providers())
    devices = ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in providers else [])
    return {"version": ort.__version__, "devices": devices,
            "details": {"onnx": onnx.__version__, "providers": providers}}


def _conventions(modes: tuple[str, ...], param_dtypes: str) -> Conventions:
    """The conventions shared by the three families, with their modes and parameter typing."""
    return Conventions(
        momentum=MomentumForm.OLD,
        running_var=RunningVar.BIASED,
        eps_placement=EpsPlacement.INSIDE,
        default_eps=1e-5,
        default_momentum=0.9,
        variance_algorithm=VarianceAlgorithm.TWO_PASS,
        accumulation=Accumulation.FLOAT32_OR_WIDER,  # in T (float32, float64); float16 runs as float32 (inserted Casts)
        parameter_precision=ParameterPrecision.FLOAT32_ATTRIBUTES,
        dtypes=("float16", "float32", "float64"),
        param_dtypes=param_dtypes,
        ranks=(2, 3, 4, 5),
        layouts=("channels_first", "channels_last"),
        modes=modes,
        untracked=False,
        gradients=False,
        quantities=("y", "running_mean", "running_var"),
        notes=_NOTES,
        sources=_SOURCES,
    )


class _OrtBatchNorm(Target):
    """A one-node ONNX BatchNormalization model run by an onnxruntime InferenceSession."""

    framework: ClassVar[str] = "onnxruntime"
    devices: ClassVar[tuple[str, ...] | None] = ("cpu", "cuda")
    opset: ClassVar[int] = 15

    def __init__(self, device: str = "cpu") -> None:
        super().__init__(device)
        self._sessions: dict[tuple[Any, ...], Any] = {}

    # ---- models and sessions -------------------------------------------------------------------
    def _model_bytes(self, training: bool, rank: int, dtype: str, param_dtype: str, eps: float, momentum: float) -> bytes:
        """Serialised one-node model for this opset; training adds the running-statistic outputs."""
        import onnx
        from onnx import helper

        xt = helper.np_dtype_to_tensor_dtype(np.dtype(_NP_DTYPES[dtype]))
        pt = helper.np_dtype_to_tensor_dtype(np.dtype(_NP_DTYPES[param_dtype]))
        # symbolic dimensions (the checker wants a shape): one session serves every shape of a given rank
        dims = ["N", "C", *(f"D{i}" for i in range(1, rank - 1))]
        inputs = [helper.make_tensor_value_info("X", xt, dims)]
        inputs += [helper.make_tensor_value_info(n, pt, ["C"]) for n in ("scale", "B", "input_mean", "input_var")]
        outputs = [helper.make_tensor_value_info("Y", xt, dims)]
        attrs: dict[str, Any] = {"epsilon": float(eps), "momentum": float(momentum)}
        if training:
            attrs["training_mode"] = 1
            outputs += [helper.make_tensor_value_info("running_mean", pt, ["C"]),
                        helper.make_tensor_value_info("running_var", pt, ["C"])]
        node = helper.make_node("BatchNormalization", ["X", "scale", "B", "input_mean", "input_var"],
                                [o.name for o in outputs], **attrs)
        graph = helper.make_graph([node], f"bncheck_bn_opset{self.opset}", inputs, outputs)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  ir_version=IR_VERSION, producer_name="bncheck")
        onnx.checker.check_model(model)
        return model.SerializeToString()

    def _session(self, case: Case, training: bool) -> Any:
        """A cached InferenceSession for (opset, training, rank, dtypes, eps, momentum, device)."""
        momentum = self.conventions.to_framework_momentum(case.momentum)
        rank = len(case.shape)
        key = (self.opset, training, rank, case.dtype, case.param_dtype, case.eps, momentum, self.device)
        if key in self._sessions:
            return self._sessions[key]
        import onnxruntime as ort
        from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; default graph optimisations (what users run)
        # idle pool threads sleep instead of spinning: spinning only changes speed, never results, and on a
        # small machine it steals the CPU the rest of the worker (and bncheck's judging) needs after each run
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if self.device == "cuda":
            providers = ["CUDAExecutionProvider"]
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        else:
            providers = ["CPUExecutionProvider"]
        model = self._model_bytes(training, rank, case.dtype, case.param_dtype, case.eps, momentum)
        what = f"BatchNormalization opset {self.opset} {'training' if training else 'inference'} " \
               f"{case.dtype}/{case.param_dtype}"
        try:
            session = ort.InferenceSession(model, options, providers=providers)
        except OrtNotImplemented as e:
            raise Unsupported(f"onnxruntime has no {self.device} kernel for {what}: {_first_line(e)}") from None
        except Exception as e:
            if "fallback to CPU EP has been explicitly disabled" in str(e):
                raise Unsupported(f"onnxruntime has no CUDA kernel for {what}") from None
            raise
        if providers[0] not in session.get_providers():
            raise Unsupported(f"{providers[0]} is not usable in this onnxruntime (session got {session.get_providers()})")
        self._sessions[key] = session
        return session

    def repro_source(self) -> str:
        """Standalone code defining run(case, inputs) for reproduction scripts (numpy, onnx, onnxruntime only)."""
        return REPRO_SOURCE.format(opset=self.opset, ir_version=IR_VERSION)

    # ---- execution -----------------------------------------------------------------------------
    def run(self, case: Case, inputs: Inputs) -> Observation:
        """Run every phase of `case`, carrying running statistics from step to step, and return float64 arrays."""
        xdt, pdt = _NP_DTYPES[case.dtype], _NP_DTYPES[case.param_dtype]
        C = case.channels
        scale = np.asarray(inputs["gamma"], dtype=pdt) if case.affine else np.ones(C, pdt)
        bias = np.asarray(inputs["beta"], dtype=pdt) if case.affine else np.zeros(C, pdt)
        rmean = np.ascontiguousarray(inputs["running_mean"], dtype=pdt)
        rvar = np.ascontiguousarray(inputs["running_var"], dtype=pdt)
        out: Observation = {}
        for phase in case.phases:
            training = phase != "eval"
            x = np.ascontiguousarray(to_channels_first(case, np.asarray(inputs[f"{phase}.x"], dtype=xdt)))
            feed = {"X": x, "scale": scale, "B": bias, "input_mean": rmean, "input_var": rvar}
            results = self._session(case, training).run(None, feed)
            out[f"{phase}.y"] = from_channels_first(case, np.asarray(results[0], dtype=np.float64))
            if training:
                rmean, rvar = results[1], results[2]
                out[f"{phase}.running_mean"] = np.asarray(rmean, dtype=np.float64)
                out[f"{phase}.running_var"] = np.asarray(rvar, dtype=np.float64)
        return out


REPRO_SOURCE = '''
import onnx
import onnxruntime as ort
from onnx import helper

OPSET = {opset}
IR_VERSION = {ir_version}  # what onnxruntime accepts (onnx may write a newer IR than the runtime reads)
NP = {{"float16": np.float16, "float32": np.float32, "float64": np.float64}}


def _session(case, training):
    xt = helper.np_dtype_to_tensor_dtype(np.dtype(NP[case["dtype"]]))
    pt = helper.np_dtype_to_tensor_dtype(np.dtype(NP[case["param_dtype"]]))
    dims = ["N", "C", *(f"D{{i}}" for i in range(1, len(case["shape"]) - 1))]
    inputs = [helper.make_tensor_value_info("X", xt, dims)]
    inputs += [helper.make_tensor_value_info(n, pt, ["C"]) for n in ("scale", "B", "input_mean", "input_var")]
    outputs = [helper.make_tensor_value_info("Y", xt, dims)]
    # ONNX momentum is the weight of the running value: 1 - bncheck's canonical momentum
    attrs = {{"epsilon": float(case["eps"]), "momentum": 1.0 - case["momentum"]}}
    if training:
        attrs["training_mode"] = 1
        outputs += [helper.make_tensor_value_info(n, pt, ["C"]) for n in ("running_mean", "running_var")]
    node = helper.make_node("BatchNormalization", ["X", "scale", "B", "input_mean", "input_var"], [o.name for o in outputs], **attrs)
    model = helper.make_model(helper.make_graph([node], "bn", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    provider = "CUDAExecutionProvider" if DEVICE == "cuda" else "CPUExecutionProvider"
    return ort.InferenceSession(model.SerializeToString(), providers=[provider])


def run(case, inputs):
    """Every phase through onnxruntime, carrying the running statistics from step to step."""
    xdt, pdt, C = NP[case["dtype"]], NP[case["param_dtype"]], case["shape"][1]
    scale = np.asarray(inputs["gamma"], pdt) if case["affine"] else np.ones(C, pdt)
    bias = np.asarray(inputs["beta"], pdt) if case["affine"] else np.zeros(C, pdt)
    rm, rv = np.asarray(inputs["running_mean"], pdt), np.asarray(inputs["running_var"], pdt)
    last = case["layout"] == "channels_last"
    out = {{}}
    for phase in PHASES:
        training = phase != "eval"
        x = np.asarray(inputs[phase + ".x"], xdt)
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1) if last else x)
        res = _session(case, training).run(None, {{"X": x, "scale": scale, "B": bias, "input_mean": rm, "input_var": rv}})
        y = np.asarray(res[0], np.float64)
        out[phase + ".y"] = np.moveaxis(y, 1, -1) if last else y
        if training:
            rm, rv = res[1], res[2]
            out[phase + ".running_mean"], out[phase + ".running_var"] = np.asarray(rm, np.float64), np.asarray(rv, np.float64)
    return out
'''


def _first_line(e: BaseException) -> str:
    """First line of an exception message."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class OrtOpset15(_OrtBatchNorm):
    """BatchNormalization opset 15: training_mode=1 for train phases, inference for eval."""

    family: ClassVar[str] = "ort.opset15"
    description: ClassVar[str] = (
        "ONNX BatchNormalization opset 15 in onnxruntime, training_mode=1 for training steps (Y and updated "
        "running statistics) and inference mode for evaluation."
    )
    opset: ClassVar[int] = 15
    # Opset 15 types X (T), scale/B (T1) and mean/var (T2) separately; ORT CPU accepts float16 X with float32
    # parameters (checked with onnxruntime 1.31), but not float64 X with float32 parameters (NOT_IMPLEMENTED).
    conventions: ClassVar[Conventions] = _conventions(("train", "eval"), "same-or-float32")


class OrtOpset14(_OrtBatchNorm):
    """BatchNormalization opset 14 in inference mode."""

    family: ClassVar[str] = "ort.opset14"
    description: ClassVar[str] = "ONNX BatchNormalization opset 14 in onnxruntime, inference mode only."
    opset: ClassVar[int] = 14
    # Opset 14 binds X, scale, B, mean and var to one type T (mixed types fail type inference).
    conventions: ClassVar[Conventions] = _conventions(("eval",), "same")


class OrtOpset9(_OrtBatchNorm):
    """BatchNormalization opset 9 in inference mode."""

    family: ClassVar[str] = "ort.opset9"
    description: ClassVar[str] = "ONNX BatchNormalization opset 9 in onnxruntime, inference mode only."
    opset: ClassVar[int] = 9
    # Opset 9 binds every input to one type T.
    conventions: ClassVar[Conventions] = _conventions(("eval",), "same")
