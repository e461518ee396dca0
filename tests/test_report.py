"""Reports: summary statistics, the JSON round trip, the schema, atomic writes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from cli_fixtures import make_report
from hypothesis import given, settings
from hypothesis import strategies as st

from lipcheck.io.outputs import write_atomic
from lipcheck.report import (
    BoundReport,
    LayerBound,
    Report,
    SampleResult,
    Settings,
    report_schema,
    summarise,
    worst_samples,
)
from lipcheck.report.gate import FailAboveBound


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=30),
    st.sampled_from(["max", "mean", "sum", "median", "p95"]),
)
def test_json_round_trip_and_schema(sigma: list[float], reduction: str) -> None:
    report = make_report(sigma, reduction, threshold=1.0)
    data = json.loads(report.to_json())
    jsonschema.validate(data, report_schema())
    assert Report.from_json(report.to_json()) == report
    assert list(data)[:2] == ["schema_version", "lipcheck_version"]


def test_summary_statistics() -> None:
    sigma = [3.0, 1.0, 4.0, 1.5, 9.0, 2.0]
    summary = summarise(make_report(sigma).samples, "p95")
    assert (summary.count, summary.converged, summary.max, summary.min) == (6, 3, 9.0, 1.0)
    assert summary.mean == pytest.approx(np.mean(sigma)) and summary.median == pytest.approx(np.median(sigma))
    assert summary.value == summary.p95 == pytest.approx(np.percentile(sigma, 95))
    assert summary.argmax == 14  # the data index of the largest sigma, not its position


def test_gate_records_rules_and_verdicts() -> None:
    assert make_report([1.0, 2.0]).gate.passed is None
    passed = make_report([1.0, 2.0], threshold=2.0).gate
    assert passed.passed is True and passed.rules[0].name == "fail_above" and passed.rules[0].value == 2.0
    failed = make_report([1.0, 2.5], threshold=2.0).gate
    assert failed.passed is False and "2.5 > 2" in failed.rules[0].message


def test_search_and_bound_round_trip_and_validate() -> None:
    rows = (
        SampleResult(0, 1.0, 3, True, 1e-6, search_sigma=1.5, search_distance=0.25),
        SampleResult(1, 2.0, 3, True, 1e-6, search_sigma=2.0, search_distance=0.0),
        SampleResult(2, 1.75, 3, True, 1e-6, search_sigma=1.8, search_distance=0.5),
    )
    bound = BoundReport(
        upper_bound=4.0,
        layers=(LayerBound("0", "linear", "linear", 4.0, "exact SVD"),),
        assumptions={"aten.erf.default": 1.2},
        input_shape=(4,),
    )
    report = replace(
        make_report([1.0]),
        samples=rows,
        summary=summarise(rows, "max"),
        settings=Settings(search_steps=5, search_radius=0.5),
        bound=bound,
    )
    data = json.loads(report.to_json())
    jsonschema.validate(data, report_schema())
    assert Report.from_json(report.to_json()) == report
    assert (data["summary"]["max"], data["summary"]["argmax"], data["summary"]["value"]) == (2.0, 1, 2.0)
    assert data["summary"]["mean"] == pytest.approx(np.mean([1.0, 2.0, 1.75]))  # sigma at the samples
    assert (data["upper_bound"], data["bracket"], data["bracket_ratio"]) == (4.0, [2.0, 4.0], 2.0)
    assert data["samples"][0]["search_sigma"] == 1.5
    assert worst_samples(report, 2) == [rows[1], rows[2]]
    assert FailAboveBound(3.0, bound.upper_bound).judge().passed is False
    assert FailAboveBound(4.0, bound.upper_bound).judge().passed is True


@pytest.mark.parametrize("count", [1, 2, 5, 6])
def test_json_is_written_in_pieces_that_make_the_same_report(count: int, tmp_path: Path) -> None:
    report = make_report([float(i) for i in range(1, count + 1)], threshold=3.0)
    pieces = list(report.json_chunks(rows_per_chunk=2))
    assert len(pieces) > 3 and "".join(pieces) == report.to_json()
    assert Report.from_json(report.to_json()) == report
    write_atomic(tmp_path / "r.json", iter(pieces))
    assert (tmp_path / "r.json").read_text() == report.to_json()


@settings(max_examples=200, deadline=None)
@given(
    index=st.integers(0, 10**9),
    sigma=st.floats(allow_nan=True, allow_infinity=True),
    iterations=st.integers(0, 10**4),
    converged=st.booleans(),
    residual=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    searched=st.none() | st.floats(0, 1e6),
)
def test_sample_lines_are_exactly_what_json_writes(
    index: int, sigma: float, iterations: int, converged: bool, residual: float | None, searched: float | None
) -> None:
    row = SampleResult(
        index, sigma, iterations, converged, residual, search_sigma=searched, search_distance=searched
    )
    report = replace(make_report([1.0]), samples=(row,))
    streamed = "".join(report.json_chunks())
    assert f"\n    {json.dumps(report.to_dict()['samples'][0])}\n" in streamed


def test_a_bound_written_before_the_loop_transformation_loads_as_the_products() -> None:
    bound = BoundReport(4.0, (LayerBound("0", "linear", "linear", 4.0, "exact SVD"),), input_shape=(4,))
    data = json.loads(replace(make_report([1.0]), bound=bound).to_json())
    for key in ("method", "product_bound", "terms"):
        del data["bound"][key]
    jsonschema.validate(data, report_schema())
    loaded = Report.from_dict(data).bound
    assert loaded is not None
    assert (loaded.method, loaded.product_bound, loaded.terms) == ("product", 4.0, ())
