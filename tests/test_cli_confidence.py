"""`lipcheck audit --confidence`: each row's sigma_upper (JSON, table, Markdown) as the engine gives it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_fixtures import assert_one_line_error, audit_json, exported_mlp, mlp_inputs, run

from lipcheck import spectral_norm


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return exported_mlp(tmp_path_factory.mktemp("confidence"))


@pytest.mark.parametrize("confidence", [0.9, 0.99])
def test_json_rows_carry_the_engines_sigma_upper(mlp: tuple[Path, Path], confidence: float) -> None:
    model, data = mlp
    report = audit_json(model, "--data", data, "--confidence", confidence)
    assert report["settings"]["confidence"] == confidence
    program = torch.export.load(model).module()
    expected = spectral_norm(program, torch.from_numpy(mlp_inputs()), confidence=confidence)
    uppers = [row["sigma_upper"] for row in report["samples"]]
    assert uppers == expected.sigma_upper.double().tolist()
    assert all(row["sigma_upper"] >= row["sigma"] for row in report["samples"])


def test_a_stricter_confidence_widens_the_bars(mlp: tuple[Path, Path]) -> None:
    model, data = mlp
    loose = audit_json(model, "--data", data, "--confidence", 0.5, "--tol", 1e-3)
    strict = audit_json(model, "--data", data, "--confidence", 0.999999, "--tol", 1e-3)
    pairs = zip(loose["samples"], strict["samples"], strict=True)
    assert all(a["sigma_upper"] <= b["sigma_upper"] for a, b in pairs)


def test_table_and_markdown_show_sigma_upper(mlp: tuple[Path, Path]) -> None:
    model, data = mlp
    table = run("audit", model, "--data", data, "--format", "table")
    assert table.exit_code == 0
    assert "sigma_upper" in table.stdout and "confidence 0.99" in table.stdout
    markdown = run("audit", model, "--data", data, "--format", "markdown", "--confidence", 0.95)
    assert markdown.exit_code == 0
    assert "| worst sample | sigma | sigma_upper (0.95) | iterations |" in markdown.stdout


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.1", "nan"])
def test_confidence_must_be_a_probability(mlp: tuple[Path, Path], value: str) -> None:
    model, data = mlp
    assert_one_line_error(run("audit", model, "--data", data, "--confidence", value), "--confidence")
