"""Worst-case search: raise the lower bound on the Lipschitz constant by looking around each sample.

sigma(x) = ||J(x)||_2 at any input x is a lower bound on a model's Lipschitz constant, so the largest
sigma over a data set is one, and so is the largest sigma found anywhere near it. From every sample x0
of a batch, `worst_case_search` runs projected gradient ascent of sigma within the l2 ball
||x - x0|| <= R and returns the largest sigma it found, an engine value at a point of the ball.

Gradient. With v the top right singular vector at x (the engine's `vector`), sigma(x) = ||J(x) v|| and,
where the top singular value is simple, d sigma / dx = u^T (d J^T J / dx) u / (2 sigma) = the gradient
of ||J(x) v|| with v held fixed: the change of v does not change the value to first order (the same
argument as for the regulariser's gradient, docs/engine.md). It is one backward pass through the
double-backward graph that the engine's products already built (`engine.differentiable_sigma`), on the
whole batch at once: samples are independent, so the gradient of the sum of the batch's sigmas holds
every sample's own gradient.

Steps. Normalised gradient steps with backtracking, per sample. From the best point z so far (at first
the sample), the candidate is P(z + eta g / ||g||), with g the gradient at z and P the projection onto
the ball (a radial rescaling of the offset from x0 when it is longer than R). The step starts at
eta = R / 2. A candidate whose sigma is larger becomes the best point and the step is kept; otherwise
the step halves and the next candidate starts again from the best point, along the same gradient (a
line search by bisection). So the best value never decreases, two steps reach the boundary of the ball
when sigma keeps growing outwards, and the step shrinks geometrically onto a local maximum. (Growing
the step after a success, by 1.2 to 2, reached the maximum of a tanh ridge more slowly on the test
models and raised no model's figures.) Every candidate's sigma is computed by the engine with the
settings used at the sample (method, tolerance, seed), so the result is what an audit at that point
would report. Each step costs one model evaluation, one engine solve and one extra backward pass.

Piecewise-linear models. Where the model is piecewise linear (ReLU, LeakyReLU, hardtanh, max pooling),
sigma is piecewise constant: its gradient is zero almost everywhere, and ascent on it stays at the
sample. The ascent then runs on a smoothed surrogate (`smoothing.py`: softplus for ReLU and the like, a
log-sum-exp for max pooling), whose gradient and sigma steer the steps, while every point it visits is
also measured on the real model; the result is the largest real sigma met, at its point. So each step
costs two engine solves, and the reported value stays a true lower bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from lipcheck.auditing.smoothing import Smoothing
from lipcheck.engine import (
    DEFAULT_CONFIDENCE,
    DEFAULT_KRYLOV_DIM,
    JacobianOperator,
    SpectralNormResult,
    check_input,
    differentiable_sigma,
    solve,
)
from lipcheck.engine.products import build_operator
from lipcheck.errors import InputError
from lipcheck.options.choices import Method, Operator, Product

__all__ = ["SearchResult", "worst_case_search"]

# The first step is this fraction of the radius; a step that does not raise sigma is halved.
FIRST_STEP = 0.5


@dataclass(frozen=True)
class SearchResult:
    """What the worst-case search found around every sample of a batch.

    Attributes:
        start: the engine's result at the samples themselves (sigma, iterations, converged, residual,
            vector), exactly what `spectral_norm` returns there.
        sigma: (B,) the largest sigma found within the ball, an engine value at `point`; never below
            `start.sigma`, since the sample itself is the first point.
        point: (B, ...) like x, where `sigma` was found.
        distance: (B,) float64, ||point - x||_2 per sample, at most the radius (up to rounding).
        converged: (B,) bool, whether the engine converged at `point`.
        improved: (B,) int64, the number of steps that raised the sample's sigma.
    """

    start: SpectralNormResult
    sigma: Tensor
    point: Tensor
    distance: Tensor
    converged: Tensor
    improved: Tensor


def worst_case_search(
    f: Callable[..., Any],
    x: Tensor,
    *,
    radius: float,
    steps: int,
    method: Method | str = "lanczos",
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    krylov_dim: int = DEFAULT_KRYLOV_DIM,
    confidence: float = DEFAULT_CONFIDENCE,
    check_coupling: bool = True,
    operator: Operator | str = Operator.model,
) -> SearchResult:
    """Projected gradient ascent of sigma(x) = ||df/dx (x)||_2 within radius `radius` of every sample.

    Args:
        f: the model, as for `spectral_norm`; called once at x and once per step (at the candidates).
        x: (B, ...) floating tensor of samples.
        radius: the l2 radius R of the ball searched around each sample, >= 0.
        steps: the number of ascent steps, >= 0 (0 returns the samples' own values).
        method, max_iter, tol, seed, args, kwargs, krylov_dim, confidence, check_coupling, operator:
            as for `spectral_norm`, used at the samples and at every candidate (the coupling check only
            at the samples); with operator "fne" or "residual" the search ascends the norm of 2J - I
            or I - J.

    Returns:
        SearchResult: the engine's result at the samples, and the largest sigma found, where, and how
        far from the sample.

    Raises:
        InputError: a bad radius or number of steps, or what `spectral_norm` raises.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InputError(f"steps must be a non-negative integer, got {steps!r}")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not math.isfinite(radius):
        raise InputError(f"radius must be a finite number >= 0, got {radius!r}")
    if radius < 0:
        raise InputError(f"radius must be a finite number >= 0, got {radius!r}")
    check_input(x)
    settings: dict[str, Any] = {
        "method": method, "max_iter": max_iter, "tol": tol, "seed": seed, "confidence": confidence
    }  # fmt: skip
    searching = steps > 0 and radius > 0

    smoothing = Smoothing()
    piecewise: list[bool] = []  # whether the model has piecewise-linear operations to smooth

    def measure(z: Tensor, check: bool) -> tuple[JacobianOperator, SpectralNormResult]:
        # Double backward (with the decompositions): the ascent needs the gradient of sigma.
        jacobian, decompositions = build_operator(
            f, z, args, kwargs, operator=operator, product=Product.double_backward
        )
        result = solve(jacobian, krylov_dim=krylov_dim, check_coupling=check, **settings)
        return jacobian, replace(result, decompositions=decompositions)

    def evaluate(z: Tensor, check: bool) -> tuple[SpectralNormResult, SpectralNormResult, Tensor]:
        """The real model's result at z, and the surrogate's result and sigma gradient (the model's own
        where it has no piecewise-linear operation)."""
        jacobian, result = measure(z, check)
        if not searching:
            return result, result, torch.zeros_like(z)
        if not piecewise or piecewise[0]:
            smoothing.replaced = False
            with smoothing:
                smooth_jacobian, smooth = measure(z, False)
                replaced = smoothing.replaced
                if not piecewise:
                    piecewise.append(replaced)  # decided once, at the samples
                if replaced:
                    return result, smooth, _sigma_gradient(smooth_jacobian, smooth.vector)
        return result, result, _sigma_gradient(jacobian, result.vector)

    center = x.detach()
    start, guide, gradient = evaluate(center, check_coupling)
    best, best_guide = center, guide.sigma  # the ascent's point, by the surrogate's sigma
    found, best_sigma, converged = center, start.sigma, start.converged  # the real model's best
    improved = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    step = torch.full((x.shape[0],), FIRST_STEP * radius, dtype=torch.float64, device=x.device)
    for _ in range(steps if searching else 0):
        direction, moving = _unit_rows(gradient)
        if not bool(moving.any()):
            break
        offset = (step.to(x.dtype).unsqueeze(1) * direction).view_as(x)
        candidate = _project(best + offset, center, radius)
        result, candidate_guide, candidate_gradient = evaluate(candidate, False)
        ascended = moving & (candidate_guide.sigma > best_guide)
        rows = ascended.view(-1, *([1] * (x.dim() - 1)))
        best = torch.where(rows, candidate, best)
        gradient = torch.where(rows, candidate_gradient, gradient)
        best_guide = torch.where(ascended, candidate_guide.sigma, best_guide)
        step = torch.where(ascended, step, step / 2)
        better = moving & (result.sigma > best_sigma)
        found = torch.where(better.view(-1, *([1] * (x.dim() - 1))), candidate, found)
        best_sigma = torch.where(better, result.sigma, best_sigma)
        converged = torch.where(better, result.converged, converged)
        improved += better.to(torch.int64)
    distance = torch.linalg.vector_norm((found.double() - center.double()).flatten(1), dim=1)
    return SearchResult(start, best_sigma, found, distance, converged, improved)


def _sigma_gradient(operator: JacobianOperator, vector: Tensor) -> Tensor:
    """d sigma / dx per sample: the gradient of ||J(x) v|| with the top singular vector v held fixed."""
    with torch.enable_grad():
        sigma = differentiable_sigma(operator, vector)
        if not sigma.requires_grad:
            return torch.zeros_like(operator.x)
        (gradient,) = torch.autograd.grad(sigma.sum(), operator.x, allow_unused=True)
    if gradient is None:
        return torch.zeros_like(operator.x)
    return torch.nan_to_num(gradient.detach(), nan=0.0, posinf=0.0, neginf=0.0)


def _unit_rows(gradient: Tensor) -> tuple[Tensor, Tensor]:
    """Each sample's gradient scaled to unit norm (B, n), and which samples have a nonzero one (B,)."""
    rows = gradient.flatten(1)
    norms = torch.linalg.vector_norm(rows, dim=1)
    moving = norms > 0
    return rows / torch.where(moving, norms, 1).unsqueeze(1), moving


def _project(z: Tensor, center: Tensor, radius: float) -> Tensor:
    """The nearest point of the ball ||. - center|| <= radius, per sample."""
    offset = (z - center).flatten(1)
    norms = torch.linalg.vector_norm(offset.double(), dim=1)
    scale = torch.where(norms > radius, radius / torch.where(norms > 0, norms, 1), 1.0)
    return center + (offset * scale.to(z.dtype).unsqueeze(1)).view_as(z)
