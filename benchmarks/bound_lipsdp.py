"""Certified bounds by method on the networks of the LipSDP comparison: product, loop transformation
(liplt), LipSDP-Neuron certified in float64 (lipsdp), and an interior-point LipSDP-Neuron (cvxpy with
Clarabel, when installed and the network is small enough), with the time of each and the largest sigma
found (a lower bound: dense Jacobians at random inputs at several scales).

    python benchmarks/bound_lipsdp.py [--threads 1] [--only mlp-2 sample dncnn ...] [--reference]

The networks (seeded): ReLU MLPs 2-[32,32]-1, 10-[64]x3-10 and 784-[128]x4-10; a 3-layer 3x3 ReLU
convnet on 1x16x16; the sample denoiser; DnCNN of depth 8 and 16 channels on 1x32x32.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from zoo import DnCNN, _seeded  # noqa: E402

import lipcheck  # noqa: E402


def mlp(sizes: list[int], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


def convnet() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 1, 3, padding=1),
    ).eval()  # fmt: skip


def dncnn() -> nn.Module:
    torch.manual_seed(4)  # the convolutions' initial weights; _seeded sets the BatchNorm statistics
    return _seeded(DnCNN(depth=8, width=16), 4).eval()


NETWORKS: dict[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]] = {
    "mlp-2": lambda: (mlp([2, 32, 32, 1], 0), (2,)),
    "mlp-10": lambda: (mlp([10, 64, 64, 64, 10], 1), (10,)),
    "mlp-784": lambda: (mlp([784, 128, 128, 128, 128, 10], 2), (784,)),
    "convnet": lambda: (convnet(), (1, 16, 16)),
    "sample": lambda: (torch.export.load(ROOT / "sample_models" / "denoiser.pt2").module(), (1, 16, 16)),
    "dncnn": lambda: (dncnn(), (1, 32, 32)),
}


def largest_found(model: nn.Module, shape: tuple[int, ...], count: int = 64) -> float:
    """The largest sigma at random inputs at several scales (dense Jacobians where small, else the engine)."""
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.1, 0.5, 1.0, 3.0]).repeat_interleave(count // 4)
    x = torch.randn((len(scales), *shape), generator=generator) * scales.reshape(-1, *[1] * len(shape))
    return float(lipcheck.worst_case_search(model, x, radius=0.0, steps=0, seed=0).sigma.max())


def timed(function: Callable[[], float]) -> tuple[float, float]:
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def reference(model: nn.Module) -> float:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_lipsdp import lipsdp_neuron_cvxpy

    return lipsdp_neuron_cvxpy([layer.weight for layer in model if isinstance(layer, nn.Linear)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=list(NETWORKS))
    parser.add_argument("--reference", action="store_true", help="also run cvxpy on the MLPs (slow)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        "| network | found | product | liplt | lipsdp (method) | cvxpy LipSDP | time liplt / lipsdp / cvxpy |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name in args.only:
        model, shape = NETWORKS[name]()
        found = largest_found(model, shape)
        liplt, liplt_time = timed(lambda: lipcheck.upper_bound(model, shape, method="liplt"))  # type: ignore  # noqa: B023
        sdp, sdp_time = timed(lambda: lipcheck.upper_bound(model, shape, method="lipsdp"))  # type: ignore  # noqa: B023
        ref, ref_time = "", ""
        if args.reference and name.startswith("mlp"):
            value, seconds = timed(lambda: reference(model))  # noqa: B023
            ref, ref_time = f"{value:.4g}", f" / {seconds:.1f} s"
        print(
            f"| {name} | {found:.4g} | {liplt.product_bound:.4g} | {liplt.upper_bound:.4g} | "
            f"{sdp.upper_bound:.4g} ({sdp.method}) | {ref} | "
            f"{liplt_time:.1f} s / {sdp_time:.1f} s{ref_time} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
