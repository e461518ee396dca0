"""`lipcheck compare` end to end: its exit codes, formats and refusals."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest
from cli_fixtures import assert_one_line_error, make_report, run

from lipcheck.report import Report, summarise

BASE = [1.0, 2.0, 3.0, 4.0]  # samples 10..13, as in test_compare.py
NEW = [1.5, 1.0, 3.3, 4.4]  # max +10%


def saved(report: Report, path: Path) -> Path:
    path.write_text(report.to_json())
    return path


@pytest.fixture
def reports(tmp_path: Path) -> dict[str, Path]:
    return {
        "base": saved(make_report(BASE), tmp_path / "base.json"),
        "new": saved(make_report(NEW), tmp_path / "new.json"),  # max +10%
        "short": saved(make_report(NEW[:3]), tmp_path / "short.json"),
        "tol": saved(
            replace(make_report(NEW), settings=replace(make_report(NEW).settings, tol=1e-6)),
            tmp_path / "tol.json",
        ),  # fmt: skip
    }


def test_compare_exits_1_on_a_regression_past_the_threshold(reports: dict[str, Path]) -> None:
    base, new = reports["base"], reports["new"]
    assert run("compare", base, new, "--max-increase", 12).exit_code == 0
    result = run("compare", base, new, "--max-increase", 8, "-f", "json")
    assert result.exit_code == 1 and "lipcheck: gate failed: max sigma 4.4 vs 4" in result.stderr
    verdict = json.loads(result.stdout)["gate"]["rules"][0]
    assert verdict["name"] == "max_increase" and verdict["threshold"] == pytest.approx(4.32)
    assert run("compare", base, new).exit_code == 0  # no threshold, no verdict
    assert run("compare", new, base, "--max-increase", 0).exit_code == 0  # a fall is no regression


def test_compare_json_lists_the_changes(reports: dict[str, Path]) -> None:
    result = run("compare", reports["base"], reports["new"], "--top", 2, "-f", "json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["schema_version"] == 1 and (data["base"], data["new"]) == (
        str(reports["base"]),
        str(reports["new"]),
    )
    assert (data["matched"], data["rose"], data["fell"]) == (4, 3, 1)
    assert [row["index"] for row in data["top"]] == [10, 13]
    value = next(f for f in data["figures"] if f["figure"] == "value")
    assert (value["base"], value["new"]) == (4.0, 4.4) and value["change_percent"] == pytest.approx(10)
    same = json.loads(run("compare", reports["base"], reports["base"], "-f", "json").stdout)
    assert same["rose"] == same["fell"] == 0 and same["top"] == []
    assert all(f["change"] == 0 for f in same["figures"])


def test_compare_table_markdown_and_junit(reports: dict[str, Path], tmp_path: Path) -> None:
    args = ("compare", reports["base"], reports["new"], "--max-increase", 5)
    table = run(*args, "-f", "table")
    assert table.exit_code == 1
    for text in ("matched", "3 rose, 1 fell", "Samples that rose most", "value (max)", "+10%", "FAILED"):
        assert text in table.stdout
    result = run(*args, "-o", tmp_path / "c.md", "-o", tmp_path / "c.xml", "-o", tmp_path / "c.json")
    assert result.exit_code == 1 and result.stdout == ""
    markdown = (tmp_path / "c.md").read_text()
    assert markdown.startswith("### lipcheck compare") and "**Gate: failed (1 of 1 rules)**" in markdown
    assert "| 10 | 1 | 1.5 | +0.5 | +50% |" in markdown
    cases = ET.parse(tmp_path / "c.xml").getroot().findall("testsuite/testcase")
    assert [c.get("name") for c in cases] == ["max_increase"] and cases[0].find("failure") is not None
    assert json.loads((tmp_path / "c.json").read_text())["gate"]["passed"] is False


def test_reports_of_other_sizes_or_settings_need_allow_mismatch(reports: dict[str, Path]) -> None:
    result = run("compare", reports["base"], reports["short"])
    assert_one_line_error(result, "base.json", "short.json", "4 vs 3 samples", "--allow-mismatch")
    result = run("compare", reports["base"], reports["short"], "--allow-mismatch", "-f", "json")
    assert result.exit_code == 0
    assert "lipcheck: warning: comparing despite: 4 vs 3 samples" in result.stderr
    data = json.loads(result.stdout)
    assert data["matched"] == 3 and data["mismatches"] == ["4 vs 3 samples (--limit)"]
    assert [row["index"] for row in data["top"]] == [10, 12]  # 13 is not in the short report
    assert_one_line_error(run("compare", reports["base"], reports["tol"]), "--tol 0.0001 vs 1e-06")
    result = run("compare", reports["base"], reports["tol"], "--allow-mismatch", "--max-increase", 5)
    assert result.exit_code == 1 and "compared despite: --tol 0.0001 vs 1e-06" in result.stderr


def test_compare_refuses_bad_input(reports: dict[str, Path], tmp_path: Path) -> None:
    assert_one_line_error(
        run("compare", reports["base"], tmp_path / "nope.json"), "nope.json", "does not exist"
    )
    (tmp_path / "bad.json").write_text("{")
    assert_one_line_error(run("compare", tmp_path / "bad.json", reports["new"]), "bad.json", "is not JSON")
    assert_one_line_error(
        run("compare", reports["base"], reports["new"], "--max-increase", -1), "--max-increase", ">= 0"
    )
    one = make_report([1.0])
    rows = (replace(one.samples[0], index=99),)
    elsewhere = saved(replace(one, samples=rows, summary=summarise(rows, "max")), tmp_path / "elsewhere.json")
    result = run("compare", reports["base"], elsewhere, "--allow-mismatch")
    assert result.exit_code == 2 and "no sample index in common" in result.stderr
