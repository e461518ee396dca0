"""How far any slope-based bound can go on the sample denoiser: the slope-box relaxation.

The sample model is f(x) = x - C3 silu(C2 silu(C1 x + b1) + b2) - b3 (3x3 zero-padded convolutions). A
bound that only uses each activation's slope range [a, b] (the loop transformation, LipSDP with any
multipliers, the product) must hold for every network whose activations are replaced by diagonal maps
D with entries in [a, b], each entry chosen independently: it is at least

    sup over D1, D2 of ||I - C3 D2 C2 D1 C1||.

This script raises that sup by gradient ascent over the diagonals (a lower estimate of it), and prints
it next to the loop transformation's and the product's bounds and the largest sigma at the samples.

    python benchmarks/bound_slope_box.py [--restarts 3] [--steps 150]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

import lipcheck
from lipcheck.bounds.rules.elementwise import SILU_SLOPE

SAMPLE = Path(__file__).resolve().parent.parent / "sample_models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    program = torch.export.load(SAMPLE / "denoiser.pt2")
    weights = [program.state_dict[f"residual.{i}.weight"].detach().double() for i in (0, 2, 4)]
    side = 16
    low, high = 1 - SILU_SLOPE, SILU_SLOPE
    basis = torch.eye(side * side, dtype=torch.float64).reshape(-1, 1, side, side)
    channels = weights[0].shape[0]

    def jacobian_norm(t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        d1 = low + (high - low) * torch.sigmoid(t1)
        d2 = low + (high - low) * torch.sigmoid(t2)
        h = functional.conv2d(basis, weights[0], padding=1) * d1
        h = functional.conv2d(h, weights[1], padding=1) * d2
        jacobian = (basis - functional.conv2d(h, weights[2], padding=1)).reshape(side * side, -1)
        return torch.linalg.matrix_norm(jacobian, ord=2)

    generator = torch.Generator().manual_seed(0)
    best = 0.0
    start = time.perf_counter()
    for _ in range(args.restarts):
        t1 = (
            3 * torch.randn(1, channels, side, side, generator=generator, dtype=torch.float64)
        ).requires_grad_()
        t2 = (
            3 * torch.randn(1, channels, side, side, generator=generator, dtype=torch.float64)
        ).requires_grad_()
        optimiser = torch.optim.Adam([t1, t2], lr=0.3)
        for _ in range(args.steps):
            value = jacobian_norm(t1, t2)
            optimiser.zero_grad()
            (-value).backward()
            optimiser.step()
        best = max(best, float(value.detach()))
    seconds = time.perf_counter() - start
    x = torch.from_numpy(np.load(SAMPLE / "denoiser_inputs.npy"))
    found = lipcheck.audit(program.module(), x, tol=1e-6).summary.max
    product = lipcheck.upper_bound(program, (1, side, side), method="product").upper_bound
    liplt = lipcheck.upper_bound(program, (1, side, side)).upper_bound
    print(f"largest sigma at the {len(x)} samples: {found:.4g}")
    steps = f"{args.restarts} x {args.steps} steps, {seconds:.0f} s"
    print(f"slope-box relaxation, raised by ascent ({steps}): >= {best:.4g}")
    print(f"loop transformation (liplt): {liplt:.4g}; product: {product:.4g}")
    ratios = f"box >= {best / found:.3g}, liplt {liplt / found:.3g}, product {product / found:.3g}"
    print(f"ratios to the largest sigma: {ratios}")


if __name__ == "__main__":
    main()
