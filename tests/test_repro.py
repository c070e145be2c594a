"""Reproduction scripts: standalone, they run with numpy and the framework alone and show the finding."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

import pytest

from bncheck.cases import case_from_dict
from bncheck.inputs import make_inputs
from bncheck.repro import render
from conftest import write_jsonl


ROW = re.compile(r"^(\S+\.\S+)\s+(pass|DEVIATES)\s+([0-9.e+-]+|inf|nan)\s+([0-9.e+-]+|inf|nan)\s+([0-9.e+-]+|inf|nan)\s+\[")


def _run_script(tmp_path, source: str, expect: int | None = None) -> dict[str, tuple[float, float]]:
    """Run a script in a fresh interpreter with no bncheck on the path; return {key: (max abs, max rel)}, checking
    its exit status when `expect` is given (1: the discrepancy reproduces, 0: it does not)."""
    return _run_script_rows(tmp_path, source, expect)[0]


def _run_script_rows(tmp_path, source: str, expect: int | None = None):
    """({key: (max abs, max rel)}, {key: (verdict, error/bound)}, stdout, stderr, exit status) of a script's run."""
    path = tmp_path / "repro.py"
    path.write_text(source)
    r = subprocess.run([sys.executable, "-I", str(path)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode in (0, 1), r.stderr
    if expect is not None:
        assert r.returncode == expect, r.stdout
    assert "bncheck reproduction:" in r.stdout
    rows, verdicts = {}, {}
    for line in r.stdout.splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = (float(m.group(4)), float(m.group(5)))
            verdicts[m.group(1)] = (m.group(2), float(m.group(3)))
    return rows, verdicts, r.stdout, r.stderr, r.returncode


def test_scripts_do_not_import_bncheck():
    """The rendered script names no bncheck module: a maintainer runs it without installing bncheck."""
    from bncheck.targets.torch_targets import TorchModule

    case = case_from_dict({"shape": [4, 3, 5]})
    src = render(case, make_inputs(case), TorchModule("cpu"), ["train0.y"], "t", "e", {})
    assert "bncheck" not in "\n".join(ln for ln in src.splitlines() if ln.startswith(("import", "from")))


@pytest.mark.parametrize("family", ["TorchModule", "TorchModuleChannelsLast", "TorchFunctional"])
def test_torch_scripts_run_and_agree(tmp_path, family):
    """A torch script runs in isolation (python -I) and agrees with its reference at float32 rounding."""
    pytest.importorskip("torch")
    from bncheck.targets import torch_targets

    case = case_from_dict({"shape": [8, 4, 5, 5], "mode": "trajectory", "steps": 2, "grad": True, "layout": "channels_last"})
    keys = ["train0.y", "train0.batch_invstd", "train1.running_var", "eval.y", "eval.dx", "train0.dgamma"]
    rows, verdicts, stdout, _, _ = _run_script_rows(
        tmp_path, render(case, make_inputs(case), getattr(torch_targets, family)("cpu"), keys, "t", "e", {}), expect=0)
    assert set(rows) == set(keys) and {v for v, _ in verdicts.values()} == {"pass"}, stdout
    assert stdout.rstrip().endswith("within bncheck's bounds (exit 0)"), stdout
    # float32 rounding of values up to ~10 (dgamma sums 200 terms): a few 1e-6; relative error is meaningless near 0
    assert all(err < 1e-5 for err, _ in rows.values()), rows


def test_ort_float64_script_reproduces_the_float32_attribute_finding(tmp_path):
    """The ORT script on a float64 case shows running statistics off by ~1e-8, far above float64 rounding."""
    pytest.importorskip("onnxruntime")
    from bncheck.targets.ort_targets import OrtOpset15

    case = case_from_dict({"shape": [8, 4, 5, 5], "dtype": "float64", "mode": "trajectory", "steps": 2})
    keys = ["train0.running_mean", "train1.running_var", "eval.y"]
    rows, verdicts, stdout, _, _ = _run_script_rows(tmp_path, render(case, make_inputs(case), OrtOpset15("cpu"), keys,
                                                                     "t", "e", {}), expect=1)
    assert verdicts["train0.running_mean"][0] == "DEVIATES" and verdicts["train0.running_mean"][1] > 1, stdout
    assert stdout.rstrip().endswith("beyond bncheck's bound (exit 1)"), stdout
    assert 1e-9 < rows["train0.running_mean"][0] < 1e-6  # measured 1.3e-8: float32(0.9) = 0.89999997615
    assert rows["train1.running_var"][1] > 1e-9


def test_run_writes_a_script_per_finding(tmp_path, cli):
    """A run with findings writes repro/<signature>.py for each, recorded in results.json, and the script runs."""
    pytest.importorskip("onnxruntime")
    cases = write_jsonl(tmp_path / "c.jsonl", [{"shape": [8, 4, 5], "dtype": "float64", "mode": "trajectory", "steps": 2}])
    out = tmp_path / "out"
    r = cli("run", str(cases), "--targets", "ort.opset15@cpu", "--out", str(out))
    assert r.returncode == 1, r.stderr
    doc = json.loads((out / "results.json").read_text())
    (finding,) = doc["findings"]
    assert finding["hypothesis"] == "params-float32" and finding["classification"] == "convention"
    script = out / finding["repro"]
    page = (out / "findings" / f"{finding['signature']}.html").read_text()
    assert script.is_file() and script.name in page  # the finding's page offers the script to copy or download
    # the case was shrunk while the signature held, and the script reproduces the shrunk case
    small = doc["cases"][finding["minimal_case"]]
    assert finding["shrink"]["reduced"] and small["meta"]["shrunk_from"] == finding["shrink"]["from_case"]
    assert small["shape"][0] * small["shape"][1] < 8 * 4 and small["dtype"] == "float64"
    assert small["mode"] in ("train", "trajectory")  # the training finding stays a training case
    text = script.read_text()
    assert "b64decode" not in text.split("# ---- the framework path under test ----")[0]  # a small case stays literal
    rows, verdicts, stdout, _, _ = _run_script_rows(tmp_path, text, expect=1)
    # the script judges as bncheck did: exactly the quantities the shrunk case deviated in deviate
    assert {k for k, (v, _) in verdicts.items() if v == "DEVIATES"} == set(finding["shrink"]["deviating"]), stdout
    assert set(finding["shrink"]["checked"]) == set(rows)  # and it shows every quantity bncheck judged
    assert max(rows[k][0] for k in finding["shrink"]["deviating"]) > 1e-12  # float32 eps/momentum; float64 rounding would give ~1e-16


def test_shrink_time_bounds_shrinking(tmp_path, cli):
    """--shrink-time 0: the finding is reported with its original case and says shrinking ran out of time."""
    pytest.importorskip("onnxruntime")
    cases = write_jsonl(tmp_path / "c.jsonl", [{"shape": [8, 4, 5], "dtype": "float64", "mode": "trajectory", "steps": 2}])
    out = tmp_path / "out"
    r = cli("run", str(cases), "--targets", "ort.opset15@cpu", "--shrink-time", "0", "--out", str(out))
    assert r.returncode == 1, r.stderr
    (finding,) = json.loads((out / "results.json").read_text())["findings"]
    assert finding["shrink"]["not_shrunk"] == "time-limit" and finding["shrink"]["attempts"] == 0
    assert finding["shrink"]["outcome"] == "not-shrunk" and "--shrink-time" in finding["shrink"]["skipped"]
    page = (out / "findings" / f"{finding['signature']}.html").read_text()
    assert "not shrunk (<code>time-limit</code>)" in page  # the page says why
    assert finding["minimal_case"] == finding["shrink"]["from_case"]


def _exec_inputs(lines: list[str], folder=None) -> dict:
    import base64
    import io
    import os

    ns = {"np": np, "base64": base64, "io": io, "os": os, "__file__": str((folder or Path(".")) / "x.py")}
    exec("\n".join(lines), ns)  # noqa: S102 - the script's own lines
    return ns["INPUTS"]


def test_small_inputs_are_literal_values_that_round_trip_bit_for_bit():
    """A handful of values is written as numbers a maintainer can read, and loads back exactly (NaN, Inf, -0.0 too)."""
    from bncheck.repro import inputs_source

    inputs = {"train0.x": np.array([[1.5, -0.0], [np.nan, -np.inf]], dtype=np.float16),
              "gamma": np.array([0.1, 1 / 3], dtype=np.float32), "beta": np.array([1e-300, 2.0])}
    lines, npz = inputs_source(inputs, "x.inputs.npz")
    assert npz is None and "base64" not in "\n".join(lines) and "0.333333343267" in "\n".join(lines)
    back = _exec_inputs(lines)
    for k, v in inputs.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and back[k].tobytes() == v.tobytes()


def test_large_inputs_go_beside_the_script_and_medium_ones_inline(tmp_path):
    """Beyond LITERAL_ELEMENTS, base64 in fixed-width lines; beyond INLINE_BYTES, an .npz next to the script."""
    from bncheck import repro

    medium = {"train0.x": np.arange(1000, dtype=np.float32)}
    lines, npz = repro.inputs_source(medium, "x.inputs.npz")
    assert npz is None and all(len(line) <= repro.BASE64_LINE for line in lines[1:-1])
    assert _exec_inputs(lines)["train0.x"].tobytes() == medium["train0.x"].tobytes()
    large = {"train0.x": np.arange(repro.INLINE_BYTES // 4 + 10, dtype=np.float32)}
    lines, npz = repro.inputs_source(large, "x.inputs.npz")
    assert npz is not None and len("\n".join(lines)) < 500
    (tmp_path / "x.inputs.npz").write_bytes(npz)
    assert _exec_inputs(lines, tmp_path)["train0.x"].tobytes() == large["train0.x"].tobytes()


QUIET = re.compile(r"(^[IWEF]\d{4} |tensorflow|oneDNN|cuda|absl|TF_ENABLE)", re.M | re.I)


@pytest.mark.parametrize("module, family, case, expect", [
    # tf.nn: a benign float32 training step passes; TensorFlow's import prints nothing
    ("tensorflow", "TfNn", {"shape": [8, 4, 5, 5], "layout": "channels_last", "track_running_stats": False}, 0),
    # flax.linen's one-pass variance on batches of mean 100 cancels (test_repro_frameworks measures it)
    ("flax", "FlaxLinen", {"shape": [8, 4, 5, 5], "layout": "channels_last", "mode": "trajectory", "steps": 2,
                           "regime": {"name": "offset", "x": {"dist": "normal", "loc": 100.0, "scale": 1.0}}}, 1),
])
def test_scripts_of_tensorflow_and_jax_exit_with_the_verdict_and_stay_quiet(tmp_path, module, family, case, expect):
    """Run as `python repro.py`: the exit status is the verdict (1 reproduced, 0 not) and stderr carries no framework
    log lines."""
    if importlib.util.find_spec(module) is None:  # not imported here: this process imports no framework
        pytest.skip(f"{module} is not installed")
    from bncheck.targets import family_class

    targets = {"TfNn": "tf.nn", "FlaxLinen": "flax.linen"}
    target = family_class(targets[family])("cpu")
    c = case_from_dict(case)
    keys = [f"{p}.y" for p in c.phases]
    _, verdicts, stdout, stderr, _ = _run_script_rows(tmp_path, render(c, make_inputs(c), target, keys, "t", "e", {}),
                                                      expect=expect)
    assert set(verdicts) == set(keys), stdout
    assert not QUIET.search(stderr), stderr[-2000:]


def test_each_small_array_stays_literal_beside_a_large_one():
    """A 2-element input is written as its two numbers even when another array of the script needs base64."""
    from bncheck import repro

    inputs = {"train0.x": np.array([[0.25], [-1.5]], dtype=np.float32), "eval.x": np.arange(1000, dtype=np.float32)}
    lines, npz = repro.inputs_source(inputs, "x.inputs.npz")
    text = "\n".join(lines)
    assert npz is None and "'train0.x': np.array([0.25, -1.5], dtype='float32').reshape((2, 1))" in text
    back = _exec_inputs(lines)
    assert all(back[k].tobytes() == v.tobytes() and back[k].dtype == v.dtype for k, v in inputs.items())


def test_elementwise_is_plain_and_embedded_verbatim():
    """The scripts' judging is bncheck's module itself: it imports NumPy only, and a script holds its source whole."""
    import ast
    import inspect

    from bncheck import elementwise
    from bncheck.targets.torch_targets import TorchModule

    tree = ast.parse(inspect.getsource(elementwise))
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [[a.name for a in n.names] for n in imports] == [["numpy"]]
    case = case_from_dict({"shape": [4, 3, 5]})
    src = render(case, make_inputs(case), TorchModule("cpu"), ["train0.y"], "t", "e", {})
    assert inspect.getsource(elementwise).strip() in src


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_scripts_verdict_is_bncheck_verdict_on_perturbed_observations(dtype):
    """Observations perturbed by 0.3 to 3 times the bound, with NaN and Inf planted: the script's judge_elements on the
    embedded expected values and bounds deviates exactly where bncheck's compare() does."""
    from bncheck.compare import compare
    from bncheck.judging import expected_values
    from bncheck.repro import expected_arrays
    from bncheck.targets.torch_targets import TorchModule
    from bncheck.elementwise import judge_elements

    case = case_from_dict({"shape": [6, 3, 4], "dtype": dtype, "mode": "trajectory", "steps": 2, "grad": True})
    inputs, target = make_inputs(case), TorchModule("cpu")
    exp = expected_values(case, inputs).for_conventions(target.conventions)
    declared = target.conventions.running_var
    keys = sorted(exp.references[declared].values)
    values, bound = expected_arrays(case, inputs, target, keys)
    rng = np.random.default_rng(0)
    agreed = {True: 0, False: 0}
    for trial in range(12):
        obs = {}
        for k in keys:
            b = np.broadcast_to(bound[k], values[k].shape)
            scale = rng.choice([0.3, 0.9, 1.1, 3.0])
            obs[k] = values[k] + scale * b * rng.choice([-1.0, 1.0], size=values[k].shape) * (rng.random(values[k].shape) < 0.3)
            if trial % 4 == 3 and obs[k].size > 2:
                obs[k].reshape(-1)[0], obs[k].reshape(-1)[1] = np.nan, np.inf
        verdicts = {v.key: v for v in compare(case, obs, exp.references, exp.bounds, target.conventions, exp.dependent)}
        for k in keys:
            script = judge_elements(obs[k], values[k], bound[k])["deviates"]
            assert script == (not verdicts[k].passed), (trial, k, verdicts[k])
            agreed[script] += 1
    assert agreed[True] > 50 and agreed[False] > 50, agreed
