"""Gate rules: each rule's threshold, value, verdict and failing samples, and how verdicts combine."""

from __future__ import annotations

import json
from dataclasses import replace

import jsonschema
import pytest
from cli_fixtures import (
    make_report,
)

from lipcheck.report import Report, report_schema
from lipcheck.report.gate import FailAbove, FailAboveSample, MaxIncrease, RequireConverged, judge, listed


def all_converged(report: Report) -> Report:
    return replace(
        report,
        samples=tuple(replace(s, converged=True) for s in report.samples),
        summary=replace(report.summary, converged=report.summary.count),
    )


def test_fail_above_sample_lists_every_failing_index() -> None:
    report = make_report([1.0, 3.0, 2.0, 5.0])  # data indices 10..13
    verdict = FailAboveSample(2.5).judge(report)
    assert (verdict.passed, verdict.threshold, verdict.value) == (False, 2.5, 5.0)
    assert verdict.failing_samples == (11, 13)
    assert verdict.message == "2 samples of 4 above 2.5: 11, 13 (max 5 at sample 13)"
    passed = FailAboveSample(5.0).judge(report)
    assert passed.passed and passed.failing_samples == () and "<= 5" in passed.message


def test_failing_indices_are_capped_in_the_message_and_complete_in_the_verdict() -> None:
    verdict = FailAboveSample(1.0).judge(make_report([3.0] * 25))
    assert verdict.failing_samples == tuple(range(10, 35))
    assert "10, 11, 12, 13, 14, 15, 16, 17, 18, 19 and 15 more" in verdict.message
    assert listed([1, 2]) == "1, 2" and listed(list(range(11))).endswith("9 and 1 more")


def test_require_converged_names_the_samples_that_did_not() -> None:
    report = make_report([1.0, 2.0, 3.0, 4.0])  # the odd positions (11, 13) did not converge
    verdict = RequireConverged().judge(report)
    assert (verdict.passed, verdict.threshold, verdict.value) == (False, 0, 2)
    assert verdict.failing_samples == (11, 13)
    assert "2 samples of 4 did not converge within --max-iter 200 at --tol 0.0001: 11, 13" in verdict.message
    passed = RequireConverged().judge(all_converged(report))
    assert passed.passed and passed.value == 0 and passed.message == "all 4 samples converged"


def test_max_increase_allows_percent_above_the_baseline() -> None:
    report = make_report([1.0, 2.2])  # max 2.2
    verdict = MaxIncrease(10, baseline_value=2.0, baseline="base.json").judge(report)
    assert verdict.passed and verdict.value == 2.2 and verdict.threshold == pytest.approx(2.2)
    assert (verdict.baseline, verdict.baseline_value) == ("base.json", 2.0)
    assert "2.2 vs 2 in baseline 'base.json' (+10%) <= +10%" in verdict.message
    failed = MaxIncrease(5, baseline_value=2.0, baseline="base.json").judge(report)
    assert not failed.passed and failed.threshold == pytest.approx(2.1)
    assert "(+10%) > +5% (2.1)" in failed.message
    lower = MaxIncrease(0, baseline_value=4.4, baseline="b.json").judge(report)
    assert lower.passed and "(-50%)" in lower.message


def test_max_increase_over_a_zero_baseline_and_with_mismatches() -> None:
    report = make_report([0.5])
    verdict = MaxIncrease(10, baseline_value=0.0, baseline="b.json").judge(report)
    assert not verdict.passed and verdict.threshold == 0 and "(+0.5)" in verdict.message
    noted = MaxIncrease(10, 1.0, "b.json", mismatches=("--tol 0.0001 vs 1e-05",)).judge(report)
    assert noted.message.endswith("; compared despite: --tol 0.0001 vs 1e-05")


def test_judge_combines_the_verdicts() -> None:
    report = all_converged(make_report([1.0, 2.0, 3.0]))
    rules = [FailAbove(3.0), FailAboveSample(3.0), RequireConverged(), MaxIncrease(0, 3.0, "b.json")]
    gate = judge(rules, report)
    assert gate.passed is True and [v.name for v in gate.rules] == [
        "fail_above", "fail_above_sample", "require_converged", "max_increase",
    ]  # fmt: skip
    gate = judge([*rules, FailAboveSample(2.5)], report)
    assert gate.passed is False and [v.passed for v in gate.rules] == [True] * 4 + [False]
    assert judge([], report).passed is None


def test_every_verdict_round_trips_and_validates() -> None:
    report = make_report([1.0, 3.0, 2.0])
    rules = [FailAbove(2.0), FailAboveSample(1.5), RequireConverged(), MaxIncrease(5, 2.5, "b.json")]
    judged = replace(report, gate=judge(rules, report))
    data = json.loads(judged.to_json())
    jsonschema.validate(data, report_schema())
    assert data["gate"]["rules"][1]["failing_samples"] == [11, 12]
    assert Report.from_json(judged.to_json()) == judged
