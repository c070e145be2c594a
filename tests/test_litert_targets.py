"""LiteRT: the tf.keras BatchNormalization model converted to TFLite and run by the ai_edge_litert Interpreter.

Cases run in the litert worker (TensorFlow, Keras 3 on the TensorFlow backend, ai_edge_litert), as the pool starts
it, and are judged here; this process imports no framework. The converter's refusals and the model cache are
checked in one subprocess that imports the path directly. Skipped when tensorflow, keras or ai-edge-litert is not
installed (package metadata).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bncheck.cases import Case, case_from_dict
from bncheck.compare import Verdict, compare, missing_quantities
from bncheck.inputs import make_inputs
from bncheck.judging import expected_values
from bncheck.pool import WorkerHandle
from bncheck.targets import family_class, framework_status, frameworks

SRC = Path(__file__).resolve().parents[1] / "src"
TIMEOUT = 180.0
CASES: list[dict[str, Any]] = [
    {"shape": [8, 4, 5, 5], "mode": "eval"},
    {"shape": [4, 3, 7], "mode": "eval", "layout": "channels_last"},
    {"shape": [16, 3], "mode": "eval", "affine": False},
    {"shape": [8, 4, 5, 5], "mode": "eval", "dtype": "float16"},
    {"shape": [4, 3, 4, 4, 4], "mode": "eval", "dtype": "float16", "param_dtype": "float16", "layout": "channels_last"},
]


@pytest.fixture(scope="module")
def worker(workers: dict[str, WorkerHandle]) -> WorkerHandle:
    """The litert worker, started with its framework record's environment."""
    fw = frameworks()["litert"]
    installed, _, reason = framework_status(fw)
    if not installed:
        pytest.skip(reason)
    if "litert" not in workers:
        workers["litert"] = WorkerHandle("litert", env=dict(fw.env))
    return workers["litert"]


def _observe(worker: WorkerHandle, family: str, spec: dict[str, Any]) -> tuple[Case, dict[str, Any], dict[str, Verdict]]:
    """Run a case on a family in the worker and judge it here."""
    cls = family_class(family)
    case = case_from_dict(spec)
    inputs = make_inputs(case)
    out = worker.request({"op": "run", "family": family, "device": "cpu", "case": case.to_dict(), "inputs": inputs}, TIMEOUT)
    assert out.status == "ok", f"{out.status}: {out.message}\n{out.stderr_tail}"
    obs = out.reply["observation"]
    expected = expected_values(case, inputs)
    assert not missing_quantities(obs, expected.references[cls.conventions.running_var], cls.conventions)
    return case, obs, {v.key: v for v in compare(case, obs, expected.references, expected.bounds, cls.conventions)}


@pytest.mark.parametrize("spec", CASES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_converted_model_agrees_and_gives_the_source_paths_bits(worker: WorkerHandle, spec: dict[str, Any]) -> None:
    """tf.keras+litert passes, and gives exactly the bits of its source path tf.keras (run in the same worker
    process): the converter folds BN into the same two float32 constants tf.nn.batch_normalization forms."""
    _, obs, verdicts = _observe(worker, "tf.keras+litert", spec)
    assert not [(k, v.ratio) for k, v in verdicts.items() if not v.passed]
    _, source, _ = _observe(worker, "tf.keras", spec)
    assert obs["eval.y"].tobytes() == source["eval.y"].tobytes()


def test_float16_weights_lose_precision_against_float32_parameters(worker: WorkerHandle) -> None:
    """REAL: float16 input with float32 parameters: the float16-quantized model stores its folded constants in
    float16, and y deviates (ratio 79.8, measured) where the as-converted model (mixed_float16) passes; with
    float16 parameters the quantized model passes (ratio 0.26)."""
    spec = {"shape": [8, 4, 5, 5], "mode": "eval", "dtype": "float16"}
    _, _, quantized = _observe(worker, "tf.keras+litert.fp16", spec)
    assert not quantized["eval.y"].passed and quantized["eval.y"].ratio > 10
    _, _, plain = _observe(worker, "tf.keras+litert", spec)
    assert plain["eval.y"].passed
    _, _, half_params = _observe(worker, "tf.keras+litert.fp16", {**spec, "param_dtype": "float16"})
    assert half_params["eval.y"].passed


_SCRIPT = """
import json
from bncheck.cases import case_from_dict
from bncheck.inputs import make_inputs
from bncheck.targets.kernel import path_module
from bncheck.targets.litert_targets import LiteRt, LiteRtFloat16Weights
keras_bn, litert_bn = path_module("keras_bn"), path_module("litert_bn")
fns = dict(keras_import=keras_bn.keras_import, keras_layer=keras_bn.keras_layer, keras_tensor=keras_bn.keras_tensor)
out = {"refused": {}}
for dtype in ("bfloat16", "float64"):
    case = case_from_dict({"shape": [8, 4, 5, 5], "mode": "eval", "dtype": dtype})
    try:
        litert_bn.litert_bn(case.to_dict(), make_inputs(case), ["eval"], "cpu", {}, **fns)
        out["refused"][dtype] = None
    except Exception as e:
        out["refused"][dtype] = type(e).__name__ + ": " + str(e)[:2000]
# the same parameters (seed, channels) and another x: one conversion; other parameters: another
target = LiteRt("cpu")
for spec in ({"shape": [8, 4, 5, 5], "mode": "eval", "seed": 3},
             {"shape": [8, 4, 5, 5], "mode": "eval", "seed": 3, "regime": {"name": "wide", "x": {"dist": "normal", "loc": 0.0, "scale": 10.0}}},
             {"shape": [8, 4, 5, 5], "mode": "eval", "seed": 4}):
    case = case_from_dict(spec)
    target.run(case, make_inputs(case))
out["conversions"] = len(target._cache)
# the float16-weights model on float32 data (past supports, which does not claim float32)
case = case_from_dict({"shape": [8, 4, 5, 5], "mode": "eval"})
inputs = make_inputs(case)
a = LiteRt("cpu").run(case, inputs)["eval.y"]
b = litert_bn.litert_bn(case.to_dict(), inputs, ["eval"], "cpu", {}, float16_weights=True, **fns)["eval.y"]
out["fp16_on_float32"] = float(abs(a - b).max())
print("RESULT" + json.dumps(out))
"""


def test_converter_refusals_and_the_model_cache(worker: WorkerHandle) -> None:
    """Measured in one process: the converter fails on bfloat16 and float64 models (what supports() refuses), a case
    with the same parameters reuses the converted model, and float16 weights change y on float32 data."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    res = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.split("RESULT", 1)[1])
    assert "bfloat16" in out["refused"]["bfloat16"], out["refused"]
    assert "Select" in out["refused"]["float64"] or "flex" in out["refused"]["float64"], out["refused"]
    assert out["conversions"] == 2
    assert out["fp16_on_float32"] > 1e-4
    for dtype in ("bfloat16", "float64"):
        assert "does not convert" in family_class("tf.keras+litert")("cpu").supports(
            case_from_dict({"shape": [8, 4, 5, 5], "mode": "eval", "dtype": dtype}))


def test_litert_families_are_conversions_of_tf_keras() -> None:
    """path_kind 'converted', source family tf.keras; inference only, y only; both cite their experiments."""
    for family in ("tf.keras+litert", "tf.keras+litert.fp16"):
        cls = family_class(family)
        assert cls.path_kind == "converted" and cls.source_family == "tf.keras" and cls.framework == "litert"
        assert cls.conventions.modes == ("eval",) and cls.conventions.quantities == ("y",)
        assert any("test_litert_targets.py" in s for s in cls.conventions.sources)
        assert "inference only" in cls("cpu").supports(case_from_dict({"shape": [8, 4, 5, 5]}))
