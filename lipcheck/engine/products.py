"""Where J u comes from, on models that plain double backward cannot differentiate, and the adjoint
test that every batch passes before its figures are reported.

The engine's default product gets J u by differentiating the graph of w -> J^T w (double backward,
lipcheck.engine.operator). Some operations have no double backward in torch, and some models' reverse
mode is simply wrong. Three pieces deal with that:

- `differentiable_decompositions()`, a torch function mode active whenever the engine calls the model:
  hardsigmoid and hardswish become clamp compositions (torch has no derivative of hardsigmoid's
  backward), and `scaled_dot_product_attention` runs under its math backend (the fused CPU and CUDA
  kernels have neither a double backward nor forward-mode AD). The values are the same up to rounding,
  and the model is still called once.
- `ForwardModeOperator`: J u by forward-mode AD (`torch.autograd.forward_ad`), one model call per
  product, where decompositions do not reach; J^T v stays reverse mode on the first call's graph. A
  model whose output changes between calls at the same input (one that draws random numbers or keeps
  state) is refused: each product would measure another function.
- The adjoint test (`AdjointTest`): J u and J^T w are products of one Jacobian only if
  <J u, w> = <u, J^T w> for every u and w. It is measured on the solver's first product, for free
  (w = J u: ||J u||^2 against <u, J^T J u>, which catches a J^T off by a factor), and with one more
  J^T r for a random r (which catches a J u that is zero or missing while J^T is not). A batch whose
  relative gap exceeds `adjoint_tolerance(dtype)` is refused (`InconsistentDerivativesError`): Lanczos
  on a Gram operator that is not symmetric converges to a number that means nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as functional
from torch import Tensor
from torch.overrides import TorchFunctionMode

from lipcheck.engine.operator import JacobianOperator, operator_output
from lipcheck.engine.result import SpectralNormResult
from lipcheck.errors import AuditFailedError, InconsistentDerivativesError, LipcheckError, describe
from lipcheck.options.choices import Operator, Product

# How far apart (relative) <J u, w> and <u, J^T w> may be, in units of sqrt(eps) of the dtype: rounding
# in a deep float32 net stays far below it (about 1e-6), and the failures it is for are large (a J^T off
# by a factor k gives |k - 1| / (k + 1)).
ADJOINT_TOLERANCE_FACTOR = 10.0
# Central finite differences agree with an exact J u to about eps^(2/3); this many times that passes.
FINITE_DIFFERENCE_FACTOR = 400.0


# With TF32 (PyTorch's default for cuDNN convolutions on Ampere and later GPUs), float32 products round
# their inputs to 11 significant bits: through tens of layers, J u and J^T w then differ by up to about
# 1e-2, and this is the gap allowed. It still refuses a J^T off by 10% or more.
TF32_ADJOINT_TOLERANCE = 0.05


def adjoint_tolerance(dtype: torch.dtype, device: torch.device | str = "cpu") -> float:
    """The largest relative adjoint gap a batch computed in `dtype` on `device` may show: 3.5e-3 in
    float32, 1.5e-7 in float64, and `TF32_ADJOINT_TOLERANCE` in float32 on a GPU that may use TF32."""
    tolerance = ADJOINT_TOLERANCE_FACTOR * math.sqrt(torch.finfo(dtype).eps)
    if dtype == torch.float32 and torch.device(device).type == "cuda" and _tf32_allowed():
        return max(tolerance, TF32_ADJOINT_TOLERANCE)
    return tolerance


def _tf32_allowed() -> bool:
    """Whether float32 convolutions or matrix products may run in TF32 (PyTorch's settings)."""
    return bool(torch.backends.cudnn.allow_tf32) or torch.get_float32_matmul_precision() != "highest"


# ----------------------------------------------------------------------------------------------------
# Decompositions


def _hardsigmoid(x: Tensor) -> Tensor:
    return torch.clamp(x + 3, 0, 6) / 6


def _hardswish(x: Tensor) -> Tensor:
    return x * (torch.clamp(x + 3, 0, 6) / 6)


def _elementwise_targets(name: str) -> set[Callable[..., Any]]:
    """The Python function and the aten overloads (of exported programs) of one activation."""
    targets: set[Callable[..., Any]] = {getattr(functional, name)}
    for packet_name in (name, f"{name}_"):
        packet = getattr(torch.ops.aten, packet_name, None)
        if packet is not None:
            targets |= {getattr(packet, overload) for overload in packet.overloads() if overload != "out"}
    return targets


_ELEMENTWISE: dict[Callable[..., Any], tuple[str, Callable[[Tensor], Tensor]]] = {
    **{target: ("hardsigmoid", _hardsigmoid) for target in _elementwise_targets("hardsigmoid")},
    **{target: ("hardswish", _hardswish) for target in _elementwise_targets("hardswish")},
}
# Attention that reaches `scaled_dot_product_attention`: called directly, or through
# nn.MultiheadAttention (whose inner calls a function mode does not see, being inside a call it handled).
_ATTENTION: set[Callable[..., Any]] = {
    functional.scaled_dot_product_attention,
    functional.multi_head_attention_forward,
    *(
        getattr(torch.ops.aten.scaled_dot_product_attention, overload)
        for overload in torch.ops.aten.scaled_dot_product_attention.overloads()
    ),
}


class _Decompositions(TorchFunctionMode):
    """Records in `used` the name of every operation it evaluated another way."""

    def __init__(self) -> None:
        super().__init__()
        self.used: set[str] = set()

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        elementwise = _ELEMENTWISE.get(func)
        if elementwise is not None:
            x = args[0] if args else kwargs.get("input", kwargs.get("self"))
            if isinstance(x, Tensor) and x.is_floating_point():
                name, decomposed = elementwise
                self.used.add(name)
                return decomposed(x)  # in-place variants return a new tensor: callers use the result
        if func in _ATTENTION:  # runs under the math backend that `differentiable_decompositions` chose
            self.used.add("scaled_dot_product_attention")
        return func(*args, **kwargs)


@contextmanager
def differentiable_decompositions() -> Iterator[set[str]]:
    """Within this context, operations without a double backward or forward-mode AD are evaluated by
    differentiable decompositions; yields the set that collects the names of those evaluated so.

    Attention runs under the math backend wherever it is called: the backend is chosen for the whole
    context (a function mode does not see the calls inside a function it handled, such as the
    attention inside nn.MultiheadAttention's), and the mode records the calls it sees."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    mode = _Decompositions()
    with sdpa_kernel([SDPBackend.MATH]), mode:
        yield mode.used


# ----------------------------------------------------------------------------------------------------
# Forward mode


class ForwardModeOperator(JacobianOperator):
    """J u by forward-mode AD, one call of `function` per product; J^T v by reverse mode through the
    graph of the first call (`y`, from x).

    `function` maps x (B, ...) to the audited output (B, ...), as the first call did. Each call's value
    must equal `y`: a model that draws random numbers or keeps state would give every product another
    function, and is refused (AuditFailedError).
    """

    def __init__(self, y: Tensor, x: Tensor, function: Callable[[Tensor], Tensor]) -> None:
        super().__init__(y, x)
        self._function = function
        self.model_calls = 0

    def vjp(self, v: Tensor, *, create_graph: bool = False, keep_for_jvp: bool = False) -> Tensor:
        """J^T v through the first call's graph; J u needs no graph of w -> J^T w here."""
        return super().vjp(v, create_graph=create_graph)

    def jvp(self, u: Tensor, *, create_graph: bool = False) -> Tensor:
        """J u for u of the input's shape: one call of the model with x carrying the tangent u."""
        if create_graph:
            raise AuditFailedError(
                "the forward-mode product does not keep a graph of J u: use the double-backward product"
            )
        tangent = self._pad(u.detach(), self.x).to(self.x.dtype)
        with torch.no_grad(), forward_ad.dual_level(), differentiable_decompositions():
            dual = forward_ad.make_dual(self.x.detach(), tangent)
            output = self._function(dual)
            primal, product = forward_ad.unpack_dual(output)
        self.model_calls += 1
        self._check_unchanged(primal)
        if product is None:  # the output does not depend on the input's tangent: J = 0
            return torch.zeros(self.output_shape, dtype=self.y.dtype, device=self.y.device)
        return product[: self.samples]

    def _check_unchanged(self, primal: Tensor) -> None:
        first = self.y.detach()
        change = float((primal - first).abs().max()) if primal.shape == first.shape else math.inf
        scale = float(first.abs().max())
        if not change <= adjoint_tolerance(first.dtype, first.device) * max(
            scale, torch.finfo(first.dtype).tiny
        ):
            raise AuditFailedError(
                f"the model's output at the same input changed between two calls (by {change:.3g}, its "
                f"largest value is {scale:.3g}): it draws random numbers or keeps state, and the "
                "forward-mode product (--product forward), which calls the model once per product, would "
                "measure another function at every product; put the model in eval mode (dropout off), "
                "or remove the state"
            )


def _function_of(
    f: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any] | None, operator: Operator | str
) -> Callable[[Tensor], Tensor]:
    """x -> the audited operator's output of f at x (f(x, *args, **kwargs), then 2 y - x or x - y)."""

    def function(x: Tensor) -> Tensor:
        return operator_output(f(x, *args, **(kwargs or {})), x, operator)

    return function


def build_operator(
    f: Callable[..., Any],
    x: Tensor,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    operator: Operator | str = Operator.model,
    product: Product | str = Product.double_backward,
) -> tuple[JacobianOperator, tuple[str, ...]]:
    """The operator of f at x (one call of f, with the decompositions) for a concrete `product`
    (double-backward or forward), and the names of the operations evaluated by decompositions."""
    chosen = Product(product)
    if chosen is Product.auto:
        raise ValueError("build_operator needs a concrete product, not auto")
    with differentiable_decompositions() as used:
        jacobian = JacobianOperator.from_function(f, x, args, kwargs, operator=operator)
    if chosen is Product.forward:
        jacobian = ForwardModeOperator(jacobian.y, jacobian.x, _function_of(f, args, kwargs, operator))
    return jacobian, tuple(sorted(used))


# What torch says when an operation has no derivative of the order (or mode) a product needs.
_MISSING_DERIVATIVE = (
    "is not implemented",
    "has not been implemented",
    "not been implemented yet",
    "once_differentiable",
    "does not support it",
    "must implement the jvp",
)


def missing_derivative(error: BaseException) -> bool:
    """Whether `error` (or one of its causes) is torch refusing a derivative it has no formula for."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, (RuntimeError, NotImplementedError)) and any(
            text in str(cause) for text in _MISSING_DERIVATIVE
        ):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


# ----------------------------------------------------------------------------------------------------
# The adjoint test


def _shared_random(shape: torch.Size, seed: int, like: Tensor) -> Tensor:
    """A seeded unit vector, the same for every sample (so a sample's test does not depend on its batch)."""
    generator = torch.Generator().manual_seed(seed)
    n = math.prod(shape[1:])
    r = torch.randn(n, generator=generator, dtype=torch.float64)
    return (r / r.norm()).to(dtype=like.dtype, device=like.device).expand(shape[0], n).reshape(shape)


def _rows(a: Tensor) -> Tensor:
    """(B, ...) as (B, n) in float64; a scalar output per sample (B,) is (B, 1)."""
    return a.reshape(a.shape[0], -1).double()


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (_rows(a) * _rows(b)).sum(1)


def _norm(a: Tensor) -> Tensor:
    return torch.linalg.vector_norm(_rows(a), dim=1)


def _relative(left: Tensor, right: Tensor, scale: Tensor) -> Tensor:
    return torch.where(scale > 0, (left - right).abs() / torch.where(scale > 0, scale, 1), 0)


def adjoint_gaps(u: Tensor, ju: Tensor, gram_u: Tensor, r: Tensor, transpose_r: Tensor) -> Tensor:
    """(B,) float64: per sample, the larger relative gap of <J u, w> and <u, J^T w> at w = J u
    (||J u||^2 against <u, J^T J u>) and at w = r, each over the sum of the norms' products
    (||J u|| ||w|| + ||u|| ||J^T w||), so 0 for adjoint products and at most 1."""
    norm_u, norm_ju = _norm(u), _norm(ju)
    at_ju = _relative(norm_ju**2, _dot(u, gram_u), norm_ju**2 + norm_u * _norm(gram_u))
    at_r = _relative(_dot(ju, r), _dot(u, transpose_r), norm_ju * _norm(r) + norm_u * _norm(transpose_r))
    return torch.maximum(at_ju, at_r)


class AdjointTest:
    """The solvers' Gram product u -> J^T J u (on (B, n) rows), which runs the adjoint test on its
    first call: the gaps (`gaps`, (B,)) come from that product and one more J^T r, and a gap above the
    tolerance raises InconsistentDerivativesError before any figure is computed."""

    def __init__(self, operator: JacobianOperator, product: Product | str, seed: int) -> None:
        self.operator = operator
        self.product = Product(product)
        self.seed = seed
        self.gaps: Tensor | None = None

    def __call__(self, rows: Tensor) -> Tensor:
        operator = self.operator
        u = rows.view(operator.input_shape)
        ju = operator.jvp(u)
        gram_u = operator.vjp(ju)
        if self.gaps is None:
            r = _shared_random(operator.output_shape, self.seed + 1, ju)
            self.gaps = adjoint_gaps(u, ju, gram_u, r, operator.vjp(r)).cpu()
            self._check(self.gaps, operator.x.dtype, operator.x.device)
        return gram_u.reshape(gram_u.shape[0], -1).detach()

    def _check(self, gaps: Tensor, dtype: torch.dtype, device: torch.device) -> None:
        tolerance = adjoint_tolerance(dtype, device)
        failing = (~(gaps <= tolerance)).nonzero().flatten()
        if len(failing):
            worst = int(failing[torch.argmax(gaps[failing].nan_to_num(math.inf))])
            raise InconsistentDerivativesError(
                float(gaps[worst]), tolerance, worst, str(dtype).removeprefix("torch."), self.product.value
            )


def finite_difference_gap(function: Callable[[Tensor], Tensor], x: Tensor, u: Tensor, ju: Tensor) -> float:
    """The largest relative distance, over the samples, of `ju` (J u at x) from central finite
    differences of `function` along u; two more calls of the function."""
    eps = torch.finfo(x.dtype).eps
    step = eps ** (1 / 3) * max(1.0, float(x.abs().max()))
    with torch.no_grad(), differentiable_decompositions():
        ahead = function(x.detach() + step * u)
        behind = function(x.detach() - step * u)
    estimate = (ahead - behind) / (2 * step)
    scale = torch.maximum(_norm(estimate), _norm(ju))
    gap = _relative(_norm(estimate - ju), torch.zeros_like(scale), scale)
    return float(gap.max())


def finite_difference_tolerance(dtype: torch.dtype) -> float:
    return FINITE_DIFFERENCE_FACTOR * torch.finfo(dtype).eps ** (2 / 3)


def agreeing_product(
    f: Callable[..., Any],
    x: Tensor,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    *,
    operator: Operator | str,
    failed: Product | str,
    seed: int,
) -> Product | None:
    """The other product, when it passes the adjoint test at x and its J u agrees with central finite
    differences; None when it does not (or cannot be built). Calls f a few more times: only for the
    message of an audit that fails."""
    other = Product.forward if Product(failed) is Product.double_backward else Product.double_backward
    try:
        jacobian, _ = build_operator(f, x, args, kwargs, operator=operator, product=other)
        test = AdjointTest(jacobian, other, seed)
        u = _shared_random(jacobian.input_shape, seed + 2, x)
        test(u.flatten(1))
        ju = jacobian.jvp(u)
        gap = finite_difference_gap(_function_of(f, args, kwargs, operator), x, u, ju)
    except (InconsistentDerivativesError, AuditFailedError, RuntimeError, NotImplementedError):
        return None
    return other if gap <= finite_difference_tolerance(x.dtype) else None


# ----------------------------------------------------------------------------------------------------
# Choosing the product


Solver = Callable[[JacobianOperator, AdjointTest], SpectralNormResult]


def measure_with_product(
    f: Callable[..., Any],
    x: Tensor,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    *,
    operator: Operator | str,
    product: Product | str,
    seed: int,
    solver: Solver,
) -> SpectralNormResult:
    """`solver`'s result on the operator of f at x, by the requested `product`, with the product used,
    the decompositions and the adjoint gaps filled in.

    `auto` tries double backward, then forward mode when torch refuses a derivative double backward
    needs or when double backward fails the adjoint test (each try is one more call of f). A failure
    of every product tried is raised: InconsistentDerivativesError when a product ran and failed the
    adjoint test (naming the other product when, for a product asked by name, that one agrees with
    finite differences), else AuditFailedError naming what torch refused.
    """
    requested = Product(product)
    tries = (Product.double_backward, Product.forward) if requested is Product.auto else (requested,)
    failures: list[BaseException] = []
    for candidate in tries:
        try:
            jacobian, decompositions = build_operator(
                f, x, args, kwargs, operator=operator, product=candidate
            )
            test = AdjointTest(jacobian, candidate, seed)
            result = solver(jacobian, test)
        except InconsistentDerivativesError as error:
            failures.append(error)
            continue
        except (RuntimeError, NotImplementedError, LipcheckError) as error:
            if not missing_derivative(error):
                raise
            failures.append(error)
            continue
        return replace(
            result,
            product=candidate.value,
            decompositions=decompositions,
            adjoint_gap=test.gaps,
            model_calls_per_product=1 if candidate is Product.forward else 0,
        )
    inconsistent = [error for error in failures if isinstance(error, InconsistentDerivativesError)]
    if inconsistent:
        refused = inconsistent[-1]
        if requested is not Product.auto:
            other = agreeing_product(f, x, args, kwargs, operator=operator, failed=requested, seed=seed)
            if other is not None:
                raise refused.with_suggestion(other.value) from refused
        raise refused
    said = "; ".join(
        f"{name}: {describe(error)}"
        for name, error in zip([candidate.value for candidate in tries], failures, strict=True)
    )
    raise AuditFailedError(
        f"torch has no derivative for an operation of the model that the Jacobian products need ({said}): "
        "give the model's custom autograd Functions a backward that is differentiable or a jvp, or "
        "replace the operation by a differentiable one"
    ) from failures[-1]
