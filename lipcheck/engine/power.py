"""The power method on J^T J (the seed paper's method, arXiv 2012.13247)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from lipcheck.engine.operator import non_finite_products
from lipcheck.engine.result import (
    DEFAULT_CONFIDENCE,
    IterationCallback,
)
from lipcheck.engine.vectors import row_norm, safe_divide, start_component_floor


def power_method(
    gram: Callable[[Tensor], Tensor],
    u0: Tensor,
    *,
    max_iter: int,
    tol: float,
    confidence: float = DEFAULT_CONFIDENCE,
    callback: IterationCallback | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Power iteration on A = J^T J with a Rayleigh quotient, per sample (the seed paper's method).

    u_{k+1} = A u_k / ||A u_k||; sigma_k = sqrt(<u_k, A u_k>) increases towards sigma_max at the rate
    (sigma_2 / sigma_1)^(2k). A sample stops when |sigma_k - sigma_{k-1}| <= tol * sigma_k, which can
    stop early when the gap is small; the returned residual shows how far u is from a singular vector.

    u0: (B, n) unit rows. Returns sigma, iterations, converged, residual (all (B,)) and vectors (B, n).
    """
    batch = u0.shape[0]
    u = u0
    sigma = torch.zeros(batch, dtype=torch.float64, device=u0.device)
    residual = torch.full_like(sigma, math.inf)
    iterations = torch.zeros(batch, dtype=torch.int64, device=u0.device)
    converged = torch.zeros(batch, dtype=torch.bool, device=u0.device)
    vector = u0.clone()
    log_floor = math.log(start_component_floor(u0.shape[1], confidence))
    log_power = torch.zeros_like(sigma)  # log ||A^k b||, the product of the iterates' norms
    log_upper = torch.full_like(sigma, math.inf)
    for iteration in range(1, max_iter + 1):
        active = ~converged
        v = gram(u)
        theta = (u * v).sum(1).double()
        # A NaN or Inf anywhere in a row of v makes its <u, v> NaN or Inf: (B,) numbers to check.
        broken = active & ~torch.isfinite(theta)
        if bool(broken.any()):
            raise non_finite_products(broken.nonzero().flatten().tolist())
        theta = theta.clamp_min(0)
        new_sigma = theta.sqrt()
        new_residual = row_norm(v - theta.to(v.dtype).unsqueeze(1) * u).double()
        new_residual = torch.where(theta > 0, new_residual / torch.where(theta > 0, theta, 1), 0)
        norm = row_norm(v)
        log_power = torch.where(active, log_power + norm.double().log(), log_power)
        bound = (log_power - log_floor) / iteration
        log_upper = torch.where(active, torch.minimum(log_upper, bound), log_upper)
        change = (new_sigma - sigma).abs()
        stopped = active & ((change <= tol * new_sigma) if iteration > 1 else (theta == 0))
        sigma = torch.where(active, new_sigma, sigma)
        residual = torch.where(active, new_residual, residual)
        iterations = torch.where(active, iteration, iterations)
        vector = torch.where(active.unsqueeze(1), u, vector)
        converged |= stopped
        if callback is not None:
            callback(iteration, sigma, ~converged)
        if bool(converged.all()):
            break
        u = torch.where((~converged).unsqueeze(1), safe_divide(v, norm), u)
    upper = torch.maximum((log_upper / 2).exp(), sigma)
    return sigma, iterations, converged, residual, vector, upper
