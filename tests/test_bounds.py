"""lipcheck.upper_bound: never below the exact Lipschitz constant, exact where the layer allows it."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import lipcheck
from lipcheck.bounds import gram_iteration_bound, matrix_spectral_norm
from lipcheck.errors import InputError, UnsupportedOperationError

# Exact factors carry a relative margin of 1e-9; exact comparisons allow a little more.
EXACT = 1e-7


def jacobian_norm(model: nn.Module, x: Tensor) -> float:
    """||df/dx (x)||_2 of one sample x (no batch dimension), from the dense float64 Jacobian."""
    jacobian = torch.func.jacrev(lambda z: model(z.unsqueeze(0)).squeeze(0))(x)
    return float(torch.linalg.matrix_norm(jacobian.detach().reshape(-1, x.numel()), ord=2))


def largest_jacobian_norm(model: nn.Module, shape: tuple[int, ...], samples: int = 4) -> float:
    """max over random inputs of ||J(x)||_2: a lower bound on the Lipschitz constant (exact when linear)."""
    generator = torch.Generator().manual_seed(0)
    return max(
        jacobian_norm(model, 2 * torch.randn(shape, generator=generator, dtype=torch.float64))
        for _ in range(samples)
    )


def prepared(model: nn.Module) -> nn.Module:
    """The model in float64 and eval mode, with BatchNorm statistics and normalisation weights far from
    the identity."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.3)
                module.weight.copy_(2 * torch.randn(module.weight.shape, generator=generator))
            if isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and module.weight is not None:
                module.weight.copy_(2 * torch.randn(module.weight.shape, generator=generator))
    return model.double().eval()


class Residual(nn.Module):
    """x + scale * inner(x)."""

    def __init__(self, inner: nn.Module, scale: float) -> None:
        super().__init__()
        self.inner = inner
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.scale * self.inner(x)


class TwoBranches(nn.Module):
    """cat([f(x), g(x)]) along channels."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Conv2d(2, 3, 3, padding=1)
        self.g = nn.Conv2d(2, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.f(x), torch.tanh(self.g(x))], dim=1).permute(0, 2, 3, 1).reshape(1, -1)


class Erf(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return 3 * torch.special.erfc(x)


class Square(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * x


class Interpolate(nn.Module):
    def __init__(self, **options: object) -> None:
        super().__init__()
        self.options = options

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.interpolate(x, **self.options)  # type: ignore[arg-type]


class SplitSliceCat(nn.Module):
    """Chunks, a strided slice and a split, scaled differently and joined again."""

    def forward(self, x: Tensor) -> Tensor:
        first, second = x.chunk(2, dim=1)
        head, tail = torch.split(x, [1, 4], dim=2)
        parts = [3 * first, -second, x[:, :, ::2], 0.5 * head, tail]
        return torch.cat([part.flatten(1) for part in parts], dim=1)


def PReLUWithSlopes(slopes: list[float]) -> nn.PReLU:  # noqa: N802 (a layer factory)
    layer = nn.PReLU(len(slopes))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(slopes))
    return layer


# Every supported layer kind, alone or in a small model: (model, input shape).
LAYER_KINDS: dict[str, tuple[nn.Module, tuple[int, ...]]] = {
    "linear": (nn.Linear(7, 5), (7,)),
    "linear_no_bias_3d_input": (nn.Linear(4, 6, bias=False), (3, 4)),
    "conv1d": (nn.Conv1d(3, 4, 4, padding=2, dilation=2), (3, 11)),
    "conv1d_grouped_strided": (nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2), (4, 9)),
    "conv2d_zero_padding": (nn.Conv2d(2, 3, 3, padding=1), (2, 6, 6)),
    "conv2d_same": (nn.Conv2d(2, 2, 4, padding="same"), (2, 6, 5)),
    "conv2d_circular": (nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), (2, 5, 6)),
    "conv2d_circular_strided": (nn.Conv2d(2, 2, 3, stride=2, padding=2, padding_mode="circular"), (2, 5, 5)),
    "conv2d_reflect": (nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), (2, 5, 5)),
    "conv2d_replicate": (nn.Conv2d(2, 2, 3, padding=2, padding_mode="replicate"), (2, 4, 4)),
    "conv2d_1x1_strided": (nn.Conv2d(3, 5, 1, stride=2), (3, 5, 5)),
    "conv_transpose2d": (
        nn.ConvTranspose2d(2, 4, 3, stride=2, padding=1, output_padding=1, groups=2),
        (2, 4, 4),
    ),
    "conv3d": (nn.Conv3d(2, 2, 3, padding=1), (2, 3, 4, 4)),
    "batch_norm": (nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)), (2, 5, 5)),
    "batch_norm1d": (nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4)), (5,)),
    "batch_norm_alone": (nn.BatchNorm2d(3), (3, 2, 2)),
    "avg_pool": (nn.AvgPool2d(3, 2, padding=1), (2, 7, 7)),
    "avg_pool_ceil_no_pad_count": (
        nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False),
        (1, 6, 6),
    ),
    "avg_pool_divisor": (nn.AvgPool2d(2, 1, divisor_override=3), (1, 4, 5)),
    "avg_pool1d": (nn.AvgPool1d(2), (2, 7)),
    "max_pool": (nn.MaxPool2d(3, 2, padding=1), (2, 7, 7)),
    "max_pool_dilated": (nn.MaxPool2d(2, 1, dilation=2), (1, 6, 6)),
    "max_pool1d": (nn.MaxPool1d(2), (2, 8)),
    "adaptive_avg_pool": (nn.AdaptiveAvgPool2d((3, 2)), (2, 7, 5)),
    "global_avg_pool": (nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), (3, 4, 4)),
    "adaptive_max_pool": (nn.AdaptiveMaxPool2d((3, 2)), (2, 7, 5)),
    "layer_norm": (nn.LayerNorm(5), (3, 5)),
    "layer_norm_2d_no_affine": (nn.LayerNorm((2, 3), eps=0.1, elementwise_affine=False), (4, 2, 3)),
    "group_norm": (nn.GroupNorm(2, 4, eps=1e-3), (4, 3, 3)),
    "layer_norm_mlp": (nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3)), (6,)),
    "upsample_nearest": (nn.Upsample(scale_factor=2), (1, 3, 3)),
    "upsample_nearest_exact": (Interpolate(size=(5, 7), mode="nearest-exact"), (2, 3, 4)),
    "upsample_bilinear": (nn.Upsample(scale_factor=2, mode="bilinear"), (2, 3, 4)),
    "upsample_bilinear_aligned": (Interpolate(size=(7, 5), mode="bilinear", align_corners=True), (1, 4, 3)),
    "upsample_bilinear_antialias": (Interpolate(size=(3, 2), mode="bilinear", antialias=True), (1, 7, 5)),
    "upsample_bicubic": (Interpolate(scale_factor=1.5, mode="bicubic"), (1, 4, 4)),
    "upsample_linear1d": (Interpolate(size=9, mode="linear"), (2, 4)),
    "upsample_trilinear": (Interpolate(size=(3, 4, 2), mode="trilinear"), (1, 2, 3, 3)),
    "pixel_shuffle": (nn.PixelShuffle(2), (8, 2, 3)),
    "pixel_unshuffle": (nn.PixelUnshuffle(2), (2, 4, 6)),
    "reflection_pad": (nn.ReflectionPad2d((1, 2, 0, 1)), (1, 3, 4)),
    "replication_pad": (nn.ReplicationPad2d((2, 0, 1, 1)), (2, 3, 3)),
    "split_slice_cat": (SplitSliceCat(), (4, 5)),
    "prelu_steep": (nn.Sequential(nn.Linear(4, 4), PReLUWithSlopes([-3.0, 0.5, 2.0, 0.1])), (4,)),
    "pad_constant": (nn.ConstantPad2d((1, 2, 0, 1), 0.5), (1, 3, 3)),
    "flatten_unflatten": (nn.Sequential(nn.Flatten(), nn.Linear(12, 12), nn.Unflatten(1, (3, 4))), (3, 4)),
    "dropout_eval": (nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2)), (4,)),
    "identity": (nn.Identity(), (2, 3)),
    "residual": (Residual(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Softplus()), -0.7), (2, 4, 4)),
    "concatenation": (TwoBranches(), (2, 4, 4)),
    "mlp_activations": (
        nn.Sequential(
            nn.Linear(5, 6),
            nn.ReLU(),
            nn.Linear(6, 6),
            nn.LeakyReLU(-1.5),
            nn.Linear(6, 6),
            nn.ELU(2.0),
            nn.Linear(6, 6),
            nn.Tanh(),
            nn.Linear(6, 6),
            nn.Sigmoid(),
            nn.Linear(6, 6),
            nn.GELU(),
            nn.Linear(6, 6),
            nn.SiLU(),
            nn.Linear(6, 6),
            nn.Softplus(2.0),
            nn.Linear(6, 6),
            nn.Hardtanh(),
            nn.Linear(6, 6),
            nn.Mish(),
            nn.Linear(6, 6),
            nn.Hardswish(),
            nn.Linear(6, 6),
            nn.SELU(),
            nn.Linear(6, 6),
            nn.CELU(0.5),
            nn.Linear(6, 6),
            nn.PReLU(6),
            nn.Linear(6, 6),
            nn.ReLU6(),
            nn.Linear(6, 6),
            nn.Softmax(-1),
            nn.Linear(6, 3),
            nn.LogSoftmax(-1),
        ),
        (5,),
    ),  # fmt: skip
    "cnn": (
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"),
            nn.GELU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16, 3),
        ),
        (1, 8, 8),
    ),  # fmt: skip
}


@pytest.mark.parametrize("kind", sorted(LAYER_KINDS))
def test_bound_is_never_below_the_largest_jacobian_norm(kind: str) -> None:
    torch.manual_seed(sum(map(ord, kind)))
    model, shape = LAYER_KINDS[kind]
    model = prepared(model)
    report = lipcheck.upper_bound(model, shape)
    assert report.upper_bound >= largest_jacobian_norm(model, shape) * (1 - 1e-12)
    assert report.input_shape == shape
    assert all(layer.bound >= 0 and layer.method for layer in report.layers)


# Single layers whose factor is their exact norm: linear maps (and affine BatchNorm), so the Jacobian at
# any input is the operator itself.
EXACT_LAYERS = (
    "linear", "conv2d_circular", "avg_pool", "avg_pool_ceil_no_pad_count", "avg_pool_divisor", "avg_pool1d",
    "adaptive_avg_pool", "global_avg_pool", "upsample_nearest", "pad_constant", "conv2d_1x1_strided",
    "batch_norm_alone", "identity", "linear_no_bias_3d_input", "max_pool1d", "upsample_nearest_exact",
    "upsample_bilinear", "upsample_bilinear_aligned", "upsample_bilinear_antialias", "upsample_bicubic",
    "upsample_linear1d", "upsample_trilinear", "pixel_shuffle", "pixel_unshuffle", "reflection_pad",
    "replication_pad",
)  # fmt: skip


@pytest.mark.parametrize("kind", EXACT_LAYERS)
def test_bound_of_a_single_exact_layer_is_its_norm(kind: str) -> None:
    torch.manual_seed(3)
    model, shape = LAYER_KINDS[kind]
    model = prepared(model)
    exact = largest_jacobian_norm(model, shape)
    assert exact <= lipcheck.upper_bound(model, shape).upper_bound <= exact * (1 + EXACT)


def test_max_pooling_bound_is_reached_where_an_entry_is_the_maximum_of_all_its_windows() -> None:
    # 3x3 windows with stride 2 and padding 1 on 7x7: entry (1, 1) lies in 4 windows, their maximum here.
    x = torch.zeros(1, 7, 7, dtype=torch.float64)
    x[0, 1, 1] = 1.0
    pool = nn.MaxPool2d(3, 2, padding=1)
    assert lipcheck.upper_bound(pool, (1, 7, 7)).upper_bound == pytest.approx(
        jacobian_norm(pool, x), rel=EXACT
    )


NORMALISATIONS = {
    "layer_norm": (nn.LayerNorm(6), (3, 6)),
    "layer_norm_2d": (nn.LayerNorm((2, 3), eps=0.1), (2, 2, 3)),
    "layer_norm_no_affine": (nn.LayerNorm(4, elementwise_affine=False), (4,)),
    "group_norm": (nn.GroupNorm(2, 4), (4, 3, 3)),
    "group_norm_one_entry_per_channel": (nn.GroupNorm(3, 6, eps=1e-3), (6,)),
}


@pytest.mark.parametrize("kind", sorted(NORMALISATIONS))
def test_normalisation_bound_is_reached_on_flat_groups(kind: str) -> None:
    # At an input constant over every normalised group the Jacobian is diag(weight) P / sqrt(eps), the
    # largest it gets: the bound is exact there, and above the norm near it and at random inputs.
    layer, shape = NORMALISATIONS[kind]
    layer = prepared(layer)
    bound = lipcheck.upper_bound(layer, shape).upper_bound
    flat = torch.full(shape, 0.7, dtype=torch.float64)
    exact = jacobian_norm(layer, flat)
    assert exact <= bound <= exact * (1 + EXACT)
    generator = torch.Generator().manual_seed(2)
    for scale in (1e-4, 1e-2, 1.0, 5.0):
        x = flat + scale * torch.randn(shape, generator=generator, dtype=torch.float64)
        assert jacobian_norm(layer, x) <= bound
    program = torch.export.export(layer, (flat.unsqueeze(0),)).run_decompositions()  # native_*_norm
    assert lipcheck.upper_bound(program, shape).upper_bound == pytest.approx(bound, rel=1e-12)


def test_normalisation_without_eps_is_refused() -> None:
    with pytest.raises(UnsupportedOperationError, match="eps = 0.*not Lipschitz"):
        lipcheck.upper_bound(nn.LayerNorm(4, eps=0.0), (4,))


@pytest.mark.parametrize("seed", range(3))
def test_linear_and_circular_convolution_are_within_one_percent(seed: int) -> None:
    torch.manual_seed(seed)
    linear = prepared(nn.Linear(40, 30))
    exact = float(torch.linalg.matrix_norm(linear.weight.detach(), ord=2))
    report = lipcheck.upper_bound(linear, (40,))
    assert exact <= report.upper_bound <= 1.01 * exact
    assert report.layers[0].kind == "linear" and report.layers[0].method == "exact SVD"

    conv = prepared(nn.Conv2d(3, 4, 5, padding=2, padding_mode="circular"))
    exact = jacobian_norm(conv, torch.zeros(3, 8, 8, dtype=torch.float64))
    report = lipcheck.upper_bound(conv, (3, 8, 8))
    assert exact <= report.upper_bound <= 1.01 * exact
    assert "circular convolution at 8x8" in report.layers[0].method


@pytest.mark.parametrize("scale", [0.5, -2.0, 3.0])
def test_residual_connection_adds_branch_bounds(scale: float) -> None:
    inner = nn.Linear(6, 6, bias=False)
    with torch.no_grad():
        inner.weight.copy_(torch.diag(torch.tensor([0.25, 1.5, -1.0, 0.0, 0.5, 1.0])))
    model = prepared(Residual(nn.Sequential(inner, nn.Tanh()), scale))
    report = lipcheck.upper_bound(model, (6,), method="product")
    assert report.upper_bound == pytest.approx(1 + abs(scale) * 1.5, rel=EXACT)


def test_scalar_multiplication_and_concatenation_compose_as_documented() -> None:
    model = prepared(TwoBranches())
    report = lipcheck.upper_bound(model, (2, 4, 4), method="product")
    factors = {layer.name: layer.bound for layer in report.layers}
    assert report.upper_bound == pytest.approx(math.hypot(factors["f"], factors["g"]), rel=EXACT)


def test_the_report_lists_each_layer_factor_with_its_method() -> None:
    model = prepared(LAYER_KINDS["cnn"][0])
    report = lipcheck.upper_bound(model, (1, 8, 8), method="product")
    kinds = [layer.kind for layer in report.layers]
    assert kinds == ["conv2d", "batch_norm", "max_pool2d", "conv2d", "gelu", "avg_pool2d", "linear"]
    assert [layer.name for layer in report.layers][:2] == ["0", "1"]
    product = math.prod(layer.bound for layer in report.layers)
    assert report.upper_bound == pytest.approx(product, rel=1e-12)
    assert report.assumptions == {}


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    rows=st.integers(1, 12),
    columns=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_linear_bound_is_exact_for_random_shapes(rows: int, columns: int, seed: int) -> None:
    torch.manual_seed(seed)
    model = prepared(nn.Linear(columns, rows))
    exact = float(torch.linalg.matrix_norm(model.weight.detach(), ord=2))
    assert exact <= lipcheck.upper_bound(model, (columns,)).upper_bound <= exact * (1 + EXACT)


@st.composite
def convolutions(draw: st.DrawFn) -> tuple[nn.Module, tuple[int, ...]]:
    dims = draw(st.sampled_from([1, 2]))
    groups = draw(st.integers(1, 3))
    channels_in = groups * draw(st.integers(1, 2))
    channels_out = groups * draw(st.integers(1, 2))
    kernel = draw(st.integers(1, 4))
    dilation = draw(st.integers(1, 2))
    stride = draw(st.integers(1, 3))
    transposed = draw(st.booleans())
    padding_mode = "zeros" if transposed else draw(st.sampled_from(["zeros", "zeros", "circular", "reflect"]))
    reach = (kernel - 1) * dilation
    size = draw(st.integers(max(reach + 1, 2), 7 if dims == 2 else 12))
    padding = draw(st.integers(0, min(reach, size - 1) if padding_mode != "zeros" else reach + 1))
    if padding_mode == "reflect":
        padding = min(padding, size - 1)
    if transposed:  # keep the output non-empty
        padding = min(padding, ((size - 1) * stride + reach) // 2)
    torch.manual_seed(draw(st.integers(0, 2**16)))
    if transposed:
        cls = nn.ConvTranspose1d if dims == 1 else nn.ConvTranspose2d
        layer = cls(channels_in, channels_out, kernel, stride, padding, groups=groups, dilation=dilation)
    else:
        cls = nn.Conv1d if dims == 1 else nn.Conv2d
        layer = cls(
            channels_in, channels_out, kernel, stride, padding, dilation, groups, padding_mode=padding_mode
        )
    return layer, (channels_in, *([size] * dims))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(case=convolutions())
def test_convolution_bound_is_never_below_the_exact_norm_for_random_shapes(
    case: tuple[nn.Module, tuple[int, ...]],
) -> None:
    layer, shape = case
    layer = prepared(layer)
    exact = jacobian_norm(layer, torch.zeros(shape, dtype=torch.float64))
    report = lipcheck.upper_bound(layer, shape)
    assert report.upper_bound >= exact * (1 - 1e-12)
    reach = (layer.kernel_size[0] - 1) * layer.dilation[0]
    if layer.padding_mode == "circular" and layer.stride[0] == 1 and 2 * layer.padding[0] == reach:
        assert report.upper_bound <= exact * (1 + EXACT)  # a circular convolution: the bound is its norm


def test_gram_iteration_is_a_certified_upper_bound_that_converges() -> None:
    generator = torch.Generator().manual_seed(5)
    matrix = torch.randn(300, 120, generator=generator, dtype=torch.float64)
    exact = float(torch.linalg.matrix_norm(matrix, ord=2))
    bounds = [gram_iteration_bound(matrix, steps) for steps in (1, 3, 6, 12)]
    assert all(bound >= exact for bound in bounds)
    assert bounds == sorted(bounds, reverse=True)
    assert bounds[-1] <= exact * 1.01
    huge = matrix * 1e200
    assert gram_iteration_bound(huge, 12) == pytest.approx(bounds[-1] * 1e200, rel=1e-9)


def test_large_matrices_use_gram_iteration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lipcheck.bounds.norms.EXACT_SVD_MAX_SIDE", 8)
    matrix = torch.randn(20, 30, dtype=torch.float64)
    bound, method = matrix_spectral_norm(matrix)
    assert method.startswith("Gram iteration")
    assert bound >= float(torch.linalg.matrix_norm(matrix, ord=2))


def test_an_operation_without_a_rule_is_named_with_the_fix() -> None:
    # the command line's syntax first (most users meet it there), then Python's
    operation = "aten.special_erfc.default"
    fix = re.escape(f"--assume {operation}=L (from Python: assume={{'{operation}': L}})")
    with pytest.raises(UnsupportedOperationError, match=r"'aten\.special_erfc\.default'.*" + fix):
        lipcheck.upper_bound(Erf(), (4,))
    with pytest.raises(UnsupportedOperationError, match=r"pass --assume aten\.mul\.Tensor=L \(from Python"):
        lipcheck.upper_bound(Square(), (3,))


def test_assume_supplies_the_constant_and_is_recorded() -> None:
    report = lipcheck.upper_bound(Erf(), (4,), assume={"aten.special_erfc.default": 2 / math.sqrt(math.pi)})
    assert report.upper_bound == pytest.approx(3 * 2 / math.sqrt(math.pi))
    assert report.assumptions == {"aten.special_erfc.default": 2 / math.sqrt(math.pi)}
    assert [layer.kind for layer in report.layers] == ["assumed", "scale"]
    by_packet = lipcheck.upper_bound(Erf(), (4,), assume={"aten.special_erfc": 1.0})
    assert by_packet.assumptions == {"aten.special_erfc": 1.0}


def test_assume_for_an_operation_not_in_the_graph_is_refused() -> None:
    with pytest.raises(InputError, match="aten.erf.default"):
        lipcheck.upper_bound(nn.Linear(3, 3), (3,), assume={"aten.erf.default": 1.0})
    with pytest.raises(InputError, match="finite non-negative"):
        lipcheck.upper_bound(nn.Linear(3, 3), (3,), assume={"aten.linear.default": -1.0})


def test_a_product_of_two_input_dependent_tensors_is_refused() -> None:
    with pytest.raises(UnsupportedOperationError, match=r"aten\.mul\.Tensor"):
        lipcheck.upper_bound(Square(), (3,))


def test_training_mode_batch_norm_and_dropout_are_refused() -> None:
    with pytest.raises(UnsupportedOperationError, match="BatchNorm in training mode.*eval"):
        lipcheck.upper_bound(nn.BatchNorm2d(3).train(), (3, 4, 4))
    with pytest.raises(UnsupportedOperationError, match="dropout.*eval"):
        lipcheck.upper_bound(nn.Dropout().train(), (3,))


def test_torchscript_and_unexportable_models_are_refused() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated
        scripted = torch.jit.script(nn.Linear(3, 3))
    with pytest.raises(UnsupportedOperationError, match="TorchScript"):
        lipcheck.upper_bound(scripted, (3,))

    class DataDependent(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x if x.sum() > 0 else -x

    with pytest.raises(UnsupportedOperationError, match="torch.export could not trace"):
        lipcheck.upper_bound(DataDependent(), (3,))


def test_exported_programs_and_their_modules_are_accepted() -> None:
    model = prepared(LAYER_KINDS["cnn"][0])
    expected = lipcheck.upper_bound(model, (1, 8, 8)).upper_bound
    program = torch.export.export(model, (torch.zeros(1, 1, 8, 8, dtype=torch.float64),))
    assert lipcheck.upper_bound(program, (1, 8, 8)).upper_bound == pytest.approx(expected, rel=1e-12)
    assert lipcheck.upper_bound(program.module(), (1, 8, 8)).upper_bound == pytest.approx(expected, rel=1e-12)
    decomposed = program.run_decompositions()
    assert lipcheck.upper_bound(decomposed, (1, 8, 8)).upper_bound >= expected * (1 - 1e-12)


@pytest.mark.parametrize("shape", [(), (0, 3), (2.5,), "3x3"])
def test_bad_input_shapes_are_refused(shape: object) -> None:
    with pytest.raises(InputError, match="input shape"):
        lipcheck.upper_bound(nn.Identity(), shape)  # type: ignore[arg-type]


def test_float32_models_are_bounded_in_float64() -> None:
    torch.manual_seed(0)
    model = nn.Linear(10, 10)
    report = lipcheck.upper_bound(model, 10)
    assert report.upper_bound >= float(torch.linalg.matrix_norm(model.weight.detach().double(), ord=2))


class InPlace(nn.Module):
    """Convolutions joined by in-place operations, one of them through a view (as DnCNN and UNet do)."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        self.in_place = in_place
        self.first = nn.Conv2d(1, 3, 3, padding=1)
        self.second = nn.Conv2d(3, 3, 3, padding=1)
        self.third = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.first(x)
        if self.in_place:
            y.view(1, 3, -1).relu_()  # mutates y through a view: later reads of y see the ReLU
            y.mul_(3.0)
            z = self.second(y)
            nn.functional.leaky_relu_(z, -2.0)
            nn.functional.hardtanh_(z.clamp_(-1.0, 1.0))
            torch.sigmoid_(z)
            w = self.third(z)
            w.add_(x, alpha=-2.0)
            return w.tanh_()
        y = 3.0 * torch.relu(y)
        z = torch.clamp(nn.functional.leaky_relu(self.second(y), -2.0), -1.0, 1.0)
        z = torch.sigmoid(nn.functional.hardtanh(z))
        return torch.tanh(self.third(z) - 2.0 * x)


def test_in_place_operations_take_the_rule_of_their_out_of_place_form() -> None:
    torch.manual_seed(11)
    in_place = prepared(InPlace(in_place=True))
    out_of_place = prepared(InPlace(in_place=False))
    out_of_place.load_state_dict(in_place.state_dict())
    x = torch.randn(1, 1, 5, 5, dtype=torch.float64)
    assert torch.allclose(in_place(x.clone()), out_of_place(x))
    report = lipcheck.upper_bound(in_place, (1, 5, 5))
    expected = lipcheck.upper_bound(out_of_place, (1, 5, 5))
    assert report.upper_bound == pytest.approx(expected.upper_bound, rel=1e-12)
    assert report.upper_bound >= largest_jacobian_norm(out_of_place, (1, 5, 5))  # the same function
    assert "scale" in [layer.kind for layer in report.layers]  # mul_ by 3 was seen through the aliasing


def test_an_in_place_operation_on_the_input_is_bounded() -> None:
    class ReluInput(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            x.relu_()
            return 2 * x

    assert lipcheck.upper_bound(ReluInput(), (3,)).upper_bound == pytest.approx(2.0, rel=EXACT)


class Amplifier(nn.Module):
    """Twenty layers scaled by 1e30, then two copies concatenated: the bound passes float64's range."""

    def __init__(self, scale: float = 1e30, layers: int = 20) -> None:
        super().__init__()
        self.scale = scale
        self.layers = layers

    def forward(self, x: Tensor) -> Tensor:
        for _ in range(self.layers):
            x = self.scale * x
        return torch.cat([x, x])


def test_a_bound_that_overflows_float64_fails_with_a_message() -> None:
    with pytest.raises(lipcheck.AuditFailedError, match="overflows.*no finite bound"):
        lipcheck.upper_bound(Amplifier(1e30, 20), (3,))


def test_large_finite_bounds_are_composed_without_overflow() -> None:
    # sqrt(L1^2 + L2^2) of a concatenation once squared 1e200 and raised a bare OverflowError
    report = lipcheck.upper_bound(Amplifier(1e200, 1), (3,))
    assert report.upper_bound == pytest.approx(math.sqrt(2) * 1e200, rel=EXACT)


def test_division_by_a_zero_constant_is_refused() -> None:
    class DivideByZero(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x / torch.tensor([1.0, 0.0, 2.0])

    with pytest.raises(UnsupportedOperationError, match="divides by a constant that is 0"):
        lipcheck.upper_bound(DivideByZero(), (3,))


def test_prelu_bound_is_its_steepest_slope() -> None:
    # one channel at slope -3: at an input negative there the Jacobian of PReLU alone is diag(slopes)
    layer = PReLUWithSlopes([-3.0, 0.5, 2.0, 0.1]).double()
    x = -torch.ones(1, 4, 1, dtype=torch.float64)
    exact = float(torch.linalg.matrix_norm(torch.func.jacrev(layer)(x).detach().reshape(4, 4), ord=2))
    assert lipcheck.upper_bound(layer, (4, 1)).upper_bound == pytest.approx(exact, rel=EXACT) == 3.0


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.attention(x, x, x, need_weights=False)[0]


def test_attention_is_refused_with_why_and_what_assume_would_mean() -> None:
    with pytest.raises(UnsupportedOperationError) as raised:
        lipcheck.upper_bound(SelfAttention().eval(), (4, 8))
    message = str(raised.value)
    assert "no global Lipschitz constant" in message and "'attention'" in message
    assert "--assume aten.scaled_dot_product_attention.default=L" in message and "\n" not in message
    assumed = lipcheck.upper_bound(
        SelfAttention().eval(), (4, 8), assume={"aten.scaled_dot_product_attention.default": 1.0}
    )
    assert assumed.assumptions == {"aten.scaled_dot_product_attention.default": 1.0}


def test_normalisation_factor_says_it_is_dominated_by_eps() -> None:
    report = lipcheck.upper_bound(nn.LayerNorm(4, eps=1e-4), (4,))
    assert "dominated by 1/sqrt(eps) = 100" in report.layers[0].method


# Elementwise activations and a point where the slope is largest: the bound of the layer alone is its
# slope there (the Jacobian at a constant input is that slope times the identity).
STEEPEST_POINTS: dict[str, tuple[nn.Module, float]] = {
    "relu": (nn.ReLU(), 1.0),
    "leaky_relu": (nn.LeakyReLU(-1.5), -1.0),
    "elu": (nn.ELU(2.0), -1e-9),
    "gelu": (nn.GELU(), math.sqrt(2)),
    "gelu_tanh": (nn.GELU(approximate="tanh"), 1.41850),
    "silu": (nn.SiLU(), 2.39936),
    "mish": (nn.Mish(), 1.49057),
    "hardswish": (nn.Hardswish(), 3 - 1e-9),
    "tanh": (nn.Tanh(), 0.0),
    "sigmoid": (nn.Sigmoid(), 0.0),
    "softplus": (nn.Softplus(), 40.0),
}


@pytest.mark.parametrize("kind", sorted(STEEPEST_POINTS))
def test_activation_bound_is_its_largest_slope(kind: str) -> None:
    layer, point = STEEPEST_POINTS[kind]
    bound = lipcheck.upper_bound(layer, (3,)).upper_bound
    steepest = jacobian_norm(layer, torch.full((3,), point, dtype=torch.float64))
    assert steepest <= bound <= steepest * (1 + 1e-8)
    assert bound >= largest_jacobian_norm(layer, (3,))
