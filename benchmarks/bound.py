"""Time `lipcheck.upper_bound` on a ResNet-18-sized network at 3x224x224 on CPU.

The network is ResNet-18's architecture (11.7M parameters) built from plain torch.nn, with BatchNorm in
eval mode and randomised running statistics. Prints the parameter count, the time of one call (export
and every layer rule included) and the bound.

    python benchmarks/bound.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn

import lipcheck


class BasicBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels_out),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.downsample(x))


def resnet18(classes: int = 1000) -> nn.Module:
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]  # fmt: skip
    channels = 64
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(channels, width, stride), BasicBlock(width, width, 1)]
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = resnet18()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    model.eval()
    parameters = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    report = lipcheck.upper_bound(model, (3, 224, 224))
    seconds = time.perf_counter() - start
    largest = sorted(report.layers, key=lambda layer: layer.bound, reverse=True)[:1]
    print(f"model: ResNet-18 architecture, {parameters / 1e6:.2f}M parameters, input 3x224x224")
    print(f"threads: {torch.get_num_threads()}")
    print(f"upper_bound: {report.upper_bound:.6g} ({len(report.layers)} layer factors)")
    print(f"method: {report.method}; the product of the factors: {report.product_bound:.6g}")
    print(f"largest factor: {largest[0].name} {largest[0].kind} {largest[0].bound:.4g} ({largest[0].method})")
    print(f"time: {seconds:.1f} s")


if __name__ == "__main__":
    main()
