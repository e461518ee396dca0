"""Make the sample model and data of the README: a tiny convolutional denoiser, trained and exported.

The model removes Gaussian noise from 1x16x16 images of smooth random blobs. It is trained for a few
hundred steps on synthetic data (seeded, about half a minute on a CPU), exported with torch.export with
a dynamic batch dimension, and saved with 64 noisy test images:

    python sample_models/make_sample.py        # writes denoiser.pt2 and denoiser_inputs.npy here

Then: lipcheck audit sample_models/denoiser.pt2 --data sample_models/denoiser_inputs.npy
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

SIZE = 16
NOISE = 0.2
HERE = Path(__file__).resolve().parent


class Denoiser(nn.Module):
    """x -> x - r(x): three 3x3 convolutions predict the noise residual r."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.residual(x)


def blobs(count: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 1, SIZE, SIZE) images in [0, 1]: sums of three Gaussian blobs."""
    grid = torch.linspace(0, 1, SIZE)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    centres = torch.rand(count, 3, 2, generator=generator)
    widths = 0.05 + 0.15 * torch.rand(count, 3, 1, 1, generator=generator)
    heights = torch.rand(count, 3, 1, 1, generator=generator)
    dy = yy - centres[:, :, 0, None, None]
    dx = xx - centres[:, :, 1, None, None]
    images = (heights * torch.exp(-(dx**2 + dy**2) / (2 * widths**2))).sum(1, keepdim=True)
    return images.clamp(0, 1)


def main() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = Denoiser()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(400):
        clean = blobs(64, generator)
        noisy = clean + NOISE * torch.randn(clean.shape, generator=generator)
        loss = nn.functional.mse_loss(model(noisy), clean)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == 399:
            print(f"step {step:3d}  mse {loss.item():.5f}  (noise alone: {NOISE**2:.5f})")
    model.eval()

    clean = blobs(64, generator)
    inputs = (clean + NOISE * torch.randn(clean.shape, generator=generator)).float()
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    program = torch.export.export(model, (inputs[:2],), dynamic_shapes=({0: batch},))
    torch.export.save(program, HERE / "denoiser.pt2")
    np.save(HERE / "denoiser_inputs.npy", inputs.numpy())
    print(f"wrote {HERE / 'denoiser.pt2'} and {HERE / 'denoiser_inputs.npy'} {tuple(inputs.shape)}")


if __name__ == "__main__":
    main()
