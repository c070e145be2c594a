"""torch.onnx.export + ONNX Runtime, run in-process: the experiments its conventions record cites."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from bncheck.cases import case_from_dict  # noqa: E402
from bncheck.inputs import make_inputs  # noqa: E402
from bncheck.reference import compute_reference  # noqa: E402
from bncheck.targets.base import Unsupported  # noqa: E402
from bncheck.targets.torch_onnx_targets import TorchOnnxExport  # noqa: E402

TARGET = TorchOnnxExport("cpu")  # one target for the module: its export templates are reused across tests


def _run(d):
    case = case_from_dict(d)
    assert TARGET.supports(case) is None, TARGET.supports(case)
    inputs = make_inputs(case)
    return case, inputs, TARGET.run(case, inputs), compute_reference(case, inputs, running_var="unbiased").values


def test_trajectory_eval_matches_and_training_steps_use_the_running_statistics():
    """After torch's own training steps the exported eval model matches the reference; each training step's
    exported model normalises with the running statistics (the exporter writes an inference node)."""
    case, inputs, out, ref = _run({"shape": [8, 4, 5, 5], "mode": "trajectory", "steps": 2})
    assert set(out) == {"train0.y", "train1.y", "eval.y"}
    np.testing.assert_allclose(out["eval.y"], ref["eval.y"], rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(out["train0.y"] - ref["train0.y"])) > 0.1  # measured 1.6
    x = inputs["train0.x"].astype(np.float64)
    g, b = inputs["gamma"][None, :, None, None], inputs["beta"][None, :, None, None]
    rm, rv = inputs["running_mean"][None, :, None, None], inputs["running_var"][None, :, None, None]
    np.testing.assert_allclose(out["train0.y"], g * (x - rm) / np.sqrt(rv + case.eps) + b, rtol=1e-5, atol=1e-5)


def test_exports_are_reused_across_cases_of_one_configuration():
    """Two eval cases that differ in seed and shape share one export template; float64 runs at float64 rounding."""
    before = len(TARGET._cache)
    _run({"shape": [8, 3, 5], "mode": "eval", "seed": 1})
    _, _, out, ref = _run({"shape": [4, 3, 7], "mode": "eval", "seed": 2})
    assert len(TARGET._cache) == before + 1
    np.testing.assert_allclose(out["eval.y"], ref["eval.y"], rtol=1e-5, atol=1e-5)
    _, _, out, ref = _run({"shape": [8, 3, 5], "mode": "eval", "dtype": "float64", "param_dtype": "float64"})
    assert np.max(np.abs(out["eval.y"] - ref["eval.y"])) < 1e-10


def test_bfloat16_has_no_ort_kernel():
    case = case_from_dict({"shape": [8, 3, 5], "mode": "eval", "dtype": "bfloat16"})
    with pytest.raises(Unsupported, match="NOT_IMPLEMENTED"):
        TARGET.run(case, make_inputs(case))


def test_names_its_source_path():
    assert TorchOnnxExport.path_kind == "exported" and TorchOnnxExport.source_family == "torch.nn"


REUSE_CHECK = """
import logging, warnings
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
import torch
from bncheck.targets.paths.torch_onnx_bn import torch_onnx_reuse_registry, torch_onnx_template
def export(eps):
    m = torch.nn.BatchNorm2d(4, eps=eps).eval()
    return torch_onnx_template(m, torch.randn(8, 4, 5, 5)).SerializeToString()
fresh = export(1e-3)
torch_onnx_reuse_registry()
export(1e-4)  # builds the registry that the next export reuses
assert export(1e-3) == fresh
print("same")
"""


def test_reusing_the_exporters_registry_gives_the_same_model_bytes():
    """The registry reuse that makes exports cheap changes no byte of the exported model (fresh process: the
    first export builds its registry as torch does)."""
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", REUSE_CHECK], capture_output=True, text=True, timeout=300,
                       env={**os.environ})
    assert r.returncode == 0 and "same" in r.stdout, r.stderr[-2000:]


def test_torch_export_then_run_is_bit_identical_to_eager():
    """Why there is no torch.export target: torch.export(module).module() gives eager's bits (y, dx, running
    statistics; measured on six cases of every dtype and rank, two kept here)."""
    import torch

    for d in ({"shape": [8, 4, 5, 5], "mode": "trajectory", "steps": 2, "grad": True},
              {"shape": [8, 4, 5], "dtype": "float16", "grad": True}):
        case = case_from_dict(d)
        inputs = make_inputs(case)
        outs = []
        for exported in (False, True):
            m = torch.nn.BatchNorm2d(4) if len(case.shape) == 4 else torch.nn.BatchNorm1d(4)
            with torch.no_grad():
                for name, key in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "running_mean"),
                                  ("running_var", "running_var")):
                    getattr(m, name).copy_(torch.tensor(inputs[key]))
            got = []
            for p in case.phases:
                m.train(p != "eval")
                x = torch.tensor(inputs[p + ".x"]).to(getattr(torch, case.dtype)).requires_grad_(True)
                f = torch.export.export(m, (x,)).module() if exported else m
                y = f(x)
                y.backward(torch.tensor(inputs[p + ".dy"]).to(y.dtype))
                if exported:
                    with torch.no_grad():
                        m.running_mean.copy_(f.running_mean)
                        m.running_var.copy_(f.running_var)
                got += [y.detach().double().numpy(), x.grad.double().numpy(), m.running_var.detach().double().numpy()]
            outs.append(got)
        assert all(np.array_equal(a, b) for a, b in zip(*outs)), d
