"""Lanczos on J^T J with thick restarts and full reorthogonalisation, and the probabilistic upper
bound sigma_upper from its Krylov data (docs/engine.md)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from lipcheck.engine.operator import non_finite_products
from lipcheck.engine.result import (
    DEFAULT_CONFIDENCE,
    DEFAULT_KRYLOV_DIM,
    RESIDUAL_FLOOR,
    STOP_CONFIDENCE_FACTOR,
    STOP_WIDTH,
    IterationCallback,
)
from lipcheck.engine.vectors import combine, row_norm, safe_divide, start_component_floor

_KEPT_RITZ_VECTORS = 2


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
        beta = row_norm(w)
        # One transfer: the new column of H and the norm of the next direction.
        new_column = torch.cat([(coefficients + correction).squeeze(1), beta.unsqueeze(1)], 1)
        stopped = problem.extend(iteration, column, new_column)
        if stopped.any():
            vector = _with_ritz_vectors(vector, span, problem, stopped)
        if callback is not None:
            callback(iteration, torch.from_numpy(problem.sigma.copy()), torch.from_numpy(~problem.converged))
        if problem.converged.all() or iteration == max_iter:
            break

        following = safe_divide(w, beta)
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
    ritz_vector = combine(span, problem.ritz_on(span.device, span.dtype))
    mask = torch.from_numpy(samples).to(span.device).unsqueeze(1)
    return torch.where(mask, safe_divide(ritz_vector, row_norm(ritz_vector)), vector)


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
            raise non_finite_products(np.flatnonzero(active & ~finite).tolist())
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
