"""`lipcheck audit` and `lipcheck inspect` end to end: model arguments and outputs, reductions, output
formats, and the bad-input cases that are not about loading (models.py and datasets.py have theirs in
test_models.py and test_datasets.py; the exit codes are in test_cli_exit_codes.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from cli_fixtures import (
    ARCH,
    EXACT,
    MLP,
    assert_one_line_error,
    audit_json,
    mlp_inputs,
    reference,
    run,
    sigmas,
)
from safetensors.torch import save_file

from lipcheck.report import report_schema


def test_model_args_and_output_keys(files: dict[str, Path]) -> None:
    expected = reference(MLP(), mlp_inputs())
    for arch, key in ((f"{ARCH}:make_multi", "twice"), (f"{ARCH}:make_multi", "1")):
        kwargs = '{"as_tuple": true}' if key == "1" else "{}"
        report = audit_json(
            files["state-dict"], "--arch", arch, "--arch-kwargs", kwargs, "--data", files["data"],
            "--output-key", key, "--arg", "scale=1.5", *EXACT,
        )  # fmt: skip
        np.testing.assert_allclose(sigmas(report), 3 * expected, rtol=1e-4)
        assert report["settings"]["model_kwargs"] == {"scale": 1.5}
        assert report["settings"]["output_key"] == key


def test_model_is_in_eval_mode_and_called_once_per_batch(files: dict[str, Path], tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    audit_json(
        files["state-dict"], "--arch", f"{ARCH}:make_counting",
        "--arch-kwargs", json.dumps({"log": str(log)}), "--data", files["data"], "--batch-size", "4",
    )  # fmt: skip
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls == [{"batch": 4, "training": False}] * 2 + [{"batch": 2, "training": False}]


def test_summary_limit_and_reductions(files: dict[str, Path]) -> None:
    expected = reference(MLP(), mlp_inputs())[:6]
    reductions = {
        "max": expected.max(), "mean": expected.mean(), "sum": expected.sum(),
        "median": np.median(expected), "p95": np.percentile(expected, 95),
    }  # fmt: skip
    for reduction, value in reductions.items():
        report = audit_json(
            files["export"], "--data", files["data"], "--limit", "6", "--reduction", reduction, *EXACT
        )
        summary = report["summary"]
        assert summary["reduction"] == reduction
        assert summary["value"] == pytest.approx(value, rel=1e-4)
    assert report["data"]["count"] == 6 and report["data"]["total"] == 10
    assert summary["count"] == 6 and summary["converged"] == 6
    assert summary["argmax"] == int(np.argmax(expected))
    assert summary["max"] == pytest.approx(expected.max(), rel=1e-4)
    assert summary["min"] == pytest.approx(expected.min(), rel=1e-4)
    assert report["gate"] == {"passed": None, "rules": []}


def test_power_method_and_float32_default(files: dict[str, Path]) -> None:
    report = audit_json(files["export"], "--data", files["data"], "--method", "power", "--max-iter", "500")
    assert report["settings"]["method"] == "power" and report["settings"]["dtype"] == "float32"
    np.testing.assert_allclose(sigmas(report), reference(MLP(), mlp_inputs()), rtol=1e-2)


def test_fail_above_gate(files: dict[str, Path], tmp_path: Path) -> None:
    worst = reference(MLP(), mlp_inputs()).max()
    passed = audit_json(files["export"], "--data", files["data"], "--fail-above", worst * 1.01)
    assert passed["gate"]["passed"] is True
    assert passed["gate"]["rules"][0]["name"] == "fail_above"

    result = run(
        "audit",
        files["export"],
        "--data",
        files["data"],
        "--fail-above",
        worst * 0.99,
        "-o",
        tmp_path / "r.json",
    )
    assert result.exit_code == 1
    assert "gate failed" in result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(report, report_schema())
    verdict = report["gate"]["rules"][0]
    assert report["gate"]["passed"] is False and verdict["passed"] is False
    assert (
        verdict["threshold"] == pytest.approx(worst * 0.99) and verdict["value"] == report["summary"]["value"]
    )


def test_output_file_is_written_whole_and_only_there(files: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    result = run("audit", files["export"], "--data", files["data"], "--output", target, "--quiet")
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""
    jsonschema.validate(json.loads(target.read_text()), report_schema())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_table_and_markdown_formats(files: dict[str, Path]) -> None:
    table = run("audit", files["export"], "--data", files["data"], "--format", "table")
    assert table.exit_code == 0
    for heading in ("model", "data", "settings", "Worst 10 of 10 samples", "Summary", "samples/s", "p95"):
        assert heading in table.stdout
    assert table.stderr == ""  # no progress bar when stderr is not a terminal
    markdown = run(
        "audit", files["export"], "--data", files["data"], "--format", "markdown", "--fail-above", "100"
    )
    assert markdown.exit_code == 0
    assert "| summary | value |" in markdown.stdout and "**Gate: passed**" in markdown.stdout


def test_json_is_the_default_when_stdout_is_not_a_terminal(files: dict[str, Path]) -> None:
    result = run("audit", files["export"], "--data", files["data"])
    assert json.loads(result.stdout)["schema_version"] == 1


def test_inspect(files: dict[str, Path]) -> None:
    result = run("inspect", files["export"])
    assert result.exit_code == 0
    assert "torch.export" in result.stdout and "x (1..65536, 6) float32" in result.stdout
    described = json.loads(
        run("inspect", files["safetensors"], "--arch", f"{ARCH}:make_mlp", "--json").stdout
    )
    assert described["format"] == "safetensors"
    assert described["parameters"] == sum(p.numel() for p in MLP().parameters())
    assert described["trusted"] is False


def test_help_shows_examples() -> None:
    for command in ("audit", "bound", "inspect", "gate", "compare"):
        result = run(command, "--help")
        assert (
            result.exit_code == 0 and "Examples" in result.stdout and f"lipcheck {command}" in result.stdout
        )


def test_python_dash_m_runs_an_audit(files: dict[str, Path]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lipcheck", "audit", str(files["export"]), "--data", str(files["data"]),
         "--limit", "2"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout)["summary"]["count"] == 2


# Bad input: exit 2, one line naming the file or flag, no traceback.


def test_missing_files(files: dict[str, Path], tmp_path: Path) -> None:
    assert_one_line_error(
        run("audit", tmp_path / "nope.pt2", "--data", files["data"]), "nope.pt2", "does not exist"
    )
    assert_one_line_error(
        run("audit", files["export"], "--data", tmp_path / "nope.npy"), "nope.npy", "--data"
    )


def test_data_of_the_wrong_shape_says_found_and_expected(files: dict[str, Path], tmp_path: Path) -> None:
    np.save(tmp_path / "wide.npy", np.ones((3, 9), np.float32))
    result = run("audit", files["export"], "--data", tmp_path / "wide.npy")
    assert_one_line_error(result, "wide.npy", "(3, 9)", "(B, 6)")
    # TorchScript records no input shape: what it raises is the model's failure (exit 3), with its error
    result = run("audit", files["torchscript"], "--data", tmp_path / "wide.npy")
    assert_one_line_error(result, "wide.npy", "the model raised RuntimeError: mat1", "(3, 9)", code=3)


def test_a_model_that_does_not_return_a_tensor(files: dict[str, Path]) -> None:
    args = ("--data", files["data"])
    result = run("audit", files["state-dict"], "--arch", f"{ARCH}:make_multi", *args)
    assert_one_line_error(result, "'out'", "'twice'", "--output-key")
    result = run("audit", files["state-dict"], "--arch", f"{ARCH}:make_multi", *args, "--output-key", "nope")
    assert_one_line_error(result, "--output-key", "'nope'")
    weightless = files["state-dict"].parent / "weightless.safetensors"
    save_file({}, weightless)
    result = run("audit", weightless, "--arch", f"{ARCH}:make_string", *args)
    assert_one_line_error(result, "weightless.safetensors", "returned str", "expected a tensor")


def test_a_tuple_output_needs_an_output_key(files: dict[str, Path], tmp_path: Path) -> None:
    class Pair(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    torch.jit.save(torch.jit.script(Pair()), tmp_path / "pair.ts")
    assert_one_line_error(
        run("audit", tmp_path / "pair.ts", "--data", files["data"]), "pair.ts", "--output-key 0..1"
    )


def test_usage_errors(files: dict[str, Path]) -> None:
    assert_one_line_error(run("audit", files["export"]), "--data", "--random")
    assert_one_line_error(run("audit", files["export"], "--random", "6"), "--num-samples")
    assert_one_line_error(run("audit", files["export"], "--random", "6x", "--num-samples", "2"), "--random")
    assert_one_line_error(run("audit", files["export"], "--data", files["data"], "--arg", "oops"), "--arg")
    assert_one_line_error(run("audit", files["export"], "--data", files["data"], "--tol", "2"), "--tol")
    assert_one_line_error(
        run("audit", files["export"], "--data", files["data"], "--arch", "x.py:f"), "drop --arch"
    )
    # A setting out of range is named before the baseline is read and compared with the settings.
    missing = files["data"].parent / "no-baseline.json"
    ranged = run(
        "audit",
        files["export"],
        "--data",
        files["data"],
        "--tol",
        "2",
        "--baseline",
        missing,
        "--max-increase",
        "5",
    )
    assert_one_line_error(ranged, "--tol must be in (0, 1)")


def test_usage_errors_are_one_line_naming_the_flag(files: dict[str, Path]) -> None:
    bad_choice = run("audit", files["export"], "--data", files["data"], "--method", "newton")
    assert_one_line_error(bad_choice, "--method", "newton", "lanczos", "--help")
    assert_one_line_error(run("audit", files["export"], "--bogus"), "--bogus")
    assert_one_line_error(run("audit"), "MODEL")
    assert_one_line_error(run("audit", files["export"], "--data", files["data"], "--tol", "x"), "--tol")
    assert_one_line_error(run("nosuch"), "nosuch")
    assert run("audit", "--help").exit_code == 0


def test_debug_shows_the_traceback(files: dict[str, Path], tmp_path: Path) -> None:
    result = run("audit", tmp_path / "nope.pt2", "--data", files["data"], "--debug")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "lipcheck: error:" in result.stderr


# The audit itself fails: exit 3.


def test_nan_output_fails_the_audit(files: dict[str, Path], tmp_path: Path) -> None:
    x = np.abs(mlp_inputs()) + 0.1
    x[5, 0] = -1
    np.save(tmp_path / "signed.npy", x)
    save_file({}, tmp_path / "none.safetensors")
    result = run(
        "audit",
        tmp_path / "none.safetensors",
        "--arch",
        f"{ARCH}:make_sqrt",
        "--data",
        tmp_path / "signed.npy",
    )
    assert_one_line_error(result, "sample 5", "NaN", code=3)


def test_no_sample_converged_fails_the_audit(files: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    result = run(
        "audit",
        files["export"],
        "--data",
        files["data"],
        "--max-iter",
        "1",
        "--tol",
        "1e-9",
        "-o",
        target,
        "-q",
    )
    assert_one_line_error(result, "--max-iter", code=3)
    report = json.loads(target.read_text())  # the unconverged figures are still on disk, complete
    assert report["summary"]["converged"] == 0
