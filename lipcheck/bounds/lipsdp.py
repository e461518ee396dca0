"""A LipSDP-Neuron bound (Fazlyab et al. 2019, arXiv 1906.04893), solved by a first-order method in torch
and certified in float64 whatever the solver did.

The network's difference map as a linear fractional transformation. As in the loop transformation
(`loop_transformation.py`), every activation with secant slopes in [a, b] maps a difference dz of its input
to c dz + w, c = (a + b) / 2, with |w_i| <= r |dz_i| per entry, r = (b - a) / 2; the rest of the network
(the c-network) is linear. Stacking the activations' inputs z and deviations w, exactly,

    z = A dx + B w,    dy = C dx + D w,

with B strictly lower triangular in graph order (a deviation only reaches later activations). Each entry
satisfies the quadratic constraint r_i^2 z_i^2 - w_i^2 >= 0, which is LipSDP-Neuron's slope constraint
(w + r z)(r z - w) >= 0 written about the centre slope. By the S-procedure, if multipliers lambda >= 0 and
rho satisfy the linear matrix inequality

    M(rho, lambda) = [C D]^T [C D] + [A B]^T diag(r^2 lambda) [A B] - diag(rho I, diag(lambda)) <= 0,

then ||dy||^2 <= rho ||dx||^2 + sum_i lambda_i (w_i^2 - r_i^2 z_i^2) <= rho ||dx||^2: L <= sqrt(rho).

Solving. For fixed lambda the least rho is the largest eigenvalue of the Schur complement
S = Q_xx + Q_xw (diag(lambda) - Q_ww)^-1 Q_wx of Q = M + diag(rho I, lambda), defined when
diag(lambda) - Q_ww is positive definite; rho*(lambda) is convex. `lipsdp_solver.py` evaluates it, with its
gradient, in the activations' outputs instead of their deviations (the same rho*, with blocks that follow
the graph), and minimises it over log lambda from a feasible start (per-site multipliers from a block-norm
recursion, scaled together and then site by site) by sequential quadratic programming on the pieces
(frequencies, eigenvalues) near the maximum; where that stops short of the steps allowed (at the edge of
the feasible set, where its model fails), Adam from the start takes the steps left, and the better of the
two is kept.

Certificate. The solver's rounding, its stopping and any bug in it are irrelevant: the final multipliers
are checked afresh in float64. rho is set a little above the computed rho*, the matrix -M (every frequency
block of it, `frequency.py`) is formed, and its least eigenvalue must exceed a margin of 1e-9 times the
scale of its entries, far above what float64 rounding in forming it and in the symmetric eigensolver
(backward stable: eigenvalues within a small multiple of n u ||M||) could hide. Only then is sqrt(rho)
(with the 1e-9 margin) returned; otherwise None, and the caller keeps the loop transformation's bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.fx import Node

from lipcheck.bounds.graph import GraphBound
from lipcheck.bounds.lipsdp_solver import SlopeForm, minimise
from lipcheck.bounds.loop_transformation import NonlinearSite, _LoopTransformation
from lipcheck.bounds.norms import with_margin

# Per-neuron multipliers on the merged matrices read from the c-network when the input and all
# activations together have at most this many entries (the matrix of the inequality has this side).
DENSE_MAX_SIDE = 2048
# First-order steps of the solver; the certificate does not depend on them.
SOLVER_STEPS = 600
# The solver stops early when its best rho has not fallen by STALL_TOLERANCE (relative) in STALL_STEPS.
STALL_TOLERANCE = 1e-4
STALL_STEPS = 200
# The time budget, as work: each evaluation of rho* (a solver step, or one of the start's) costs the
# multiply-adds of the slope form's factorisation and gradient (`SlopeForm.flops`, complex ones counted as
# four) plus STEP_OVERHEAD for the per-step work of small blocks and of the solver itself, calibrated on
# one laptop core (about 1.2e9 of them a second with the solver's batched small blocks). Fewer steps are
# taken where the full count would exceed the budget, and none (the loop transformation stands) where
# even MIN_STEPS would. About 20 s of solving on one core at most.
WORK_BUDGET = int(2**34.5)
STEP_OVERHEAD = 5e6
MIN_STEPS = 100
LEARNING_RATE = 0.03
# ... held for the first 70% of the steps, then decaying geometrically to this fraction of it.
FINAL_RATE_FRACTION = 0.1
# The certificate: least eigenvalue of -M at least this times the scale of M's entries.
CERTIFICATE_MARGIN = 1e-9
# rho is raised by this relative amount above the computed optimum before it is checked.
RHO_SLACK = 1e-7


@dataclass(frozen=True)
class Transformation:
    """The network's difference map z = A dx + B w, dy = C dx + D w, per frequency.

    rows: (F, n_z + n_y, n_x + n_w), [[A, B], [C, D]] for each of F frequency blocks (F = 1, real, for
        the dense form; complex channel symbols for the circulant form of `frequency.py`).
    radius: (n_w,) float64, r of the activation at each entry of w (and of its input z: n_z = n_w).
    centre: (n_w,) float64, c of the activation at each entry (the c-network's slope there).
    sites: (n_w,) int64, the index of the activation each entry belongs to, in graph order.
    n_x: the columns of dx.
    how: what the multipliers are, for the report ("per neuron", "per channel, 34x34 circulant").
    """

    rows: Tensor
    radius: Tensor
    centre: Tensor
    sites: Tensor
    n_x: int
    how: str

    @property
    def n_w(self) -> int:
        return int(self.radius.numel())


@dataclass(frozen=True)
class LipSDPBound:
    bound: float
    method: str


def activation_sites(lt: _LoopTransformation) -> list[NonlinearSite] | None:
    """The activations of the graph (radius > 0), or None when it has an opaque site (max pooling,
    LayerNorm, an assumed constant, ...), whose deviation is not an elementwise slope constraint."""
    found = []
    for site in lt.sites.values():
        if site.radius == 0 and site.centre == 0:
            return None
        if site.radius > 0:
            found.append(site)
    return found


def dense_transformation(walker: GraphBound, outputs: list[Node]) -> Transformation | None:
    """The merged matrices A, B, C, D read from the c-network by batched products (per-neuron form), when
    the graph has only elementwise activations and is small enough."""
    lt = _LoopTransformation(walker, outputs)
    sites = activation_sites(lt)
    if sites is None or not sites:
        return None
    n_x = _numel(lt.input)
    sizes = [_numel(site.node) for site in sites]
    if n_x + sum(sizes) > DENSE_MAX_SIDE:
        return None
    targets = tuple(site.inputs[0] for site in sites) + tuple(outputs)
    columns = []
    for source in (lt.input, *(site.node for site in sites)):
        n = _numel(source)
        block = lt._block(source, targets)
        basis = torch.eye(n, dtype=torch.float64).reshape(n, *_shape(source))
        columns.append(torch.cat([torch.func.vmap(block)(basis[i : i + 256]) for i in range(0, n, 256)]).T)
    rows = torch.cat(columns, dim=1).unsqueeze(0)
    radius = torch.cat(
        [torch.full((n,), site.radius, dtype=torch.float64) for n, site in zip(sizes, sites, strict=True)]
    )
    centre = torch.cat(
        [torch.full((n,), site.centre, dtype=torch.float64) for n, site in zip(sizes, sites, strict=True)]
    )
    index = torch.cat([torch.full((n,), i, dtype=torch.int64) for i, n in enumerate(sizes)])
    return Transformation(rows, radius, centre, index, n_x, "per-neuron multipliers")


def lipsdp_bound(problem: Transformation, steps: int | None = None) -> LipSDPBound | None:
    """The certified bound sqrt(rho) of the transformation, or None when no multipliers were certified
    (or the problem is past the work budget)."""
    form = SlopeForm(problem)
    budget = None
    if steps is None:
        budget = int(WORK_BUDGET // (form.flops + STEP_OVERHEAD))
        if budget < MIN_STEPS:
            return None
    start, evaluations = _feasible_start(form, problem)
    if start is None:
        return None
    if budget is not None:
        # the start's evaluations of rho* count against the same budget as the solver's steps
        steps = max(min(SOLVER_STEPS, budget - evaluations), 0)
    multipliers, used = minimise(form, start, steps or 0)
    if used < (steps or 0):
        # it stopped short (at the edge of the feasible set, where its model fails): Adam from the start
        # with the steps left, and the better of the two
        other = _minimise(form, start, (steps or 0) - used)
        if form.evaluate(other, with_vectors=False).rho < form.evaluate(multipliers, with_vectors=False).rho:
            multipliers = other
    rho = certify(problem.rows, problem, multipliers)
    if rho is None:
        return None
    return LipSDPBound(with_margin(math.sqrt(rho)), f"LipSDP-Neuron, {problem.how}, certified in float64")


def _pieces(rows: Tensor, problem: Transformation, multipliers: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Q_xx, Q_xw and diag(lambda) - Q_ww for the multipliers (per frequency)."""
    n_w = problem.n_w
    n_x = rows.shape[-1] - n_w
    weights = torch.cat(
        [problem.radius**2 * multipliers, torch.ones(rows.shape[-2] - n_w, dtype=torch.float64)]
    )
    weighted = rows * weights.sqrt().to(rows.dtype).unsqueeze(-1)
    q = weighted.mH @ weighted
    slack = torch.diag_embed(multipliers.to(rows.dtype)) - q[..., n_x:, n_x:]
    return q[..., :n_x, :n_x], q[..., :n_x, n_x:], slack


def rho_of(rows: Tensor, problem: Transformation, multipliers: Tensor) -> Tensor:
    """rho*(lambda) = max over frequencies of the largest eigenvalue of the Schur complement; inf where
    diag(lambda) - Q_ww is not positive definite."""
    q_xx, q_xw, slack = _pieces(rows, problem, multipliers)
    factor, info = torch.linalg.cholesky_ex(slack)
    if bool((info != 0).any()):
        return torch.tensor(math.inf, dtype=torch.float64)
    half = torch.linalg.solve_triangular(factor, q_xw.mH, upper=False)
    schur = q_xx + half.mH @ half
    schur = (schur + schur.mH) / 2
    return torch.linalg.eigvalsh(schur)[..., -1].max()


def _feasible_start(form: SlopeForm, problem: Transformation) -> tuple[Tensor | None, int]:
    """Per-site multipliers mu_j = 2 m (||D_j||^2 + sum over later sites k of r_k^2 mu_k ||B_kj||^2), m the
    number of sites, make diag(lambda) - Q_ww positive definite (||sum_j F_j v_j||^2 <= m sum_j
    ||F_j||^2 ||v_j||^2); then the best common scale of them on a geometric grid, and each site's scale
    on its own. Returns the start and the number of evaluations of rho* it took."""
    rows, n_x, n_w, sites = problem.rows, problem.n_x, problem.n_w, problem.sites
    count = int(sites.max()) + 1
    z_rows, y_rows = rows[..., :n_w, n_x:], rows[..., n_w:, n_x:]
    mu = [0.0] * count
    for j in reversed(range(count)):
        columns = sites == j
        total = _block_norm(y_rows[..., :, columns]) ** 2
        for k in range(j + 1, count):
            block = z_rows[..., sites == k, :][..., :, columns]
            total += float(problem.radius[sites == k][0]) ** 2 * mu[k] * _block_norm(block) ** 2
        mu[j] = 2 * count * total + 1e-12
    base = torch.tensor(mu, dtype=torch.float64)[sites]
    best, best_rho, evaluations = None, math.inf, 0
    for exponent in range(0, 40):
        candidate = base * 2.0 ** (exponent / 2)
        rho = form.evaluate(candidate, with_vectors=False).rho
        evaluations += 1
        if rho < best_rho:
            best, best_rho = candidate, rho
        elif math.isfinite(best_rho):
            break
    if best is None:
        return None, evaluations
    # then each site's multipliers scaled on their own (the recursion's factor 2 m is often far too much)
    for _ in range(3):
        for j in range(count):
            for factor in (0.25, 0.5, 2.0, 4.0):
                candidate = torch.where(sites == j, best * factor, best)
                rho = form.evaluate(candidate, with_vectors=False).rho
                evaluations += 1
                if rho < best_rho:
                    best, best_rho = candidate, rho
    return best, evaluations


def _block_norm(block: Tensor) -> float:
    if block.numel() == 0:
        return 0.0
    return float(torch.linalg.matrix_norm(block, ord=2).max())


def _minimise(form: SlopeForm, start: Tensor, steps: int) -> Tensor:
    """Adam on log lambda for log rho*(lambda), the gradient read from the maximisers (Danskin); a step to
    an infeasible point is taken back halfway to the last feasible one."""
    log_lambda = start.log().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([log_lambda], lr=LEARNING_RATE)
    decay = FINAL_RATE_FRACTION ** (1 / max(steps - int(0.7 * steps), 1))
    best, best_rho = start.clone(), form.evaluate(start, with_vectors=False).rho
    last = best
    progress_rho, progress_step = best_rho, 0
    for step in range(steps):
        if best_rho < progress_rho * (1 - STALL_TOLERANCE):
            progress_rho, progress_step = best_rho, step
        elif step - progress_step > STALL_STEPS:
            break  # no progress worth a step for a while: converged, to the solver's accuracy
        multipliers = log_lambda.detach().exp()
        found = form.evaluate(multipliers)
        if not math.isfinite(found.rho):
            with torch.no_grad():
                log_lambda.copy_((log_lambda + last.log()) / 2)
            continue
        last = multipliers
        if found.rho < best_rho:
            best, best_rho = multipliers.clone(), found.rho
        # d log rho / d log lambda = lambda (d rho / d lambda) / rho
        assert found.values is not None
        weights = (found.values == found.values[:, -1].max()).to(torch.float64)
        weights = weights / weights.sum()
        log_lambda.grad = multipliers * form.gradient(found, weights) / found.rho
        optimiser.step()
        if step >= int(0.7 * steps):
            for group in optimiser.param_groups:
                group["lr"] *= decay
    return best


def certify(rows: Tensor, problem: Transformation, multipliers: Tensor) -> float | None:
    """A rho for which -M(rho, lambda) is checked positive definite in float64, with the margin; None if
    the check fails (the multipliers are then not trusted at all)."""
    with torch.no_grad():
        multipliers = multipliers.detach().to(torch.float64) * (1 + 1e-6)
        rho_star = float(rho_of(rows, problem, multipliers))
        if not math.isfinite(rho_star) or rho_star < 0:
            return None
        q_xx, q_xw, slack = _pieces(rows, problem, multipliers)
        for slack_factor in (RHO_SLACK, 1e-4, 1e-2):
            rho = rho_star * (1 + slack_factor) + 1e-300
            n_x = q_xx.shape[-1]
            negative = torch.cat(
                [
                    torch.cat([rho * torch.eye(n_x, dtype=q_xx.dtype) - q_xx, -q_xw], dim=-1),
                    torch.cat([-q_xw.mH, slack], dim=-1),
                ],
                dim=-2,
            )
            negative = (negative + negative.mH) / 2
            scale = float(torch.linalg.matrix_norm(negative).max())
            least = float(torch.linalg.eigvalsh(negative)[..., 0].min())
            if least >= CERTIFICATE_MARGIN * scale:
                return rho
    return None


def _shape(node: Node) -> tuple[int, ...]:
    return tuple(int(d) for d in node.meta["val"].shape)


def _numel(node: Node) -> int:
    return math.prod(_shape(node))
