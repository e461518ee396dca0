"""Models exported with every dynamic-shape form torch.export produces load, audit, inspect and bound.

The README recommends `dynamic_shapes=({0: torch.export.Dim("batch")},)`: a Dim without a max, which
torch.export records as the range 0..int_oo (sympy's infinity). `Dim.AUTO` and `Dim.DYNAMIC` record
2..int_oo, and a derived dim (2 * n) an expression rather than a symbol.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_fixtures import MLP, mlp_inputs, run
from torch import Tensor, nn

from lipcheck.io.models import load_model

README = Path(__file__).resolve().parents[1] / "README.md"

# The README's recipe, as printed there (the table of model files, and the note under it).
README_SAVE = 'torch.export.save(torch.export.export(model, (x,), dynamic_shapes=...), "m.pt2")'
README_DYNAMIC_SHAPES = 'dynamic_shapes=({0: torch.export.Dim("batch")},)'


def test_the_readme_prints_the_recipe_tested_here() -> None:
    text = README.read_text(encoding="utf-8")
    assert README_SAVE in text and README_DYNAMIC_SHAPES in text


def export_as_the_readme_says(model: nn.Module, x: Tensor) -> None:
    """README_SAVE with README_DYNAMIC_SHAPES in place of its `...`: m.pt2 in the current folder."""
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)), "m.pt2")  # noqa: E501  # fmt: skip


class Halves(nn.Module):
    """(B, 2n) -> (B, n): tanh of the sum of the even and the odd features, for any even width."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x[:, ::2] + x[:, 1::2])


def _export(model: nn.Module, x: Tensor, dynamic_shapes: Any) -> None:
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=dynamic_shapes), "m.pt2")


def _derived(model: nn.Module, x: Tensor) -> None:
    half = torch.export.Dim("half")
    _export(model, x, ({0: torch.export.Dim("batch"), 1: 2 * half},))


# name -> (how m.pt2 is made from (model, example), the model, its samples' width, the batch's range)
FORMS: dict[str, tuple[Callable[[nn.Module, Tensor], None], Callable[[], nn.Module], int, str]] = {
    "readme": (export_as_the_readme_says, MLP, 6, "0..inf"),
    "Dim.AUTO": (lambda m, x: _export(m, x, ({0: torch.export.Dim.AUTO},)), MLP, 6, "2..inf"),
    "Dim.DYNAMIC": (lambda m, x: _export(m, x, ({0: torch.export.Dim.DYNAMIC},)), MLP, 6, "2..inf"),
    "derived": (_derived, Halves, 8, "0..inf"),
}


@pytest.fixture(params=list(FORMS), scope="module")
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    folder = tmp_path_factory.mktemp("export")
    make, model, width, _ = FORMS[request.param]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        make(model().eval(), torch.from_numpy(np.random.default_rng(0).standard_normal((3, width), "f4")))
    inputs = np.random.default_rng(1).standard_normal((5, width), "f4")
    np.save(folder / "inputs.npy", inputs if width != 6 else mlp_inputs(5))
    return request.param, folder


def test_loads_and_records_the_range_of_the_batch(exported: tuple[str, Path]) -> None:
    name, folder = exported
    (spec,) = load_model(folder / "m.pt2").input_spec
    assert spec.shape[0] == FORMS[name][3]
    if name == "derived":
        assert isinstance(spec.shape[1], str) and spec.shape[1].startswith("2*")
    else:
        assert spec.shape[1] == 6


def test_audit(exported: tuple[str, Path]) -> None:
    _, folder = exported
    # --batch-size 2: batches of 2 and a last one of 1, below Dim.AUTO's recorded minimum
    result = run("audit", folder / "m.pt2", "--data", folder / "inputs.npy", "-b", "2", "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["count"] == 5


def test_inspect_shows_an_unbounded_range(exported: tuple[str, Path]) -> None:
    name, folder = exported
    result = run("inspect", folder / "m.pt2")
    assert result.exit_code == 0, result.stderr
    assert f"({FORMS[name][3]}, " in result.stdout
    shown = json.loads(run("inspect", folder / "m.pt2", "--json").stdout)
    assert shown["input_spec"][0]["shape"][0] == FORMS[name][3]


def test_bound(exported: tuple[str, Path]) -> None:
    name, folder = exported
    result = run("bound", folder / "m.pt2", "--input-shape", FORMS[name][2], "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["upper_bound"] > 0
