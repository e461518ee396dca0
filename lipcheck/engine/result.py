"""The engine's one result type, its defaults and the constants of its stopping rule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

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
        adjoint_gap: (B,) float64, the relative gap of the adjoint test <J u, w> = <u, J^T w> on each
            sample (docs/engine.md, "The adjoint test"); None when no product ran.
        product: how J u was computed: "double-backward" or "forward" (`choices.Product`).
        decompositions: the operations the model was evaluated with by differentiable decompositions.
        model_calls_per_product: calls of the model per product J^T J u (0 for double backward, 1 for
            forward mode).
    """

    sigma: Tensor
    iterations: Tensor
    converged: Tensor
    residual: Tensor
    vector: Tensor
    sigma_upper: Tensor
    adjoint_gap: Tensor | None = None
    product: str = "double-backward"
    decompositions: tuple[str, ...] = ()
    model_calls_per_product: int = 0
