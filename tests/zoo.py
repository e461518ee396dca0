"""A zoo of the architectures real networks use, with seeded weights, for the coverage of `lipcheck bound`.

Each entry builds a model in eval mode (BatchNorm statistics randomised, so that no layer is the
identity) and names its input shape and what `upper_bound` does with it: a bound, or a refusal whose
one-line message matches `refused`. `tests/test_bound_zoo.py` checks every entry;
`benchmarks/bound_zoo.py` measures the table of docs/bounds.md from the same entries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

SAMPLE_MODEL = Path(__file__).resolve().parent.parent / "sample_models" / "denoiser.pt2"


def _seeded(model: nn.Module, seed: int) -> nn.Module:
    """The model in eval mode, its BatchNorm statistics and scales drawn from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


class BasicBlock(nn.Module):
    """ResNet's basic block, with torchvision's in-place ReLUs."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels_out),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.downsample(x)
        return self.relu(out)


def resnet18(width: int = 16, classes: int = 10) -> nn.Module:
    """ResNet-18's layout (stem, max pooling, 8 basic blocks, global pooling) at 1/4 of its width."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [
        nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]  # fmt: skip
    channels = width
    for factor, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
        layers += [
            BasicBlock(channels, width * factor, stride),
            BasicBlock(width * factor, width * factor, 1),
        ]
        channels = width * factor
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)]
    return _seeded(nn.Sequential(*layers), 0)


class InvertedResidual(nn.Module):
    """MobileNetV2/V3's block: 1x1 expansion, 3x3 depthwise convolution, 1x1 projection, Hardswish."""

    def __init__(self, channels_in: int, channels_out: int, stride: int, expansion: int = 4) -> None:
        super().__init__()
        hidden = channels_in * expansion
        self.block = nn.Sequential(
            nn.Conv2d(channels_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.Hardswish(inplace=True),
            nn.Conv2d(hidden, channels_out, 1, bias=False), nn.BatchNorm2d(channels_out),
        )  # fmt: skip
        self.residual = stride == 1 and channels_in == channels_out

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x) if self.residual else self.block(x)


def mobilenet(classes: int = 10) -> nn.Module:
    """A MobileNetV3-style network without squeeze-and-excitation (which multiplies two functions of
    the input and has no global constant)."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(inplace=True),
        InvertedResidual(16, 16, 1), InvertedResidual(16, 24, 2), InvertedResidual(24, 24, 1),
        InvertedResidual(24, 40, 2), InvertedResidual(40, 40, 1),
        nn.Conv2d(40, 96, 1, bias=False), nn.BatchNorm2d(96), nn.Hardswish(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, classes),
    )  # fmt: skip
    return _seeded(model, 1)


class ViT(nn.Module):
    """A small vision transformer: 4x4 patches, a class token, two pre-norm encoder layers."""

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, dim, 4, stride=4)
        self.token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.position = nn.Parameter(torch.randn(1, 65, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.token.expand(x.shape[0], -1, -1), tokens], dim=1) + self.position
        return self.head(self.norm(self.encoder(tokens))[:, 0])


def vit() -> nn.Module:
    torch.manual_seed(2)
    return ViT().eval()


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.tokens = nn.Sequential(nn.Linear(tokens, 2 * tokens), nn.GELU(), nn.Linear(2 * tokens, tokens))
        self.norm2 = nn.LayerNorm(dim)
        self.channels = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channels(self.norm2(x))


class Mixer(nn.Module):
    """An MLP-Mixer: 4x4 patches, token- and channel-mixing MLPs with LayerNorm, mean over tokens."""

    def __init__(self, dim: int = 32, depth: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, dim, 4, stride=4)
        self.blocks = nn.Sequential(*[MixerBlock(64, dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))


def mixer() -> nn.Module:
    torch.manual_seed(3)
    return Mixer().eval()


class DnCNN(nn.Module):
    """DnCNN (Zhang et al. 2017): x minus a stack of 3x3 convolutions with BatchNorm and in-place ReLU."""

    def __init__(self, depth: int = 8, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.noise = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x - self.noise(x)


def dncnn() -> nn.Module:
    torch.manual_seed(4)
    return _seeded(DnCNN(), 4)


def _double_conv(channels_in: int, channels_out: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False), nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False), nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    )  # fmt: skip


class UNet(nn.Module):
    """A two-level UNet: max pooling down, bilinear upsampling up, skip connections concatenated."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.down1 = _double_conv(1, width)
        self.down2 = _double_conv(width, 2 * width)
        self.bottom = _double_conv(2 * width, 4 * width)
        self.up2 = _double_conv(6 * width, 2 * width)
        self.up1 = _double_conv(3 * width, width)
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        up = nn.functional.interpolate
        a = self.down1(x)
        b = self.down2(nn.functional.max_pool2d(a, 2))
        c = self.bottom(nn.functional.max_pool2d(b, 2))
        b = self.up2(torch.cat([b, up(c, scale_factor=2, mode="bilinear", align_corners=False)], dim=1))
        a = self.up1(torch.cat([a, up(b, scale_factor=2, mode="bilinear", align_corners=False)], dim=1))
        return x - self.out(a)


def unet() -> nn.Module:
    torch.manual_seed(5)
    return _seeded(UNet(), 5)


def sample_denoiser() -> nn.Module:
    return torch.export.load(SAMPLE_MODEL).module()


@dataclass(frozen=True)
class Entry:
    """One model of the zoo: how to build it, its input shape, and the refusal it gets (None: bounded)."""

    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    description: str
    refused: str | None = None


ZOO: dict[str, Entry] = {
    "resnet18": Entry(
        resnet18, (3, 32, 32), "ResNet-18 layout at width 16 (in-place ReLU, BatchNorm, max pool)"
    ),
    "mobilenet": Entry(
        mobilenet, (3, 32, 32), "MobileNetV3-style (depthwise convolutions, Hardswish, no SE)"
    ),
    "vit": Entry(vit, (3, 32, 32), "ViT, 4x4 patches, 2 pre-norm layers of 4 heads", refused="attention"),
    "mixer": Entry(mixer, (3, 32, 32), "MLP-Mixer, 4x4 patches, 2 blocks (LayerNorm, GELU)"),
    "sample": Entry(sample_denoiser, (1, 16, 16), "sample_models/denoiser.pt2 (x - 3 convolutions, SiLU)"),
    "dncnn": Entry(dncnn, (1, 32, 32), "DnCNN, 8 layers of 32 channels (BatchNorm, in-place ReLU)"),
    "unet": Entry(unet, (1, 32, 32), "UNet, 2 levels (max pool, bilinear upsampling, concatenation)"),
}
