"""Reports: summary statistics, the JSON round trip, the schema, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lipcheck.gate import FailAbove, judge
from lipcheck.report import (
    DataSection,
    Environment,
    ModelSection,
    Report,
    SampleResult,
    Settings,
    Timing,
    report_schema,
    summarise,
    write_atomic,
)


def make_report(sigma: list[float], reduction: str = "max", threshold: float | None = None) -> Report:
    rows = tuple(
        SampleResult(10 + i, s, 3, i % 2 == 0, None if i == 1 else 1e-6) for i, s in enumerate(sigma)
    )
    summary = summarise(rows, reduction)
    return Report(
        model=ModelSection(
            "m.pt2",
            "torch.export",
            "0" * 64,
            10,
            5,
            False,
            input_spec=({"name": "x", "shape": ["s0", 4], "dtype": "float32"},),
        ),  # fmt: skip
        data=DataSection("d.npy", "npy", None, len(rows), 100, (4,), "float32", sha256="1" * 64),
        settings=Settings(reduction=reduction, model_kwargs={"sr": 16000}),
        environment=Environment("3.11", "linux", "2.13", "cpu", 2),
        timing=Timing("2025-01-01T00:00:00+00:00", 0.1, 1.0, 1.1, len(rows)),
        samples=rows,
        summary=summary,
        gate=judge([FailAbove(threshold)] if threshold is not None else [], summary),
        lipcheck_version="0.1.0",
    )


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


def test_write_atomic_replaces_whole_or_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    write_atomic(target, "old")
    write_atomic(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["report.json"]

    with pytest.raises(TypeError):
        write_atomic(target, 12)  # type: ignore[arg-type]
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
