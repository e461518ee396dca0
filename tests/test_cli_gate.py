"""The gate through the command line: rules on `lipcheck audit` (exit 0, 1, 2), report files for CI
and GitHub annotations, and `lipcheck gate` judging a saved report again."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from cli_fixtures import (
    MLP,
    assert_one_line_error,
    exported_mlp,
    make_report,
    mlp_inputs,
    read_json,
    reference,
    run,
)

# The rules on `lipcheck audit`: exit 0 when every rule passes, 1 when one fails, 2 for bad flags.


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The exported MLP, its 10 inputs, and a baseline report of them (default settings)."""
    folder = tmp_path_factory.mktemp("gate")
    model, data = exported_mlp(folder)
    result = run("audit", model, "--data", data, "-o", folder / "baseline.json", "-q")
    assert result.exit_code == 0, result.stderr
    return {"model": model, "data": data, "baseline": folder / "baseline.json"}


def scaled(report: Path, factor: float, target: Path) -> Path:
    """A copy of `report` whose sigmas and summary figures are `factor` times the original's."""
    data = json.loads(report.read_text())
    for row in data["samples"]:
        row["sigma"] *= factor
    for name in ("max", "mean", "min", "median", "p95", "value"):
        data["summary"][name] *= factor
    target.write_text(json.dumps(data))
    return target


def test_fail_above_sample_on_audit_lists_the_samples_above(mlp: dict[str, Path], tmp_path: Path) -> None:
    exact = reference(MLP(), mlp_inputs())
    ordered = np.sort(exact)
    threshold = (ordered[6] + ordered[7]) / 2  # three samples above
    assert ordered[7] - ordered[6] > 1e-3 * ordered[7]
    result = run("audit", mlp["model"], "--data", mlp["data"], "--fail-above-sample", threshold, "-o",
                 tmp_path / "r.json")  # fmt: skip
    assert result.exit_code == 1 and "gate failed: 3 samples of 10 above" in result.stderr
    verdict = read_json(tmp_path / "r.json")["gate"]["rules"][0]
    assert verdict["name"] == "fail_above_sample" and verdict["passed"] is False
    assert verdict["failing_samples"] == sorted(np.flatnonzero(exact > threshold).tolist())
    assert verdict["value"] == pytest.approx(ordered[-1], rel=1e-3) and verdict["threshold"] == threshold
    passed = run("audit", mlp["model"], "--data", mlp["data"], "--fail-above-sample", ordered[-1] * 1.01)
    assert passed.exit_code == 0 and "gate passed: fail_above_sample" in passed.stderr


def test_require_converged_on_audit(mlp: dict[str, Path], tmp_path: Path) -> None:
    result = run("audit", mlp["model"], "--data", mlp["data"], "--require-converged", "--max-iter", 4,
                 "--tol", 0.001, "-o", tmp_path / "r.json")  # fmt: skip
    report = read_json(tmp_path / "r.json")
    unconverged = [row["index"] for row in report["samples"] if not row["converged"]]
    assert 0 < len(unconverged) < 10  # some did not converge in 4 products, some did
    assert result.exit_code == 1 and "did not converge within --max-iter 4" in result.stderr
    verdict = report["gate"]["rules"][0]
    assert verdict["failing_samples"] == unconverged and verdict["value"] == len(unconverged)
    assert run("audit", mlp["model"], "--data", mlp["data"], "--require-converged").exit_code == 0


def test_baseline_max_increase_on_audit(mlp: dict[str, Path], tmp_path: Path) -> None:
    args = ("audit", mlp["model"], "--data", mlp["data"], "--baseline")
    same = run(*args, mlp["baseline"], "--max-increase", 0, "-o", tmp_path / "same.json")
    assert same.exit_code == 0, same.stderr
    verdict = read_json(tmp_path / "same.json")["gate"]["rules"][0]
    assert verdict["name"] == "max_increase" and verdict["passed"] is True
    assert verdict["baseline"] == str(mlp["baseline"]) and verdict["value"] == verdict["baseline_value"]

    lower = scaled(mlp["baseline"], 1 / 1.1, tmp_path / "lower.json")  # this audit is 10% above it
    assert run(*args, lower, "--max-increase", 12).exit_code == 0
    result = run(*args, lower, "--max-increase", 8, "-o", tmp_path / "r.json")
    assert result.exit_code == 1 and "(+10%) > +8%" in result.stderr
    verdict = read_json(tmp_path / "r.json")["gate"]["rules"][0]
    baseline_value = json.loads(lower.read_text())["summary"]["value"]
    assert verdict["baseline_value"] == baseline_value
    assert verdict["threshold"] == pytest.approx(baseline_value * 1.08)


def test_all_rules_combine_on_audit(mlp: dict[str, Path], tmp_path: Path) -> None:
    result = run(
        "audit", mlp["model"], "--data", mlp["data"], "--fail-above", 100, "--fail-above-sample", 100,
        "--require-converged", "--baseline", mlp["baseline"], "--max-increase", 1, "-o", tmp_path / "r.json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    gate = read_json(tmp_path / "r.json")["gate"]
    assert gate["passed"] is True
    assert [v["name"] for v in gate["rules"]] == [
        "fail_above", "fail_above_sample", "require_converged", "max_increase",
    ]  # fmt: skip


def test_a_baseline_of_other_settings_or_data_is_refused(mlp: dict[str, Path], tmp_path: Path) -> None:
    args = ("--baseline", mlp["baseline"], "--max-increase", 5)
    result = run("audit", mlp["model"], "--data", mlp["data"], *args, "--tol", "1e-5", "--reduction", "mean")
    assert_one_line_error(result, "baseline.json' and this audit differ", "--tol 0.0001 vs 1e-05",
                          "--reduction max vs mean", "--allow-mismatch")  # fmt: skip
    result = run("audit", mlp["model"], "--data", mlp["data"], *args, "--limit", 6)
    assert_one_line_error(result, "baseline.json", "10 vs 6 samples")
    other = mlp_inputs()
    other[3, 0] += 1
    np.save(tmp_path / "other.npy", other)
    result = run("audit", mlp["model"], "--data", tmp_path / "other.npy", *args)
    assert_one_line_error(result, "baseline.json", "data content (sha256")
    result = run("audit", mlp["model"], "--data", mlp["data"], *args, "--dtype", "float64")
    assert_one_line_error(result, "--dtype float32 vs float64")
    # the seed, the batch size and the gate or output flags do not make reports incomparable
    result = run("audit", mlp["model"], "--data", mlp["data"], *args, "--seed", 3, "-b", 4, "-f", "markdown")
    assert result.exit_code == 0, result.stderr


def test_allow_mismatch_compares_anyway_and_says_what_differs(mlp: dict[str, Path], tmp_path: Path) -> None:
    result = run("audit", mlp["model"], "--data", mlp["data"], "--limit", 6, "--baseline", mlp["baseline"],
                 "--max-increase", 5, "--allow-mismatch", "-o", tmp_path / "r.json")  # fmt: skip
    assert result.exit_code == 0
    assert "lipcheck: warning: comparing despite: 10 vs 6 samples" in result.stderr
    verdict = read_json(tmp_path / "r.json")["gate"]["rules"][0]
    assert "compared despite: 10 vs 6 samples" in verdict["message"]


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--max-increase", "5"], ["--max-increase", "--baseline"]),
        (["--baseline", "BASELINE"], ["--baseline", "--max-increase"]),
        (["--allow-mismatch"], ["--allow-mismatch", "--baseline"]),
        (["--fail-above", "-1"], ["--fail-above", ">= 0", "-1"]),
        (["--fail-above-sample", "-0.5"], ["--fail-above-sample", ">= 0"]),
        (["--baseline", "BASELINE", "--max-increase", "-5"], ["--max-increase", ">= 0"]),
        (["--fail-above", "nan"], ["--fail-above", "nan"]),
    ],
)
def test_gate_flags_that_do_not_go_together(
    mlp: dict[str, Path], flags: list[str], fragments: list[str]
) -> None:
    flags = [str(mlp["baseline"]) if flag == "BASELINE" else flag for flag in flags]
    for command in (["audit", mlp["model"], "--data", mlp["data"]], ["gate", mlp["baseline"]]):
        assert_one_line_error(run(*command, *flags), *fragments)


def test_a_bad_baseline_is_named(mlp: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "corrupt.json").write_text('{"schema_version": 1, "summ')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "newer.json").write_text(json.dumps({**json.loads(mlp["baseline"].read_text()),
                                                      "schema_version": 99}))  # fmt: skip
    partial = json.loads(mlp["baseline"].read_text())
    del partial["samples"]
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    wrong = json.loads(mlp["baseline"].read_text())
    wrong["samples"][2]["sigma"] = "big"
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    (tmp_path / "binary.json").write_bytes(b"\x80\x81\xff")
    cases = {
        "missing.json": "does not exist",
        "corrupt.json": "is not JSON",
        "binary.json": "is not JSON",
        "list.json": "is not a lipcheck report",
        "newer.json": "upgrade lipcheck",
        "partial.json": "no 'samples'",
        "wrong.json": 'is not a valid lipcheck report (samples[2].sigma: "big" is not a finite number)',
    }
    for name, fragment in cases.items():
        args = ("--baseline", tmp_path / name, "--max-increase", 5)
        result = run("audit", mlp["model"], "--data", mlp["data"], *args)
        assert_one_line_error(result, f"baseline report (--baseline) '{tmp_path / name}'", fragment)
        assert_one_line_error(run("gate", mlp["baseline"], *args), str(tmp_path / name), fragment)
        assert_one_line_error(run("gate", tmp_path / name, "--fail-above", 1), str(tmp_path / name), fragment)


# Report files for CI: several --output, the format from the suffix; GitHub annotations.


def test_outputs_take_their_format_from_the_suffix(mlp: dict[str, Path], tmp_path: Path) -> None:
    names = ["r.json", "r.md", "r.xml", "r.txt", "r.out"]
    result = run("audit", mlp["model"], "--data", mlp["data"], "--fail-above", 100, "-f", "markdown",
                 *[arg for name in names for arg in ("-o", tmp_path / name)])  # fmt: skip
    assert result.exit_code == 0 and result.stdout == ""
    assert result.stderr.count("lipcheck: report written to") == 5
    assert read_json(tmp_path / "r.json")["gate"]["passed"] is True
    assert (tmp_path / "r.md").read_text().startswith("### lipcheck audit")
    assert ET.parse(tmp_path / "r.xml").getroot().tag == "testsuites"
    assert "Worst 10 of 10 samples" in (tmp_path / "r.txt").read_text()
    assert (tmp_path / "r.out").read_text() == (tmp_path / "r.md").read_text()  # --format for the rest
    result = run("audit", mlp["model"], "--data", mlp["data"], "-o", tmp_path / "nowhere" / "r.json")
    assert_one_line_error(result, "--output", "nowhere")


def test_junit_shows_a_failing_testcase_exactly_when_a_rule_fails(
    mlp: dict[str, Path], tmp_path: Path
) -> None:
    exact = reference(MLP(), mlp_inputs())
    result = run("audit", mlp["model"], "--data", mlp["data"], "--fail-above", exact.max() * 1.01,
                 "--fail-above-sample", exact.max() * 0.99, "--require-converged", "-o", tmp_path / "j.xml",
                 "-o", tmp_path / "r.json")  # fmt: skip
    assert result.exit_code == 1
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("name") == str(mlp["model"])
    assert (suite.get("tests"), suite.get("failures")) == ("3", "1")
    verdicts = read_json(tmp_path / "r.json")["gate"]["rules"]
    for case, verdict in zip(suite.findall("testcase"), verdicts, strict=True):
        failure = case.find("failure")
        assert case.get("name") == verdict["name"]
        assert (failure is None) == verdict["passed"]
    failure = suite.findall("testcase")[1].find("failure")
    assert failure is not None and failure.get("message") == verdicts[1]["message"]
    assert f"value: {verdicts[1]['value']:.6g}" in (failure.text or "")
    assert f"threshold: {verdicts[1]['threshold']:.6g}" in (failure.text or "")
    assert f"failing samples (1): {int(np.argmax(exact))}" in (failure.text or "")


def test_github_actions_annotations_for_failed_rules(mlp: dict[str, Path]) -> None:
    args = ("gate", mlp["baseline"], "--fail-above", 0.001, "--fail-above-sample", 100)
    result = run(*args, env={"GITHUB_ACTIONS": "true"})
    assert result.exit_code == 1
    annotations = [line for line in result.stderr.splitlines() if line.startswith("::")]
    assert len(annotations) == 1 and annotations[0].startswith("::error title=lipcheck fail_above::max sigma")
    assert "::error" not in run(*args).stderr
    assert (
        "::error"
        not in run("gate", mlp["baseline"], "--fail-above", 100, env={"GITHUB_ACTIONS": "true"}).stderr
    )


# `lipcheck gate`: a saved report judged again, without the model.


def test_gate_judges_a_saved_report_without_the_model(mlp: dict[str, Path], tmp_path: Path) -> None:
    model = tmp_path / "model.pt2"
    model.write_bytes(mlp["model"].read_bytes())
    saved = tmp_path / "saved.json"
    assert (
        run("audit", model, "--data", mlp["data"], "--limit", 7, "--fail-above", 100, "-o", saved).exit_code
        == 0
    )
    model.unlink()  # nothing is recomputed
    original = read_json(saved)
    worst = original["summary"]["max"]
    for flags, code in (
        (["--fail-above", worst], 0),
        (["--fail-above", worst * 0.99], 1),
        (["--fail-above-sample", worst], 0),
        (["--fail-above-sample", worst * 0.99], 1),
        (["--require-converged"], 0),
    ):
        result = run("gate", saved, *flags, "-o", tmp_path / "judged.json", "-o", tmp_path / "j.xml")
        assert result.exit_code == code, (flags, result.stderr)
        judged = read_json(tmp_path / "judged.json")
        assert judged["samples"] == original["samples"] and judged["timing"] == original["timing"]
        assert [v["name"] for v in judged["gate"]["rules"]] == [flags[0].lstrip("-").replace("-", "_")]
        assert judged["gate"]["passed"] is (code == 0)
        failures = ET.parse(tmp_path / "j.xml").getroot().findall("testsuite/testcase/failure")
        assert len(failures) == (code == 1)


def test_gate_on_a_report_with_unconverged_samples(tmp_path: Path) -> None:
    saved = tmp_path / "r.json"
    saved.write_text(make_report([1.0, 2.0, 3.0]).to_json())  # samples 11 did not converge
    result = run("gate", saved, "--require-converged", "-o", tmp_path / "j.json")
    assert result.exit_code == 1 and "1 sample of 3 did not converge" in result.stderr
    assert read_json(tmp_path / "j.json")["gate"]["rules"][0]["failing_samples"] == [11]


def test_gate_with_a_baseline(mlp: dict[str, Path], tmp_path: Path) -> None:
    lower = scaled(mlp["baseline"], 1 / 1.1, tmp_path / "lower.json")
    assert run("gate", mlp["baseline"], "--baseline", lower, "--max-increase", 12).exit_code == 0
    result = run("gate", mlp["baseline"], "--baseline", lower, "--max-increase", 8)
    assert result.exit_code == 1 and "(+10%) > +8%" in result.stderr
    other = json.loads(lower.read_text())
    other["settings"]["method"] = "power"
    (tmp_path / "power.json").write_text(json.dumps(other))
    result = run("gate", mlp["baseline"], "--baseline", tmp_path / "power.json", "--max-increase", 12)
    assert_one_line_error(result, "power.json' and report", "--method power vs lanczos", "--allow-mismatch")
    result = run("gate", mlp["baseline"], "--baseline", tmp_path / "power.json", "--max-increase", 12,
                 "--allow-mismatch")  # fmt: skip
    assert result.exit_code == 0 and "warning: comparing despite: --method power vs lanczos" in result.stderr


def test_gate_needs_a_rule(mlp: dict[str, Path]) -> None:
    assert_one_line_error(run("gate", mlp["baseline"]), "at least one rule", "--fail-above")
    assert run("gate", "--help").exit_code == 0


def test_gate_and_compare_read_reports_without_importing_torch(tmp_path: Path) -> None:
    saved = tmp_path / "report.json"
    saved.write_text(make_report([1.0, 2.0, 3.0]).to_json())
    script = (
        "import sys\n"
        "from lipcheck.cli import app\n"
        "saved = sys.argv[1]\n"
        "for command in (['gate', saved, '--fail-above', '5'], ['compare', saved, saved]):\n"
        "    try:\n"
        "        app(command, standalone_mode=False)\n"
        "    except SystemExit as exit:\n"
        "        assert not exit.code, exit.code\n"
        "print('torch' in sys.modules)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(saved)], capture_output=True, text=True, timeout=120, check=True
    )
    assert completed.stdout.strip().splitlines()[-1] == "False"
