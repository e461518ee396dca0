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

from lipcheck.engine.lanczos import lanczos
from lipcheck.engine.operator import JacobianOperator, check_batch_coupling, check_input, operator_output
from lipcheck.engine.power import power_method
from lipcheck.engine.result import (
    DEFAULT_CONFIDENCE,
    DEFAULT_KRYLOV_DIM,
    DEFAULT_SEED,
    IterationCallback,
    SpectralNormResult,
)
from lipcheck.engine.solve import differentiable_sigma, solve, spectral_norm
from lipcheck.engine.vectors import start_vector

__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_KRYLOV_DIM",
    "DEFAULT_SEED",
    "IterationCallback",
    "JacobianOperator",
    "SpectralNormResult",
    "check_batch_coupling",
    "check_input",
    "differentiable_sigma",
    "lanczos",
    "operator_output",
    "power_method",
    "solve",
    "spectral_norm",
    "start_vector",
]
