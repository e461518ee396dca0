"""The largest slopes of the smooth activations: their rules (elementwise.py) and the loop
transformation's slope ranges read them from here."""

from __future__ import annotations

import math

# Largest slopes of the smooth activations, each the global Lipschitz constant (the sup of |f'|), rounded
# up in the 10th digit. GELU(x) = x Phi(x) has f' = Phi(x) + x phi(x) and f'' = (2 - x^2) phi(x), so the
# maximum is at x = sqrt(2): Phi(sqrt(2)) + sqrt(2) phi(sqrt(2)) = Phi(sqrt(2)) + exp(-1) / sqrt(pi).
# SiLU x sigmoid(x), Mish x tanh(softplus(x)) and the tanh form of GELU have no closed form: the maxima
# were found in float64 by a grid of step 1e-5 on [-10, 10] refined by golden-section search on f' (and
# |f'| < 1 outside [-10, 10] for all three, where they are x or 0 to within e^-10).
GELU_SLOPE = 0.5 * (1 + math.erf(1.0)) + math.exp(-1.0) / math.sqrt(math.pi)  # 1.12890414518...
GELU_TANH_SLOPE = 1.1289930687  # 1.12899306866 at x = 1.41850
SILU_SLOPE = 1.0998393202  # 1.09983932013 at x = 2.39936
MISH_SLOPE = 1.0884981613  # 1.08849816125 at x = 1.49057
