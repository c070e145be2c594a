"""`bncheck replay --target A --against B`: the "my two frameworks differ" question in one command, with the case
given inline; bad input is one line and exit status 2, before any framework starts."""

from __future__ import annotations

import importlib.util
import json

import pytest

CASE = json.dumps({"shape": [8, 3], "dtype": "float64", "mode": "trajectory", "steps": 1})


def test_two_targets_side_by_side_against_each_other_and_the_reference(cli):
    """torch.nn against ORT on a float64 training step: the table shows both values, their difference and each
    verdict (ORT's float32 attributes deviate, torch passes); the conventions that differ are listed; exit 1."""
    for module in ("torch", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    r = cli("replay", "--case", CASE, "--target", "torch.nn@cpu", "--against", "ort.opset15@cpu")
    assert r.returncode == 1, r.stdout + r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.startswith(("train0.", "eval."))}
    # quantity, element, A, B, reference, |A-B|, A's err/bound and verdict, B's
    running_mean = rows["train0.running_mean"]
    assert running_mean[-3] == "pass" and running_mean[-1] == "DEV", r.stdout
    assert float(running_mean[5]) > 1e-9  # float32(0.9) in ORT: the two differ far beyond float64 rounding
    assert "(B's reference)" in r.stdout  # the biased running variance ORT declares has its own reference
    diff = r.stdout.split("conventions that differ:")[1]
    assert "momentum               A: new" in diff and "running_var            A: unbiased" in diff
    assert "parameter_precision" in diff and "float32-attributes" in diff
    assert "deviating from the reference: B:train0.y, B:train0.running_mean" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--case", '{"shape": [8, 3'], "--case: invalid JSON at column 16"),
    (["--case", '{"shape": [8]}'], "--case: shape: must be a list of 2 to 5 integers"),
    (["--case", CASE, "--against", "tf.kera@cpu"], "--against 'tf.kera@cpu': no such target; did you mean tf.keras@cpu"),
    (["--case", CASE, "--against", "torch.nn@cpu"], "names the --target itself"),
    (["abc", "--case", CASE], "give a CASE_ID or --case JSON (one of them)"),
])
def test_bad_input_is_one_line_and_exit_status_2(cli, args, message):
    """Malformed JSON, an invalid case, an unknown or repeated target: one line naming the problem and the fix."""
    r = cli("replay", "--target", "torch.nn@cpu", *args)
    assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
    (line,) = r.stderr.splitlines()
    assert line.startswith("bncheck: error: ") and message in line, line
