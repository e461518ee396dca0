"""The loop transformation's blocks too large to read (forced here by lowering the reading limits): a
Lanczos upper bound at probability 1 - 1e-9 over a seeded start, never below the block's exact norm and
close above it; the whole bound never below the truth nor above the product, and said to be
probabilistic."""

from __future__ import annotations

import pytest
import torch
from test_loop_transformation import Residual, jacobian_norms, largest_found, prepared
from torch import nn

import lipcheck
from lipcheck.bounds import graph, loop_transformation
from lipcheck.present.facts import bound_label, bound_method
from lipcheck.report import bound_details, bound_from_dict

# The run stops with its bound within 10 tol of the Ritz value at a 10 times larger failure probability;
# the reported probability widens it a little more.
CLOSE = 20 * loop_transformation.LANCZOS_TOL


def network(kind: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(3)
    if kind == "conv":  # zero-padded convolutions with BatchNorm
        model: nn.Module = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4),
            nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1),
        )  # fmt: skip
        return model, (1, 8, 8)
    if kind == "mlp":
        layers = [nn.Linear(40, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 30)]
        return nn.Sequential(*layers), (40,)
    inner = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), nn.SiLU(), nn.Conv2d(6, 6, 3, padding=1), nn.SiLU(),
        nn.Conv2d(6, 2, 3, padding=1),
    )  # fmt: skip
    return Residual(inner, 1.0, -1.0), (2, 6, 6)


@pytest.fixture
def unread(monkeypatch: pytest.MonkeyPatch) -> None:
    """No block is read as a matrix: every merged block goes to Lanczos."""
    monkeypatch.setattr(loop_transformation, "DENSE_MAX_SIDE", 0)


def transformation(model: nn.Module, shape: tuple[int, ...]) -> loop_transformation._LoopTransformation:
    walker = graph.GraphBound(graph.functional(graph.export_program(model, shape)), {})
    walker.run()
    return loop_transformation._LoopTransformation(walker, walker.output_nodes)


def exact_block_norm(lt: loop_transformation._LoopTransformation, source: object, targets: tuple) -> float:
    """The block's norm from its dense float64 matrix (jacrev of the linear block at zero)."""
    block = lt._block(source, targets)  # type: ignore[arg-type]
    shape = loop_transformation._shape(source)  # type: ignore[arg-type]
    matrix = torch.func.jacrev(block)(torch.zeros(shape, dtype=torch.float64))
    return float(torch.linalg.matrix_norm(matrix.reshape(matrix.shape[0], -1), ord=2))


@pytest.mark.usefixtures("unread")
@pytest.mark.parametrize("kind", ["conv", "mlp", "minus"])
def test_every_block_bound_is_above_its_exact_norm_and_close(kind: str) -> None:
    model, shape = network(kind)
    lt = transformation(prepared(model, 3), shape)
    lt.run()
    checked = 0
    for (source, targets), (norm, method) in lt.norms.items():
        if not method.startswith(loop_transformation.LANCZOS_METHOD):
            assert method == "product of its factors"
            continue
        exact = exact_block_norm(lt, source, targets)
        assert exact <= norm <= exact * (1 + CLOSE), (source, targets, method)
        assert "at probability 1 - 1e-9 over its seeded start" in method
        assert float(loop_transformation.LANCZOS_FAILURE_TEXT) >= loop_transformation.LANCZOS_FAILURE
        assert f"merged block ({sum(loop_transformation._numel(t) for t in targets)} x " in method
        checked += 1
    assert checked >= 3  # the input's block, and those of the sites, to the output and to sites' inputs


@pytest.mark.usefixtures("unread")
@pytest.mark.parametrize("kind", ["conv", "mlp", "minus"])
def test_whole_bound_is_never_below_the_truth_nor_above_the_product(kind: str) -> None:
    model, shape = network(kind)
    model = prepared(model, 3)
    report = lipcheck.upper_bound(model, shape, method="liplt")
    assert report.method == "liplt"
    assert report.upper_bound >= largest_found(model, shape, 3) * (1 - 1e-9)
    assert report.upper_bound < report.product_bound
    assert any(term.method.startswith("Lanczos upper bound at probability") for term in report.terms)
    # the report says that the bound is probabilistic, and how probable a failure is
    assert 0 < report.failure_probability <= 1e-6
    assert report.failure_probability % loop_transformation.LANCZOS_FAILURE == 0
    assert "probabilistic: it fails with probability at most" in bound_method(report)
    assert (
        bound_label(report)
        == f"upper bound (certified except with probability {report.failure_probability:.2g})"
    )
    read_back = bound_from_dict({"upper_bound": report.upper_bound, "bound": bound_details(report)})
    assert read_back.failure_probability == report.failure_probability


def test_read_blocks_keep_a_deterministic_bound() -> None:
    model, shape = network("conv")
    report = lipcheck.upper_bound(prepared(model, 3), shape, method="liplt")
    assert report.failure_probability == 0
    assert not any("Lanczos" in term.method for term in report.terms)
    assert "probabilistic" not in bound_method(report)
    assert bound_label(report) == "upper bound (certified)"


@pytest.mark.usefixtures("unread")
def test_a_single_operation_keeps_its_own_norm() -> None:
    """One zero-padded convolution: the DFT bound of its circular embedding, a deterministic factor, is
    kept rather than run through Lanczos."""
    torch.manual_seed(1)
    model = nn.Conv2d(2, 3, 3, padding=1).double().eval()
    exact = float(jacobian_norms(model, torch.zeros((1, 2, 6, 6), dtype=torch.float64)).detach()[0])
    report = lipcheck.upper_bound(model, (2, 6, 6), method="liplt")
    assert [term.method for term in report.terms] == ["product of its factors"]
    assert report.failure_probability == 0
    assert exact <= report.upper_bound


@pytest.mark.usefixtures("unread")
def test_past_the_budget_blocks_get_the_product(monkeypatch: pytest.MonkeyPatch) -> None:
    """A budget for a few runs: the first blocks get Lanczos, the rest the product of their factors, and
    the bound stays above the truth."""
    model, shape = network("conv")
    model = prepared(model, 3)
    lt = transformation(model, shape)
    per_run = loop_transformation.LANCZOS_PASSES * lt._pass_work(lt.input, lt.outputs)
    budget = 2 * loop_transformation.LANCZOS_MAX_ITER * per_run
    monkeypatch.setattr(loop_transformation, "LANCZOS_TOTAL_WORK", budget)
    lt = transformation(model, shape)
    found = lt.run()
    methods = [method for _, method in lt.norms.values()]
    runs = sum(method.startswith(loop_transformation.LANCZOS_METHOD) for method in methods)
    assert 1 <= runs < len(methods) - 1
    assert lt.lanczos_spent <= budget
    assert found.failure_probability == runs * loop_transformation.LANCZOS_FAILURE
    assert found.bound >= largest_found(model, shape, 3) * (1 - 1e-9)


@pytest.mark.usefixtures("unread")
@pytest.mark.parametrize("kind", ["conv", "minus"])
def test_runs_stopped_early_still_bound_from_above(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped after LANCZOS_MIN_ITER products, the Ritz values are still below the exact norms; the
    bounds are not."""
    monkeypatch.setattr(loop_transformation, "LANCZOS_MAX_ITER", loop_transformation.LANCZOS_MIN_ITER)
    monkeypatch.setattr(loop_transformation, "LANCZOS_KRYLOV_DIM", 6)
    model, shape = network(kind)
    lt = transformation(prepared(model, 3), shape)
    lt.run()
    short = 0
    for (source, targets), (norm, method) in lt.norms.items():
        if method.startswith(loop_transformation.LANCZOS_METHOD):
            exact = exact_block_norm(lt, source, targets)
            assert exact <= norm, (source, targets, method)
            estimate = float(method.split("estimate ")[1].split(")")[0])
            short += estimate < exact * (1 - 1e-5)
    assert short >= 1
