"""What an audit of deepinv's denoisers costs, at their default sizes (docs/deepinv.md).

For DnCNN, DRUNet (sigma 0.1), SCUNet, UNet and GSDRUNet (with `detach = False`, sigma 0.1), built as
docs/deepinv.md builds them (untrained, seeded), on its 6 images of 1x32x32: the seconds of one
forward+backward pass of the batch, the seconds of the audit (`spectral_norm` at lipcheck audit's
defaults: Lanczos, tol 1e-4, float32), their ratio, and the products with J^T J per sample. Needs
deepinv:

    PYTHONPATH=. python benchmarks/deepinv_denoisers.py [NAME ...]
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

import lipcheck


def models() -> dict[str, tuple[torch.nn.Module, dict[str, Any]]]:
    """The five denoisers with the weights docs/deepinv.md saves (one seed, built in the page's order),
    in eval mode, and the keyword arguments of their forward."""
    import deepinv

    torch.manual_seed(0)
    built = {
        "DnCNN": deepinv.models.DnCNN(in_channels=1, out_channels=1, pretrained=None),
        "DRUNet": deepinv.models.DRUNet(in_channels=1, out_channels=1, pretrained=None),
        "SCUNet": deepinv.models.SCUNet(in_nc=1, pretrained=None),
        "UNet": deepinv.models.UNet(in_channels=1, out_channels=1),
        "GSDRUNet": deepinv.models.GSDRUNet(in_channels=1, out_channels=1, pretrained=None),
    }
    built["GSDRUNet"].detach = False  # as the page's factory: differentiable as called
    noise_level = {"DRUNet": {"sigma": 0.1}, "GSDRUNet": {"sigma": 0.1}}
    return {name: (model.eval(), noise_level.get(name, {})) for name, model in built.items()}


def forward_backward_seconds(f: Callable[[Tensor], Tensor], x: Tensor, repeats: int = 3) -> float:
    """The median seconds of f(x) and one backward pass to x."""
    times = []
    for _ in range(repeats):
        z = x.clone().requires_grad_()
        begin = time.perf_counter()
        y = f(z)
        torch.autograd.grad(y, z, torch.ones_like(y))
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def main(names: list[str]) -> None:
    images = torch.from_numpy(np.random.default_rng(0).random((6, 1, 32, 32), dtype=np.float32))
    chosen = models()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, 6 images of 1x32x32, float32")
    print("model     parameters  fwd+bwd s  audit s  ratio  products/sample (mean, max)")
    for name in names or list(chosen):
        model, kwargs = chosen[name]

        def f(z: Tensor, model: torch.nn.Module = model, kwargs: dict[str, Any] = kwargs) -> Tensor:
            return model(z, **kwargs)

        step = forward_backward_seconds(f, images)
        begin = time.perf_counter()
        result = lipcheck.spectral_norm(f, images)
        audit = time.perf_counter() - begin
        products = result.iterations.double()
        parameters = sum(p.numel() for p in model.parameters())
        print(
            f"{name:9} {parameters:10,}  {step:9.3f}  {audit:7.1f}  {audit / step:5.0f}  "
            f"{products.mean():.1f}, {int(products.max())}   converged {int(result.converged.sum())} of 6",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
