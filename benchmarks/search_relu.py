"""The worst-case search on a ReLU MLP (784-[128]x4-10, seeded): the samples' largest sigma, the search's,
and the smoothed protocol it replaces (the model's ReLUs swapped for softplus(beta), searched there, and
sigma measured on the real model at the points found).

    python benchmarks/search_relu.py [--threads 1] [--count 1000] [--top 100]

From `count` random inputs the `top` of largest sigma are searched, at radius 2 for 30 steps.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bound_lipsdp import mlp  # noqa: E402

import lipcheck  # noqa: E402


def softplus_copy(model: nn.Module, beta: float) -> nn.Module:
    smooth = copy.deepcopy(model)
    for name, module in list(smooth.named_children()):
        if isinstance(module, nn.ReLU):
            setattr(smooth, name, nn.Softplus(beta=beta))
    return smooth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--top", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = mlp([784, 128, 128, 128, 128, 10], 2)
    x = torch.randn(args.count, 784, generator=torch.Generator().manual_seed(0))
    at_samples = lipcheck.worst_case_search(model, x, radius=0.0, steps=0, seed=0).sigma
    x = x[at_samples.argsort(descending=True)[: args.top]]
    print(f"largest sigma at the {args.count} samples: {float(at_samples.max()):.4g}")
    for beta in (5.0, 20.0):
        start = time.perf_counter()
        found = lipcheck.worst_case_search(softplus_copy(model, beta), x, radius=2.0, steps=30, seed=0)
        real = lipcheck.worst_case_search(model, found.point, radius=0.0, steps=0, seed=0).sigma
        seconds = time.perf_counter() - start
        print(f"protocol, softplus beta {beta:g}: {float(real.max()):.4g} ({seconds:.0f} s)")
    start = time.perf_counter()
    found = lipcheck.worst_case_search(model, x, radius=2.0, steps=30, seed=0)
    seconds = time.perf_counter() - start
    value = float(found.sigma.max())
    print(f"worst_case_search(model, x, radius=2.0, steps=30, seed=0): {value:.4g} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
