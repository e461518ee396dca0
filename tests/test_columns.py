"""Compact columns: rows in a NumPy table, spilled to a file past a small buffer, read back as the
same `SampleResult`s; the summary, the worst samples and the JSON report are those of a tuple of rows."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from cli_fixtures import make_report

import lipcheck.report.columns as columns
from lipcheck.report import Report, SampleResult, summarise, worst_samples
from lipcheck.report.columns import ColumnStore, SampleColumns


def rows(count: int, search: bool = False) -> list[SampleResult]:
    generator = np.random.default_rng(3)
    sigma = generator.uniform(0.5, 2.0, count).round(
        2
    )  # rounded: ties, which argmax and sorting must break alike
    return [
        SampleResult(
            index=100 + i, sigma=float(s), iterations=int(5 + i % 7), converged=i % 3 != 0,
            residual=None if i % 5 == 0 else float(s) * 1e-6,
            sigma_upper=None if i % 4 == 0 else float(s) * 1.01,
            search_sigma=float(s) * 1.2 if search and i % 2 else (float(s) if search else None),
            search_distance=0.3 if search else None,
        )
        for i, s in enumerate(sigma)
    ]  # fmt: skip


@pytest.fixture(params=["in memory", "spilled"])
def spill(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    if request.param == "spilled":
        monkeypatch.setattr(columns, "SPILL_ROWS", 7)
        monkeypatch.setattr(columns, "READ_ROWS", 5)
    return request.param == "spilled"


@pytest.mark.parametrize("search", [False, True])
def test_rows_read_back_are_the_rows_stored(spill: bool, search: bool) -> None:
    stored = rows(40, search)
    store = ColumnStore()
    for start in range(0, 40, 6):
        store.extend(stored[start : start + 6])
    kept = store.finish()
    assert ("spilled" in repr(kept)) == spill
    assert len(kept) == 40 and list(kept) == stored and kept == tuple(stored)
    assert kept[0] == stored[0] and kept[-1] == stored[-1] and kept[3:17] == stored[3:17]
    assert kept[::7] == stored[::7]
    with pytest.raises(IndexError):
        kept[40]
    assert kept.column("sigma").tolist() == [row.sigma for row in stored]


@pytest.mark.parametrize("search", [False, True])
@pytest.mark.parametrize("reduction", ["max", "mean", "sum", "median", "p95"])
def test_the_summary_of_columns_is_that_of_the_rows(spill: bool, search: bool, reduction: str) -> None:
    stored = rows(41, search)
    assert summarise(SampleColumns.of(stored), reduction) == summarise(stored, reduction)


@pytest.mark.parametrize("search", [False, True])
def test_the_worst_samples_and_the_json_of_columns_are_those_of_the_rows(spill: bool, search: bool) -> None:
    stored = rows(41, search)
    report = make_report([1.0])
    as_rows = replace(report, samples=tuple(stored), summary=summarise(stored, "max"))
    as_columns = replace(as_rows, samples=SampleColumns.of(stored))
    assert worst_samples(as_columns, 10) == worst_samples(as_rows, 10)
    assert "".join(as_columns.json_chunks(rows_per_chunk=4)) == as_rows.to_json()
    assert Report.from_json(as_columns.to_json()) == as_rows
    assert json.loads(as_columns.to_json())["samples"][7]["index"] == 107
