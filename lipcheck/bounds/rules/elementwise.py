"""Rules of elementwise functions and arithmetic: activations, sums, maxima, scaling by constants,
reductions."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from lipcheck.bounds.graph import Site, aten, broadcast_copies, first_tensor, monomial_norm, rule, where
from lipcheck.bounds.norms import with_margin
from lipcheck.bounds.rules.slopes import GELU_SLOPE, GELU_TANH_SLOPE, MISH_SLOPE, SILU_SLOPE
from lipcheck.errors import UnsupportedOperationError


# Elementwise functions: name -> (Lipschitz constant from the node's arguments, why).
def _constant_rule(constant: float, why: str) -> Callable[[Site], tuple[float, str]]:
    return lambda site: (constant, why)


def _leaky_relu(site: Site) -> tuple[float, str]:
    slope = abs(float(site.value("negative_slope")))
    return max(1.0, slope), "max(1, |negative_slope|)"


def _elu(site: Site) -> tuple[float, str]:
    alpha = float(site.value("alpha"))
    scale = float(site.value("scale"))
    input_scale = float(site.value("input_scale"))
    if input_scale < 0:
        raise UnsupportedOperationError(f"cannot bound {site.name!r} with input_scale < 0: not Lipschitz")
    return abs(scale) * max(1.0, abs(alpha * input_scale)), "|scale| max(1, |alpha input_scale|)"


def _prelu(site: Site) -> tuple[float, str]:
    weight = site.value("weight").detach().to(torch.float64)
    return max(1.0, float(weight.abs().max())), "max(1, max |weight|)"


def _gelu(site: Site) -> tuple[float, str]:
    if site.value("approximate") == "tanh":
        return GELU_TANH_SLOPE, f"{GELU_TANH_SLOPE}: max gelu' of the tanh form (at x = 1.41850)"
    return with_margin(GELU_SLOPE), f"{GELU_SLOPE:.10f}: max gelu' = Phi(sqrt(2)) + exp(-1) / sqrt(pi)"


def _softmax(site: Site) -> tuple[float, str]:
    # J = diag(p) - p p^T is symmetric PSD and v^T J v = Var_p(v) <= (max v - min v)^2 / 4 <= 1/2 for unit v.
    return 0.5, "1/2: the Jacobian diag(p) - p p^T has v^T J v = Var_p(v) <= 1/2"


def _log_softmax(site: Site) -> tuple[float, str]:
    n = site.shape(first_tensor(site))[int(site.value("dim"))]
    # Jacobian I - 1 p^T: norm <= 1 + ||1|| ||p|| <= 1 + sqrt(n).
    return 1 + math.sqrt(n), f"1 + sqrt({n}) (Jacobian I - 1 p^T)"


_ACTIVATIONS: dict[str, Callable[[Site], tuple[float, str]]] = {
    "relu": _constant_rule(1.0, "1"),
    "hardtanh": _constant_rule(1.0, "1"),
    "clamp": _constant_rule(1.0, "1"),
    "clip": _constant_rule(1.0, "1"),
    "clamp_min": _constant_rule(1.0, "1"),
    "clamp_max": _constant_rule(1.0, "1"),
    "abs": _constant_rule(1.0, "1"),
    "tanh": _constant_rule(1.0, "1: tanh' <= 1"),
    "sigmoid": _constant_rule(0.25, "1/4: sigmoid' <= 1/4"),
    "hardsigmoid": _constant_rule(1 / 6, "1/6"),
    "hardswish": _constant_rule(1.5, "3/2: slope (2x + 3)/6 at x = 3"),
    "silu": _constant_rule(SILU_SLOPE, f"{SILU_SLOPE}: max silu' (at x = 2.39936)"),
    "gelu": _gelu,
    "mish": _constant_rule(MISH_SLOPE, f"{MISH_SLOPE}: max mish' (at x = 1.49057)"),
    "softplus": _constant_rule(1.0, "1: softplus' = sigmoid(beta x) <= 1"),
    "log_sigmoid": _constant_rule(1.0, "1: logsigmoid' = sigmoid(-x) <= 1"),
    "celu": _constant_rule(1.0, "1: celu' = min(1, exp(x / alpha)) <= 1"),
    "selu": _constant_rule(1.0507009873554805 * 1.6732632423543772, "scale * alpha = 1.7581"),
    "softshrink": _constant_rule(1.0, "1"),
    "sin": _constant_rule(1.0, "1"),
    "cos": _constant_rule(1.0, "1"),
    "atan": _constant_rule(1.0, "1"),
    "erf": _constant_rule(2 / math.sqrt(math.pi), "2 / sqrt(pi)"),
    "softmax": _softmax,
    "_softmax": _softmax,
    "log_softmax": _log_softmax,
    "_log_softmax": _log_softmax,
    "leaky_relu": _leaky_relu,
    "elu": _elu,
    "prelu": _prelu,
    "_prelu_kernel": _prelu,
}


@rule([getattr(torch.ops.aten, name) for name in _ACTIVATIONS if hasattr(torch.ops.aten, name)])
def _activation(site: Site) -> float:
    """An elementwise L-Lipschitz function (or a row-wise one, softmax) scales every difference by L."""
    short = str(site.node.target.overloadpacket).split(".")[-1]
    argument = first_tensor(site)
    for other in site.args:
        if other != argument:
            site.value(other)  # raises when a parameter of the function depends on the input
    constant, why = _ACTIVATIONS[short](site)
    kind = short.lstrip("_")
    if constant == 1.0 and kind in ("relu", "hardtanh", "clamp", "clip", "clamp_min", "clamp_max", "abs"):
        return site.lip(argument)
    return site.scale(argument, kind, constant, why)


@rule(aten("mean", "sum"), linear=True)
def _reduction(site: Site) -> float:
    """A sum over groups of n entries: each output is w 1^T x_group, so the norm is |w| sqrt(n)."""
    argument = first_tensor(site)
    shape = site.shape(argument)
    dims = site.args.get("dim")
    dims = list(range(len(shape))) if not dims else [int(d) % len(shape) for d in dims]
    n = math.prod(shape[d] for d in dims) if shape else 1
    is_mean = "mean" in str(site.node.target)
    factor = 1 / math.sqrt(n) if is_mean else math.sqrt(n)
    method = f"{'1/sqrt' if is_mean else 'sqrt'}({n}): {'average' if is_mean else 'sum'} of {n} entries"
    return site.scale(argument, "mean" if is_mean else "sum", factor, method)


@rule(aten("add", "sub", "rsub"), linear=True)
def _add(site: Site) -> float:
    """L(a + alpha b) <= L(a) + |alpha| L(b); broadcasting copies an entry k times: sqrt(k)."""
    alpha = abs(float(site.value("alpha"))) if "alpha" in site.args else 1.0
    first, second = list(site.args)[:2]
    if "rsub" in str(site.node.target):  # other - alpha self
        first, second = second, first
    return broadcast_copies(site, first) * site.lip(first) + alpha * broadcast_copies(
        site, second
    ) * site.lip(second)


@rule(aten("maximum", "minimum", "fmax", "fmin"))
def _maximum(site: Site) -> float:
    """|max(a, b) - max(a', b')| <= max(|a - a'|, |b - b'|), so L <= sqrt(L_a^2 + L_b^2)."""
    first, second = list(site.args)[:2]
    return math.hypot(
        broadcast_copies(site, first) * site.lip(first), broadcast_copies(site, second) * site.lip(second)
    )


@rule(aten("mul", "div"), linear=True)
def _scaling(site: Site) -> float:
    """x * c or x / c with a constant c: exact norm of the (broadcast) diagonal scaling."""
    first, second = list(site.args)[:2]
    divide = "div" in str(site.node.target)
    if divide and site.depends(second):
        site.value(second)  # raises: 1 / x is not Lipschitz
    variable, constant = (first, second) if site.depends(first) else (second, first)
    if site.depends(constant):
        site.value(constant)  # raises: a product of two input-dependent tensors
    if divide and site.args.get("rounding_mode") is not None:
        raise UnsupportedOperationError(
            f"cannot bound {site.name!r} (node {site.node.name!r}{where(site.node)}): a rounded division "
            "is not a Lipschitz function of the input"
        )
    value = site.value(constant)
    if divide and bool((torch.as_tensor(value) == 0).any()):
        raise UnsupportedOperationError(
            f"cannot bound {site.name!r} (node {site.node.name!r}{where(site.node)}): it divides by a "
            "constant that is 0, which is not a Lipschitz function of the input"
        )
    if isinstance(value, Tensor) and value.numel() > 1:
        factor = monomial_norm(site, variable)
        method = "exact: max over entries of the (broadcast) constant factor"
    else:
        scalar = float(value)
        factor = 1 / abs(scalar) if divide else abs(scalar)
        method = f"|{'1/' if divide else ''}{scalar:g}|"
    if factor == 1.0:
        return site.lip(variable)
    return site.scale(variable, "scale", factor, method)


@rule(
    aten(
        "scaled_dot_product_attention",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    )
)
def _attention(site: Site) -> float:
    """Refused: softmax(q k^T / sqrt(d)) v has no global Lipschitz constant in its inputs (Kim et al.
    2021, "The Lipschitz constant of self-attention"): scaling q and k sharpens the softmax, and the
    product with v grows with v, so the Jacobian is unbounded."""
    raise UnsupportedOperationError(
        f"cannot bound {site.name!r} (node {site.node.name!r}{where(site.node)}): dot-product attention "
        "softmax(q k^T / sqrt(d)) v has no global Lipschitz constant (its Jacobian grows without bound with "
        f"q, k and v); --assume {site.name}=L (Python: assume={{{site.name!r}: L}}) would assert that L "
        "bounds it jointly in q, k and v on the inputs you care about, which lipcheck cannot check"
    )
