"""Measure the coverage of `lipcheck.upper_bound` on the zoo of tests/zoo.py, and on deepinv's denoisers
when deepinv is installed: for each model, bounded or refused (with the reason), the time of the bound by
each method (product, liplt), the largest sigma an audit finds on a few random inputs in [0, 1), and each
method's bound with its bracket ratio bound / sigma.

    python benchmarks/bound_zoo.py [--threads 1] [--samples 4]

Prints a markdown table (the one in docs/bounds.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from zoo import ZOO, Entry  # noqa: E402

import lipcheck  # noqa: E402


class WithNoiseLevel(nn.Module):
    """x -> model(x, sigma): the call `--arg sigma=...` makes from the command line."""

    def __init__(self, model: nn.Module, sigma: float) -> None:
        super().__init__()
        self.model = model
        self.sigma = sigma

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, self.sigma)


def deepinv_entries() -> dict[str, Entry]:
    """deepinv 0.5's denoisers with random weights at 1x32x32, as issue 15 tried them."""
    try:
        import deepinv
    except ImportError:
        return {}
    models = deepinv.models

    def seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        def make() -> nn.Module:
            torch.manual_seed(0)
            return build().eval()

        return make

    shape = (1, 32, 32)
    return {
        "deepinv DnCNN": Entry(
            seeded(lambda: models.DnCNN(1, 1, pretrained=None)), shape, "deepinv 0.5 DnCNN (20 layers)"
        ),
        "deepinv UNet": Entry(
            seeded(lambda: models.UNet(1, 1, scales=3)), shape, "deepinv 0.5 UNet (3 scales)"
        ),
        "deepinv DRUNet": Entry(
            seeded(lambda: WithNoiseLevel(models.DRUNet(1, 1, pretrained=None), 0.1)),
            shape,
            "deepinv 0.5 DRUNet, sigma = 0.1 (--arg sigma=0.1)",
        ),
        "deepinv SCUNet": Entry(
            seeded(lambda: models.SCUNet(in_nc=1, pretrained=None)), (1, 64, 64), "deepinv 0.5 SCUNet"
        ),
    }


def measure(name: str, entry: Entry, samples: int) -> str:
    """One row: the bound by both methods (each with its time), the largest sigma found, both ratios."""
    model = entry.build()
    bounds, times = {}, {}
    for method in ("product", "liplt"):
        start = time.perf_counter()
        try:
            bounds[method] = lipcheck.upper_bound(model, entry.input_shape, method=method).upper_bound
        except lipcheck.LipcheckError as error:
            seconds = time.perf_counter() - start
            return f"| {name} | {entry.description} | refused: {error} | {seconds:.2f} s | | | | |"
        times[method] = time.perf_counter() - start
    x = torch.rand((samples, *entry.input_shape), generator=torch.Generator().manual_seed(0))
    found = lipcheck.audit(model, x, tol=1e-4).summary.max
    product, liplt = bounds["product"], bounds["liplt"]
    return (
        f"| {name} | {entry.description} | bounded | {times['product']:.2f} s / {times['liplt']:.2f} s "
        f"| {found:.4g} | {product:.4g} ({product / found:.3g}) | {liplt:.4g} ({liplt / found:.3g}) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--only", nargs="*", help="names of the models to measure (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.samples} random inputs")
    print(
        "| model | architecture | outcome | time: product / liplt | largest sigma found "
        "| product bound (bound / found) | liplt bound (bound / found) |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for name, entry in {**ZOO, **deepinv_entries()}.items():
        if not args.only or name in args.only:
            print(measure(name, entry, args.samples), flush=True)


if __name__ == "__main__":
    main()
