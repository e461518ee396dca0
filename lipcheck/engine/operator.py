"""The Jacobian operator of one model evaluation: J u and J^T v per sample, and the checks of a batch
(coupled samples, a disconnected output, a graph freed by the model)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lipcheck.engine.double_backward import linearisable_convolutions
from lipcheck.engine.result import DEFAULT_SEED
from lipcheck.errors import (
    AuditFailedError,
    BatchCouplingError,
    DisconnectedOutputError,
    InputError,
    ModelOutputError,
)
from lipcheck.options.choices import Operator, choose


def _disconnected(
    found: str = "the model's output has no autograd path to its input",
) -> DisconnectedOutputError:
    return DisconnectedOutputError(
        f"{found}: a .detach(), torch.no_grad or integer values cut the path, so the Jacobian cannot be "
        "measured, and a sigma of 0 would claim that the model is constant; compute the output from the "
        "input with differentiable operations"
    )


class JacobianOperator:
    """The Jacobian of one batched evaluation y = f(x), applied without ever forming it.

    Built from an autograd graph linking y (B, ...) to x (B, ...). The graph is evaluated once and
    reused by every product, so a stateful or random model is measured at exactly that call.
    `samples` restricts the operator to the first that many samples of the batch. An output without
    an autograd path to x raises `DisconnectedOutputError`; one whose Jacobian is zero (round, floor)
    gives zero products.
    """

    def __init__(self, y: Tensor, x: Tensor, *, samples: int | None = None) -> None:
        if y.dim() == 0 or y.shape[0] != x.shape[0]:
            found = "a scalar" if y.dim() == 0 else f"batch dimension {y.shape[0]}"
            raise ModelOutputError(
                f"the model's output has {found}, expected batch dimension {x.shape[0]} like its input"
            )
        if not y.requires_grad:
            raise _disconnected()
        self.y = y
        self.x = x
        self.samples = x.shape[0] if samples is None else min(samples, x.shape[0])
        self._dual: Tensor | None = None
        self._transpose: Tensor | None = None

    @classmethod
    def from_function(
        cls,
        f: Callable[..., Any],
        x: Tensor,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        operator: Operator | str = Operator.model,
    ) -> JacobianOperator:
        """Evaluate f once at x (B, ...) and keep the graph. f(x, *args, **kwargs) must return (B, ...).

        `operator` chooses whose Jacobian the products apply (`operator_output`): f's, or that of
        2f - Id or Id - f, which need f's output to have x's shape (ModelOutputError otherwise)."""
        choose(Operator, operator, "operator")
        x = x.detach().requires_grad_(True)
        with torch.enable_grad(), linearisable_convolutions():
            y = f(x, *args, **(kwargs or {}))
        if not isinstance(y, Tensor):
            raise ModelOutputError(
                f"the model returned {type(y).__name__}, expected a tensor of shape (B, ...); "
                "pick one output of a model that returns several (a dict or a tuple)"
            )
        if not torch.is_floating_point(y):
            raise _disconnected(f"the model returned a {str(y.dtype).removeprefix('torch.')} tensor")
        if not bool(torch.isfinite(y).all()):
            raise ModelOutputError("the model's output contains NaN or Inf at this input")
        if not y.requires_grad:
            raise _disconnected()
        return cls(operator_output(y, x, operator), x)

    @property
    def input_shape(self) -> torch.Size:
        return torch.Size((self.samples, *self.x.shape[1:]))

    @property
    def output_shape(self) -> torch.Size:
        return torch.Size((self.samples, *self.y.shape[1:]))

    def _pad(self, v: Tensor, like: Tensor) -> Tensor:
        if self.samples == like.shape[0]:
            return v
        full = torch.zeros_like(like)
        full[: self.samples] = v
        return full

    def vjp(self, v: Tensor, *, create_graph: bool = False, keep_for_jvp: bool = False) -> Tensor:
        """J^T v for v of the output's shape; one backward pass through the kept graph.

        keep_for_jvp: when J u has no graph to differentiate yet, build it by this very backward,
        so the products that follow reuse it without a backward of their own (J u, the derivative
        of the linear map w -> J^T w, is the same whichever w the graph is built at).
        """
        if keep_for_jvp and self._transpose is None:
            g = self._build_transpose(self._pad(v, self.y).detach())
            if g is None:
                raise _disconnected()
            return g[: self.samples].detach()
        (g,) = torch.autograd.grad(
            self.y,
            self.x,
            self._pad(v, self.y),
            retain_graph=True,
            create_graph=create_graph,
            allow_unused=True,
        )
        if g is None:
            raise _disconnected()
        return g[: self.samples]

    def _build_transpose(self, w: Tensor) -> Tensor | None:
        """J^T w for w of the output's (full) shape, with the graph of w -> J^T w kept for `jvp`."""
        dual = w.clone().requires_grad_(True)
        with torch.enable_grad():
            (transpose,) = torch.autograd.grad(self.y, self.x, dual, create_graph=True, allow_unused=True)
        self._dual, self._transpose = dual, transpose
        return transpose

    def jvp(self, u: Tensor, *, create_graph: bool = False) -> Tensor:
        """J u for u of the input's shape, by differentiating w -> J^T w, which is linear in w."""
        if self._transpose is None and self._build_transpose(torch.zeros_like(self.y)) is None:
            raise _disconnected()
        if self._transpose is None or not self._transpose.requires_grad:  # J^T w = 0 for every w: J = 0
            return torch.zeros(self.output_shape, dtype=self.y.dtype, device=self.y.device)
        (ju,) = torch.autograd.grad(
            self._transpose,
            self._dual,
            self._pad(u, self.x),
            retain_graph=True,
            create_graph=create_graph,
            allow_unused=True,
        )
        if ju is None:
            return torch.zeros(self.output_shape, dtype=self.y.dtype, device=self.y.device)
        return ju[: self.samples]

    def gram(self, u: Tensor) -> Tensor:
        """J^T J u for u of the input's shape: one product of the solvers."""
        return self.vjp(self.jvp(u))


def operator_output(y: Tensor, x: Tensor, operator: Operator | str) -> Tensor:
    """The audited operator's output from y = f(x) (B, ...): y itself, 2 y - x (fne) or x - y (residual).

    The Jacobian of 2f - Id is 2 J - I and that of Id - f is I - J, so building them into the graph
    of y gives their products, 2 J u - u and 2 J^T v - v, from the same single evaluation of f: no
    further model call, and the solvers, the error bars and the search act on the operator as on any
    model. Raises ModelOutputError naming both shapes when fne or residual meet an output whose shape
    is not x's.
    """
    chosen = Operator(operator)
    if chosen is Operator.model:
        return y
    if y.shape != x.shape:
        raise ModelOutputError(
            f"--operator {chosen.value} measures the Jacobian of {chosen.function}, which needs the model's "
            f"output to have its input's shape, but inputs of shape {tuple(x.shape)} give outputs of shape "
            f"{tuple(y.shape)}: use --operator model (operator='model'), or --output-key to pick an output "
            "of the input's shape"
        )
    return 2 * y - x if chosen is Operator.fne else x - y


def check_batch_coupling(operator: JacobianOperator, seed: int | None = None) -> None:
    """Raise BatchCouplingError when the outputs of some samples depend on the inputs of others.

    One backward pass with a random probe on the outputs of the even-indexed samples: for a model
    that treats samples independently, the inputs of the odd-indexed samples receive exact zeros.
    That backward also builds the graph that the operator's J u products differentiate.
    This catches BatchNorm in training mode, attention or pooling across the batch, and running
    sums over it (for batches of three or more).
    """
    batch = operator.samples
    if batch < 2:
        return
    generator = torch.Generator().manual_seed(DEFAULT_SEED if seed is None else seed)
    probe = torch.randn(operator.output_shape, generator=generator, dtype=torch.float64)
    probe[1::2] = 0
    probe = probe.to(dtype=operator.y.dtype, device=operator.y.device)
    pulled = operator.vjp(probe, keep_for_jvp=True).flatten(1)
    kept = pulled[0::2].norm()
    leaked = pulled[1::2].norm()
    threshold = 64 * torch.finfo(pulled.dtype).eps * (kept + leaked)
    if leaked > threshold or (kept == 0 and leaked > 0):
        raise BatchCouplingError(
            "the model mixes samples of the batch (a perturbation of one sample's input changes "
            "another sample's output), so per-sample spectral norms are not defined: put the model "
            "in eval mode (model.eval()) so BatchNorm uses its running statistics, or measure with "
            "batch size 1"
        )


def check_input(x: Any) -> None:
    """InputError unless x is a finite floating tensor (B, ...) with at least one sample."""
    if not isinstance(x, Tensor):
        raise InputError(f"x must be a torch.Tensor of shape (B, ...), got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise InputError(f"x must be a floating tensor (float32 or float64), got {x.dtype}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise InputError(
            f"x must have a batch dimension with at least one sample, got shape {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).flatten(1).any(1).nonzero()[0, 0].item()
        raise InputError(f"x contains NaN or Inf (first at sample {bad}); the input must be finite")


_FREED_GRAPH = (
    "Trying to backward through the graph a second time",
    "saved tensors after they have already been freed",
)


def freed_graph(error: BaseException) -> AuditFailedError | None:
    """The explanation of a product that failed because the model freed part of its own graph inside
    its forward; None for any other error. torch's own message advises `retain_graph`, which is not
    the fix here: the model's output must be differentiable as it is computed."""
    if not isinstance(error, RuntimeError) or not any(text in str(error) for text in _FREED_GRAPH):
        return None
    return AuditFailedError(
        "the model freed part of its own autograd graph while computing its output (an inner "
        "torch.autograd.grad without create_graph=True, or a .backward() inside forward), so its output is "
        "not differentiable as called and its Jacobian cannot be measured: compute inner gradients with "
        "create_graph=True (for deepinv's gradient-step denoisers, GSDRUNet and GSPnP, set "
        "model.detach = False in the --arch factory)"
    )


def non_finite_products(samples: list[int]) -> AuditFailedError:
    many = f" (and {len(samples) - 1} more)" if len(samples) > 1 else ""
    return AuditFailedError(
        f"the Jacobian products are NaN or Inf at sample {samples[0]}{many} although the model's "
        "output is finite there: its derivative is not finite at that input"
    )
