"""Small modules with the derivative patterns of real architectures, for the products and the adjoint
test (tests/test_products.py), importable as `--arch tests/derivative_zoo.py:factory`.

- `mobilenet_style`: hardswish activations and a hardsigmoid squeeze-excitation gate (MobileNetV3,
  GhostNet); torch has no double backward of hardsigmoid.
- `vit_style`: a transformer block calling `scaled_dot_product_attention` (ViT, DeiT, MobileViT),
  whose fused CPU kernel has neither a double backward nor forward-mode AD.
- `forward_only`: a custom autograd Function with a correct backward and jvp but no double backward,
  as compiled kernels are (once_differentiable): only forward mode can give J u.
- `wrong_transpose`: reverse mode off by a factor while the derivative of the backward (what double
  backward gives as J u) is right, as torch's reverse mode was on LeViT: the adjoint test must refuse it.
- `wrong_backward`: a once_differentiable backward off by a factor with a correct jvp: forward mode and
  reverse mode disagree.
- `stochastic_forward_only`: `forward_only` with dropout left on: forward mode must refuse it.
- `noisy_forward_only`: `forward_only` with noise drawn in every call (in eval mode too): an audit,
  which seeds every call and sees the draw, refuses forward mode for it.

Each factory seeds its weights, returns the module in eval mode (except where the point is training
mode), and takes `double=True` for float64.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


def _ready(module: nn.Module, double: bool, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.4 * torch.randn(parameter.shape, generator=generator))
    module = module.double() if double else module
    return module.eval()


class MobileNetStyle(nn.Module):
    """conv -> hardswish -> depthwise conv -> squeeze-excitation (hardsigmoid gate) -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.squeeze = nn.Conv2d(8, 4, 1)
        self.excite = nn.Conv2d(4, 8, 1)
        self.act = nn.Hardswish()
        self.gate = nn.Hardsigmoid()
        self.head = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.stem(x))
        h = self.act(self.depthwise(h))
        scale = self.gate(self.excite(F.relu(self.squeeze(h.mean((2, 3), keepdim=True)))))
        h = h * scale
        return self.head(F.hardswish(h).mean((2, 3)))


class ViTStyle(nn.Module):
    """Patch embedding, one pre-norm transformer block (SDPA attention, GELU MLP), mean pooling."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(3, dim, 2, stride=2)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 4)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        batch, count, dim = tokens.shape
        q, k, v = self.qkv(self.norm1(tokens)).view(batch, count, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, count, dim)
        tokens = tokens + self.proj(attended)
        tokens = tokens + self.mlp(self.norm2(tokens))
        return self.head(tokens.mean(1))


class _OnceDifferentiableSine(torch.autograd.Function):
    """sin, with a backward that has no derivative (as a compiled kernel's) and a jvp; `factor`
    scales the backward (1: correct)."""

    @staticmethod
    def forward(x: Tensor, factor: float) -> Tensor:
        return torch.sin(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, factor = inputs
        ctx.save_for_backward(x)
        ctx.x, ctx.factor = x, factor

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return ctx.factor * grad * torch.cos(x), None

    @staticmethod
    def jvp(ctx: Any, tangent: Tensor, _: Any) -> Tensor:
        return tangent * torch.cos(ctx.x)


class _SineTranspose(torch.autograd.Function):
    """g -> factor * cos(x) g (a wrong J^T of sin when factor != 1), whose own derivative in g is the
    right cos(x) u: double backward then gives the right J u beside the wrong J^T."""

    @staticmethod
    def forward(ctx: Any, grad: Tensor, x: Tensor, factor: float) -> Tensor:
        ctx.save_for_backward(x)
        return factor * grad * torch.cos(x)

    @staticmethod
    def backward(ctx: Any, tangent: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return tangent * torch.cos(x), None, None


class _SineWithWrongTranspose(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, factor: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.factor = factor
        return torch.sin(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return _SineTranspose.apply(grad, x, ctx.factor), None


class _Custom(nn.Module):
    """linear -> a custom sine -> linear (-> dropout when `dropout`)."""

    def __init__(self, sine: Any, factor: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.sine, self.factor = sine, factor
        self.first = nn.Linear(6, 7)
        self.second = nn.Linear(7, 5)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.second(self.sine.apply(self.first(x), self.factor)))


def mobilenet_style(double: bool = False) -> nn.Module:
    return _ready(MobileNetStyle(), double, 1)


def vit_style(double: bool = False) -> nn.Module:
    return _ready(ViTStyle(), double, 2)


def forward_only(double: bool = False) -> nn.Module:
    return _ready(_Custom(_OnceDifferentiableSine, 1.0), double, 3)


def wrong_transpose(double: bool = False, factor: float = 2.0) -> nn.Module:
    return _ready(_Custom(_SineWithWrongTranspose, factor), double, 4)


def wrong_backward(double: bool = False, factor: float = 2.0) -> nn.Module:
    return _ready(_Custom(_OnceDifferentiableSine, factor), double, 5)


def stochastic_forward_only(double: bool = False) -> nn.Module:
    return _ready(_Custom(_OnceDifferentiableSine, 1.0, dropout=0.5), double, 6).train()


class _Noisy(nn.Module):
    """`forward_only` with noise drawn from torch's global generator in every call, in any mode."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _Custom(_OnceDifferentiableSine, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x + 0.01 * torch.randn_like(x))


def noisy_forward_only(double: bool = False) -> nn.Module:
    return _ready(_Noisy(), double, 7)


# The input shape of one sample for each factory.
INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "mobilenet_style": (3, 6, 6),
    "vit_style": (3, 6, 6),
    "forward_only": (6,),
    "wrong_transpose": (6,),
    "wrong_backward": (6,),
    "stochastic_forward_only": (6,),
    "noisy_forward_only": (6,),
}
