"""The loop-transformation bound (`method="liplt"`): never below the truth, never above the product,
exact on linear maps, and tighter than the product where blocks merge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import lipcheck
from lipcheck.bounds import compose, graph, loop_transformation

SAMPLE = Path(__file__).resolve().parent.parent / "sample_models" / "denoiser.pt2"
EXACT = 1e-7

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "mish": nn.Mish,
    "hardswish": nn.Hardswish,
    "elu": lambda: nn.ELU(1.5),
    "selu": nn.SELU,
    "softplus": nn.Softplus,
    "prelu": lambda: nn.PReLU(1, init=-0.5),
}


class Residual(nn.Module):
    """a x + b inner(x): x + g(x), x - f(x) and the firmly-nonexpansive-style 2 f(x) - x."""

    def __init__(self, inner: nn.Module, a: float, b: float) -> None:
        super().__init__()
        self.inner, self.a, self.b = inner, a, b

    def forward(self, x: Tensor) -> Tensor:
        return self.a * x + self.b * self.inner(x)


class Branches(nn.Module):
    """cat([f(x), max_pool(g(x)) upsampled]) then a 1x1 convolution: a UNet's skip in miniature."""

    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        self.f = nn.Conv2d(2, 3, 3, padding=1)
        self.g = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), activation, nn.MaxPool2d(2), nn.Upsample(scale_factor=2)
        )
        self.join = nn.Conv2d(6, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.join(torch.cat([self.f(x), self.g(x)], dim=1))


def random_net(kind: str, activation: str, width: int) -> tuple[nn.Module, tuple[int, ...]]:
    act = ACTIVATIONS[activation]
    if kind == "mlp":
        layers: list[nn.Module] = [nn.Linear(5, width)]
        for _ in range(3):
            layers += [act(), nn.Linear(width, width)]
        return nn.Sequential(*layers, act(), nn.Linear(width, 3)), (5,)
    if kind == "conv":
        return nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            act(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            act(),
            nn.Conv2d(width, 1, 3, padding=1),
        ), (1, 5, 5)
    inner = nn.Sequential(nn.Conv2d(2, width, 3, padding=1), act(), nn.Conv2d(width, 2, 3, padding=1))
    if kind == "residual":
        return Residual(inner, 1.0, 0.5), (2, 4, 4)
    if kind == "minus":
        return Residual(inner, 1.0, -1.0), (2, 4, 4)
    if kind == "reflected":
        return Residual(inner, -1.0, 2.0), (2, 4, 4)
    return Branches(act()), (2, 4, 4)


def prepared(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.3)
                module.weight.copy_(2 * torch.randn(module.weight.shape, generator=generator))
    return model.double().eval()


def jacobian_norms(model: nn.Module, points: Tensor) -> Tensor:
    """||J(x)||_2 at each point (B, ...), from dense float64 Jacobians."""

    def one(x: Tensor) -> Tensor:
        jacobian = torch.func.jacrev(lambda z: model(z.unsqueeze(0)).squeeze(0))(x)
        return torch.linalg.matrix_norm(jacobian.reshape(-1, x.numel()), ord=2)

    return torch.stack([one(x) for x in points])


def largest_found(model: nn.Module, shape: tuple[int, ...], seed: int) -> float:
    """The largest ||J(x)|| over inputs at several scales, raised by the worst-case search."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.1, 0.5, 1.0, 2.0, 5.0], dtype=torch.float64).repeat_interleave(3)
    points = torch.randn((len(scales), *shape), generator=generator, dtype=torch.float64)
    points = points * scales.reshape(-1, *[1] * len(shape))
    found = float(jacobian_norms(model, points).detach().max())
    searched = lipcheck.worst_case_search(model, points[:2], radius=1.0, steps=2, seed=0, tol=1e-6)
    return max(found, float(searched.sigma.max()))


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    kind=st.sampled_from(["mlp", "conv", "residual", "minus", "reflected", "branches"]),
    activation=st.sampled_from(sorted(ACTIVATIONS)),
    width=st.integers(2, 5),
    seed=st.integers(0, 2**16),
)
def test_bound_is_never_below_the_truth_nor_above_the_product(
    kind: str, activation: str, width: int, seed: int
) -> None:
    torch.manual_seed(seed)
    model, shape = random_net(kind, activation, width)
    model = prepared(model, seed)
    report = lipcheck.upper_bound(model, shape, method="liplt")
    assert report.method == "liplt"
    assert report.upper_bound >= largest_found(model, shape, seed) * (1 - 1e-9)
    assert report.upper_bound <= report.product_bound
    assert sum(term.contribution for term in report.terms) >= report.upper_bound * (1 - 1e-12)


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (nn.Linear(7, 5), (7,)),
        (nn.Conv2d(2, 3, 3, padding=1), (2, 6, 6)),
        (nn.Conv2d(2, 2, 5, padding=2, stride=2), (2, 7, 7)),
        (nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 2, 3, padding=1)), (2, 5, 5)),
        (nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1), (2, 4, 4)),
        (Residual(nn.Conv2d(2, 2, 3, padding=1), 1.0, -1.0), (2, 5, 5)),
        (Residual(nn.Conv2d(2, 2, 3, padding=1), -1.0, 2.0), (2, 5, 5)),
    ],
    ids=[
        "linear",
        "conv",
        "strided_conv",
        "conv_after_conv",
        "conv_transpose",
        "x_minus_conv",
        "two_conv_minus_x",
    ],
)
def test_linear_models_get_their_exact_norm(model: nn.Module, shape: tuple[int, ...]) -> None:
    """A linear model (a layer, merged layers, a residual of one) is one block, read and normed exactly;
    the product composes the layers' circular-embedding norms (above it) and residuals as 1 + L."""
    torch.manual_seed(5)
    model = model.double().eval()
    exact = float(jacobian_norms(model, torch.zeros((1, *shape), dtype=torch.float64)).detach()[0])
    report = lipcheck.upper_bound(model, shape, method="liplt")
    assert exact <= report.upper_bound <= exact * (1 + EXACT)
    assert [term.name for term in report.terms] == ["input"]
    assert "exact SVD of the merged block" in report.terms[0].method


def test_the_sample_models_bound_is_tighter_than_the_product_and_attributed() -> None:
    program = torch.export.load(SAMPLE)
    product = lipcheck.upper_bound(program, (1, 16, 16), method="product")
    report = lipcheck.upper_bound(program, (1, 16, 16), method="liplt")
    assert report.product_bound == pytest.approx(product.upper_bound, rel=1e-12)
    assert report.upper_bound < 0.7 * product.upper_bound
    assert report.upper_bound == pytest.approx(sum(term.contribution for term in report.terms), rel=1e-12)
    # the deviation of the last SiLU, amplified by what comes before it, dominates
    largest = max(report.terms, key=lambda term: term.contribution)
    assert (largest.node, largest.kind) == ("silu_1", "silu deviation")
    x = torch.from_numpy(__import__("numpy").load(SAMPLE.with_name("denoiser_inputs.npy")))[:8].double()
    model = program.module()
    found = float(jacobian_norms(lambda z: model(z.float()).double(), x).max())
    assert report.upper_bound >= found


def test_without_readable_blocks_it_is_the_product(monkeypatch: pytest.MonkeyPatch) -> None:
    """|c| + r is the activation's largest |slope|, so with every block normed by its factors the
    recursion gives back the product's total."""
    monkeypatch.setattr(loop_transformation, "DENSE_MAX_SIDE", 0)
    monkeypatch.setattr(loop_transformation, "LANCZOS_TOTAL_WORK", 0)
    torch.manual_seed(2)
    model, shape = random_net("conv", "silu", 3)
    model = prepared(model, 2)
    report = lipcheck.upper_bound(model, shape, method="liplt")
    assert report.upper_bound == pytest.approx(report.product_bound, rel=1e-9)
    assert all(term.method == "product of its factors" for term in report.terms)
    assert report.failure_probability == 0


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_activation_slopes_hold_every_secant_and_are_tight(activation: str) -> None:
    """[a, b] holds (f(x) - f(y)) / (x - y) for all pairs, and f' on [-12, 12] comes within 2e-5 of both
    ends (softplus and SELU approach theirs only as |x| grows)."""
    model = nn.Sequential(ACTIVATIONS[activation]()).double().eval()
    program = graph.functional(torch.export.export(model, (torch.zeros(1, 4, dtype=torch.float64),)))
    walker = graph.GraphBound(program, {})
    walker.run()
    (site,) = loop_transformation._LoopTransformation(walker, walker.output_nodes).sites.values()
    low, high = site.centre - site.radius, site.centre + site.radius
    grid = torch.linspace(-12, 12, 240_001, dtype=torch.float64, requires_grad=True)
    values = model(grid.reshape(-1, 1)).reshape(-1)
    (slopes,) = torch.autograd.grad(values.sum(), grid)
    assert low <= float(slopes.min()) <= low + 2e-5
    assert high - 1e-5 <= float(slopes.max()) <= high
    generator = torch.Generator().manual_seed(0)
    x, y = (10 * torch.randn(2, 20_000, generator=generator, dtype=torch.float64)).unbind()
    with torch.no_grad():
        secants = (model(x.reshape(-1, 1)) - model(y.reshape(-1, 1))).reshape(-1) / (x - y)
    assert float(secants.min()) >= low - 1e-12 and float(secants.max()) <= high + 1e-12


def test_product_method_is_kept_and_reported() -> None:
    model = prepared(random_net("residual", "relu", 3)[0], 0)
    report = lipcheck.upper_bound(model, (2, 4, 4), method="product")
    assert report.method == "product" and report.terms == ()
    assert report.upper_bound == report.product_bound
    with pytest.raises(lipcheck.LipcheckError, match="bound method"):
        lipcheck.upper_bound(model, (2, 4, 4), method="sdp")


def test_a_graph_it_cannot_handle_keeps_the_product_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(*args: object) -> None:
        raise RuntimeError("an operation vmap cannot batch")

    monkeypatch.setattr(compose, "loop_transformation_bound", fails)
    model = prepared(random_net("conv", "relu", 2)[0], 0)
    report = lipcheck.upper_bound(model, (1, 5, 5), method="liplt")
    assert report.method == "product" and report.terms == ()
    assert report.upper_bound == report.product_bound


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.ReLU(), nn.MaxPool1d(1)),
        nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Softmax(-1)),
        nn.Sequential(
            nn.Conv1d(1, 2, 3, padding=1), nn.SiLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(4, 2)
        ),
    ],
    ids=["relu_then_max_pool", "tanh_then_softmax", "silu_then_max_pool"],
)
def test_an_opaque_operation_after_an_activation_sees_the_activations_whole_slope(model: nn.Module) -> None:
    """The input of an opaque operation that is an activation's output carries the activation's own
    deviation: x -> max_pool(relu(x)) with a window of 1 is the identity where x > 0, Lipschitz 1."""
    torch.manual_seed(4)
    model = model.double().eval()
    shape = (1, 4)
    report = lipcheck.upper_bound(model, shape)
    assert report.upper_bound >= largest_found(model, shape, 4) * (1 - 1e-9)
    assert report.upper_bound <= report.product_bound * (1 + 1e-12)
