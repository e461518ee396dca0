"""Comparing two reports: samples matched by index, the change of every figure, comparability
(`lipcheck compare` itself is in test_cli_compare.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from cli_fixtures import make_report

from lipcheck.report.compare import compare_reports, mismatches
from lipcheck.report.gate import MaxIncrease

BASE = [1.0, 2.0, 3.0, 4.0]  # samples 10..13
NEW = [1.5, 1.0, 3.3, 4.4]


def test_samples_are_matched_by_index_and_ranked_by_their_rise() -> None:
    comparison = compare_reports(make_report(BASE), make_report(NEW), base_path="b.json", new_path="n.json")
    assert (comparison.matched, comparison.rose, comparison.fell) == (4, 3, 1)
    assert [(c.index, c.base, c.new) for c in comparison.top] == [
        (10, 1.0, 1.5),
        (13, 4.0, 4.4),
        (12, 3.0, 3.3),
    ]
    assert [c.change_percent for c in comparison.top] == pytest.approx([50, 10, 10])
    assert comparison.top[0].change == pytest.approx(0.5)
    figures = {f.figure: f for f in comparison.figures}
    assert list(figures) == ["count", "converged", "max", "mean", "min", "median", "p95", "value"]
    assert (figures["max"].base, figures["max"].new) == (4.0, 4.4)
    assert figures["mean"].change == pytest.approx(sum(NEW) / 4 - sum(BASE) / 4)
    assert figures["min"].change_percent == pytest.approx(0)
    assert comparison.gate.passed is None
    top1 = compare_reports(make_report(BASE), make_report(NEW), base_path="b", new_path="n", top=1)
    assert [c.index for c in top1.top] == [10]


def test_a_zero_sigma_has_no_relative_change_and_a_rule_judges_the_new_report() -> None:
    rule = MaxIncrease(5, 4.0, "b.json")
    comparison = compare_reports(
        make_report([0.0, 2.0]), make_report([0.5, 2.0]), base_path="b", new_path="n", rules=[rule]
    )
    assert comparison.top[0].change_percent is None and comparison.top[0].change == 0.5
    assert comparison.gate.passed is True and comparison.gate.rules[0].value == 2.0


def test_what_makes_reports_incomparable() -> None:
    base = make_report(BASE)
    assert mismatches(base, base.settings, base.data) == []
    other = replace(base.settings, tol=1e-6, method="power", model_kwargs={}, seed=9, batch_size=3)
    assert mismatches(base, other, base.data) == [
        "--method lanczos vs power", "--tol 0.0001 vs 1e-06", '--arg {"sr": 16000} vs {}',
    ]  # fmt: skip
    assert mismatches(base, base.settings, replace(base.data, count=3)) == ["4 vs 3 samples (--limit)"]
    assert mismatches(base, base.settings, replace(base.data, sample_shape=(2, 2))) == [
        "samples of 4 float32 vs 2x2 float32"
    ]
    assert mismatches(base, base.settings, replace(base.data, sha256="2" * 64)) == [
        "data content (sha256 111111111111 vs 222222222222)"
    ]
    assert mismatches(base, base.settings, replace(base.data, sha256=None)) == [
        "no data hash in a report written before lipcheck recorded it"
    ]
