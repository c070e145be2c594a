"""The case model: canonical form, content hash, validation errors that name field and fix, file loading."""

from __future__ import annotations

import json

import pytest

from bncheck.cases import (
    Case, CaseError, CaseFileError, case_from_dict, load_case_file, load_cases, resolve_case_source, write_case_file,
)

BASE = {"shape": [4, 3, 5]}


def test_defaults_are_filled_and_canonical():
    """Omitted fields take documented defaults; half inputs default to float32 parameters."""
    c = case_from_dict({"shape": [4, 3], "dtype": "float16"})
    assert (c.layout, c.param_dtype, c.mode, c.steps, c.eps, c.momentum) == ("channels_first", "float32", "train", 1, 1e-5, 0.1)
    assert c.regime["name"] == "standard" and c.regime["x"] == {"dist": "normal", "loc": 0.0, "scale": 1.0}
    assert json.loads(c.canonical_json()) == c.to_dict()


def test_case_id_is_a_content_hash():
    """Equal content gives equal ids whatever the key order or defaults spelled out; any change changes it."""
    a = case_from_dict({"shape": [4, 3, 5], "eps": 1e-5})
    b = case_from_dict({"eps": 1e-5, "momentum": 0.1, "shape": [4, 3, 5], "layout": "channels_first"})
    assert a.case_id == b.case_id and len(a.case_id) == 16
    assert a.replace(eps=1e-3).case_id != a.case_id
    assert a.replace(seed=1).case_id != a.case_id
    assert case_from_dict({**BASE, "meta": {"note": "x"}}).case_id == a.case_id  # metadata is not identity


def test_phases_and_layout_facts():
    """Phases, per-channel counts and physical shapes follow mode and layout."""
    c = case_from_dict({"shape": [2, 3, 4, 5], "layout": "channels_last", "mode": "trajectory", "steps": 3})
    assert c.phases == ("train0", "train1", "train2", "eval")
    assert c.physical_shape == (2, 4, 5, 3) and c.channel_axis == 3 and c.per_channel == 40
    assert case_from_dict({**BASE, "mode": "eval"}).phases == ("eval",)


@pytest.mark.parametrize("patch, field, words", [
    ({"momentum": 1.5}, "momentum", "within [0, 1], got 1.5"),
    ({"eps": -1e-5}, "eps", "must be >= 0"),
    ({"dtype": "float8"}, "dtype", "one of float16, bfloat16, float32, float64"),
    ({"shape": [4]}, "shape", "list of 2 to 5 integers"),
    ({"shape": [4, 0, 2]}, "shape", ">= 1"),
    ({"shape": [4096, 4096, 64]}, "shape", "exceeds the limit"),
    ({"layout": "channels_last", "shape": [4, 3]}, "layout", "at least one spatial dimension"),
    ({"mode": "train", "steps": 3}, "steps", "use mode 'trajectory'"),
    ({"mode": "trajectory", "steps": 0}, "steps", "within [1, 64]"),
    ({"affine": 1}, "affine", "true or false"),
    ({"seed": -1}, "seed", "within [0, 2**63)"),
    ({"colour": "red"}, "colour", "unknown field"),
    ({"regime": {"x": {"dist": "cauchy"}}}, "regime.x.dist", "unknown distribution"),
    ({"regime": {"x": {"dist": "normal", "loc": 0}}}, "regime.x.scale", "missing"),
    ({"regime": {"x": {"dist": "normal", "loc": 0, "scale": -1}}}, "regime.x.scale", ">= 0"),
    ({"regime": {"gamma": {"dist": "uniform", "low": 2, "high": 1}}}, "regime.gamma.high", "swap"),
    ({"eps": "small"}, "eps", "must be a number"),
])
def test_validation_names_field_and_fix(patch, field, words):
    """Every invalid field gives a CaseError naming the field, the problem and a fix."""
    with pytest.raises(CaseError) as info:
        case_from_dict({**BASE, **patch})
    assert info.value.field == field
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_file_errors_carry_file_and_line(tmp_path):
    """A bad line in a .jsonl file is reported as file:line: field: problem (fix)."""
    p = tmp_path / "cases.jsonl"
    p.write_text('{"shape": [4, 3]}\n# a comment\n\n{"shape": [4, 3], "momentum": 1.5}\n')
    with pytest.raises(CaseFileError) as info:
        load_case_file(p)
    assert str(info.value) == f"{p}:4: momentum: must be within [0, 1], got 1.5 (momentum is the weight of the new batch statistic)"


@pytest.mark.parametrize("content, words", [
    (b'{"shape": [4, 3]\n', ":1: invalid JSON"),
    (b'{"shape": [4, 3]}\n\xff\xfe\n', ":2: not UTF-8"),
    (b'[1, 2]\n', ":1: a case must be a JSON object"),
])
def test_malformed_files(tmp_path, content, words):
    """Truncated JSON, non-UTF-8 bytes and non-objects are located errors, not tracebacks."""
    p = tmp_path / "bad.jsonl"
    p.write_bytes(content)
    with pytest.raises(CaseFileError) as info:
        load_case_file(p)
    assert words in str(info.value)


def test_json_files_and_round_trip(tmp_path):
    """A .json list loads; written files load back to the same cases."""
    cases = [case_from_dict({"shape": [4, 3], "seed": s}) for s in range(3)]
    p = tmp_path / "c.jsonl"
    write_case_file(p, cases)
    assert [c.case_id for c in load_case_file(p)] == [c.case_id for c in cases]
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"cases": [c.to_dict() for c in cases]}))
    assert [c.case_id for c in load_case_file(j)] == [c.case_id for c in cases]


def test_suite_names_resolve_and_unknown_names_list_suites():
    """'smoke' names the shipped suite; an unknown name lists the suites that exist."""
    assert resolve_case_source("smoke").name == "smoke.jsonl"
    with pytest.raises(CaseFileError) as info:
        resolve_case_source("nonesuch")
    assert "smoke" in str(info.value) and "default" in str(info.value)


def test_load_cases_drops_duplicates(tmp_path):
    """The same case listed twice runs once."""
    p = tmp_path / "dup.jsonl"
    p.write_text('{"shape": [4, 3]}\n{"shape": [4, 3], "eps": 1e-5}\n')
    assert len(load_cases([str(p)])) == 1


def test_case_is_frozen():
    """Cases are immutable values."""
    c = case_from_dict(BASE)
    with pytest.raises(Exception):
        c.eps = 1.0  # type: ignore[misc]
    assert isinstance(c, Case)


def test_injection_and_channel_overrides_are_deterministic():
    """Injected specials land at seeded positions; a per-channel override replaces exactly that channel."""
    import numpy as np

    from bncheck.inputs import make_inputs

    spec = {"shape": [4, 3, 5], "regime": {"name": "h", "x": {
        "dist": "normal", "loc": 0.0, "scale": 1.0, "inject": {"value": "nan", "count": 2},
        "channels": {"1": {"dist": "constant", "value": 7.0}}},
        "running_var": {"dist": "constant", "value": 1.0, "inject": {"value": "inf", "count": 1}}}}
    c = case_from_dict(spec)
    a, b = make_inputs(c), make_inputs(c)
    x = a["train0.x"]
    assert np.isnan(x).sum() == 2 and np.array_equal(x, b["train0.x"], equal_nan=True)
    col = x[:, 1][~np.isnan(x[:, 1])]
    assert (col == 7.0).all()
    assert np.isinf(a["running_var"]).sum() == 1


@pytest.mark.parametrize("patch, field", [
    ({"x": {"dist": "normal", "loc": 0, "scale": 1, "inject": {"value": "nope", "count": 1}}}, "regime.x.inject.value"),
    ({"x": {"dist": "normal", "loc": 0, "scale": 1, "inject": {"value": "nan", "count": 0}}}, "regime.x.inject.count"),
    ({"x": {"dist": "normal", "loc": 0, "scale": 1, "channels": {"9": {"dist": "constant", "value": 1}}}}, "regime.x.channels"),
    ({"x": {"dist": "normal", "loc": 0, "scale": 1, "channels": {"a": {"dist": "constant", "value": 1}}}}, "regime.x.channels"),
    ({"data": {"file": "../x.npz", "sha256": "0" * 64}}, "regime.data.file"),
    ({"data": {"file": "x.npz", "sha256": "abc"}}, "regime.data.sha256"),
    ({"data": {"file": "x.npz", "sha256": "0" * 64}, "x": {"dist": "constant", "value": 1}}, "regime.x"),
])
def test_regime_extensions_validate(patch, field):
    """Injection, per-channel overrides and data references are validated with the field named."""
    with pytest.raises(CaseError) as info:
        case_from_dict({"shape": [4, 3, 5], "regime": {"name": "r", **patch}})
    assert info.value.field == field


def test_channel_keys_naming_the_same_channel_are_rejected(tmp_path):
    """"1" and "01" both mean channel 1: rather than one silently overriding the other, the file is rejected with
    one line naming file, line, field, both keys and the fix; distinct channels (and "10" beside "1") still load."""
    x = {"dist": "normal", "loc": 0, "scale": 1,
         "channels": {"1": {"dist": "constant", "value": 1.0}, "01": {"dist": "constant", "value": 2.0}}}
    p = tmp_path / "dup.jsonl"
    p.write_text(json.dumps({"shape": [4, 3, 5]}) + "\n" + json.dumps({"shape": [4, 3, 5], "regime": {"name": "r", "x": x}}) + "\n")
    with pytest.raises(CaseFileError) as info:
        load_case_file(p)
    assert str(info.value) == (f'{p}:2: regime.x.channels: keys "1" and "01" both name channel 1 '
                               '(keep one key per channel, written without leading zeros ("1"))')
    with pytest.raises(CaseError) as err:  # whichever order the keys come in
        case_from_dict({"shape": [2, 12], "regime": {"dy": {"dist": "constant", "value": 0,
                                                            "channels": {"007": {"dist": "constant", "value": 1},
                                                                         "7": {"dist": "constant", "value": 2}}}}})
    assert err.value.field == "regime.dy.channels" and '"7" and "007"' in err.value.problem
    ok = case_from_dict({"shape": [2, 12], "regime": {"x": {"dist": "normal", "loc": 0, "scale": 1, "channels": {
        "1": {"dist": "constant", "value": 1}, "10": {"dist": "constant", "value": 2}}}}})
    assert sorted(ok.regime["x"]["channels"]) == ["1", "10"]


def test_data_backed_case_is_verified_at_load(tmp_path, monkeypatch):
    """A case whose arrays come from an .npz loads them exactly; an altered file is a located load error."""
    import hashlib
    import io

    import numpy as np

    from bncheck.inputs import make_inputs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cases").mkdir()
    probe = case_from_dict({"shape": [2, 3], "mode": "eval"})
    arrays = make_inputs(probe)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (tmp_path / "cases" / "d.npz").write_bytes(buf.getvalue())
    digest = hashlib.sha256(buf.getvalue()).hexdigest()
    row = {"shape": [2, 3], "mode": "eval", "regime": {"name": "file", "data": {"file": "d.npz", "sha256": digest}}}
    p = tmp_path / "cases" / "data.jsonl"
    p.write_text(json.dumps(row) + "\n")
    case = load_case_file(p)[0]
    assert all(np.array_equal(make_inputs(case)[k], arrays[k]) for k in arrays)
    altered = bytearray(buf.getvalue())
    altered[len(altered) // 2] ^= 0xFF
    (tmp_path / "cases" / "d.npz").write_bytes(bytes(altered))
    with pytest.raises(CaseFileError, match=r"data.jsonl:1: .*SHA-256 .* differs"):
        load_case_file(p)


def test_data_files_are_found_beside_the_case_file_that_names_them(tmp_path, monkeypatch):
    """A data-backed case file loads from any working directory: its .npz is looked for beside it first."""
    import hashlib
    import io

    import numpy as np

    from bncheck.inputs import make_inputs

    suite = tmp_path / "mysuite"
    (suite / "data").mkdir(parents=True)
    probe = case_from_dict({"shape": [2, 3], "mode": "eval"})
    arrays = make_inputs(probe)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (suite / "data" / "d.npz").write_bytes(buf.getvalue())
    digest = hashlib.sha256(buf.getvalue()).hexdigest()
    row = {"shape": [2, 3], "mode": "eval", "regime": {"name": "file", "data": {"file": "data/d.npz", "sha256": digest}}}
    (suite / "s.jsonl").write_text(json.dumps(row) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no ./cases here, and the suite is not shipped
    case = load_case_file(suite / "s.jsonl")[0]
    assert all(np.array_equal(make_inputs(case)[k], arrays[k]) for k in arrays)


def test_a_directory_or_fifo_given_as_case_file_is_named_as_such(tmp_path):
    """Not 'no such case file': the line says what the path is."""
    import os

    from bncheck.cases import resolve_case_source

    with pytest.raises(CaseFileError, match="is a directory, not a case file"):
        resolve_case_source(str(tmp_path))
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(CaseFileError, match=r"is a FIFO \(named pipe\), not a case file"):
        resolve_case_source(str(fifo))


def test_error_lines_quote_huge_values_shortened():
    """A 1 MB field name or a 5M-element shape is not echoed whole."""
    with pytest.raises(CaseError) as e:
        case_from_dict({"shape": [2, 3], "x" * 1_000_000: 1})
    assert len(str(e.value)) < 1000 and "characters]" in str(e.value)
    with pytest.raises(CaseError) as e:
        case_from_dict({"shape": [1] * 5_000_000})
    assert len(str(e.value)) < 1000
