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

The minimiser. rho* is the largest of many pieces (every frequency's eigenvalues), several of them equal
at the optimum, where a gradient method zigzags. `minimise` takes the pieces within a window of rho*, each
with its gradient, and steps by the quadratic program min over d of max_p (mu_p + g_p . d) + d^T H d / 2
(solved in its dual over the simplex by an active-set method), H the BFGS estimate of the curvature of the
pieces' Lagrangian, then searches back along the step until rho* itself falls. The pieces leave out the
feasible set's edge (diag(lambda) - Q_ww singular at a frequency where the input barely reaches), so it
can stop there; the caller then gives the steps left to Adam.
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

# The solver: at most MAX_PIECES pieces in a step's model, no step longer than TRUST in any log lambda,
# LINE_SEARCH trials a step, and convergence when the model predicts less than CONVERGED (relative).
MAX_PIECES = 64
TRUST = 1.0
LINE_SEARCH = 6
CONVERGED = 1e-7
# The solver gives up after this many line searches in a row found no decrease (at the feasible set's
# edge, typically).
FAILURES = 8


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
        b = rows[:, :n_w, n_x:]
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
        self.d = {
            j: block for j in range(self.count) if (block := kept(d0[:, :, self.slices[j]])) is not None
        }
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
            half.append(
                None if total is None else torch.linalg.solve_triangular(factor[(k, k)], total, upper=False)
            )
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
        S_f; weights (F, n_x) >= 0, and frequencies and eigenvalues of weight 0 are skipped. The derivative
        is a quadratic form in the eigenvector, so the weights scale the vectors by their square roots."""
        assert found.vectors is not None
        chosen = torch.nonzero(weights.sum(-1) > 0).flatten()
        columns = int((weights[chosen] > 0).sum(-1).max())
        v = (found.vectors[chosen] * weights[chosen].sqrt().unsqueeze(-2).to(self.dtype))[..., -columns:]
        return self.derivatives(found, chosen, v).sum(0)

    def derivatives(self, found: Evaluation, chosen: Tensor, v: Tensor) -> Tensor:
        """(P, n_w): for each p, the sum over the columns v of V_p (P, n_x, columns) of d (v^H S v) / d lambda
        at the frequency chosen_p (Danskin: at v and u = K^-1 N_phix v, p |z|^2 + 2 c Re(z^* u) - |u|^2 with
        z = A0 v + B0 u); the top eigenvector gives the derivative of the largest eigenvalue."""
        assert found.factor is not None and found.half is not None
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
            z = torch.zeros(len(chosen), self._size(i), v.shape[-1], dtype=self.dtype)
            if i in self.a:
                z = z + self.a[i][chosen] @ v
            for j in range(i):
                if (i, j) in self.b and u[j] is not None:
                    z = z + self.b[(i, j)][chosen] @ u[j]
            w = u[i] if u[i] is not None else torch.zeros_like(z)
            part = self.slices[i]
            squares = (z.abs() ** 2).sum(-1)
            crossed = (z.conj() * w).real.sum(-1)
            out.append(self.power[part] * squares + 2 * self.centre[part] * crossed - (w.abs() ** 2).sum(-1))
        return torch.cat(out, dim=-1)

    def _k_blocks(self, lam: Tensor) -> dict[Pair, Tensor]:
        """K's lower blocks = diag(lambda) - D0^H D0 - B0^H diag(lambda p) B0 - sym(diag(lambda c) B0)."""
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


def minimise(form: SlopeForm, start: Tensor, steps: int) -> tuple[Tensor, int]:
    """Sequential quadratic programming for the max of the pieces mu_p (every frequency's eigenvalues of
    the Schur complement near rho*) over x = log lambda: the step minimises max_p (mu_p + g_p . d) +
    d^T H d / 2, H the BFGS estimate of the Hessian of the pieces' Lagrangian, with a backtracking line
    search on rho* itself. Each evaluation of rho* counts as a step; returns the best multipliers and the
    steps taken."""
    x = start.log().clone()
    used = 0
    best, best_rho = start.clone(), math.inf

    def pieces(point: Tensor, window: float) -> tuple[float, Tensor, Tensor, Tensor, Evaluation] | None:
        nonlocal used, best, best_rho
        used += 1
        multipliers = point.exp()
        found = form.evaluate(multipliers)
        if not math.isfinite(found.rho):
            return None
        if found.rho < best_rho:
            best, best_rho = multipliers.clone(), found.rho
        return select(found, multipliers, window)

    def select(
        found: Evaluation, multipliers: Tensor, window: float
    ) -> tuple[float, Tensor, Tensor, Tensor, Evaluation]:
        """The pieces within window (relative) of rho*, at most MAX_PIECES: values, log lambda gradients."""
        assert found.values is not None and found.vectors is not None
        flat = found.values.flatten()
        count = int((flat >= found.rho * (1 - window)).sum().clamp(1, MAX_PIECES))
        values, index = flat.topk(count)
        columns = found.values.shape[-1]
        frequency, column = index // columns, index % columns
        vectors = found.vectors[frequency, :, column].unsqueeze(-1)
        grads = form.derivatives(found, frequency, vectors) * multipliers
        return found.rho, values, grads, torch.stack([frequency, column]), found

    window = 1e-2
    state = pieces(x, window)
    if state is None:
        return best, used
    inverse: Tensor | None = None
    failures = 0
    while used < steps:
        rho, values, grads, which, found = state
        if inverse is None:
            inverse = torch.eye(x.numel(), dtype=torch.float64) * (
                0.1 / float(grads.abs().max().clamp_min(1e-300))
            )
        weights = _simplex_qp(values - rho, grads @ inverse @ grads.T)
        direction = -(inverse @ (grads.T @ weights))
        largest = float(direction.abs().max())
        if largest > TRUST:
            direction = direction * (TRUST / largest)
        predicted = rho - float((values + grads @ direction).max())
        if predicted <= CONVERGED * rho:
            break
        length, accepted = 1.0, None
        for _ in range(LINE_SEARCH):
            if used >= steps:
                break
            trial = pieces(x + length * direction, window)
            if trial is not None and trial[0] <= rho - 0.1 * length * predicted:
                accepted = trial
                break
            length /= 4
        if accepted is None:
            failures += 1
            if failures > FAILURES:
                break
            inverse, window = None, max(min(window * 4, 0.1), window)
            continue
        failures = 0
        step = length * direction
        # the Lagrangian's gradient at the new point, over the same pieces with the same weights
        new_found = accepted[4]
        assert new_found.vectors is not None
        vectors = new_found.vectors[which[0], :, which[1]].unsqueeze(-1)
        new_grads = form.derivatives(new_found, which[0], vectors) * (x + step).exp()
        change = (new_grads - grads).T @ weights
        curvature = float(step @ change)
        if curvature > 1e-12 * float(change @ change):
            # the BFGS update of the inverse, (I - s y^T / s.y) H (I - y s^T / s.y) + s s^T / s.y, in O(n^2)
            scale = 1 / curvature
            product = inverse @ change
            inverse = (
                inverse
                - scale * (torch.outer(step, product) + torch.outer(product, step))
                + (scale * scale * float(change @ product) + scale) * torch.outer(step, step)
            )
        window = min(max(4 * predicted / rho, 1e-5), 0.1)
        x = x + step
        state = select(new_found, x.exp(), window)
    return best, used


def _simplex_qp(values: Tensor, quadratic: Tensor) -> Tensor:
    """argmax over the simplex of a . values - a^T quadratic a / 2, by a primal active-set method (the
    equality-constrained optimum on the support, least squares where the quadratic is singular)."""
    count = values.numel()
    weights = torch.zeros(count, dtype=torch.float64)
    weights[int(values.argmax())] = 1
    support = weights > 0
    for _ in range(4 * count + 4):
        index = torch.nonzero(support).flatten()
        size = len(index)
        kkt = torch.zeros(size + 1, size + 1, dtype=torch.float64)
        kkt[:size, :size] = quadratic[index][:, index]
        kkt[:size, size] = 1
        kkt[size, :size] = 1
        rhs = torch.cat([values[index], torch.ones(1, dtype=torch.float64)])
        solution = torch.linalg.lstsq(kkt, rhs.unsqueeze(-1), driver="gelsd").solution.squeeze(-1)
        target, nu = solution[:size], float(solution[size])
        if bool((target >= 0).all()):
            weights = torch.zeros(count, dtype=torch.float64)
            weights[index] = target
            # the bounds' multipliers off the support, (Q a - v)_j + nu, must be >= 0
            slack = quadratic @ weights - values + nu
            slack[index] = 0
            j = int(slack.argmin())
            if float(slack[j]) >= -1e-12 * (float(values.abs().max()) + 1e-300):
                return weights
            support[j] = True
        else:
            current = weights[index]
            moving = target < 0
            ratios = current[moving] / (current[moving] - target[moving])
            t = float(ratios.min())
            weights[index] = current + t * (target - current)
            support = weights > 1e-15
            weights = torch.where(support, weights, 0.0)
            weights = weights / weights.sum()
    return weights


def _project(point: Tensor) -> Tensor:
    """The Euclidean projection on the simplex."""
    ordered, _ = torch.sort(point, descending=True)
    cumulative = ordered.cumsum(0) - 1
    index = torch.arange(1, point.numel() + 1, dtype=torch.float64)
    kept = int((ordered - cumulative / index > 0).sum())
    shift = cumulative[kept - 1] / kept
    return (point - shift).clamp_min(0)
