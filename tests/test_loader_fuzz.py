"""Hypothesis throws random JSON, random cases and random bytes at the case loader: CaseError/CaseFileError or a Case.

A loaded case must also have a case id and a description (what `bncheck run` computes next). The bugs this
fuzzer found (unhashable or non-finite values, Unicode digits, deep nesting, huge integers, over-long data
paths, U+2028 inside a JSON string) are fixed; each keeps a regression test below.
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bncheck.cases import ARRAYS, FIELDS, CaseError, CaseFileError, case_from_dict, load_case_file

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.function_scoped_fixture])

# ---- strategies ---------------------------------------------------------------------------------
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**6), max_value=10**6), st.integers(),
    st.sampled_from([0, 1, -1, 2**63, 2**64, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["nan", "inf", "-inf", "", "float32", "channels_last", "train", "normal", "0", "1", "²", "١"]),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                           max_leaves=12)


def _number() -> st.SearchStrategy[Any]:
    return st.one_of(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
                     st.integers(-5, 5), json_values)


small = st.floats(-10, 10, allow_nan=False)
valid_dists = st.one_of(
    st.fixed_dictionaries({"dist": st.just("normal"), "loc": small, "scale": st.floats(0, 10)}),
    st.fixed_dictionaries({"dist": st.just("uniform"), "low": st.floats(-2, 0), "high": st.floats(0, 2)}),
    st.fixed_dictionaries({"dist": st.just("constant"), "value": small}),
)
channel_keys = st.one_of(st.sampled_from(["0", "1", "2", "01", "7", "-1", "x", "²", "١", ""]), st.text(max_size=3))
inject_specs = st.one_of(
    st.fixed_dictionaries({"value": st.one_of(small, st.sampled_from(["nan", "inf", "-inf", "x"]), json_values),
                           "count": st.one_of(st.integers(-2, 10**6), json_values)}),
    json_values)


@st.composite
def dist_specs(draw: st.DrawFn) -> Any:
    """A valid distribution with, sometimes, channels, an injection, a bad parameter or an unknown key."""
    spec = dict(draw(valid_dists))
    if draw(st.booleans()):
        spec["channels"] = draw(st.one_of(st.dictionaries(channel_keys, st.one_of(valid_dists, json_values), max_size=3),
                                          json_values))
    if draw(st.booleans()):
        spec["inject"] = draw(inject_specs)
    if draw(st.integers(0, 4)) == 0:
        spec[draw(st.sampled_from(["dist", "loc", "scale", "low", "high", "value", "bogus"]))] = draw(json_values)
    return spec


regimes = st.one_of(
    st.fixed_dictionaries({}, optional={"name": st.one_of(st.text(max_size=5), json_values),
                                        **{a: dist_specs() for a in ARRAYS}}),
    st.fixed_dictionaries({"data": st.one_of(json_values, st.fixed_dictionaries(
        {"file": st.one_of(st.text(max_size=12), st.sampled_from(["x.npz", "../x.npz", "/abs/x.npz", "d/" + "a" * 300 + ".npz"])),
         "sha256": st.one_of(st.text(max_size=4), st.just("0" * 64))}))}),
    json_values)

valid_fields: dict[str, st.SearchStrategy[Any]] = {
    "shape": st.lists(st.integers(1, 6), min_size=3, max_size=5),
    "layout": st.sampled_from(["channels_first", "channels_last"]),
    "dtype": st.sampled_from(["float16", "bfloat16", "float32", "float64"]),
    "param_dtype": st.sampled_from(["float32", "float64"]),
    "mode": st.sampled_from(["train", "eval", "trajectory"]),
    "eps": st.floats(0, 0.1), "momentum": st.floats(0, 1),
    "affine": st.booleans(), "track_running_stats": st.booleans(), "grad": st.booleans(),
    "regime": regimes, "seed": st.integers(0, 2**63 - 1), "meta": st.dictionaries(st.text(max_size=4), json_values, max_size=2),
}
wild_fields: dict[str, st.SearchStrategy[Any]] = {
    "shape": st.one_of(st.lists(st.integers(-2, 40), max_size=6), st.lists(st.integers(), max_size=6), json_values),
    "steps": st.one_of(st.integers(-3, 100), json_values), "eps": _number(), "momentum": _number(),
}


@st.composite
def case_dicts(draw: st.DrawFn) -> Any:
    """A plausible case (real field names, mostly valid values) with a few fields given random-typed values."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    d = {k: draw(v) for k, v in valid_fields.items() if k == "shape" or draw(st.booleans())}
    for k in draw(st.lists(st.sampled_from([*FIELDS, "meta", "unknown_field"]), max_size=2, unique=True)):
        d[k] = draw(wild_fields.get(k, json_values))
    return d


# ---- the property and known bugs ------------------------------------------------------------------
def _check_case(d: Any) -> None:
    """case_from_dict(d) raises CaseError (one line) or gives a case with an id and a description."""
    try:
        case = case_from_dict(d)
        assert len(case.case_id) == 16 and case.describe()
        assert json.loads(case.canonical_json())["shape"] == list(case.shape)
    except CaseError as e:
        assert "\n" not in str(e) and str(e)
    except Exception as e:  # noqa: BLE001 - the property: nothing else escapes
        raise AssertionError(f"{type(e).__name__} escaped the loader: {e}") from e


def _check_file(path: Path) -> None:
    """load_case_file raises CaseFileError naming the file, or gives cases with ids and descriptions."""
    try:
        for case in load_case_file(path):
            assert len(case.case_id) == 16 and case.describe()
    except CaseFileError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)
    except Exception as e:  # noqa: BLE001 - the property: nothing else escapes
        raise AssertionError(f"{type(e).__name__} escaped the loader: {e}") from e


@SETTINGS
@given(case_dicts())
@example({"shape": [4, 3], "regime": {"x": {"dist": "normal", "loc": 0, "scale": 1, "channels": {"01": {"dist": "constant", "value": 1}}}}})
def test_case_from_dict_raises_only_case_error(d):
    """Random dictionaries with the real field names and random-typed values: a Case or a CaseError."""
    _check_case(d)


@SETTINGS
@given(st.lists(case_dicts(), min_size=1, max_size=3), st.integers(0, 40), st.sampled_from([".jsonl", ".json"]))
def test_case_files_of_random_cases_raise_only_case_file_error(tmp_path, items, cut, suffix):
    """Files of random cases, whole or truncated, as JSON lines or a JSON list: cases or a CaseFileError."""
    text = ("\n".join(json.dumps(d) for d in items) + "\n") if suffix == ".jsonl" else json.dumps(items)
    if cut:
        text = text[: max(0, len(text) - cut)]
    path = tmp_path / f"fuzz{suffix}"
    path.write_text(text, encoding="utf-8")
    _check_file(path)


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from([".jsonl", ".json"]))
@example(b'{"shape": [4, 3]}\n\xff\xfe\n', ".jsonl")
@example(b'{"shape": [4, 3', ".json")
@example(b"\xef\xbb\xbf{\"shape\": [4, 3]}\n", ".jsonl")
def test_random_bytes_raise_only_case_file_error(tmp_path, data, suffix):
    """Arbitrary bytes in a case file: a CaseFileError (or, by chance, valid cases), never another exception."""
    path = tmp_path / f"bytes{suffix}"
    path.write_bytes(data)
    _check_file(path)


@SETTINGS
@given(st.text(alphabet=string.printable + "{}[]\":,\u2028\u0085é", max_size=200))
def test_random_text_raises_only_case_file_error(tmp_path, text):
    """Random JSON-ish text: a CaseFileError (or valid cases), never another exception."""
    path = tmp_path / "text.jsonl"
    path.write_text(text, encoding="utf-8")
    _check_file(path)


# ---- regressions: loader bugs this fuzzer found (fixed in cases.py / inputs.py) ---------------------
KNOWN_BUGS: list[tuple[str, Any, str]] = [
    ("unhashable-dist-or-inject-value",
     {"shape": [4, 3], "regime": {"x": {"dist": "normal", "loc": 0, "scale": 1, "inject": {"value": [1], "count": 1}}}},
     "cases.py:202 _validate_inject: `value in SPECIAL_VALUES` raises TypeError for a list/dict value"),
    ("unhashable-dist-or-inject-value", {"shape": [4, 3], "regime": {"x": {"dist": [1]}}},
     "cases.py:216 _validate_dist: `dist not in DISTS` raises TypeError for a list/dict dist"),
    ("inject-value-overflow",
     {"shape": [4, 3], "regime": {"x": {"dist": "normal", "loc": 0, "scale": 1, "inject": {"value": 10**400, "count": 1}}}},
     "cases.py:208 _validate_inject: float(value) raises OverflowError for an integer beyond float range"),
    ("non-finite-inject-value",
     {"shape": [4, 3], "regime": {"x": {"dist": "normal", "loc": 0, "scale": 1, "inject": {"value": math.nan, "count": 1}}}},
     "cases.py:202-208 _validate_inject accepts a float NaN/Infinity (JSON NaN literal); canonical_json "
     "(allow_nan=False) then raises ValueError when the case id is computed"),
    ("unicode-digit-channel",
     {"shape": [4, 3], "regime": {"x": {"dist": "normal", "loc": 0, "scale": 1, "channels": {"²": {"dist": "constant", "value": 1}}}}},
     "cases.py:240-242 _validate_dist: '²'.isdigit() is True but int('²') raises ValueError"),
]


@pytest.mark.parametrize("bug, d, where", KNOWN_BUGS, ids=[f"{b}-{i}" for i, (b, _, _) in enumerate(KNOWN_BUGS)])
def test_known_case_from_dict_bug(bug, d, where):
    """Regression for a case_from_dict bug the fuzzer found: it must be a CaseError."""
    try:
        case_from_dict(d).case_id
    except CaseError:
        return
    except Exception as e:
        raise AssertionError(f"{where}: {type(e).__name__}: {e}") from None


KNOWN_FILE_BUGS: list[tuple[str, str, str]] = [
    ("deep-nesting", "[" * 100000 + "]" * 100000,
     "cases.py:372 _decode_lines: json.loads raises RecursionError (not JSONDecodeError) on deeply nested JSON"),
    ("huge-integer-literal", '{"shape": [4, ' + "9" * 5000 + "]}",
     "cases.py:372 _decode_lines: json.loads raises ValueError for an integer literal over 4300 digits"),
    ("long-data-path", json.dumps({"shape": [4, 3], "regime": {"data": {"file": "a" * 300 + "/x.npz", "sha256": "0" * 64}}}),
     "inputs.py:80 find_data_file: Path.is_file() raises OSError ENAMETOOLONG; load_case_file (cases.py:390-393) "
     "catches only CaseError and InputDataError"),
    ("u2028-in-string", json.dumps({"shape": [4, 3], "meta": {"note": "a\u2028b"}}, ensure_ascii=False),
     "cases.py:367 _decode_lines: str.splitlines() also splits at U+2028/U+0085 inside a JSON string, so a valid "
     "JSON line is rejected as 'Unterminated string'"),
]


@pytest.mark.parametrize("bug, text, where", KNOWN_FILE_BUGS, ids=[b for b, _, _ in KNOWN_FILE_BUGS])
def test_known_case_file_bug(tmp_path, bug, text, where):
    """Regression for a file-level loader bug the fuzzer found: a CaseFileError (or, for valid input, the case)."""
    path = tmp_path / "bug.jsonl"
    path.write_text(text + "\n", encoding="utf-8")
    try:
        cases = load_case_file(path)
    except CaseFileError as e:
        assert bug != "u2028-in-string", f"{where}: {e}"  # that line is valid JSON
        return
    except Exception as e:
        raise AssertionError(f"{where}: {type(e).__name__}: {e}") from None
    assert bug == "u2028-in-string" and cases[0].meta == {"note": "a\u2028b"}
