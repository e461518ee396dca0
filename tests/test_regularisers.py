"""The deepinv-compatible losses: documented values, reductions, eval_mode, gradients, batch reduction."""

from __future__ import annotations

import pytest
import torch
from conftest import exact_sigma
from torch import Tensor, nn

from lipcheck import FNEJacobianSpectralNorm, InputError, JacobianSpectralNorm

DIAGONAL = torch.diag(torch.arange(1.0, 51.0)).unsqueeze(0)  # the seed's example: largest value 50


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_seed_example_gives_50_whatever_the_seed(seed: int, method: str) -> None:
    torch.manual_seed(seed)
    x = torch.randn((1, DIAGONAL.shape[1])).unsqueeze(0).requires_grad_()
    out = x @ DIAGONAL
    regularizer = JacobianSpectralNorm(max_iter=100, tol=1e-5, eval_mode=False, seed=seed, method=method)
    value = regularizer(out, x)
    if method == "lanczos":
        assert abs(value.item() - 50) < 1e-3
    else:  # the paper's method, within what 100 power iterations can give on this spectrum
        assert abs(value.item() - 50) < 0.1


@pytest.mark.parametrize("seed", range(8))
def test_fne_seed_example_gives_99_whatever_the_seed(seed: int) -> None:
    torch.manual_seed(seed)
    x = torch.randn((1, DIAGONAL.shape[1])).unsqueeze(0)
    value = FNEJacobianSpectralNorm(max_iter=100, tol=1e-5, seed=seed)(
        x @ DIAGONAL, x, lambda z: z @ DIAGONAL
    )
    assert abs(value.item() - 99) < 1e-2


def test_fne_of_a_firmly_nonexpansive_map_is_at_most_one() -> None:
    resolvent = torch.linalg.inv(DIAGONAL[0] + torch.eye(50))
    x = torch.randn(1, 1, 50)
    value = FNEJacobianSpectralNorm(max_iter=100, tol=1e-6)(x @ resolvent, x, lambda z: z @ resolvent)
    assert value.item() == pytest.approx(49 / 51, rel=1e-4)  # max |2/(1+k) - 1| over k = 1..50


SCALES = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])[:, None, None, None]
EXPECTED = {
    "none": (SCALES.flatten(), 2 * SCALES.flatten() - 1),
    None: (SCALES.flatten(), 2 * SCALES.flatten() - 1),
    "mean": (SCALES.mean(), (2 * SCALES - 1).mean()),
    "sum": (SCALES.sum(), (2 * SCALES - 1).sum()),
    "max": (SCALES.max(), 2 * SCALES.max() - 1),
    "MAX": (SCALES.max(), 2 * SCALES.max() - 1),
}


@pytest.mark.parametrize("reduction", list(EXPECTED), ids=str)
def test_reductions(reduction: str | None) -> None:
    x = torch.randn(5, 3, 8, 8).requires_grad_()
    l2, fne = EXPECTED[reduction]
    value = JacobianSpectralNorm(max_iter=100, tol=1e-4, reduction=reduction)(SCALES * x, x)
    torch.testing.assert_close(value, l2, rtol=1e-4, atol=0)
    value = FNEJacobianSpectralNorm(max_iter=100, tol=1e-4, reduction=reduction)(
        SCALES * x, x, lambda z: SCALES * z
    )
    torch.testing.assert_close(value, fne, rtol=1e-4, atol=0)


@pytest.mark.parametrize("reduction", ["median", "", 3])
def test_unknown_reduction_is_a_value_error(reduction: object) -> None:
    with pytest.raises(ValueError, match="reduction"):
        JacobianSpectralNorm(reduction=reduction)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction"):
        FNEJacobianSpectralNorm(reduction=reduction)  # type: ignore[arg-type]


def test_defaults_are_deepinvs() -> None:
    regularizer = JacobianSpectralNorm()
    assert (regularizer.max_iter, regularizer.tol, regularizer.eval, regularizer.verbose) == (
        10,
        1e-3,
        False,
        False,
    )
    assert regularizer.reduced_batchsize is None
    assert regularizer(torch.tensor([[3.0]]) * (x := torch.ones(2, 1, requires_grad=True)), x).item() == 3.0


def _small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 6)).double()


def test_eval_mode_returns_no_graph_and_training_mode_does() -> None:
    model = _small_model()
    x = torch.randn(4, 6, dtype=torch.float64).requires_grad_()
    y = model(x)
    assert JacobianSpectralNorm(max_iter=50, eval_mode=True)(y, x).grad_fn is None
    value = JacobianSpectralNorm(max_iter=50, eval_mode=False)(y, x)
    assert value.grad_fn is not None
    value.backward()
    weights = [model[0].weight, model[0].bias, model[2].weight]  # the last bias does not change J
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in weights)


def test_gradient_matches_the_exact_gradient_of_the_norm() -> None:
    """d sigma / d theta at the converged vector equals autograd through the dense Jacobian's norm."""
    model = _small_model()
    x = torch.randn(3, 6, dtype=torch.float64)

    def exact_total() -> Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for sample in x:
            jacobian = torch.autograd.functional.jacobian(model, sample, create_graph=True)
            total = total + torch.linalg.matrix_norm(jacobian, ord=2)
        return total

    model.zero_grad()
    exact_total().backward()
    expected = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    xr = x.clone().requires_grad_()
    value = JacobianSpectralNorm(max_iter=200, tol=1e-12, reduction="sum")(model(xr), xr)
    torch.testing.assert_close(value, exact_sigma(model, x).sum().detach())
    value.backward()
    got_grads = (torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters())
    for got, want in zip(got_grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-10)


def test_gradient_with_respect_to_the_input_matches_finite_differences() -> None:
    model = _small_model()
    x = torch.randn(1, 6, dtype=torch.float64)
    regularizer = JacobianSpectralNorm(max_iter=200, tol=1e-12, eval_mode=False)

    def value(z: Tensor) -> Tensor:
        z = z.clone().requires_grad_()
        return regularizer(model(z), z)

    xr = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(regularizer(model(xr), xr), xr)
    step = 1e-6
    for i in range(6):
        e = torch.zeros_like(x)
        e[0, i] = step
        finite = ((value(x + e) - value(x - e)) / (2 * step)).detach()
        assert float(grad[0, i]) == pytest.approx(float(finite), rel=1e-5, abs=1e-8)


def test_reduced_batchsize_measures_the_first_samples_of_a_full_forward() -> None:
    model = _small_model()
    x = torch.randn(6, 6, dtype=torch.float64).requires_grad_()
    y = model(x)
    full = JacobianSpectralNorm(max_iter=100, tol=1e-10, reduction="none")(y, x)
    reduced = JacobianSpectralNorm(max_iter=100, tol=1e-10, reduction="none", reduced_batchsize=2)(y, x)
    assert reduced.shape == (2,)
    torch.testing.assert_close(reduced, full[:2])
    reduced.sum().backward()
    fne = FNEJacobianSpectralNorm(max_iter=100, tol=1e-10, reduction="none", reduced_batchsize=2)
    assert fne(x.detach(), x.detach(), model).shape == (2,)


def test_fne_interpolation_draws_a_point_per_sample() -> None:
    calls: list[Tensor] = []

    def model(z: Tensor) -> Tensor:
        calls.append(z.detach().clone())
        return 3 * z

    y_in, x_in = torch.zeros(4, 5), torch.ones(4, 5)
    value = FNEJacobianSpectralNorm(max_iter=20, reduction="none")(y_in, x_in, model, interpolation=True)
    torch.testing.assert_close(value, torch.full((4,), 5.0))
    (point,) = calls
    eta = 1 - point[:, 0]
    assert bool(((eta >= 0) & (eta <= 1)).all()) and len(set(eta.tolist())) == 4
    assert bool((point == point[:, :1]).all())


def test_fne_passes_model_arguments() -> None:
    x = torch.randn(2, 4)
    value = FNEJacobianSpectralNorm(max_iter=20)(x, x, lambda z, a, *, b: a * b * z, 2.0, b=1.5)
    assert value.item() == pytest.approx(5.0, rel=1e-5)


def test_stops_when_converged_without_verbose() -> None:
    counts: list[int] = []
    x = torch.randn(2, 50).requires_grad_()
    regularizer = JacobianSpectralNorm(max_iter=1000, tol=1e-4)
    regularizer._report = lambda it, sigma, active: counts.append(it)  # type: ignore[method-assign]
    regularizer.verbose = True
    regularizer(x @ DIAGONAL[0], x)
    assert 1 < len(counts) < 100


def test_verbose_prints_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    x = torch.randn(2, 50).requires_grad_()
    JacobianSpectralNorm(max_iter=100, tol=1e-4, verbose=True)(x @ DIAGONAL[0], x)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "iteration 1:" in captured.err and "converged [True, True]" in captured.err


def test_y_without_a_graph_to_x_is_refused() -> None:
    x = torch.randn(2, 3)
    with pytest.raises(InputError, match="requires_grad_"):
        JacobianSpectralNorm()(2 * x, x)
