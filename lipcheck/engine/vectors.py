"""Per-sample vector operations of the solvers and the shared random start vector."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lipcheck.engine.result import DEFAULT_SEED


def start_vector(shape: torch.Size, seed: int | None, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A seeded unit start vector (B, n), the same for every sample.

    Sharing it makes each sample's result independent of which other samples share its batch, so
    shards and resumed runs reproduce an uninterrupted run.
    """
    generator = torch.Generator().manual_seed(DEFAULT_SEED if seed is None else seed)
    n = math.prod(shape[1:])
    u = torch.randn(n, generator=generator, dtype=torch.float64)
    u = (u / u.norm()).to(dtype=dtype, device=device)
    return u.expand(shape[0], n).clone()


def start_component_floor(n: int, confidence: float) -> float:
    """t such that P(|<b, v>| < t) <= 1 - confidence for b uniform on the unit sphere of R^n and any
    unit v: <b, v> has the density c_n (1 - x^2)^((n-3)/2) on [-1, 1], at most c_n <= sqrt((n-1) / 2 pi)
    (Gautschi's inequality), so t = (1 - confidence) sqrt(pi / (2 (n-1))) will do."""
    if n <= 1:
        return 1.0
    return (1 - confidence) * math.sqrt(math.pi / (2 * (n - 1)))


# What torch says when a product needs a part of the graph that was freed before it ran.
def row_norm(v: Tensor) -> Tensor:
    """||v_b|| per row, accumulated in float64: in float32 the squares of a model's products underflow
    once its norm is below about 1e-10, and a zero norm would end the sample's run."""
    return torch.linalg.vector_norm(v, dim=1, dtype=torch.float64).to(v.dtype)


def safe_divide(v: Tensor, norms: Tensor) -> Tensor:
    """v / norms row-wise, with zero rows where the norm is zero."""
    scale = torch.where(norms > 0, 1 / torch.where(norms > 0, norms, 1), 0)
    return v * scale.unsqueeze(1)


def combine(vectors: Tensor, coefficients: Tensor) -> Tensor:
    """sum_k coefficients[b, k] vectors[b, k] for vectors (B, K, n) and coefficients (B, K): (B, n)."""
    return torch.bmm(coefficients.unsqueeze(1), vectors).squeeze(1)
