"""Convolutions routed by the engine: the same products and gradients as torch's, with less work."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import torch
from conftest import exact_sigma
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import lipcheck.engine.regularisers
from lipcheck import FNEJacobianSpectralNorm, spectral_norm
from lipcheck.engine import JacobianOperator, differentiable_sigma
from lipcheck.engine.double_backward import linearisable_convolutions

pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")

CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "conv2d stride dilation groups, transposed output_padding": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(4, 4, 3, dilation=2, groups=2, padding=2), nn.Tanh(),
            nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1),
        ),
        (3, 2, 9, 10),
    ),
    "conv1d same and even-sized same": (
        lambda: nn.Sequential(
            nn.Conv1d(2, 3, 5, padding="same"), nn.GELU(), nn.Conv1d(3, 2, 4, padding="same")
        ),
        (3, 2, 11),
    ),
    "conv3d and transposed conv3d": (
        lambda: nn.Sequential(
            nn.Conv3d(1, 2, 3, stride=(1, 2, 1), padding=(1, 0, 1)), nn.Softplus(),
            nn.ConvTranspose3d(2, 1, (2, 3, 3), stride=2, dilation=(1, 2, 1)),
        ),
        (2, 1, 5, 6, 7),
    ),
    "reflect padding, valid, no bias": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1, padding_mode="reflect"), nn.GELU(),
            nn.Conv2d(3, 2, 3, padding="valid", bias=False),
        ),
        (2, 1, 8, 8),
    ),
}  # fmt: skip


def build(case: str, exported: bool) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    factory, shape = CASES[case]
    torch.manual_seed(0)
    model = factory().double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    if exported:  # an exported program's module calls aten ops, which the mode routes too
        return torch.export.export(model, (x,)).module(), x
    return model, x


def builtin_operator(f: Callable[[Tensor], Tensor], x: Tensor) -> JacobianOperator:
    """The operator built on torch's own convolutions, as a reference."""
    x = x.detach().requires_grad_(True)
    return JacobianOperator(f(x), x)


def backward_node_names(tensor: Tensor) -> set[str]:
    names, stack, seen = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(parent for parent, _ in node.next_functions)
    return names


@pytest.mark.parametrize("exported", [False, True], ids=["module", "exported"])
@pytest.mark.parametrize("case", list(CASES))
def test_products_and_gradients_match_torch_convolutions(case: str, exported: bool) -> None:
    f, x = build(case, exported)
    reference = builtin_operator(f, x)
    routed = JacobianOperator.from_function(f, x)
    assert "_ConvolutionBackward" in backward_node_names(routed.y)
    u = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    w = torch.randn(routed.y.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(routed.jvp(u), reference.jvp(u), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(routed.vjp(w), reference.vjp(w), rtol=1e-12, atol=1e-12)
    # d||J u|| with respect to the input and every parameter: third-order derivatives of the model.
    parameters = list(f.parameters())
    gradients = [
        torch.autograd.grad(differentiable_sigma(op, u).sum(), [op.x, *parameters], allow_unused=True)
        for op in (routed, reference)
    ]
    for ours, theirs in zip(*gradients, strict=True):
        if theirs is None:  # the last layer's bias does not change the Jacobian
            assert ours is None or not bool(ours.any())
        else:
            torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", list(CASES))
def test_routed_engine_matches_the_exact_norm(case: str) -> None:
    f, x = build(case, exported=False)
    result = spectral_norm(f, x, tol=1e-10, max_iter=300)
    torch.testing.assert_close(result.sigma, exact_sigma(f, x), rtol=1e-8, atol=0)


class CountConvolutions(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.convolution_backward):
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_a_jacobian_vector_product_is_one_convolution_per_layer() -> None:
    torch.manual_seed(0)
    layers = 4
    blocks = (nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()) for _ in range(layers))
    model = nn.Sequential(*blocks).eval()
    x = torch.randn(2, 3, 8, 8)
    u = torch.randn_like(x)
    counts = {}
    operators = {"routed": JacobianOperator.from_function(model, x), "torch": builtin_operator(model, x)}
    for name, operator in operators.items():
        operator.jvp(u)  # builds the graph of w -> J^T w once
        with CountConvolutions() as counter:
            operator.jvp(u)
        counts[name] = counter.count
    assert counts["routed"] == layers
    assert counts["torch"] > layers  # torch's double backward adds a weight-gradient convolution per layer


def test_fne_regulariser_trains_the_same_with_routed_convolutions(monkeypatch: pytest.MonkeyPatch) -> None:
    def parameter_gradients() -> list[Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GELU(), nn.Conv2d(4, 1, 3, padding=1))
        model = model.double()
        x = torch.randn(3, 1, 6, 6, dtype=torch.float64)
        loss = FNEJacobianSpectralNorm(max_iter=50, tol=1e-8)(x, x, model) + model(x).square().mean()
        loss.backward()  # a backward without inputs=: every parameter's gradient is computed
        return [parameter.grad for parameter in model.parameters()]

    routed = parameter_gradients()
    monkeypatch.setattr(lipcheck.engine.regularisers, "linearisable_convolutions", contextlib.nullcontext)
    builtin = parameter_gradients()
    assert all(gradient is not None for gradient in routed)
    for ours, theirs in zip(routed, builtin, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


def test_calls_without_gradients_are_left_to_torch() -> None:
    convolution = nn.Conv2d(1, 2, 3)
    x = torch.randn(1, 1, 5, 5)
    with linearisable_convolutions(), torch.no_grad():
        assert convolution(x).grad_fn is None
    with linearisable_convolutions():
        assert type(convolution(x).grad_fn).__name__ == "_ConvolutionBackward"
        unbatched = convolution(x[0])  # (C, H, W): torch's own path
        assert "ConvolutionBackward0" in backward_node_names(unbatched)
        assert "_ConvolutionBackward" not in backward_node_names(unbatched)
