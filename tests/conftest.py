"""A small zoo of models with exact per-sample spectral norms from dense Jacobians."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_fixtures import MLP, PickledMLP, export, mlp_inputs, write_pages
from safetensors.torch import save_file
from torch import Tensor, nn


def exact_sigma(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """||df/dx (x_i)||_2 for each sample, from the dense Jacobian in float64 (jacrev + matrix_norm)."""
    norms = []
    for sample in x:
        jacobian = torch.func.jacrev(lambda z: f(z.unsqueeze(0)).squeeze(0))(sample)
        matrix = jacobian.reshape(-1, sample.numel()).double()
        norms.append(torch.linalg.matrix_norm(matrix, ord=2))
    return torch.stack(norms)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.5 * self.conv2(torch.nn.functional.softplus(self.conv1(x)))


class ScaledIdentity(nn.Module):
    """A linear map with a known norm: x -> A x with singular values 1..n (largest n)."""

    def __init__(self, n: int = 30) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(7)
        left, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
        right, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
        values = torch.arange(1, n + 1, dtype=torch.float64)
        self.register_buffer("matrix", left @ torch.diag(values) @ right.T)
        self.norm = float(n)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.matrix.to(x.dtype).T


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 12))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ELU(),
        nn.Conv2d(8, 1, 3, padding=1),
    )  # fmt: skip


def _classifier() -> nn.Module:
    """Output shape differs from the input: (B, 2, 6, 6) -> (B, 5) logits."""
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.GELU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))


# name -> (factory, input shape without the batch dimension)
ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (_mlp, (12,)),
    "cnn": (_cnn, (1, 8, 8)),
    "residual": (lambda: ResidualBlock(4), (4, 5, 5)),
    "classifier": (_classifier, (2, 6, 6)),
    "linear": (lambda: ScaledIdentity(30), (30,)),
}


def make_model(name: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[nn.Module, Tensor]:
    """A seeded model of the zoo in eval mode and a batch of 3 inputs for it."""
    factory, shape = ZOO[name]
    torch.manual_seed(seed)
    model = factory().to(dtype).eval()
    x = torch.randn(3, *shape, dtype=dtype, generator=torch.Generator().manual_seed(seed + 1))
    return model, x


@pytest.fixture(params=sorted(ZOO))
def zoo_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same MLP in every model format, and its inputs as a .npy file."""
    folder = tmp_path_factory.mktemp("models")
    model = MLP().eval()
    x = torch.from_numpy(mlp_inputs())
    paths = {
        "export": export(model, folder / "mlp.pt2", x[:2]),
        "torchscript": folder / "mlp.ts",
        "safetensors": folder / "mlp.safetensors",
        "state-dict": folder / "mlp.pt",
        "nested-state-dict": folder / "checkpoint.pth",
        "pickle": folder / "whole.pt",
        "data": folder / "inputs.npy",
    }
    torch.jit.save(torch.jit.script(model), paths["torchscript"])
    save_file(model.state_dict(), paths["safetensors"])
    torch.save(model.state_dict(), paths["state-dict"])
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, paths["nested-state-dict"])
    torch.save(PickledMLP().eval(), paths["pickle"])
    np.save(paths["data"], mlp_inputs())
    return paths


@pytest.fixture(scope="session")
def small_pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The HTML pages of `write_pages` (an audit with pictures and the bound, a comparison, a bound),
    written once for the page tests and the browser tests."""
    return write_pages(tmp_path_factory.mktemp("small-pages"))
