"""Reports cannot lie to the gate: `gate` and `compare` validate a report against the shipped schema (with
lipcheck's own validator, checked here against `jsonschema`), recompute its summary from its samples,
and bound how deep it nests; anything else is exit 2 naming the first problem."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cli_fixtures import assert_one_line_error, make_report, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lipcheck.report import (
    BoundReport,
    LayerBound,
    SampleResult,
    Settings,
    bound_schema,
    report_schema,
    summarise,
)
from lipcheck.report.json_schema import first_problem

SCHEMAS = {"report": report_schema(), "bound": bound_schema()}


def _searched_and_bounded() -> dict[str, Any]:
    rows = (
        SampleResult(0, 1.0, 3, True, 1e-6, search_sigma=1.5, search_distance=0.25),
        SampleResult(1, 2.0, 3, False, None, search_sigma=2.0, search_distance=0.0),
    )
    bound = BoundReport(
        4.0, (LayerBound("0", "linear", "linear", 4.0, "exact SVD"),), {"aten.erf": 1.2}, (4,)
    )
    report = replace(
        make_report([1.0, 2.0]), samples=rows, summary=summarise(rows, "max"),
        settings=Settings(search_steps=5, search_radius=0.5), bound=bound,
    )  # fmt: skip
    return json.loads(report.to_json())


VALID = {
    "plain": json.loads(make_report([0.5, 1.0, 0.25], threshold=0.75).to_json()),
    "searched and bounded": _searched_and_bounded(),
}


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(report: dict[str, Any]) -> None:
        inner = report
        for key in path[:-1]:
            inner = inner[key]
        inner[path[-1]] = value

    return change


def _delete(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def change(report: dict[str, Any]) -> None:
        inner = report
        for key in path[:-1]:
            inner = inner[key]
        del inner[path[-1]]

    return change


# name -> (change to a valid report, the first problem the message names)
INVALID: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "negative sigma": (_set(("samples", 1, "sigma"), -0.5), "samples[1].sigma: -0.5 is below the minimum 0"),
    "schema_version 0": (_set(("schema_version",), 0), "schema_version: 0 is not 1"),
    "schema_version '1'": (_set(("schema_version",), "1"), 'schema_version: "1" is not 1'),
    "schema_version true": (_set(("schema_version",), True), "schema_version: true is not 1"),
    "schema_version 1.5": (_set(("schema_version",), 1.5), "schema_version: 1.5 is not 1"),
    "fractional index": (_set(("samples", 0, "index"), 2.5), "samples[0].index: 2.5 is not an integer"),
    "no iterations": (
        _set(("samples", 0, "iterations"), 0),
        "samples[0].iterations: 0 is below the minimum 1",
    ),
    "no samples": (_set(("samples",), []), "samples: [] has 0 items, fewer than 1"),
    "missing section": (_delete(("timing",)), "top level: has no 'timing'"),
    "missing figure": (_delete(("summary", "p95")), "summary: has no 'p95'"),
    "unknown key": (_set(("summary", "verdict"), "fine"), "summary: has the unexpected key 'verdict'"),
    "unknown method": (_set(("settings", "method"), "guess"), 'settings.method: "guess" is not one of'),
    "tol 0": (_set(("settings", "tol"), 0), "settings.tol: 0 is not above 0"),
    "tol 1": (_set(("settings", "tol"), 1), "settings.tol: 1 is not below 1"),
    "short sha256": (_set(("model", "sha256"), "abc"), 'model.sha256: "abc" does not match'),
    "converged as text": (
        _set(("samples", 2, "converged"), "yes"),
        'samples[2].converged: "yes" is not a boolean',
    ),
    "null sigma": (_set(("samples", 0, "sigma"), None), "samples[0].sigma: null is not a finite number"),
    "passed as 1": (_set(("gate", "passed"), 1), "gate.passed: 1 is not a boolean or null"),
    "bound without upper_bound": (
        _set(("bound",), {"input_shape": [4], "layers": [], "assumptions": {}}),
        "top level: has 'bound' but no 'upper_bound'",
    ),
}


@pytest.mark.parametrize("name", list(VALID))
@pytest.mark.parametrize("kind", ["report", "bound"])
def test_valid_documents_are_valid_for_both_validators(name: str, kind: str) -> None:
    document = VALID[name]
    if kind == "bound":
        document = {
            key: document[key] for key in ("schema_version", "lipcheck_version", "model", "environment")
        }
        bounded = VALID["searched and bounded"]
        document |= {"timing": {"started": "now", "load_seconds": 0.1, "bound_seconds": 0.2}}
        document |= {"upper_bound": bounded["upper_bound"], "bound": bounded["bound"]}
    jsonschema.validate(document, SCHEMAS[kind])
    assert first_problem(document, SCHEMAS[kind]) is None


@pytest.mark.parametrize("name", list(INVALID))
def test_invalid_reports_are_invalid_for_both_and_the_first_problem_is_named(name: str) -> None:
    change, problem = INVALID[name]
    document = copy.deepcopy(VALID["plain"])
    change(document)
    assert not jsonschema.Draft202012Validator(report_schema()).is_valid(document)
    assert problem in (first_problem(document, report_schema()) or "")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(-1e6, 1e6) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def _places(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _places(item, (*path, key))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            found += _places(item, (*path, position))
    return found


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), replacement=JSON_VALUES, delete=st.booleans())
def test_the_validator_agrees_with_jsonschema_on_any_change(
    data: st.DataObject, replacement: Any, delete: bool
) -> None:
    document = copy.deepcopy(data.draw(st.sampled_from(list(VALID.values()))))
    place = data.draw(st.sampled_from(_places(document)))
    (_delete(place) if delete and isinstance(place[-1], str) else _set(place, replacement))(document)
    expected = jsonschema.Draft202012Validator(report_schema()).is_valid(document)
    assert (first_problem(document, report_schema()) is None) == expected


def test_every_keyword_of_the_shipped_schemas_is_supported_and_others_are_refused() -> None:
    for schema in SCHEMAS.values():
        first_problem({}, schema)  # compiles the whole schema: ValueError for a keyword it does not know
    with pytest.raises(ValueError, match="'uniqueItems' is not supported"):
        first_problem([], {"type": "array", "uniqueItems": True})


# ----------------------------------------------------------------------------------------------------
# gate and compare refuse reports that are invalid, inconsistent, or nest too deeply.


@pytest.fixture()
def saved(tmp_path: Path) -> Callable[[dict[str, Any] | str], Path]:
    def save(document: dict[str, Any] | str, name: str = "r.json") -> Path:
        path = tmp_path / name
        path.write_text(document if isinstance(document, str) else json.dumps(document))
        return path

    return save


def _refused_by_gate_and_compare(path: Path, *fragments: str) -> None:
    good = path.parent / "good.json"
    good.write_text(json.dumps(VALID["plain"]))
    assert_one_line_error(run("gate", path, "--fail-above", 0.2, "-o", path.parent / "out.json"), *fragments)
    assert not (path.parent / "out.json").exists()
    assert_one_line_error(run("compare", good, path), str(path), *fragments)
    assert_one_line_error(run("compare", path, good), str(path), *fragments)


def test_an_edited_summary_cannot_pass_the_gate(saved: Callable[..., Path]) -> None:
    edited = copy.deepcopy(VALID["plain"])  # samples reach 1.0
    edited["summary"]["max"] = edited["summary"]["value"] = 0.1
    _refused_by_gate_and_compare(
        saved(edited), "contradicts itself", "summary max is 0.1 but its samples give 1"
    )


def test_an_edited_bracket_is_refused(saved: Callable[..., Path]) -> None:
    edited = copy.deepcopy(VALID["searched and bounded"])
    edited["bracket"] = [0.5, 4.0]
    _refused_by_gate_and_compare(
        saved(edited), "bracket is [0.5, 4.0] but its summary and upper bound give [2.0"
    )


@pytest.mark.parametrize(
    "name", ["negative sigma", "schema_version 0", "schema_version '1'", "schema_version true"]
)
def test_a_report_that_violates_the_schema_is_refused(saved: Callable[..., Path], name: str) -> None:
    change, problem = INVALID[name]
    document = copy.deepcopy(VALID["plain"])
    change(document)
    _refused_by_gate_and_compare(saved(document), "is not a valid lipcheck report", problem)


def test_deep_nesting_is_refused_without_a_traceback(saved: Callable[..., Path]) -> None:
    deep = saved('{"schema_version": 1, "summary": ' + "[" * 100_000 + "]" * 100_000 + "}")
    _refused_by_gate_and_compare(deep, "nests 100001 levels deep")
    kwargs = copy.deepcopy(VALID["plain"])
    kwargs["settings"]["model_kwargs"] = {"a": json.loads("[" * 80 + "]" * 80)}
    _refused_by_gate_and_compare(saved(kwargs, "kwargs.json"), "nests 83 levels deep")


@pytest.mark.parametrize(
    ("text", "problem"), [("NaN", "NaN is not a JSON number"), ("1e999", "is not a finite number")]
)
def test_non_finite_numbers_are_refused(saved: Callable[..., Path], text: str, problem: str) -> None:
    body = json.dumps(VALID["plain"]).replace('"sigma": 1.0', f'"sigma": {text}', 1)
    _refused_by_gate_and_compare(saved(body), problem)


def test_gate_writes_the_report_it_read_with_its_schema_version(
    saved: Callable[..., Path], tmp_path: Path
) -> None:
    result = run("gate", saved(VALID["plain"]), "--fail-above", 2, "-o", tmp_path / "out.json", "-q")
    assert result.exit_code == 0, result.stderr
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["schema_version"] == 1 and first_problem(written, report_schema()) is None


# ----------------------------------------------------------------------------------------------------
# Fuzz: whatever a report file holds, gate and compare end with a documented exit code and no traceback.


def _gate_and_compare_end_cleanly(path: Path, good: Path) -> list[int]:
    codes = []
    for args in (
        ["gate", path, "--fail-above", 0.75],
        ["compare", good, path],
        ["compare", path, good, "-f", "json"],
    ):
        result = run(*args)
        output = result.stdout + result.stderr
        assert "Traceback" not in output, output
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert result.exit_code in (0, 1, 2), (args, result.exit_code, output)
        if result.exit_code == 2:
            assert result.stderr.startswith("lipcheck: error: ") and result.stderr.count("\n") == 1, output
        codes.append(result.exit_code)
    return codes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), replacement=JSON_VALUES, delete=st.booleans())
def test_fuzz_changed_reports(tmp_path: Path, data: st.DataObject, replacement: Any, delete: bool) -> None:
    document = copy.deepcopy(data.draw(st.sampled_from(list(VALID.values()))))
    place = data.draw(st.sampled_from(_places(document)))
    (_delete(place) if delete and isinstance(place[-1], str) else _set(place, replacement))(document)
    good, path = tmp_path / "good.json", tmp_path / "fuzzed.json"
    good.write_text(json.dumps(VALID["plain"]))
    path.write_text(json.dumps(document))
    codes = _gate_and_compare_end_cleanly(path, good)
    if not jsonschema.Draft202012Validator(report_schema()).is_valid(document):
        assert codes == [2, 2, 2]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60) | JSON_VALUES.map(json.dumps) | st.binary(max_size=60).map(repr))
def test_fuzz_any_file(tmp_path: Path, text: str) -> None:
    good, path = tmp_path / "good.json", tmp_path / "fuzzed.json"
    good.write_text(json.dumps(VALID["plain"]))
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    assert _gate_and_compare_end_cleanly(path, good) == [2, 2, 2]
