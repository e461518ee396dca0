"""The engine's entry points: `solve` on an operator, `spectral_norm` on a model and inputs, and the
differentiable sigma of the regulariser."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lipcheck.engine.lanczos import lanczos
from lipcheck.engine.operator import JacobianOperator, check_batch_coupling, check_input, freed_graph
from lipcheck.engine.power import power_method
from lipcheck.engine.products import AdjointTest, ForwardModeOperator, measure_with_product
from lipcheck.engine.result import (
    DEFAULT_CONFIDENCE,
    DEFAULT_KRYLOV_DIM,
    DEFAULT_SEED,
    IterationCallback,
    SpectralNormResult,
)
from lipcheck.engine.vectors import start_vector
from lipcheck.errors import InputError
from lipcheck.options.choices import Method, Operator, Product, choose


def check_settings(
    method: str,
    max_iter: int,
    tol: float,
    krylov_dim: int = DEFAULT_KRYLOV_DIM,
    confidence: float = DEFAULT_CONFIDENCE,
) -> None:
    choose(Method, method, "method")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise InputError(f"max_iter must be a positive integer, got {max_iter!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise InputError(f"tol must be a number in (0, 1), got {tol!r}")
    if isinstance(krylov_dim, bool) or not isinstance(krylov_dim, int) or krylov_dim < 1:
        raise InputError(f"krylov_dim must be a positive integer, got {krylov_dim!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise InputError(f"confidence must be a probability in (0, 1), such as 0.99, got {confidence!r}")


def solve(
    operator: JacobianOperator,
    *,
    method: Method | str = "lanczos",
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int | None = None,
    krylov_dim: int = DEFAULT_KRYLOV_DIM,
    confidence: float = DEFAULT_CONFIDENCE,
    check_coupling: bool = True,
    callback: IterationCallback | None = None,
    adjoint_test: AdjointTest | None = None,
) -> SpectralNormResult:
    """Spectral norms of an existing `JacobianOperator`; see `spectral_norm` for the arguments.

    The solver's first product runs the adjoint test (`adjoint_test`, or one made here), which raises
    InconsistentDerivativesError before any figure when the operator's J u and J^T w disagree."""
    check_settings(method, max_iter, tol, krylov_dim, confidence)
    shape = operator.input_shape
    u0 = start_vector(shape, seed, operator.x.dtype, operator.x.device)
    if adjoint_test is None:
        product = Product.forward if isinstance(operator, ForwardModeOperator) else Product.double_backward
        adjoint_test = AdjointTest(operator, product, DEFAULT_SEED if seed is None else seed)
    gram = adjoint_test

    try:
        if check_coupling:
            check_batch_coupling(operator, seed)
        with torch.enable_grad():
            if method == "power":
                outcome = power_method(
                    gram, u0, max_iter=max_iter, tol=tol, confidence=confidence, callback=callback
                )
            else:
                outcome = lanczos(
                    gram, u0, max_iter=max_iter, tol=tol, krylov_dim=krylov_dim, confidence=confidence,
                    callback=callback,
                )  # fmt: skip
    except RuntimeError as error:
        freed = freed_graph(error)
        if freed is None:
            raise
        raise freed from error
    sigma, iterations, converged, residual, vector, upper = outcome
    dtype = operator.x.dtype
    return SpectralNormResult(
        sigma=sigma.to(dtype),
        iterations=iterations,
        converged=converged,
        residual=residual.to(dtype),
        vector=vector.view(shape),
        sigma_upper=_rounded_up(upper, dtype),
        adjoint_gap=adjoint_test.gaps,
        product=adjoint_test.product.value,
        model_calls_per_product=1 if adjoint_test.product is Product.forward else 0,
    )


def _rounded_up(values: Tensor, dtype: torch.dtype) -> Tensor:
    """values (float64) in `dtype`, rounded towards +inf so that a bound stays a bound."""
    rounded = values.to(dtype)
    low = rounded.double() < values
    return torch.where(low, torch.nextafter(rounded, torch.full_like(rounded, math.inf)), rounded)


def spectral_norm(
    f: Callable[..., Any],
    x: Tensor,
    *,
    method: Method | str = "lanczos",
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    krylov_dim: int = DEFAULT_KRYLOV_DIM,
    confidence: float = DEFAULT_CONFIDENCE,
    check_coupling: bool = True,
    callback: IterationCallback | None = None,
    operator: Operator | str = Operator.model,
    product: Product | str = Product.auto,
) -> SpectralNormResult:
    """Estimate sigma_i = ||df/dx (x_i)||_2 for every sample of the batch x.

    Args:
        f: a callable mapping a batch (B, ...) to a batch (B, ...) of any trailing shape: an
            nn.Module (put it in eval mode), a TorchScript module, a torch.export program's module,
            or a plain function. It is called once, as f(x, *args, **kwargs), with the product
            "double-backward"; once more per product with "forward".
        x: (B, ...) floating tensor; the dtype and device of the computation.
        method: "lanczos" (thick-restart Lanczos, the default) or "power" (the power method of
            arXiv 2012.13247).
        max_iter: the most products with J^T J spent on a sample.
        tol: target relative accuracy of each sigma (Lanczos: estimated error; power: relative
            change between iterations).
        seed: seed of the start vector; the same seed gives bit-identical results on the same
            machine and settings. None means a fixed default seed.
        krylov_dim: Lanczos basis size per sample (memory is krylov_dim + 1 copies of x).
        confidence: the probability, over the random start vector, with which `sigma_upper` bounds
            each sigma from above (docs/engine.md, "Error bars").
        check_coupling: spend one backward pass checking that samples do not interact.
        callback: called after each iteration with (iteration, sigma (B,), active (B,)).
        operator: whose Jacobian is measured: "model" (f's, J; the default), "fne" (that of 2f - Id,
            2J - I: f is firmly nonexpansive at x_i iff sigma_i <= 1) or "residual" (that of Id - f,
            I - J). The last two need an output of x's shape and cost no further call of f.
        product: how J u is computed (docs/engine.md, "Products, and the adjoint test"):
            "double-backward" (by differentiating J^T w, with hardsigmoid, hardswish and attention
            evaluated by differentiable decompositions), "forward" (forward-mode AD, one call of f
            per product), or "auto" (the default: double backward, else forward mode where torch
            refuses a derivative or double backward fails the adjoint test).

    Returns:
        SpectralNormResult with sigma, iterations, converged, residual (B,) and vector (B, ...),
        the adjoint test's gaps and the product used.

    Raises:
        InputError: x is not a finite floating tensor with a batch dimension, or a setting is out
            of range.
        ModelOutputError: f returned a non-tensor, NaN or Inf, or a batch of another size (or, for
            the operators fne and residual, an output of another shape than x).
        BatchCouplingError: f mixes samples (BatchNorm in training mode, attention over the batch).
        DisconnectedOutputError: (an AuditFailedError) f's output has no autograd path to x (a
            detach, torch.no_grad, an integer output). A connected output whose Jacobian is zero
            (round, floor, sign) gives sigma 0.
        InconsistentDerivativesError: (an AuditFailedError) J u and J^T w are not products of one
            Jacobian (the adjoint test), so no spectral norm is defined from them.
        AuditFailedError: torch has no derivative an operation of f needs in any product, or, with
            forward mode, f's output changed between calls at x.
    """
    check_input(x)
    check_settings(method, max_iter, tol, krylov_dim, confidence)
    choose(Product, product, "product")

    def solver(jacobian: JacobianOperator, adjoint_test: AdjointTest) -> SpectralNormResult:
        return solve(
            jacobian, method=method, max_iter=max_iter, tol=tol, seed=seed, krylov_dim=krylov_dim,
            confidence=confidence, check_coupling=check_coupling, callback=callback,
            adjoint_test=adjoint_test,
        )  # fmt: skip

    return measure_with_product(
        f, x, args, kwargs, operator=operator, product=product,
        seed=DEFAULT_SEED if seed is None else seed, solver=solver,
    )  # fmt: skip


def differentiable_sigma(operator: JacobianOperator, vector: Tensor) -> Tensor:
    """||J u|| per sample with the autograd graph kept, for u the returned unit `vector` (B, ...).

    At a top singular vector u, d||J u||/d theta = u^T d(J^T J)/d theta u / (2 sigma), the
    derivative of sigma itself (the first-order change of u does not change the value), so
    back-propagating this tensor trains against the spectral norm without differentiating
    through the iterations.
    """
    product = operator.jvp(vector.detach(), create_graph=True)
    return torch.linalg.vector_norm(product.flatten(1), dim=1)
