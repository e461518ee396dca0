"""Drop-in replacements for deepinv's `JacobianSpectralNorm` and `FNEJacobianSpectralNorm` losses.

A deepinv user changes the import and keeps the call sites: the same constructor arguments and
defaults (deepinv 0.5.0), the same `forward` signatures, the same reductions. What differs, on purpose:

- The default solver is Lanczos, which reaches a given accuracy with far fewer products than the
  power method; `method="power"` gives the paper's method.
- A sample stops as soon as it has converged, whether or not `verbose` is set, and `tol` is the
  relative accuracy of each sample's norm (deepinv compares the change of the squared norms of the
  whole batch).
- The start vector is seeded (`seed`, default fixed), so a value does not depend on the global RNG.
- `reduced_batchsize` works when y was computed from the whole x.
- Gradients flow through one Jacobian-vector product at the converged vector instead of through
  every iteration (see `lipcheck.engine.differentiable_sigma`), which keeps memory at one graph.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lipcheck.engine import (
    DEFAULT_KRYLOV_DIM,
    JacobianOperator,
    differentiable_sigma,
    solve,
)
from lipcheck.engine.double_backward import linearisable_convolutions
from lipcheck.errors import InputError
from lipcheck.options.choices import Method

_REDUCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "max": torch.max,
    "mean": torch.mean,
    "sum": torch.sum,
    "none": lambda sigma: sigma,
}


def _reduction(name: str | None) -> Callable[[Tensor], Tensor]:
    if name is None:
        return _REDUCTIONS["none"]
    if not isinstance(name, str) or name.lower() not in _REDUCTIONS:
        raise ValueError(f'reduction must be "max", "mean", "sum", "none" or None, got {name!r}')
    return _REDUCTIONS[name.lower()]


class JacobianSpectralNorm(nn.Module):
    """Spectral norm ||df/dx (x)||_2 of the Jacobian of f at each sample, as a loss or a measure.

    Call it as `reg(y, x)` where y = f(x) was computed from x with `x.requires_grad_()` set first;
    x and y are batched (B, ...). Nothing is re-evaluated: the products reuse y's autograd graph.

    Args:
        max_iter: the most products with J^T J per sample.
        tol: relative accuracy of each sample's norm at which it stops.
        eval_mode: False (default) keeps the graph, so the value can be back-propagated into the
            model's parameters as a training regulariser; True returns a value without a graph
            (evaluation only). This is what deepinv's code does; its docstring states the reverse.
        verbose: print each iteration's norms and the final values to stderr.
        reduction: "max" (default), "mean", "sum", or "none"/None for the (B,) vector of norms.
        reduced_batchsize: measure only the first that many samples of the batch.
        method: "lanczos" (default) or "power".
        seed: seed of the start vector (None: a fixed default).
        krylov_dim: Lanczos basis size per sample.

    Example:
        >>> A = torch.diag(torch.arange(1.0, 51.0)).unsqueeze(0)
        >>> x = torch.randn(1, 1, 50).requires_grad_()
        >>> JacobianSpectralNorm(max_iter=100, tol=1e-5)(x @ A, x)  # about 50
    """

    def __init__(
        self,
        max_iter: int = 10,
        tol: float = 1e-3,
        eval_mode: bool = False,
        verbose: bool = False,
        reduction: str | None = "max",
        reduced_batchsize: int | None = None,
        *,
        method: Method | str = "lanczos",
        seed: int | None = None,
        krylov_dim: int = DEFAULT_KRYLOV_DIM,
    ) -> None:
        super().__init__()
        self.max_iter = max_iter
        self.tol = tol
        self.eval = eval_mode
        self.verbose = verbose
        self.reduction = _reduction(reduction)
        self.reduced_batchsize = reduced_batchsize
        self.method = method
        self.seed = seed
        self.krylov_dim = krylov_dim

    def forward(self, y: Tensor, x: Tensor, **kwargs: Any) -> Tensor:
        """The reduced spectral norm of dy/dx; y (B, ...) must have been computed from x (B, ...)."""
        if not x.requires_grad or not y.requires_grad:
            raise InputError(
                "y must be computed from x with an autograd graph: call x.requires_grad_() "
                "before evaluating y = f(x)"
            )
        operator = JacobianOperator(y, x, samples=self.reduced_batchsize)
        result = solve(
            operator,
            method=self.method,
            max_iter=self.max_iter,
            tol=self.tol,
            seed=self.seed,
            krylov_dim=self.krylov_dim,
            callback=self._report if self.verbose else None,
        )
        if self.verbose:
            print(
                f"lipcheck {self.method}: iterations {result.iterations.tolist()}, "
                f"converged {result.converged.tolist()}, sigma {result.sigma.tolist()}",
                file=sys.stderr,
            )
        if self.eval:
            return self.reduction(result.sigma.detach())
        return self.reduction(differentiable_sigma(operator, result.vector))

    @staticmethod
    def _report(iteration: int, sigma: Tensor, active: Tensor) -> None:
        print(
            f"iteration {iteration}: sigma {sigma.tolist()}, {int(active.sum())} not converged",
            file=sys.stderr,
        )


class FNEJacobianSpectralNorm(nn.Module):
    """Spectral norm of the Jacobian of 2 f - Id, which is at most 1 when f is firmly non-expansive.

    Call it as `reg(y_in, x_in, model, *args, interpolation=False, **kwargs)`: the model is evaluated
    at y_in or, with interpolation=True, at eta * y_in + (1 - eta) * x_in with eta uniform in [0, 1]
    per sample, and the norm is that of the Jacobian of 2 * model - Id there. The arguments are those
    of `JacobianSpectralNorm`; reduced_batchsize slices the inputs before the model is called.
    """

    def __init__(
        self,
        max_iter: int = 10,
        tol: float = 1e-3,
        eval_mode: bool = False,
        verbose: bool = False,
        reduction: str | None = "max",
        reduced_batchsize: int | None = None,
        *,
        method: Method | str = "lanczos",
        seed: int | None = None,
        krylov_dim: int = DEFAULT_KRYLOV_DIM,
    ) -> None:
        super().__init__()
        self.reduced_batchsize = reduced_batchsize
        self.spectral_norm_module = JacobianSpectralNorm(
            max_iter=max_iter,
            tol=tol,
            eval_mode=eval_mode,
            verbose=verbose,
            reduction=reduction,
            method=method,
            seed=seed,
            krylov_dim=krylov_dim,
        )

    def forward(
        self,
        y_in: Tensor,
        x_in: Tensor,
        model: Callable[..., Tensor],
        *args_model: Any,
        interpolation: bool = False,
        **kwargs_model: Any,
    ) -> Tensor:
        """The reduced spectral norm of the Jacobian of 2 model - Id at y_in (or the interpolation)."""
        if self.reduced_batchsize is not None:
            y_in, x_in = y_in[: self.reduced_batchsize], x_in[: self.reduced_batchsize]
        if interpolation:
            shape = (y_in.shape[0],) + (1,) * (y_in.dim() - 1)
            eta = torch.rand(shape, dtype=y_in.dtype, device=y_in.device)
            x = eta * y_in.detach() + (1 - eta) * x_in.detach()
        else:
            x = y_in.detach()
        x.requires_grad_()
        with linearisable_convolutions():
            out = model(x, *args_model, **kwargs_model)
        return self.spectral_norm_module(2.0 * out - x, x)
