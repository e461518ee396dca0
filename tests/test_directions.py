"""`lipcheck audit --save-directions`: each sample's most amplified unit input direction, checked
against the dense Jacobian (J^T J v = sigma^2 v to the reported residual)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_fixtures import ARCH, EXACT, SmallConv, assert_one_line_error, read_json, run
from safetensors import safe_open
from safetensors.numpy import load_file
from safetensors.torch import save_file

SHAPE = (3, 5, 5)
COUNT = 7


@pytest.fixture
def conv(tmp_path: Path) -> dict[str, Path]:
    save_file(SmallConv().state_dict(), tmp_path / "conv.safetensors")
    x = np.random.default_rng(4).standard_normal((COUNT, *SHAPE)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return {"model": tmp_path / "conv.safetensors", "data": tmp_path / "x.npy"}


def audit(conv: dict[str, Path], folder: Path, *extra: object) -> tuple[dict, dict[str, np.ndarray]]:
    report, directions = folder / "r.json", folder / "d.safetensors"
    result = run(
        "audit", conv["model"], "--arch", f"{ARCH}:make_conv", "--data", conv["data"], *EXACT,
        "-o", report, "--save-directions", directions, *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert f"directions written to {directions}" in result.stderr
    return read_json(report), load_file(directions)


def test_each_row_is_a_unit_singular_direction_to_the_reported_residual(
    conv: dict[str, Path], tmp_path: Path
) -> None:
    report, saved = audit(conv, tmp_path)
    assert saved["directions"].shape == (COUNT, *SHAPE)
    assert saved["directions"].dtype == np.float64  # the audit's --dtype
    rows = {row["index"]: row for row in report["samples"]}
    # largest sigma first, every sample once, with the report's figures
    assert sorted(saved["indices"].tolist()) == sorted(rows)
    assert np.all(np.diff(saved["sigma"]) <= 0)
    np.testing.assert_array_equal(saved["sigma"], [rows[i]["sigma"] for i in saved["indices"]])
    np.testing.assert_array_equal(saved["residual"], [rows[i]["residual"] for i in saved["indices"]])

    model = SmallConv().double().eval()
    x = np.load(conv["data"]).astype(np.float64)
    for index, v, sigma, residual in zip(
        saved["indices"], saved["directions"], saved["sigma"], saved["residual"], strict=True
    ):
        sample = torch.from_numpy(x[index])
        jacobian = torch.func.jacrev(lambda z: model(z.unsqueeze(0)).squeeze(0))(sample)
        jacobian = jacobian.detach().reshape(-1, sample.numel())
        vector = torch.from_numpy(v.reshape(-1))
        assert float(vector.norm()) == pytest.approx(1.0, abs=1e-12)
        gram = jacobian.T @ (jacobian @ vector)
        measured = float((gram - sigma**2 * vector).norm()) / sigma**2
        assert measured <= residual * (1 + 1e-6) + 1e-12, (index, measured, residual)
        exact = float(torch.linalg.matrix_norm(jacobian, ord=2))
        assert sigma == pytest.approx(exact, rel=1e-6)
        # the direction is amplified by sigma: ||J v|| = sigma
        assert float((jacobian @ vector).norm()) == pytest.approx(sigma, rel=1e-6)


def test_top_keeps_the_rows_of_the_largest_sigmas(conv: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "all").mkdir()
    (tmp_path / "top").mkdir()
    _, every = audit(conv, tmp_path / "all", "--batch-size", 2)
    report, top = audit(conv, tmp_path / "top", "--top", 3)
    assert top["directions"].shape == (3, *SHAPE)
    largest = sorted(report["samples"], key=lambda row: (-row["sigma"], row["index"]))[:3]
    assert top["indices"].tolist() == [row["index"] for row in largest]
    np.testing.assert_allclose(top["directions"], every["directions"][:3], atol=1e-12)
    with safe_open(tmp_path / "top" / "d.safetensors", "np") as opened:
        metadata = opened.metadata()
    assert metadata["order"] == "largest sigma first"
    assert metadata["model_sha256"] == report["model"]["sha256"]


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (("--top", "2"), ("--top goes with --save-directions",)),
        (("--save-directions", "d.npy"), ("--save-directions 'd.npy'", ".safetensors")),
        (("--save-directions", "d.safetensors", "--top", "0"), ("--top",)),
    ],
)
def test_bad_directions_flags_are_one_line_errors(
    conv: dict[str, Path], flags: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    result = run("audit", conv["model"], "--arch", f"{ARCH}:make_conv", "--data", conv["data"], *flags)
    assert_one_line_error(result, *fragments)


def test_the_directions_never_overwrite_an_input(conv: dict[str, Path], tmp_path: Path) -> None:
    result = run(
        "audit", conv["model"], "--arch", f"{ARCH}:make_conv", "--data", conv["data"],
        "--save-directions", conv["model"],
    )  # fmt: skip
    assert_one_line_error(result, f"--save-directions '{conv['model']}' is the model (MODEL)")
