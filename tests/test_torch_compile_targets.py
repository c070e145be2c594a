"""torch.compile (Inductor, CPU), run in-process: the experiments its conventions record cites.

Compiling costs seconds per configuration, so the module keeps to two configurations."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("torch")
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # as the torch-compile worker runs it

from bncheck.cases import case_from_dict  # noqa: E402
from bncheck.inputs import make_inputs  # noqa: E402
from bncheck.reference import compute_reference  # noqa: E402
from bncheck.targets.torch_compile_targets import TorchCompile  # noqa: E402

TARGET = TorchCompile("cpu")


def test_trajectory_with_gradients_matches_the_unbiased_reference_and_reuses_its_compilation():
    """float32 trajectory with gradients: every quantity at float32 rounding of the unbiased-convention reference;
    a second case of the same configuration compiles nothing new and gets its own values."""
    outs = []
    for seed in (1, 2):
        case = case_from_dict({"shape": [8, 4, 5, 5], "mode": "trajectory", "steps": 2, "grad": True, "seed": seed})
        inputs = make_inputs(case)
        out = TARGET.run(case, inputs)
        ref = compute_reference(case, inputs, running_var="unbiased").values
        assert set(out) == {f"{p}.{q}" for p in case.phases for q in ("y", "dx", "dgamma", "dbeta")} | {
            f"train{i}.{q}" for i in (0, 1) for q in ("running_mean", "running_var")}
        for k, v in out.items():
            np.testing.assert_allclose(v, ref[k], rtol=1e-4, atol=2e-5, err_msg=k)
        outs.append(out)
    assert len(TARGET._cache) == 1
    assert not np.array_equal(outs[0]["train0.y"], outs[1]["train0.y"])


def test_untracked_eval_normalises_with_batch_statistics():
    case = case_from_dict({"shape": [8, 4, 5, 5], "mode": "eval", "track_running_stats": False})
    inputs = make_inputs(case)
    out = TARGET.run(case, inputs)
    ref = compute_reference(case, inputs, running_var="unbiased").values
    np.testing.assert_allclose(out["eval.y"], ref["eval.y"], rtol=1e-5, atol=1e-5)


def test_refusals_are_run_and_recorded_as_refused():
    """eps = 0 in training is not predicted: torch.compile runs it, and the error torch raises (wrapped by Dynamo)
    is the refusal the record documents."""
    from bncheck.refusals import classify
    from bncheck.targets.base import RefusalCondition

    case = case_from_dict({"shape": [4, 3, 5], "eps": 0.0})
    assert TARGET.supports(case) is None
    with pytest.raises(Exception) as e:
        TARGET.run(case, make_inputs(case))
    message = f"{type(e.value).__name__}: {e.value}"
    assert classify(case, TARGET.conventions, "error", message)[0] == "refused", message
    assert {r.condition for r in TARGET.conventions.refusals} == {RefusalCondition.EPS_ZERO_TRAINING,
                                                                RefusalCondition.ONE_VALUE_PER_CHANNEL_TRAINING}
    assert TorchCompile.path_kind == "compiled" and TorchCompile.source_family is None
