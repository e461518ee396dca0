"""The worst-case search: never below sigma at the sample, inside the ball, an exact value at the point it
returns, and it finds the worst point where that point is known; from Python and `lipcheck audit`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_fixtures import MLP, assert_one_line_error, audit_json, exact_sigma, export, mlp_inputs, run, sigmas
from torch import Tensor, nn

from lipcheck import worst_case_search
from lipcheck.errors import InputError

PRECISE = {"tol": 1e-10, "max_iter": 100}


class Ridge(nn.Module):
    """x -> a tanh(w.x + b): sigma(x) = ||a|| ||w|| tanh'(w.x + b), largest (||a|| ||w||) on w.x + b = 0."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(4)
        self.w = nn.Parameter(torch.randn(6, generator=generator, dtype=torch.float64))
        self.a = nn.Parameter(torch.randn(3, generator=generator, dtype=torch.float64))
        self.b = 0.7

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x @ self.w + self.b).unsqueeze(1) * self.a

    def worst(self) -> float:
        return float(self.a.detach().norm() * self.w.detach().norm())


def test_search_never_lowers_sigma_stays_in_the_ball_and_is_exact_at_its_point() -> None:
    model = MLP().double().eval()
    x = torch.from_numpy(mlp_inputs(6)).double()
    radius = 0.5
    found = worst_case_search(model, x, radius=radius, steps=8, **PRECISE)
    assert torch.all(found.sigma >= found.start.sigma)
    assert torch.all(found.distance <= radius * (1 + 1e-12))
    np.testing.assert_allclose(found.start.sigma.numpy(), exact_sigma(model, x), rtol=1e-8)
    np.testing.assert_allclose(found.sigma.numpy(), exact_sigma(model, found.point), rtol=1e-8)
    distance = torch.linalg.vector_norm(found.point - x, dim=1)
    np.testing.assert_allclose(found.distance.numpy(), distance.numpy(), rtol=1e-12)
    assert int((found.sigma > found.start.sigma * 1.01).sum()) >= 4  # a smooth model: most samples rise
    assert torch.all((found.improved > 0) == (found.sigma > found.start.sigma))


def test_search_reaches_the_known_worst_point() -> None:
    model = Ridge()
    unit = (model.w / model.w.norm()).detach()
    ridge = -model.b / float(model.w.detach().norm()) * unit  # on the ridge w.x + b = 0
    generator = torch.Generator().manual_seed(0)
    along = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    along -= (along @ unit).unsqueeze(1) * unit  # move along the ridge ...
    off = torch.tensor([0.9, -0.8, 0.6, -0.5], dtype=torch.float64)
    x = ridge + along + off.unsqueeze(1) * unit  # ... and off it, within the radius
    found = worst_case_search(model, x, radius=1.0, steps=12, **PRECISE)
    assert torch.all(found.start.sigma < 0.9 * model.worst())
    np.testing.assert_allclose(found.sigma.numpy(), model.worst(), rtol=1e-3)
    assert torch.all(found.distance <= 1.0 + 1e-12)
    np.testing.assert_allclose(found.sigma.numpy(), exact_sigma(model, found.point), rtol=1e-8)


def test_no_steps_or_no_radius_stay_at_the_sample() -> None:
    x = torch.from_numpy(mlp_inputs(3)).double()
    model = MLP().double().eval()
    for radius, steps in ((0.0, 5), (1.0, 0)):
        found = worst_case_search(model, x, radius=radius, steps=steps)
        assert torch.equal(found.sigma, found.start.sigma) and torch.equal(found.point, x)
        assert torch.all(found.distance == 0)


class Hinge(nn.Module):
    """3 relu(w.x - 1/2) + x.sum() / 10: sigma is 0.2 on the near side of the hinge, about 3 beyond it."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=torch.float64)

    def forward(self, x: Tensor) -> Tensor:
        return 3 * torch.relu(x @ self.w - 0.5).unsqueeze(-1) + x.sum(-1, keepdim=True) / 10


def test_a_piecewise_linear_model_is_searched_on_its_smoothed_surrogate_and_measured_on_itself() -> None:
    """sigma of a ReLU model is piecewise constant (zero gradient); the search follows softplus and
    crosses the hinge, and its value is the real model's exact sigma at the point it returns."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    x = x - (x @ Hinge().w).unsqueeze(1) * Hinge().w  # on w.x = 0, half a unit before the hinge
    found = worst_case_search(Hinge(), x, radius=1.0, steps=8, **PRECISE)
    np.testing.assert_allclose(found.start.sigma.numpy(), 0.2, rtol=1e-8)
    assert torch.all(found.sigma > 3.0) and torch.all(found.distance <= 1.0 + 1e-12)
    np.testing.assert_allclose(found.sigma.numpy(), exact_sigma(Hinge(), found.point), rtol=1e-8)


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)),
        nn.Sequential(nn.Linear(6, 8), nn.LeakyReLU(0.1), nn.Linear(8, 8), nn.Hardtanh(), nn.Linear(8, 3)),
        nn.Sequential(
            nn.Unflatten(1, (1, 2, 3)), nn.ReLU6(), nn.MaxPool2d(2, 1), nn.Flatten(), nn.Linear(2, 3)
        ),
    ],
    ids=["relu", "leaky_relu_hardtanh", "relu6_max_pool"],
)
def test_piecewise_linear_search_values_are_the_real_models(model: nn.Module) -> None:
    x = torch.from_numpy(mlp_inputs(3)).double()
    model = model.double().eval()
    found = worst_case_search(model, x, radius=1.0, steps=5, **PRECISE)
    assert torch.all(found.sigma >= found.start.sigma) and torch.all(found.distance <= 1.0 + 1e-12)
    np.testing.assert_allclose(found.sigma.numpy(), exact_sigma(model, found.point), rtol=1e-6)


@pytest.mark.parametrize(
    ("radius", "steps", "message"),
    [(-1.0, 3, "radius"), (float("nan"), 3, "radius"), (1.0, -2, "steps"), (1.0, 2.5, "steps")],
)
def test_bad_search_arguments(radius: float, steps: int, message: str) -> None:
    with pytest.raises(InputError, match=message):
        worst_case_search(MLP(), torch.zeros(2, 6), radius=radius, steps=steps)


# From the command line.


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("search")
    np.save(folder / "inputs.npy", mlp_inputs())
    return {
        "export": export(MLP(), folder / "mlp.pt2", torch.from_numpy(mlp_inputs())[:2]),
        "data": folder / "inputs.npy",
    }


def test_audit_search_adds_searched_values_and_the_max_counts_them(files: dict[str, Path]) -> None:
    plain = audit_json(files["export"], "--data", files["data"], "--dtype", "float64")
    report = audit_json(
        files["export"], "--data", files["data"], "--dtype", "float64",
        "--search-steps", "6", "--search-radius", "0.5",
    )  # fmt: skip
    rows = report["samples"]
    searched = np.array([row["search_sigma"] for row in rows])
    assert sigmas(report).tolist() == sigmas(plain).tolist()  # each row keeps its own sigma
    assert np.all(searched >= sigmas(report))
    assert all(0 <= row["search_distance"] <= 0.5 * (1 + 1e-9) for row in rows)
    summary = report["summary"]
    assert summary["max"] == searched.max() > sigmas(report).max()
    assert summary["value"] == summary["max"] and summary["argmax"] == rows[int(searched.argmax())]["index"]
    assert summary["mean"] == pytest.approx(sigmas(report).mean())  # the others describe the samples
    assert summary["min"] == pytest.approx(sigmas(report).min())
    assert report["settings"]["search_steps"] == 6 and report["settings"]["search_radius"] == 0.5
    assert "search_sigma" not in plain["samples"][0] and plain["settings"]["search_steps"] is None


def test_audit_search_in_the_table_and_markdown(files: dict[str, Path]) -> None:
    args = (files["export"], "--data", files["data"], "--search-steps", "2", "--search-radius", "0.1")
    table = run("audit", *args, "--format", "table")
    assert table.exit_code == 0
    assert "search" in table.stdout and "distance" in table.stdout and "searched" in table.stdout
    markdown = run("audit", *args, "--format", "markdown")
    assert markdown.exit_code == 0
    assert "| search sigma | distance |" in markdown.stdout and "2 steps within radius 0.1" in markdown.stdout


def test_search_flags_go_together_and_are_not_negative(files: dict[str, Path], tmp_path: Path) -> None:
    args = (files["export"], "--data", files["data"])
    cases = [
        (("--search-steps", "3"), "--search-radius"),
        (("--search-radius", "0.5"), "--search-steps"),
        (("--search-steps", "-1", "--search-radius", "0.5"), "--search-steps"),
        (("--search-steps", "3", "--search-radius", "-0.5"), "--search-radius"),
    ]
    for flags, named in cases:
        assert_one_line_error(run("audit", *args, *flags), named)
    result = run("audit", *args, "--search-steps", "0", "--search-radius", "0", "-o", tmp_path / "r.json")
    assert result.exit_code == 0
    rows = json.loads((tmp_path / "r.json").read_text())["samples"]
    assert all(row["search_sigma"] == row["sigma"] and row["search_distance"] == 0 for row in rows)
