"""Certified upper bounds on a model's global l2 Lipschitz constant, composed over its exported graph.

The model is exported with `torch.export` at an example input of shape (1, *input_shape). Every value
in the graph then carries a Lipschitz bound with respect to the model input: the input carries 1,
parameters, buffers and anything computed from them alone carry 0 (they are constants). Each operation
has a rule that gives the bound of its output from the bounds of its inputs:

- an operation linear or Lipschitz in one input: L_out = L_op * L_in (layers: Linear, Conv, BatchNorm
  in eval mode, LayerNorm and GroupNorm, pooling, activations, scaling by a constant);
- a sum: L_out = L_a + L_b (residual connections: x + c g(x) gives 1 + |c| L_g);
- a concatenation of functions of the input: L_out = sqrt(sum L_i^2), since
  ||[f(a) - f(b), g(a) - g(b)]||^2 <= (L_f^2 + L_g^2) ||a - b||^2;
- a product of two input-dependent tensors has no global Lipschitz constant: it is refused.

The bound of the model is the bound of its output (of all its outputs taken together, like a
concatenation). Every layer factor is computed in float64 and is never below the exact constant of that
layer (spectral norms from exact SVDs, DFTs of convolution kernels, or certified Gram iteration), so
the composition is never below the model's Lipschitz constant. Exact factors get a relative margin of
1e-9 so that float64 rounding cannot bring them below the truth.
"""

from __future__ import annotations

from lipcheck.bounds import rules  # noqa: F401  (registers every operation's rule)
from lipcheck.bounds.compose import upper_bound
from lipcheck.bounds.graph import operation_name
from lipcheck.bounds.norms import gram_iteration_bound, matrix_spectral_norm
from lipcheck.report import BoundReport, LayerBound

__all__ = [
    "BoundReport",
    "LayerBound",
    "gram_iteration_bound",
    "matrix_spectral_norm",
    "operation_name",
    "upper_bound",
]
