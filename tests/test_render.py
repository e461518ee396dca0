"""Renderers for CI: the format of an output file, JUnit XML, Markdown gate tables, GitHub annotations."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest
from cli_fixtures import make_report

from lipcheck.options.choices import format_for
from lipcheck.present.ci import github_annotations, render_junit
from lipcheck.present.facts import sigma_histogram
from lipcheck.present.markdown import mermaid_histogram, render_markdown
from lipcheck.present.render import REPORT
from lipcheck.present.tables import text_histogram
from lipcheck.report import Report, RuleVerdict
from lipcheck.report.gate import FailAbove, FailAboveSample, judge


def judged(report: Report, *rules: object) -> Report:
    return replace(report, gate=judge(rules, report))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("r.json", "json"), ("R.JSON", "json"), ("s.md", "markdown"), ("j.xml", "junit"), ("t.txt", "table"),
     ("p.html", "html"),
     ("r.out", "markdown"), ("report", "markdown")],
)  # fmt: skip
def test_the_format_of_an_output_follows_its_suffix(name: str, expected: str) -> None:
    assert format_for(name, "markdown") == expected


def test_junit_has_one_suite_named_after_the_model_and_one_case_per_rule() -> None:
    report = replace(
        make_report([1.0, 3.0, 2.0] * 50), model=replace(make_report([1.0]).model, path='a&b<"c">.pt2')
    )
    text = REPORT.render_text(judged(report, FailAbove(5.0), FailAboveSample(1.5)), "junit")
    root = ET.fromstring(text)
    suites = root.findall("testsuite")
    assert len(suites) == 1 and suites[0].get("name") == 'a&b<"c">.pt2'
    cases = suites[0].findall("testcase")
    assert [(c.get("name"), c.find("failure") is None) for c in cases] == [
        ("fail_above", True), ("fail_above_sample", False),
    ]  # fmt: skip
    failure = cases[1].find("failure")
    assert failure is not None and failure.get("type") == "fail_above_sample"
    lines = (failure.text or "").splitlines()
    assert lines[:2] == ["value: 3", "threshold: 1.5"]
    assert lines[2].startswith("failing samples (100): 11, 12, 14, 15,")
    assert len(lines[2].split(": ")[1].split(", ")) == 100  # all of them, up to JUNIT_LISTED
    assert (root.get("tests"), root.get("failures"), suites[0].get("failures")) == ("2", "1", "1")
    assert {p.get("name"): p.get("value") for p in suites[0].iter("property")}["samples"] == "150"


def test_junit_without_rules_is_an_empty_suite() -> None:
    suite = ET.fromstring(render_junit(make_report([1.0]))).find("testsuite")
    assert suite is not None and suite.get("tests") == "0" and suite.findall("testcase") == []


def test_markdown_puts_the_gate_first_with_each_rule() -> None:
    report = judged(make_report([1.0, 3.0]), FailAbove(2.0), FailAboveSample(5.0))
    text = render_markdown(report)
    assert text.index("**Gate: failed (1 of 2 rules)**") < text.index("| summary | value |")
    assert "| `fail_above` | **FAILED** | 3 | 2 | max sigma 3 > 2 |" in text
    assert "| `fail_above_sample` | passed | 3 | 5 |" in text
    verdict = RuleVerdict("fail_above", 1.0, 2.0, False, "a | b")
    piped = render_markdown(replace(report, gate=replace(report.gate, rules=(verdict,))))
    assert "| a \\| b |" in piped
    assert "Gate" not in render_markdown(make_report([1.0]))


def test_github_annotations_escape_the_workflow_command() -> None:
    failed = RuleVerdict("fail_above", 1.0, 2.0, False, "100% over,\nline: two")
    passed = RuleVerdict("require_converged", 0, 0, True, "fine")
    assert github_annotations([failed, passed]) == [
        "::error title=lipcheck fail_above::100%25 over,%0Aline: two"
    ]


@pytest.mark.parametrize(
    ("started", "expected"),
    [
        ("2026-11-25T11:30:05.123456+00:00", "2026-11-25T11:30:05"),
        ("2026-11-25T12:30:05+01:00", "2026-11-25T11:30:05"),
    ],
)
def test_junit_timestamp_is_utc_without_a_zone_as_its_schema_wants(started: str, expected: str) -> None:
    report = make_report([1.0])
    report = replace(report, timing=replace(report.timing, started=started))
    suite = ET.fromstring(render_junit(report)).find("testsuite")
    assert suite is not None and suite.get("timestamp") == expected


@pytest.mark.parametrize("name", ["data\x1b[31m.npy", "line\x0bfeed.npy", "bad\udcffname.npy", "nul\x00.npy"])
def test_junit_stays_valid_xml_with_characters_xml_cannot_hold_in_a_path(name: str) -> None:
    report = make_report([0.5, 1.5], threshold=1.0)
    report = replace(report, model=replace(report.model, path=name), data=replace(report.data, path=name))
    document = render_junit(report)
    document.encode("utf-8")  # no lone surrogate left
    suite = ET.fromstring(document).find("testsuite")
    assert suite is not None
    assert suite.get("name") == name.encode("unicode_escape").decode("ascii")  # shown as \x1b, \udcff


def test_the_text_histogram_has_a_block_per_bin_as_high_as_its_count() -> None:
    # 8 bins over [1, 5] of width 0.5: three samples in the first, one in the fifth, one in the last
    line = text_histogram(make_report([1.0, 1.1, 1.2, 3.0, 5.0]), bins=8)
    assert line == "sigma 1 █   ▃  ▃ 5  (histogram, max bin 3)"


def test_a_histogram_of_equal_sigmas_has_one_full_bin() -> None:
    edges, counts = sigma_histogram(make_report([2.0, 2.0, 2.0]), 5)
    assert counts.tolist() == [0, 0, 3, 0, 0]
    assert edges[0] < 2.0 < edges[-1]


def test_the_markdown_histogram_is_a_mermaid_bar_chart_of_the_counts() -> None:
    report = make_report([1.0, 1.1, 1.2, 3.0, 5.0])
    lines = mermaid_histogram(report, bins=4)
    assert lines[:2] == ["```mermaid", "xychart-beta"]
    assert lines[-1] == "```"
    assert '    x-axis "sigma (bin centre)" ["1.5", "2.5", "3.5", "4.5"]' in lines
    assert "    bar [3, 0, 1, 1]" in lines
    assert '    y-axis "samples" 0 --> 3' in lines
    assert "\n".join(mermaid_histogram(report)) in render_markdown(report)
