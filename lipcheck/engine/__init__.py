"""Per-sample spectral norms of a model's Jacobian, from Jacobian-vector products only.

For a batch x of shape (B, ...) and a model f that treats samples independently, the Jacobian of the
batch is block diagonal with blocks J_i = df(x_i)/dx_i. This module estimates
sigma_i = ||J_i||_2 for every i at once: every product below acts on the whole batch, and every norm,
dot product and stopping decision is taken per sample.

The model is evaluated once. `JacobianOperator` keeps that evaluation's autograd graph and gives
J^T v (one backward pass) and J u (the double-backward trick: g(w) = J^T w is linear in w, so
differentiating <g(w), u> with respect to w gives J u). Both solvers iterate on the Gram operator
J^T J, whose largest eigenvalue is sigma^2. While the engine evaluates the model, its convolutions
build graphs whose double backward is one convolution (lipcheck.engine.double_backward), which brings J u on a
convolutional net from about a forward+backward pass down to about a forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lipcheck.engine.double_backward import linearisable_convolutions
from lipcheck.errors import (
    AuditFailedError,
    BatchCouplingError,
    DisconnectedOutputError,
    InputError,
    ModelOutputError,
)
from lipcheck.options.choices import Method, Operator, choose

# Called once per iteration with (iteration, sigma (B,), active (B,) bool); for progress and logs.
IterationCallback = Callable[[int, Tensor, Tensor], None]

DEFAULT_SEED = 0
DEFAULT_KRYLOV_DIM = 12
DEFAULT_CONFIDENCE = 0.99
# Stopping (docs/engine.md): the probabilistic bound, at a failure probability STOP_CONFIDENCE_FACTOR
# times smaller than the reported one, must put sigma_max within STOP_WIDTH * tol of sigma.
STOP_CONFIDENCE_FACTOR = 10
STOP_WIDTH = 10
# The residual of a Ritz pair is not known below RESIDUAL_FLOOR rounding units of theta: the products
# themselves carry that much rounding.
RESIDUAL_FLOOR = 2
_KEPT_RITZ_VECTORS = 2


@dataclass(frozen=True)
class SpectralNormResult:
    """Per-sample spectral norms and how they were reached.

    Attributes:
        sigma: (B,) estimated ||J_i||_2, in the model's dtype.
        iterations: (B,) int64, products with J^T J spent on each sample until it stopped.
        converged: (B,) bool, whether the sample met its stopping rule before max_iter (Lanczos:
            its estimated error within tol and, at a ten times smaller failure probability than
            `confidence`, no singular value more than 10 tol above sigma; power: a relative change
            below tol).
        residual: (B,) ||J^T J u - sigma^2 u|| / sigma^2 for the returned unit vector u (0 when
            sigma is 0). A small residual means u is close to an invariant direction of J^T J.
        vector: (B, ...) like x, the most amplified input direction found, unit norm per sample.
        sigma_upper: (B,) an upper bound on ||J_i||_2 that holds with probability at least
            `confidence` over the random start vector (docs/engine.md, "Error bars"); inf when the
            run could not bound it.
    """

    sigma: Tensor
    iterations: Tensor
    converged: Tensor
    residual: Tensor
    vector: Tensor
    sigma_upper: Tensor


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


def _check_settings(
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
_FREED_GRAPH = (
    "Trying to backward through the graph a second time",
    "saved tensors after they have already been freed",
)


def _freed_graph(error: BaseException) -> AuditFailedError | None:
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


def _non_finite_products(samples: list[int]) -> AuditFailedError:
    many = f" (and {len(samples) - 1} more)" if len(samples) > 1 else ""
    return AuditFailedError(
        f"the Jacobian products are NaN or Inf at sample {samples[0]}{many} although the model's "
        "output is finite there: its derivative is not finite at that input"
    )


def _row_norm(v: Tensor) -> Tensor:
    """||v_b|| per row, accumulated in float64: in float32 the squares of a model's products underflow
    once its norm is below about 1e-10, and a zero norm would end the sample's run."""
    return torch.linalg.vector_norm(v, dim=1, dtype=torch.float64).to(v.dtype)


def _safe_divide(v: Tensor, norms: Tensor) -> Tensor:
    """v / norms row-wise, with zero rows where the norm is zero."""
    scale = torch.where(norms > 0, 1 / torch.where(norms > 0, norms, 1), 0)
    return v * scale.unsqueeze(1)


def _combine(vectors: Tensor, coefficients: Tensor) -> Tensor:
    """sum_k coefficients[b, k] vectors[b, k] for vectors (B, K, n) and coefficients (B, K): (B, n)."""
    return torch.bmm(coefficients.unsqueeze(1), vectors).squeeze(1)


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
            raise _non_finite_products(broken.nonzero().flatten().tolist())
        theta = theta.clamp_min(0)
        new_sigma = theta.sqrt()
        new_residual = _row_norm(v - theta.to(v.dtype).unsqueeze(1) * u).double()
        new_residual = torch.where(theta > 0, new_residual / torch.where(theta > 0, theta, 1), 0)
        norm = _row_norm(v)
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
        u = torch.where((~converged).unsqueeze(1), _safe_divide(v, norm), u)
    upper = torch.maximum((log_upper / 2).exp(), sigma)
    return sigma, iterations, converged, residual, vector, upper


def lanczos(
    gram: Callable[[Tensor], Tensor],
    u0: Tensor,
    *,
    max_iter: int,
    tol: float,
    krylov_dim: int = DEFAULT_KRYLOV_DIM,
    confidence: float = DEFAULT_CONFIDENCE,
    callback: IterationCallback | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Thick-restart Lanczos on A = J^T J, per sample, with a bounded basis.

    The Krylov basis Q = [q_0, ..., q_j] of each sample is kept explicitly orthonormal (classical
    Gram-Schmidt applied twice against the whole basis), which removes the loss of orthogonality of
    the plain three-term recurrence and its spurious copies of converged eigenvalues. The projected
    matrix H = Q^T A Q (symmetric, tridiagonal but for the restart's arrow) gives Ritz pairs
    (theta, s); the Ritz vector y = Q s has the exact residual ||A y - theta y|| = beta_j |s_j| where
    beta_j is the norm of the next basis direction. When the basis holds `krylov_dim` vectors it is
    compressed to the two leading Ritz vectors and the next direction (thick restart, as in Wu and
    Simon 2000), so memory is (krylov_dim + 1) vectors of the input's size per sample, whatever
    max_iter is, and little of the Krylov space's information is lost.

    Stopping, per sample: with r = beta_j |s_j| and the gap g to the second Ritz value, the error of
    theta is at most r and about r^2 / g (Kato-Temple); the sample stops when min(r, r^2/g) / (2
    theta), the relative error of sigma = sqrt(theta), is at most tol and the probabilistic upper
    bound (at failure probability (1 - confidence) / STOP_CONFIDENCE_FACTOR) is within STOP_WIDTH
    tol of sigma, or when the Krylov space is exhausted (beta_j = 0 to rounding, the Ritz value is
    then exact). The bound: sigma_max^2 <= the largest root of |p(lambda)| = ||p(A) b|| / t, p the
    run's polynomial (the restarts' filters times the characteristic polynomial of H), which holds
    unless the start vector's component along the top direction is below t (docs/engine.md,
    "Error bars").

    The vectors stay on u0's device in its dtype. The projected problem, at most (krylov_dim + 1)^2
    numbers per sample, is solved on the host in float64 (`_RitzProblem`), only for the samples still
    running: one small transfer per iteration, and NumPy operations on a few numbers, which cost a
    microsecond where a tensor operation costs several; on small models this bookkeeping cost as much
    as the product itself.

    Raises AuditFailedError when a product is NaN or Inf for a running sample.

    u0: (B, n) unit rows. Returns sigma, iterations, converged, residual (all (B,), on u0's device)
    and vectors (B, n).
    """
    batch, n = u0.shape
    dim = max(1, min(krylov_dim, n))
    kept = min(_KEPT_RITZ_VECTORS, dim)
    device, dtype = u0.device, u0.dtype
    basis = torch.zeros(batch, dim + 1, n, dtype=dtype, device=device)
    basis[:, 0] = u0
    column = 0
    problem = _RitzProblem(batch, dim, tol, torch.finfo(dtype).eps, n, confidence)
    vector = u0.clone()

    for iteration in range(1, max_iter + 1):
        span = basis[:, : column + 1]
        w = gram(basis[:, column])
        w = w.unsqueeze(1)  # (B, 1, n); batched row-vector products are the fast layout for bmm
        coefficients = torch.bmm(w, span.transpose(1, 2))
        w = torch.baddbmm(w, coefficients, span, alpha=-1)
        correction = torch.bmm(w, span.transpose(1, 2))
        w = torch.baddbmm(w, correction, span, alpha=-1).squeeze(1)
        beta = _row_norm(w)
        # One transfer: the new column of H and the norm of the next direction.
        new_column = torch.cat([(coefficients + correction).squeeze(1), beta.unsqueeze(1)], 1)
        stopped = problem.extend(iteration, column, new_column)
        if stopped.any():
            vector = _with_ritz_vectors(vector, span, problem, stopped)
        if callback is not None:
            callback(iteration, torch.from_numpy(problem.sigma.copy()), torch.from_numpy(~problem.converged))
        if problem.converged.all() or iteration == max_iter:
            break

        following = _safe_divide(w, beta)
        if column + 1 < dim:
            column += 1
            basis[:, column] = following
            problem.advance(column)
            continue
        # Thick restart: keep the `kept` leading Ritz pairs and the next direction.
        leading = problem.restart(kept)
        compressed = torch.bmm(torch.from_numpy(leading).to(device=device, dtype=dtype).transpose(1, 2), span)
        basis.zero_()
        basis[:, :kept] = compressed
        basis[:, kept] = following
        column = kept

    active = ~problem.converged
    if active.any():
        vector = _with_ritz_vectors(vector, basis[:, : problem.vectors.shape[1]], problem, active)
        problem.settle(active)

    def out(values: np.ndarray) -> Tensor:
        return torch.from_numpy(values).to(device)

    upper = np.sqrt(np.maximum(problem.upper, problem.sigma**2))
    return (
        out(problem.sigma), out(problem.iterations), out(problem.converged), out(problem.residual), vector,
        out(upper),
    )  # fmt: skip


def _with_ritz_vectors(vector: Tensor, span: Tensor, problem: _RitzProblem, samples: np.ndarray) -> Tensor:
    """`vector` (B, n) with the rows of `samples` replaced by their unit leading Ritz vectors, the
    combinations of `span` (B, k, n) by the current Ritz coefficients."""
    ritz_vector = _combine(span, problem.ritz_on(span.device, span.dtype))
    mask = torch.from_numpy(samples).to(span.device).unsqueeze(1)
    return torch.where(mask, _safe_divide(ritz_vector, _row_norm(ritz_vector)), vector)


class _RitzProblem:
    """The projected matrices H = Q^T A Q of a batch of Lanczos runs and their per-sample state.

    Host-side float64 (NumPy): H is at most (krylov_dim + 1) square per sample, and every decision
    made from it (Ritz pairs, error estimates, stopping) is a few operations on (B,) arrays.
    """

    def __init__(self, batch: int, dim: int, tol: float, rounding: float, n: int, confidence: float) -> None:
        self.tol = tol
        self.rounding = rounding
        self.log_start_floor = math.log(start_component_floor(n, confidence))
        stop_confidence = 1 - (1 - confidence) / STOP_CONFIDENCE_FACTOR
        self.log_stop_floor = math.log(start_component_floor(n, stop_confidence))
        self.projected = np.zeros((batch, dim + 1, dim + 1))
        self.sigma = np.zeros(batch)
        self.residual = np.full(batch, math.inf)
        self.iterations = np.zeros(batch, dtype=np.int64)
        self.converged = np.zeros(batch, dtype=bool)
        self.values = np.zeros((batch, 1))
        self.vectors = np.ones((batch, 1, 1))
        self.beta = np.zeros(batch)
        # The probabilistic bound (docs/engine.md, "Error bars"): the basis spans the Krylov space of
        # s = psi(A) b, psi the product of (lambda - theta) over the Ritz values discarded at restarts
        # (`filter_roots`); s = exp(log_scale) Q start, with `start` a unit vector of coordinates.
        self.start = np.zeros((batch, dim + 1))
        self.start[:, 0] = 1
        self.log_scale = np.zeros(batch)
        self.filter_roots = np.zeros((batch, 0))
        self.upper = np.full(batch, math.inf)  # at the requested confidence, set when a sample stops
        self.stop_upper = np.full(batch, math.inf)  # at the stopping confidence, the least seen so far
        self.estimate = np.zeros(batch)

    def extend(self, iteration: int, column: int, transferred: Tensor) -> np.ndarray:
        """Add column `column` of H and beta, the norm of the next direction, both in `transferred`
        (B, column + 2), at Lanczos iteration `iteration`; update every active sample's values.
        Returns the samples that stop now."""
        numbers = transferred.detach().to(device="cpu", dtype=torch.float64).numpy()
        beta = numbers[:, -1]
        active = ~self.converged
        finite = np.isfinite(numbers).all(1)
        if not finite[active].all():
            raise _non_finite_products(np.flatnonzero(active & ~finite).tolist())
        projected = self.projected
        projected[:, : column + 1, column] = numbers[:, :-1]
        # Stopped samples keep their values: their Ritz problems are not solved again (an eigh of a
        # 13 x 13 matrix costs tens of microseconds, a sizeable part of a product on small models).
        # Their rows hold an identity decomposition, which a restart applies harmlessly.
        block = projected[:, : column + 1, : column + 1]
        symmetric = (block + block.transpose(0, 2, 1)) / 2
        if active.all():
            values, vectors = np.linalg.eigh(symmetric)
        else:
            values = np.zeros((len(active), column + 1))
            vectors = np.broadcast_to(np.eye(column + 1), (len(active), column + 1, column + 1)).copy()
            values[active], vectors[active] = np.linalg.eigh(symmetric[active])
        theta = np.maximum(values[:, -1], 0)
        estimate = beta * np.abs(vectors[:, -1, -1])
        error = estimate
        if column > 0:
            gap = np.maximum(theta - values[:, -2], 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                error = np.where(gap > 0, np.minimum(estimate, estimate**2 / gap), estimate)
        # Relative to H's own scale, with no absolute floor: a model whose norm is 1e-8 is as well
        # measured as one whose norm is 1 (an absolute floor called its Krylov space exhausted at once).
        exhausted = beta <= 16 * self.rounding * np.abs(values).max(1)
        self.values, self.vectors, self.estimate = values, vectors, estimate
        # Stop when the Ritz value is accurate to tol (Kato-Temple) and, at the stricter confidence,
        # no singular value lies more than STOP_WIDTH tol above it, or the residual has reached its
        # rounding floor, below which no bound can tighten (docs/engine.md, "Stopping"). The bounds
        # (a root-finding each) are computed only where they decide something.
        precise = active & (error <= 2 * self.tol * theta)
        if precise.any():
            bound = self.bound(precise, self.log_stop_floor)
            self.stop_upper[precise] = np.minimum(self.stop_upper[precise], bound)
        with np.errstate(divide="ignore", invalid="ignore"):
            width = np.sqrt(np.maximum(self.stop_upper, theta) / np.where(theta > 0, theta, 1)) - 1
        at_floor = estimate <= 2 * RESIDUAL_FLOOR * self.rounding * theta
        accurate = precise & ((width <= STOP_WIDTH * self.tol) | at_floor)
        stopped = active & (accurate | exhausted | ((theta == 0) & (beta == 0)))
        self.settle(stopped)
        with np.errstate(divide="ignore", invalid="ignore"):
            residual = np.where(theta > 0, estimate / theta, 0)
        self.sigma = np.where(active, np.sqrt(theta), self.sigma)
        self.residual = np.where(active, residual, self.residual)
        self.iterations = np.where(active, iteration, self.iterations)
        self.converged = self.converged | stopped
        self.beta = beta
        return stopped

    def bound(self, rows: np.ndarray, log_floor: float) -> np.ndarray:
        """The probabilistic bound on lambda_max of the samples `rows` from the current Ritz problem,
        for a start component of at least exp(log_floor) (docs/engine.md, "Error bars")."""
        values, theta = self.values[rows], np.maximum(self.values[rows, -1], 0)
        floor = RESIDUAL_FLOOR * self.rounding * theta
        log_norm = _log_krylov_residual(
            values, self.vectors[rows], self.start[rows, : values.shape[1]],
            np.maximum(self.estimate[rows], floor),
        )  # fmt: skip
        roots = np.concatenate([values, self.filter_roots[rows]], 1)
        return _largest_root(roots, log_norm + self.log_scale[rows] - log_floor)

    def settle(self, rows: np.ndarray) -> None:
        """Record the reported bound (at the requested confidence) of the samples `rows`, which stop."""
        if rows.any():
            self.upper[rows] = self.bound(rows, self.log_start_floor)

    def ritz_on(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """(B, column + 1) coefficients of each sample's leading Ritz vector in its basis."""
        return torch.from_numpy(np.ascontiguousarray(self.vectors[:, :, -1])).to(device=device, dtype=dtype)

    def restart(self, kept: int) -> np.ndarray:
        """Compress H to the `kept` leading Ritz pairs, coupled to the next direction by beta times
        the last components of their vectors (the arrow). Returns (B, column + 1, kept), the Ritz
        vectors' coefficients, which the caller applies to the basis."""
        leading = self.vectors[:, :, -kept:]
        self._filter(leading, kept)
        coupling = self.beta[:, None] * leading[:, -1, :]
        projected = self.projected
        projected[:] = 0
        index = np.arange(kept)
        projected[:, index, index] = self.values[:, -kept:]
        projected[:, kept, :kept] = coupling
        projected[:, :kept, kept] = coupling
        return leading

    def _filter(self, leading: np.ndarray, kept: int) -> None:
        """Carry the bound's start vector through a restart: the kept Ritz vectors y_i span the part of
        the Krylov space that psi(A) s lies in, psi(lambda) = prod (lambda - theta_j) over the discarded
        Ritz values, with coordinates psi(theta_i) <y_i, s>; later iterations extend the Krylov space of
        psi(A) s."""
        columns = leading.shape[1]
        kept_values = self.values[:, -kept:]
        discarded = self.values[:, :-kept]
        with np.errstate(divide="ignore", invalid="ignore"):
            along = np.einsum("blk,bl->bk", leading, self.start[:, :columns])
            differences = np.maximum(kept_values[:, :, None] - discarded[:, None, :], 0)
            log_size = np.log(np.abs(along)) + np.log(differences).sum(2)
            largest = log_size.max(1, keepdims=True)
            coordinates = np.sign(along) * np.exp(log_size - largest)
            size = np.linalg.norm(coordinates, axis=1)
            lost = ~np.isfinite(largest[:, 0]) | ~(size > 0)
            self.start[:] = 0
            self.start[:, :kept] = np.where(lost[:, None], 0, coordinates / np.where(lost, 1, size)[:, None])
            self.log_scale = np.where(lost, np.inf, self.log_scale + largest[:, 0] + np.log(size))
        self.filter_roots = np.concatenate([self.filter_roots, discarded], 1)

    def advance(self, column: int) -> None:
        """The basis gained column `column`, the normalised last direction: H's subdiagonal is its beta."""
        projected = self.projected
        projected[:, column, column - 1] = self.beta


def _log_krylov_residual(
    values: np.ndarray, vectors: np.ndarray, start: np.ndarray, residual: np.ndarray
) -> np.ndarray:
    """log ||chi_H(A) s|| per sample, chi_H the characteristic polynomial of H (l x l), for a basis Q
    of the Krylov space K_l(A, s) with A Q = Q H + beta q e_l^T and s = Q start.

    The first l - 1 powers of A keep s inside span Q, so chi_H(A) s = beta (e_l^T H^(l-1) start) q,
    and e_l^T H^(l-1) start = e_l^T prod_{j != 1} (H - theta_j) start (the lower powers do not reach
    e_l), which is s_1[l] <s_1, start> prod_{j != 1} (theta_1 - theta_j) for the leading Ritz pair
    (theta_1, s_1): ||chi_H(A) s|| = r_1 |<s_1, start>| prod_{j != 1} (theta_1 - theta_j), r_1 =
    beta |s_1[l]| its residual. In this form nothing cancels; `residual` is r_1 with its rounding
    floor already applied.

    values (B, l) ascending, vectors (B, l, l), start (B, l), residual (B,).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        along = np.abs(np.einsum("bl,bl->b", vectors[:, :, -1], start))
        gaps = np.maximum(values[:, -1:] - values[:, :-1], 0)
        return np.log(residual) + np.log(along) + np.log(gaps).sum(1)


def _largest_root(roots: np.ndarray, log_target: np.ndarray, steps: int = 100) -> np.ndarray:
    """The lambda >= max(roots) with sum_r log(lambda - r) = log_target, per sample (roots (B, R)).

    In u = log(lambda - top) the left side, sum_r log(e^u + top - r), is increasing and convex, and
    it is at least R u, so Newton's method started at u = log_target / R decreases to the root.
    A log_target of -inf gives top itself; +inf or NaN gives inf."""
    top = roots.max(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_distance = np.log(np.maximum(top[:, None] - roots, 0))
        count = roots.shape[1]
        usable = np.isfinite(log_target)
        u = np.where(usable, log_target, 0) / count
        target = np.where(usable, log_target, 0)
        # A row stops moving once its step is negligible, so its root does not depend on how long
        # the other rows of the batch take (a sample's result must not depend on its batch).
        done = ~usable
        for _ in range(steps):
            logs = np.logaddexp(u[:, None], log_distance)
            value = logs.sum(1) - target
            slope = np.exp(u[:, None] - logs).sum(1)
            step = np.where(done, 0, value / slope)
            u = u - step
            done |= ~(np.abs(step) > 1e-14 * np.maximum(1, np.abs(u)))
            if done.all():
                break
        root = top + np.exp(u)
    return np.where(usable, root, np.where(log_target == -np.inf, top, np.inf))


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
) -> SpectralNormResult:
    """Spectral norms of an existing `JacobianOperator`; see `spectral_norm` for the arguments."""
    _check_settings(method, max_iter, tol, krylov_dim, confidence)
    shape = operator.input_shape
    u0 = start_vector(shape, seed, operator.x.dtype, operator.x.device)

    def gram(u: Tensor) -> Tensor:
        return operator.gram(u.view(shape)).flatten(1).detach()

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
        freed = _freed_graph(error)
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
) -> SpectralNormResult:
    """Estimate sigma_i = ||df/dx (x_i)||_2 for every sample of the batch x.

    Args:
        f: a callable mapping a batch (B, ...) to a batch (B, ...) of any trailing shape: an
            nn.Module (put it in eval mode), a TorchScript module, a torch.export program's module,
            or a plain function. It is called exactly once, as f(x, *args, **kwargs).
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

    Returns:
        SpectralNormResult with sigma, iterations, converged, residual (B,) and vector (B, ...).

    Raises:
        InputError: x is not a finite floating tensor with a batch dimension, or a setting is out
            of range.
        ModelOutputError: f returned a non-tensor, NaN or Inf, or a batch of another size (or, for
            the operators fne and residual, an output of another shape than x).
        BatchCouplingError: f mixes samples (BatchNorm in training mode, attention over the batch).
        DisconnectedOutputError: (an AuditFailedError) f's output has no autograd path to x (a
            detach, torch.no_grad, an integer output). A connected output whose Jacobian is zero
            (round, floor, sign) gives sigma 0.
    """
    check_input(x)
    _check_settings(method, max_iter, tol, krylov_dim, confidence)
    jacobian = JacobianOperator.from_function(f, x, args, kwargs, operator=operator)
    return solve(
        jacobian,
        method=method,
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        krylov_dim=krylov_dim,
        confidence=confidence,
        check_coupling=check_coupling,
        callback=callback,
    )


def differentiable_sigma(operator: JacobianOperator, vector: Tensor) -> Tensor:
    """||J u|| per sample with the autograd graph kept, for u the returned unit `vector` (B, ...).

    At a top singular vector u, d||J u||/d theta = u^T d(J^T J)/d theta u / (2 sigma), the
    derivative of sigma itself (the first-order change of u does not change the value), so
    back-propagating this tensor trains against the spectral norm without differentiating
    through the iterations.
    """
    product = operator.jvp(vector.detach(), create_graph=True)
    return torch.linalg.vector_norm(product.flatten(1), dim=1)
