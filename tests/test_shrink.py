"""Shrinking keeps the finding: its signature, the mode of its first deviation, training, statistics, layout, rank
and dtypes; data-backed cases shrink by subsets of their arrays; a finding not shrunk says why, typed.

The target is an emulated NumPy kernel (tests/test_bounds.py) answering in this process through a stand-in for
the worker: no framework is needed."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest

from bncheck import shrink as sh
from bncheck.cases import case_from_dict, load_case_file, shipped_suites_dir
from bncheck.inputs import make_inputs
from bncheck.pool import Outcome
from bncheck.targets.base import Conventions, Target
from test_bounds import Kernel, emulate

EPS_OUTSIDE = Kernel(acc=np.float64, eps_placement="outside")  # eps outside the root: y far off on float64


class _Emulated(Target):
    """An emulated kernel as a target."""

    family = "emulated.bn"
    framework = "emulated"
    description = "NumPy BN with eps outside the square root"
    conventions = Conventions(momentum="new", running_var="unbiased")


class _Worker:
    """Answers run requests with the emulated kernel, in this process; counts them."""

    framework = "emulated"

    def __init__(self, kernel: Kernel) -> None:
        self.kernel, self.requests = kernel, 0

    def request(self, msg: dict, timeout: float) -> Outcome:
        """The kernel's observation of the request's case and inputs."""
        self.requests += 1
        return Outcome("ok", {"observation": emulate(case_from_dict(msg["case"]), msg["inputs"], self.kernel)})


def _signature(case, inputs=None):
    sig, mode, _, _ = sh._judge(case, inputs if inputs is not None else make_inputs(case), _Emulated("cpu"),
                                _Worker(EPS_OUTSIDE), 10)
    return sig, mode


def test_reductions_keep_the_profile_of_every_shipped_case():
    """No candidate reduction of a shipped case changes its layout, rank, dtypes, statistics or training: only sizes,
    steps, gradients and affine go (the rank-dropping reduction that made 4-d findings 2-d is gone)."""
    cases = [c for name in ("default", "smoke", "trajectories", "hazards")
             for c in load_case_file(shipped_suites_dir() / f"{name}.jsonl")]
    checked = 0
    for case in cases:
        for mode in (("train", "eval") if case.mode == "trajectory" else ("eval" if case.mode == "eval" else "train",)):
            want = sh.finding_profile(case, mode)
            for candidate in sh._valid(case):
                assert sh.finding_profile(candidate, mode) == want, (case.describe(), candidate.describe())
                checked += 1
    assert checked > 1000


def test_the_minimal_case_of_a_training_finding_is_a_training_case_of_its_dtype():
    """A signature spans modes and dtypes; its minimal case keeps the worst case's: the smaller eval-only and float64
    cases of the same signature are passed over (the issue's 'eval float64 (1, 1)' for a training finding)."""
    from bncheck.report.results import minimal_member

    def d(**kw):
        return case_from_dict({"shape": [8, 4, 5, 5], **kw}).to_dict()

    cases = {"worst": d(), "train-small": d(shape=[2, 4, 5, 5]), "eval-tiny": d(shape=[1, 1], mode="eval"),
             "f64-tiny": d(shape=[1, 4, 1, 1], dtype="float64"), "cl-tiny": d(shape=[1, 4, 1, 1], layout="channels_last")}
    members = [("worst", "train"), ("eval-tiny", "eval"), ("f64-tiny", "train"), ("train-small", "train"),
               ("cl-tiny", "train")]
    assert minimal_member(members, "worst", "train", cases) == "train-small"


def test_a_training_finding_shrinks_to_a_smaller_training_case_that_still_deviates():
    """eps outside the root on a float64 trajectory: the shrunk case trains, keeps rank, layout and dtype, and its
    diagnosis keeps the signature and the training mode."""
    case = case_from_dict({"shape": [8, 4, 5, 5], "dtype": "float64", "eps": 0.5, "mode": "trajectory", "steps": 2,
                           "layout": "channels_last"})
    sig, mode = _signature(case)
    assert mode == "train"
    worker = _Worker(EPS_OUTSIDE)
    r = sh.shrink(case, sig, _Emulated("cpu"), worker, 10, budget=40, mode=mode)
    assert r.reduced and r.attempts == worker.requests and r.stopped in sh.STOPPED
    small = r.case
    assert sh.finding_profile(small, "train") == sh.finding_profile(case, "train")
    assert small.per_channel * small.channels < case.per_channel * case.channels
    assert _signature(small) == (sig, "train") and "train0.y" in r.deviating and set(r.deviating) <= set(r.checked)


def _data_case(tmp_path: Path, shape: list[int]):
    """A data-backed float64 case whose arrays are those of a generated one, loaded as a user's case file would be."""
    spec = {"shape": shape, "dtype": "float64", "eps": 0.5, "mode": "trajectory", "steps": 2}
    arrays = make_inputs(case_from_dict(spec))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (tmp_path / "mine.npz").write_bytes(buf.getvalue())
    row = {**spec, "regime": {"name": "mine", "data": {"file": "mine.npz", "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}}}
    (tmp_path / "c.jsonl").write_text(json.dumps(row) + "\n")
    (case,) = load_case_file(tmp_path / "c.jsonl")
    return case, arrays


def test_a_data_backed_finding_shrinks_to_a_subset_of_its_data_beside_its_case_file(tmp_path):
    """Channels, samples, pixels and steps are cut from the data; the subset is a new data file under the findings
    folder, its case loads from there, and its values are the original ones (the worst channel kept)."""
    case, arrays = _data_case(tmp_path, [6, 3, 4])
    sig, mode = _signature(case, arrays)
    doc = {"findings": [{"signature": sig, "target": "emulated.bn@cpu", "minimal_case": case.case_id, "mode": mode,
                         "classification": "precision"}],
           "cases": {case.case_id: {**case.to_dict(), "description": case.describe(), "metrics": {}}},
           "executions": [{"case_id": case.case_id, "target": "emulated.bn@cpu",
                           "deviations": [{"channel_ratios": [3.0, 9.0, 1.5]}]}]}  # channel 1 is the worst
    target = _Emulated("cpu")
    assert sh.shrink_findings(doc, {target.name: target}, {"emulated": _Worker(EPS_OUTSIDE)}, 10, budget=40,
                              data_dir=tmp_path / "findings") == 1
    (f,) = doc["findings"]
    assert f["shrink"]["outcome"] == "reduced" and f["shrink"]["attempts"] > 0
    small = case_from_dict({k: v for k, v in doc["cases"][f["minimal_case"]].items() if k not in ("description", "metrics")})
    assert "data" in small.regime and small.regime_name == "mine" and small.mode in ("train", "trajectory")
    assert small.per_channel * small.channels < case.per_channel * case.channels
    folder = tmp_path / "findings" / sig
    (folder / "case.jsonl").write_text(json.dumps(small.to_dict()) + "\n")
    (loaded,) = load_case_file(folder / "case.jsonl")  # its data file lies beside the finding's case file
    got = make_inputs(loaded)
    n, c = small.shape[0], small.channels
    kept = [1] if c == 1 else list(range(c))
    assert np.array_equal(got["train0.x"], arrays["train0.x"][:n][:, kept, : small.shape[2]])
    assert np.array_equal(got["gamma"], arrays["gamma"][kept])
    assert _signature(small, got) == (sig, mode)


@pytest.mark.parametrize("reason", sorted(sh.NOT_SHRUNK))
def test_every_not_shrunk_reason_is_typed_and_fits_the_results_schema(reason):
    """The record names the reason by its code and explains it; the schema knows every code."""
    jsonschema = pytest.importorskip("jsonschema")
    rec = sh.not_shrunk(reason, "abc", limit=50, **({"error": "RuntimeError: x"} if reason == "failed" else {}))
    assert rec["not_shrunk"] == reason and rec["outcome"] == "not-shrunk" and rec["skipped"]
    schema = json.loads((Path(sh.__file__).parent / "schemas" / "results.schema.json").read_text())
    shrink_schema = schema["properties"]["findings"]["items"]["properties"]["shrink"]
    assert not list(jsonschema.Draft202012Validator(shrink_schema).iter_errors(rec))
    bad = {**rec, "not_shrunk": "because"}
    assert list(jsonschema.Draft202012Validator(shrink_schema).iter_errors(bad))


def test_data_backed_findings_of_a_real_run_shrink_and_replay_from_the_output_folder(tmp_path, cli):
    """onnx.reference's opset 9 on the onnx-conformance suite (data-backed cases): every finding shrinks to a subset
    of its data beside its case file; `bncheck replay` finds it through the store, and its script reproduces it."""
    import subprocess
    import sys

    if importlib.util.find_spec("onnx") is None:
        pytest.skip("onnx is not installed")
    out = tmp_path / "out"
    r = cli("run", "onnx-conformance", "--targets", "onnx.reference.opset9@cpu", "--out", str(out))
    assert r.returncode == 1, r.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["findings"]
    for f in doc["findings"]:
        small = doc["cases"][f["minimal_case"]]
        assert f["shrink"]["outcome"] == "reduced" and "data" in small["regime"], f["shrink"]
        assert (out / "findings" / f["signature"] / small["regime"]["data"]["file"]).is_file()
        assert small["mode"] == doc["cases"][f["worst"]["case_id"]]["mode"]
    f = doc["findings"][0]
    replayed = cli("replay", f["minimal_case"], "--target", f["target"], "--out", str(out), cwd=tmp_path)
    assert replayed.returncode == 1 and "DEVIATES" in replayed.stdout, replayed.stdout + replayed.stderr
    script = subprocess.run([sys.executable, "-I", str(out / f["repro"])], capture_output=True, text=True, timeout=120)
    assert script.returncode == 1 and "REPRODUCED" in script.stdout, script.stdout + script.stderr
