"""The solver of the LipSDP bound (`lipsdp.py`): rho*(lambda) and its gradient in the slope form, whose
blocks follow the graph, so that a chain's inequality is block tridiagonal.

The slope form. `lipsdp.py` writes the difference map in the activations' deviations w from their centre
slopes, z = A dx + B w, with B the c-network's merged blocks: a deviation reaches every later activation,
so B is full below its diagonal. In the activations' outputs phi = c z + w (c the centre slopes) instead,
z = A0 dx + B0 phi and dy = C0 dx + D0 phi, with B0 = (I + B c)^-1 B, A0 = (I + B c)^-1 A,
C0 = C - D c A0, D0 = D - D c B0: the maps of the network with every activation cut out, so that a block
of B0 is non-zero only where an activation reads another directly (one block per layer for a chain). The
slope constraint becomes lambda_i (p_i z_i^2 + 2 c_i z_i phi_i - phi_i^2) >= 0 with p = r^2 - c^2 (LipSDP's
(phi - a z)(b z - phi) >= 0), and the inequality in (dx, phi) is congruent to the one in (dx, w) (an
invertible triangular change of variables): the same rho*(lambda). Blocks below 1e-10 of the largest entry
(rounding of exact zeros in the change of variables) are dropped, which the certificate, on the merged
blocks, makes harmless.

One evaluation. K = -N_phiphi (N the inequality's matrix without rho) has the blocks of the graph: a block
Cholesky factorisation that keeps only the blocks that can be non-zero (a chain's factor is block
bidiagonal), a block forward substitution Y = L^-1 N_phix, and the Schur complement S = N_xx + Y^H Y,
of side the input's (projected on what the map reads: one channel per frequency for a grey-scale image,
the first layer's width for an MLP), whose largest eigenvalue is rho* at that frequency.

The gradient (Danskin). rho* = max over v, u of xi^H N(lambda) xi with xi = (v, u), ||v|| = 1, attained at
v the top eigenvector of S and u = K^-1 N_phix v, so d rho* / d lambda_i = p_i |z_i|^2 + 2 c_i Re(z_i^* u_i)
- |u_i|^2 with z = A0 v + B0 u, at the frequency of the largest rho*: no automatic differentiation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from lipcheck.bounds.lipsdp import Transformation

# A block of the slope form below this times the largest entry is rounding of an exact zero.
NEGLIGIBLE = 1e-10

# The solver's stages: (share of the steps, temperature as a fraction of rho*), and when a stage ends
# early (relative decrease of its objective in one step); L-BFGS keeps MEMORY pairs.
STAGES = ((0.3, 1e-2), (0.3, 1e-3), (0.4, 1e-4))
STAGE_TOLERANCE = 0.0
MEMORY = 10
import os
DEBUG = bool(os.environ.get('SDP_DEBUG'))

Pair = tuple[int, int]


@dataclass
class Evaluation:
    """rho* (the largest over frequencies), each frequency's largest eigenvalue of the Schur complement
    and its eigenvector, and the factors from which the maximisers (for the gradient) are read; rho* is
    inf when diag(lambda) minus the activations' block is not positive definite at some frequency."""

    rho: float
    values: Tensor | None = None
    vectors: Tensor | None = None
    factor: dict[Pair, Tensor] | None = None
    half: list[Tensor | None] | None = None


class SlopeForm:
    """The slope form of a transformation, its blocks kept only where non-zero."""

    def __init__(self, problem: Transformation) -> None:
        rows, n_x, n_w = problem.rows, problem.n_x, problem.n_w
        sites = problem.sites
        self.count = int(sites.max()) + 1
        self.slices = []
        for j in range(self.count):
            where = torch.nonzero(sites == j).flatten()
            self.slices.append(slice(int(where[0]), int(where[-1]) + 1))
        centre = problem.centre
        radius = problem.radius
        self.centre = centre
        self.power = radius**2 - centre**2
        dtype = rows.dtype
        a, b = rows[:, :n_w, :n_x], rows[:, :n_w, n_x:]
        c, d = rows[:, n_w:, :n_x], rows[:, n_w:, n_x:]
        cut = torch.eye(n_w, dtype=dtype) + b * centre.to(dtype)
        direct = torch.linalg.solve_triangular(cut, rows[:, :n_w], upper=False, unitriangular=True)
        a0, b0 = direct[..., :n_x], direct[..., n_x:]
        c0 = c - (d * centre.to(dtype)) @ a0
        d0 = d - (d * centre.to(dtype)) @ b0
        scale = max(float(item.abs().max()) for item in (direct, c0, d0) if item.numel())
        tol = NEGLIGIBLE * scale

        def kept(block: Tensor) -> Tensor | None:
            return block if block.numel() and float(block.abs().max()) > tol else None

        a_blocks = {i: kept(a0[:, self.slices[i]]) for i in range(self.count)}
        self.b = {
            (i, j): block
            for i in range(self.count)
            for j in range(i)
            if (block := kept(b0[:, self.slices[i], self.slices[j]])) is not None
        }
        self.d = {j: block for j in range(self.count) if (block := kept(d0[:, :, self.slices[j]])) is not None}
        c_kept = kept(c0)
        # the input's part projected on the span the blocks read (an isometry of what matters)
        x_rows = [block for block in a_blocks.values() if block is not None]
        if c_kept is not None:
            x_rows.append(c_kept)
        stacked = torch.cat(x_rows, dim=1) if x_rows else torch.zeros(rows.shape[0], 1, 1, dtype=dtype)
        if stacked.shape[-2] < n_x:
            _, r = torch.linalg.qr(stacked.mH)
            stacked = r.mH
        self.n_x = stacked.shape[-1]
        parts = torch.split(stacked, [block.shape[-2] for block in x_rows], dim=1)
        names = [i for i, block in a_blocks.items() if block is not None]
        self.a = dict(zip(names, parts, strict=False))
        c_reduced = parts[-1] if c_kept is not None else None
        self.frequencies = rows.shape[0]
        self.dtype = dtype
        # constant parts: C0^H C0, C0^H D0_j and D0_j^H D0_k
        n_y = d.shape[-2]
        zero_y = torch.zeros(self.frequencies, n_y, self.n_x, dtype=dtype)
        c_reduced = zero_y if c_reduced is None else c_reduced
        self.xx = c_reduced.mH @ c_reduced
        self.xw = {j: c_reduced.mH @ block for j, block in self.d.items()}
        self.ww = {(j, k): self.d[j].mH @ self.d[k] for j in self.d for k in self.d if k <= j}
        # which sites read which (for the blocks of K): i reads j where B0_ij is kept
        self.readers: dict[int, list[int]] = {j: [] for j in range(self.count)}
        for i, j in self.b:
            self.readers[j].append(i)
        pattern = set(self.ww)
        for i, j in self.b:
            pattern.add((i, j))
            for k in range(j + 1):
                if (i, k) in self.b and bool((self.power[self.slices[i]] != 0).any()):
                    pattern.add((j, k))
        self.k_pattern = {pair for pair in pattern if pair[0] != pair[1]}
        self.l_pattern = _fill(self.k_pattern, self.count)
        self.flops = self._flops()

    def _size(self, i: int) -> int:
        return self.slices[i].stop - self.slices[i].start

    def _flops(self) -> float:
        """Multiply-adds of one evaluation with its gradient (complex ones counted as 4), for the budget."""
        s = self._size
        total = 0.0
        for i, j in self.b:
            total += s(i) * s(j) * (s(j) + self.n_x)  # the p-weighted products
        for i, j in self.l_pattern:
            total += s(i) * s(j) * (s(j) + sum(s(k) for k in range(j) if (i, k) in self.l_pattern))
        for k in range(self.count):
            total += s(k) ** 3 / 3 + s(k) ** 2 * self.n_x + s(k) * self.n_x**2
        total += 4 * self.n_x**3
        return total * self.frequencies * (4 if self.dtype.is_complex else 1)

    def _scaled(self, multipliers: Tensor, weights: Tensor, i: int) -> Tensor:
        return (multipliers * weights)[self.slices[i]].to(self.dtype).unsqueeze(-1)

    def evaluate(self, multipliers: Tensor, with_vectors: bool = True) -> Evaluation:
        """rho*(lambda), and the maximisers where asked (for the gradient)."""
        lam = multipliers.to(torch.float64)
        blocks = self._k_blocks(lam)
        factor: dict[Pair, Tensor] = {}
        for k in range(self.count):
            diagonal = blocks.get((k, k))
            for j in range(k):
                if (k, j) in factor:
                    diagonal = diagonal - factor[(k, j)] @ factor[(k, j)].mH
            lower, info = torch.linalg.cholesky_ex(diagonal)
            if bool((info != 0).any()):
                return Evaluation(math.inf)
            factor[(k, k)] = lower
            for i in range(k + 1, self.count):
                if (i, k) not in self.l_pattern:
                    continue
                block = blocks.get((i, k))
                for j in range(k):
                    if (i, j) in factor and (k, j) in factor:
                        term = factor[(i, j)] @ factor[(k, j)].mH
                        block = -term if block is None else block - term
                if block is None:
                    continue
                factor[(i, k)] = torch.linalg.solve_triangular(lower, block.mH, upper=False).mH
        right = self._right(lam)
        half: list[Tensor | None] = []
        for k in range(self.count):
            total = right[k]
            for j in range(k):
                if (k, j) in factor and half[j] is not None:
                    term = factor[(k, j)] @ half[j]
                    total = -term if total is None else total - term
            half.append(None if total is None else torch.linalg.solve_triangular(factor[(k, k)], total, upper=False))
        schur = self._xx(lam)
        for item in half:
            if item is not None:
                schur = schur + item.mH @ item
        schur = (schur + schur.mH) / 2
        if not with_vectors:
            return Evaluation(float(torch.linalg.eigvalsh(schur)[:, -1].max()))
        values, vectors = torch.linalg.eigh(schur)
        return Evaluation(float(values[:, -1].max()), values, vectors, factor, half)

    def gradient(self, found: Evaluation, weights: Tensor) -> Tensor:
        """sum over frequencies f and eigenvalues i of weights_fi d mu_fi / d lambda, mu_fi the eigenvalues of
        S_f (Danskin, at the eigenvector v_fi and u_fi = K_f^-1 N_phix v_fi; the derivative is a quadratic
        form in v_fi, so the weights scale the vectors by their square roots); weights (F, n_x) >= 0, and
        frequencies and eigenvalues of weight 0 are skipped."""
        assert found.vectors is not None and found.factor is not None and found.half is not None
        chosen = torch.nonzero(weights.sum(-1) > 0).flatten()
        columns = int((weights[chosen] > 0).sum(-1).max())
        v = (found.vectors[chosen] * weights[chosen].sqrt().unsqueeze(-2).to(self.dtype))[..., -columns:]
        factor = {pair: block[chosen] for pair, block in found.factor.items()}
        half = [None if item is None else item[chosen] for item in found.half]
        # u = L^-H (Y v), by block back substitution
        u: list[Tensor | None] = [None] * self.count
        for k in reversed(range(self.count)):
            total = None if half[k] is None else half[k] @ v
            for i in range(k + 1, self.count):
                if (i, k) in factor and u[i] is not None:
                    term = factor[(i, k)].mH @ u[i]
                    total = -term if total is None else total - term
            if total is not None:
                u[k] = torch.linalg.solve_triangular(factor[(k, k)].mH, total, upper=True)
        out = []
        for i in range(self.count):
            z = torch.zeros(len(chosen), self._size(i), columns, dtype=self.dtype)
            if i in self.a:
                z = z + self.a[i][chosen] @ v
            for j in range(i):
                if (i, j) in self.b and u[j] is not None:
                    z = z + self.b[(i, j)][chosen] @ u[j]
            w = u[i] if u[i] is not None else torch.zeros_like(z)
            part = self.slices[i]
            squares = (z.abs() ** 2).sum((0, 2))
            crossed = (z.conj() * w).real.sum((0, 2))
            out.append(self.power[part] * squares + 2 * self.centre[part] * crossed - (w.abs() ** 2).sum((0, 2)))
        return torch.cat(out)

    def _k_blocks(self, lam: Tensor) -> dict[Pair, Tensor]:
        """The lower blocks of K = diag(lambda) - D0^H D0 - B0^H diag(lambda p) B0 - sym(diag(lambda c) B0)."""
        blocks: dict[Pair, Tensor] = {}
        for pair, block in self.ww.items():
            blocks[pair] = -block
        for i, j in self.b:
            weighted = self._scaled(lam, self.power, i) * self.b[(i, j)]
            if bool((self.power[self.slices[i]] != 0).any()):
                for k in range(j + 1):
                    if (i, k) in self.b:
                        term = weighted.mH @ self.b[(i, k)]
                        blocks[(j, k)] = blocks[(j, k)] - term if (j, k) in blocks else -term
            term = self._scaled(lam, self.centre, i) * self.b[(i, j)]
            blocks[(i, j)] = blocks[(i, j)] - term if (i, j) in blocks else -term
        for k in range(self.count):
            eye = torch.diag_embed(lam[self.slices[k]].to(self.dtype)).expand(self.frequencies, -1, -1)
            blocks[(k, k)] = blocks[(k, k)] + eye if (k, k) in blocks else eye
        return blocks

    def _right(self, lam: Tensor) -> list[Tensor | None]:
        """N_phix per site: D0_j^H C0 + sum_i B0_ij^H diag(lambda_i p_i) A0_i + diag(lambda_j c_j) A0_j."""
        out: list[Tensor | None] = []
        for j in range(self.count):
            total = self.xw[j].mH if j in self.xw else None
            if j in self.a:
                term = self._scaled(lam, self.centre, j) * self.a[j]
                total = term if total is None else total + term
            for i in self.readers[j]:
                if i in self.a and bool((self.power[self.slices[i]] != 0).any()):
                    term = self.b[(i, j)].mH @ (self._scaled(lam, self.power, i) * self.a[i])
                    total = term if total is None else total + term
            out.append(total)
        return out

    def _xx(self, lam: Tensor) -> Tensor:
        total = self.xx
        for i, block in self.a.items():
            if bool((self.power[self.slices[i]] != 0).any()):
                total = total + block.mH @ (self._scaled(lam, self.power, i) * block)
        return total


def _fill(pattern: set[Pair], count: int) -> set[Pair]:
    """The blocks of the Cholesky factor below the diagonal: K's and the fill-in of eliminating in order."""
    filled = set(pattern)
    for k in range(count):
        below = [i for i in range(k + 1, count) if (i, k) in filled]
        for a in below:
            for b in below:
                if b < a:
                    filled.add((a, b))
    return filled


def minimise(form: SlopeForm, start: Tensor, steps: int) -> Tensor:
    """L-BFGS on log lambda for a smoothed rho*: tau log sum exp(mu / tau) over every frequency's
    eigenvalues mu of the Schur complement, tau a fraction of rho* lowered in stages. Each evaluation
    counts as a step; the best multipliers by the true rho* are returned."""
    x = start.log().clone()
    best, best_rho = start.clone(), math.inf
    used = 0

    def objective(point: Tensor, temperature: float) -> tuple[float, Tensor | None, float]:
        nonlocal best, best_rho, used
        used += 1
        multipliers = point.exp()
        found = form.evaluate(multipliers)
        if not math.isfinite(found.rho):
            return math.inf, None, math.inf
        if found.rho < best_rho:
            best, best_rho = multipliers.clone(), found.rho
        assert found.values is not None
        scaled = (found.values - found.rho) / temperature
        weights = torch.softmax(scaled.flatten(), 0).reshape(scaled.shape)
        weights = torch.where(weights > 1e-8, weights, 0.0)
        value = found.rho + temperature * float(torch.logsumexp(scaled.flatten(), 0))
        return value, multipliers * form.gradient(found, weights / weights.sum()), found.rho

    for stage, (share, fraction) in enumerate(STAGES):
        if used >= steps:
            break
        limit = steps if stage == len(STAGES) - 1 else min(steps, used + int(share * steps))
        temperature = fraction * best_rho if math.isfinite(best_rho) else fraction * form.evaluate(start, False).rho
        value, grad, _ = objective(x, temperature)
        if grad is None:
            x = best.log().clone()
            value, grad, _ = objective(x, temperature)
            if grad is None:
                break
        history: list[tuple[Tensor, Tensor, float]] = []
        while used < limit:
            direction = -_two_loop(grad, history)
            length = 1.0 if history else min(1.0, 0.1 / float(direction.abs().max()))
            slope = float(grad @ direction)
            if slope >= 0:
                history, direction, slope = [], -grad, -float(grad @ grad)
                length = min(1.0, 0.1 / float(direction.abs().max()))
            accepted = False
            while used < limit:
                trial = x + length * direction
                trial_value, trial_grad, _ = objective(trial, temperature)
                if trial_grad is not None and trial_value <= value + 1e-4 * length * slope:
                    accepted = True
                    break
                length /= 4
            if not accepted:
                if DEBUG: print("  line search failed", used, math.sqrt(best_rho))
                break
            assert trial_grad is not None
            s, y = trial - x, trial_grad - grad
            if float(s @ y) > 1e-12 * float(y @ y):
                history = [*history[-(MEMORY - 1) :], (s, y, 1 / float(s @ y))]
            decrease = value - trial_value
            x, value, grad = trial, trial_value, trial_grad
            if decrease <= STAGE_TOLERANCE * abs(value):
                if DEBUG: print("  small decrease", used, math.sqrt(best_rho))
                break
        if DEBUG: print("stage", stage, used, math.sqrt(best_rho))
    return best


def _two_loop(grad: Tensor, history: list[tuple[Tensor, Tensor, float]]) -> Tensor:
    """The L-BFGS product H grad from the stored pairs (s, y, 1 / s.y)."""
    q = grad.clone()
    alphas = []
    for s, y, rho in reversed(history):
        alpha = rho * float(s @ q)
        alphas.append(alpha)
        q = q - alpha * y
    if history:
        s, y, _ = history[-1]
        q = q * (float(s @ y) / float(y @ y))
    for (s, y, rho), alpha in zip(history, reversed(alphas), strict=True):
        beta = rho * float(y @ q)
        q = q + (alpha - beta) * s
    return q
