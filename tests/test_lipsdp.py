"""The LipSDP bound (`method="lipsdp"`): certified or not taken, never below the truth, never above the
loop transformation, exact on linear maps, and as tight as an interior-point LipSDP on small MLPs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_loop_transformation import Residual, jacobian_norms
from torch import nn

import lipcheck
from lipcheck.bounds import compose, frequency, graph, lipsdp, lipsdp_solver

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.1), "silu": nn.SiLU}


def random_net(kind: str, activation: str, width: int) -> tuple[nn.Module, tuple[int, ...]]:
    act = ACTIVATIONS[activation]
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(3, width), act(), nn.Linear(width, width), act(), nn.Linear(width, 2)
        ), (3,)
    inner = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), act(), nn.Conv2d(width, 1, 3, padding=1))
    if kind == "conv":
        return nn.Sequential(inner, act(), nn.Conv2d(1, 2, 3, padding=1)), (1, 4, 4)
    return Residual(inner, 1.0, -1.0), (1, 4, 4)


def largest_found(model: nn.Module, shape: tuple[int, ...], seed: int) -> float:
    """The largest dense ||J(x)|| over inputs at several scales, raised by the worst-case search."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.1, 0.3, 1.0, 3.0, 10.0], dtype=torch.float64).repeat_interleave(8)
    points = torch.randn((len(scales), *shape), generator=generator, dtype=torch.float64)
    points = points * scales.reshape(-1, *[1] * len(shape))
    found = float(jacobian_norms(model, points).detach().max())
    searched = lipcheck.worst_case_search(model, points[:4], radius=1.0, steps=4, seed=0, tol=1e-6)
    return max(found, float(searched.sigma.max()))


def walked(model: nn.Module, shape: tuple[int, ...]) -> graph.GraphBound:
    walker = graph.GraphBound(graph.functional(graph.export_program(model, shape)), {})
    walker.run()
    return walker


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    kind=st.sampled_from(["mlp", "conv", "minus"]),
    activation=st.sampled_from(sorted(ACTIVATIONS)),
    width=st.integers(2, 4),
    seed=st.integers(0, 2**16),
)
def test_bound_is_never_below_the_truth_nor_above_the_loop_transformation(
    kind: str, activation: str, width: int, seed: int
) -> None:
    torch.manual_seed(seed)
    model, shape = random_net(kind, activation, width)
    model = model.double().eval()
    report = lipcheck.upper_bound(model, shape, method="lipsdp")
    liplt = lipcheck.upper_bound(model, shape, method="liplt")
    assert report.method in ("lipsdp", "liplt")
    assert report.upper_bound >= largest_found(model, shape, seed) * (1 - 1e-9)
    assert report.upper_bound <= liplt.upper_bound
    assert report.product_bound == pytest.approx(liplt.product_bound, rel=1e-12)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("kind", ["conv", "minus"])
def test_per_channel_form_of_zero_padded_convolutions_is_sound(kind: str, activation: str) -> None:
    """The circulant embedding (frequency.py) bounds the zero-padded network: never below its dense
    Jacobians, LeakyReLU's slope range widened to hold 0 included."""
    torch.manual_seed(7)
    model, shape = random_net(kind, activation, 3)
    model = model.double().eval()
    walker = walked(model, shape)
    problem = frequency.circulant_transformation(walker, walker.output_nodes)
    assert problem is not None and "per-channel" in problem.how
    found = lipsdp.lipsdp_bound(problem, steps=60)
    assert found is not None
    assert found.bound >= largest_found(model, shape, 7) * (1 - 1e-9)


def test_mlp_bound_is_certified_and_tighter_than_the_loop_transformation() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1)).eval()
    report = lipcheck.upper_bound(model, (2,))  # the default method
    liplt = lipcheck.upper_bound(model, (2,), method="liplt")
    assert report.method == "lipsdp"
    assert report.upper_bound < 0.9 * liplt.upper_bound
    assert report.upper_bound >= largest_found(model.double(), (2,), 0) * (1 - 1e-9)


@pytest.mark.parametrize(
    "model, shape",
    [(nn.Linear(6, 4), (6,)), (nn.Conv2d(2, 3, 3, padding=1), (2, 5, 5))],
    ids=["linear", "conv"],
)
def test_single_linear_layer_gets_its_exact_norm(model: nn.Module, shape: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    model = model.double().eval()
    exact = float(jacobian_norms(model, torch.zeros((1, *shape), dtype=torch.float64)).detach()[0])
    bound = lipcheck.upper_bound(model, shape, method="lipsdp").upper_bound
    assert exact <= bound <= exact * (1 + 1e-7)


def test_multipliers_that_fail_the_check_are_not_trusted() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 2)).eval()
    walker = walked(model, (3,))
    problem = lipsdp.dense_transformation(walker, walker.output_nodes)
    assert problem is not None
    # multipliers far too small: diag(lambda) - Q_ww is indefinite, so no rho makes -M positive definite
    assert (
        lipsdp.certify(problem.rows, problem, torch.full((problem.n_w,), 1e-9, dtype=torch.float64)) is None
    )
    good = lipsdp.lipsdp_bound(problem, steps=60)
    assert good is not None and math.isfinite(good.bound)


def test_an_uncertified_solution_falls_back_to_the_loop_transformation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lipsdp, "certify", lambda *args: None)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    report = lipcheck.upper_bound(model, (3,), method="lipsdp")
    assert report.method == "liplt"
    assert report.upper_bound == lipcheck.upper_bound(model, (3,), method="liplt").upper_bound


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()),
        nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Conv2d(2, 1, 3, padding=1), nn.ReLU()
        ),
    ],
    ids=["conv_after_conv", "conv_after_batch_norm_of_conv"],
)
def test_per_channel_form_refuses_a_convolution_reading_a_convolution(model: nn.Module) -> None:
    """On the periodic grid a convolution's output is not 0 at the added positions, so a convolution
    reading it would see what the zero-padded network does not: the form is refused there."""
    walker = walked(model.eval(), (1, 4, 4))
    assert frequency.circulant_transformation(walker, walker.output_nodes) is None


def test_graphs_with_opaque_operations_keep_the_loop_transformation() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 1)
    )
    walker = walked(model.eval(), (1, 4, 4))
    assert lipsdp.dense_transformation(walker, walker.output_nodes) is None
    assert frequency.circulant_transformation(walker, walker.output_nodes) is None
    assert lipcheck.upper_bound(model.eval(), (1, 4, 4)).method in ("liplt", "product")


def lipsdp_neuron_cvxpy(weights: list[torch.Tensor]) -> float:
    """LipSDP-Neuron of W_L relu(... relu(W_1 x)) as published (slope range [0, 1]), by an interior-point
    solver: an independent formulation (the network's blocks, not the merged c-network)."""
    cp = pytest.importorskip("cvxpy")
    import numpy as np

    w = [item.detach().double().numpy() for item in weights]
    n0, hidden = w[0].shape[1], [item.shape[0] for item in w[:-1]]
    n = sum(hidden)
    a = np.zeros((n, n0 + n))
    row, column = 0, 0
    for item in w[:-1]:
        a[row : row + item.shape[0], column : column + item.shape[1]] = item
        row, column = row + item.shape[0], column + item.shape[1]
    b = np.hstack([np.zeros((n, n0)), np.eye(n)])
    multipliers, rho = cp.Variable(n, nonneg=True), cp.Variable(nonneg=True)
    t = cp.diag(multipliers)
    stacked = np.vstack([a, b])
    middle = cp.bmat([[np.zeros((n, n)), t], [t, -2 * t]])
    last = np.zeros((n0 + n, n0 + n))
    last[-w[-1].shape[1] :, -w[-1].shape[1] :] = w[-1].T @ w[-1]
    first = cp.bmat([[-rho * np.eye(n0), np.zeros((n0, n))], [np.zeros((n, n0)), np.zeros((n, n))]])
    matrix = stacked.T @ middle @ stacked + first + last
    cp.Problem(cp.Minimize(rho), [(matrix + matrix.T) / 2 << 0]).solve()
    return float(np.sqrt(rho.value))


def test_matches_an_interior_point_lipsdp_on_a_tiny_mlp() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1)).eval()
    reference = lipsdp_neuron_cvxpy([layer.weight for layer in model if isinstance(layer, nn.Linear)])
    report = lipcheck.upper_bound(model, (2,), method="lipsdp")
    assert report.method == "lipsdp"
    assert reference * (1 - 1e-4) <= report.upper_bound <= reference * 1.03


def test_default_method_is_lipsdp() -> None:
    assert compose.METHODS[0] == "lipsdp"


@pytest.mark.parametrize("kind", ["mlp", "conv", "minus"])
def test_slope_form_gives_rho_and_its_gradient_of_the_merged_form(kind: str) -> None:
    """The solver's slope form (lipsdp_solver.py) evaluates the same rho*(lambda) as the merged blocks, and
    its gradient (Danskin) is the automatic derivative of the merged form's, or inf where both are."""
    torch.manual_seed(11)
    model, shape = random_net(kind, "silu", 3)
    walker = walked(model.double().eval(), shape)
    outputs = walker.output_nodes
    if kind == "mlp":
        problem = lipsdp.dense_transformation(walker, outputs)
    else:
        problem = frequency.circulant_transformation(walker, outputs)
    assert problem is not None
    form = lipsdp_solver.SlopeForm(problem)
    start, _ = lipsdp._feasible_start(form, problem)
    assert start is not None
    generator = torch.Generator().manual_seed(0)
    finite = 0
    for scale in (1.0, 1.5, 0.3):
        multipliers = (
            start
            * scale
            * torch.exp(0.3 * torch.randn(problem.n_w, generator=generator, dtype=torch.float64))
        )
        multipliers.requires_grad_(True)
        merged = lipsdp.rho_of(problem.rows, problem, multipliers)
        found = form.evaluate(multipliers.detach())
        if not math.isfinite(found.rho):
            assert not torch.isfinite(merged)
            continue
        finite += 1
        merged.backward()
        assert found.rho == pytest.approx(float(merged.detach()), rel=1e-9)
        assert found.values is not None
        top = (found.values == found.values[:, -1].max()).to(torch.float64)
        gradient = form.gradient(found, top / top.sum())
        torch.testing.assert_close(
            gradient, multipliers.grad, rtol=1e-7, atol=1e-9 * float(gradient.abs().max())
        )
    assert finite >= 1
