"""Convolutions whose double backward is a single convolution.

The engine gets J u by differentiating the graph of w -> J^T w (see engine.py). For a convolution,
J^T w runs through PyTorch's `ConvolutionBackward0`, whose own derivative
(`_convolution_double_backward`) computes the convolution that J u needs and also a weight-gradient
convolution that nobody asked for, whatever the output mask: on a convolutional net that makes J u
cost a whole forward+backward pass instead of about one forward.

`linearisable_convolutions()` is a torch function mode, active only while the engine evaluates the
model once, that routes every convolution of the model through `_Convolution`: the same forward,
and a backward whose input gradient is the adjoint convolution written as an ordinary (transposed)
convolution. The graph of J^T w then holds ordinary convolutions, whose derivative with respect to w
is one convolution per layer, with no weight gradient unless the backward being run needs one.

Values and gradients (to any order, parameters included) are those of the built-in convolution; only
the work done in the double backward changes. Convolutions the mode cannot see (inside TorchScript)
or does not map (string padding other than 'valid' and odd-sized 'same', unbatched inputs) keep the
built-in path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode


@dataclass(frozen=True)
class Geometry:
    """The arguments of `torch.convolution` other than the tensors, one entry per spatial dimension."""

    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    transposed: bool
    output_padding: tuple[int, ...]
    groups: int

    def adjoint_output_padding(
        self, input_shape: Sequence[int], kernel_shape: Sequence[int], output_shape: Sequence[int]
    ) -> tuple[int, ...]:
        """output_padding making the adjoint of a (non-transposed) convolution return input_shape."""
        return tuple(
            size - ((out - 1) * stride - 2 * pad + dilation * (kernel - 1) + 1)
            for size, kernel, out, stride, pad, dilation in zip(
                input_shape,
                kernel_shape,
                output_shape,
                self.stride,
                self.padding,
                self.dilation,
                strict=True,
            )
        )


class _Convolution(torch.autograd.Function):
    """torch.convolution with a backward made of ordinary, first-order-differentiable convolutions."""

    # forward(ctx, ...) rather than a separate setup_context: apply() then skips binding the
    # arguments through inspect.signature, a quarter of a routed forward's time on small nets.
    @staticmethod
    def forward(ctx: Any, input: Tensor, weight: Tensor, bias: Tensor | None, geometry: Geometry) -> Tensor:
        # The input is needed only for the weight's gradient.
        ctx.save_for_backward(input if weight.requires_grad else None, weight)
        ctx.geometry = geometry
        ctx.input_shape = input.shape
        ctx.bias_shape = None if bias is None else bias.shape
        g = geometry
        return torch.convolution(
            input, weight, bias, g.stride, g.padding, g.dilation, g.transposed, g.output_padding, g.groups
        )

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        input, weight = ctx.saved_tensors
        g: Geometry = ctx.geometry
        grad_input = grad_weight = grad_bias = None
        if _will_compute(ctx, 0):
            spatial = slice(2, None)
            if g.transposed:  # the adjoint of a transposed convolution is a convolution
                output_padding = (0,) * len(g.stride)
            else:
                output_padding = g.adjoint_output_padding(
                    ctx.input_shape[spatial], weight.shape[spatial], grad.shape[spatial]
                )
            grad_input = torch.convolution(
                grad,
                weight,
                None,
                g.stride,
                g.padding,
                g.dilation,
                not g.transposed,
                output_padding,
                g.groups,
            )
        wants_weight = _will_compute(ctx, 1)
        wants_bias = ctx.bias_shape is not None and _will_compute(ctx, 2)
        if wants_weight or wants_bias:
            _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                grad,
                input if input is not None else grad.new_zeros(ctx.input_shape),
                weight,
                ctx.bias_shape,
                g.stride,
                g.padding,
                g.dilation,
                g.transposed,
                g.output_padding,
                g.groups,
                [False, wants_weight, wants_bias],
            )
        return grad_input, grad_weight, grad_bias, None


def _will_compute(ctx: Any, index: int) -> bool:
    """Whether the backward being run needs the gradient of the index-th tensor input.

    `ctx.needs_input_grad` only says whether the input required grad at the forward; a backward with
    `inputs=` (the engine's products, which want the input's gradient only) skips the rest.
    """
    if not ctx.needs_input_grad[index]:
        return False
    node = ctx.next_functions[index][0]
    if node is None:
        return False
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):  # an older torch, or a call outside the engine
        return True


def _as_tuple(value: Any, dims: int) -> tuple[int, ...] | None:
    if isinstance(value, int):
        return (value,) * dims
    if isinstance(value, (tuple, list)) and all(isinstance(item, int) for item in value):
        if len(value) == 1:
            return (value[0],) * dims
        if len(value) == dims:
            return tuple(value)
    return None


def _padding(
    value: Any, weight: Tensor, dilation: tuple[int, ...], stride: tuple[int, ...]
) -> tuple[int, ...] | None:
    """Numeric padding for torch's 'valid' and 'same', where 'same' pads both sides equally."""
    dims = weight.dim() - 2
    if value == "valid":
        return (0,) * dims
    if value == "same":
        totals = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:], strict=True)]
        if any(s != 1 for s in stride) or any(total % 2 for total in totals):
            return None  # torch pads asymmetrically here; keep its own path
        return tuple(total // 2 for total in totals)
    return _as_tuple(value, dims)


# Positional parameter names of the functions routed, after (input, weight, bias).
_CONVOLUTION = ("stride", "padding", "dilation", "groups")
_TRANSPOSED = ("stride", "padding", "output_padding", "groups", "dilation")
_GENERAL = ("stride", "padding", "dilation", "transposed", "output_padding", "groups")
_DEFAULTS: dict[str, Any] = {
    "stride": 1,
    "padding": 0,
    "dilation": 1,
    "groups": 1,
    "output_padding": 0,
    "transposed": False,
}


def _signatures() -> dict[Callable[..., Any], tuple[tuple[str, ...], bool | None]]:
    """Each routed function, the names of its arguments after bias, and whether it is transposed."""
    table: dict[Callable[..., Any], tuple[tuple[str, ...], bool | None]] = {
        torch.convolution: (_GENERAL, None)
    }
    packets: list[tuple[str, tuple[str, ...], bool | None]] = [("convolution", _GENERAL, None)]
    for dims in (1, 2, 3):
        table[getattr(torch, f"conv{dims}d")] = (_CONVOLUTION, False)
        table[getattr(torch, f"conv_transpose{dims}d")] = (_TRANSPOSED, True)
        packets += [(f"conv{dims}d", _CONVOLUTION, False), (f"conv_transpose{dims}d", _TRANSPOSED, True)]
    for name, names, transposed in packets:  # the aten ops of exported programs
        packet = getattr(torch.ops.aten, name)
        for overload in packet.overloads():
            if overload != "out":
                table[getattr(packet, overload)] = (names, transposed)
    return table


_ROUTED = _signatures()


def _route(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    """The call as a `_Convolution`, or None to leave it to torch."""
    names, transposed = _ROUTED[func]
    values = dict(_DEFAULTS)
    values.update(zip(("input", "weight", "bias", *names), args, strict=False))
    values.update(kwargs)
    input, weight, bias = values.get("input"), values.get("weight"), values.get("bias")
    if not (isinstance(input, Tensor) and isinstance(weight, Tensor)) or input.dim() != weight.dim():
        return None
    if bias is not None and not isinstance(bias, Tensor):
        return None
    if not torch.is_grad_enabled() or not (input.requires_grad or weight.requires_grad):
        return None
    if torch._C._are_functorch_transforms_active():  # _Convolution has no vmap or grad transform rules
        return None
    dims = weight.dim() - 2
    stride = _as_tuple(values["stride"], dims)
    dilation = _as_tuple(values["dilation"], dims)
    output_padding = _as_tuple(values["output_padding"], dims)
    groups = values["groups"]
    if stride is None or dilation is None or output_padding is None or not isinstance(groups, int):
        return None
    padding = _padding(values["padding"], weight, dilation, stride)
    if padding is None:
        return None
    geometry = Geometry(
        stride,
        padding,
        dilation,
        bool(values["transposed"] if transposed is None else transposed),
        output_padding,
        groups,
    )
    return _Convolution.apply(input, weight, bias, geometry)


class _LinearisableConvolutions(TorchFunctionMode):
    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _ROUTED:
            routed = _route(func, args, kwargs)
            if routed is not None:
                return routed
        return func(*args, **kwargs)


@contextmanager
def linearisable_convolutions() -> Iterator[None]:
    """Within this context, convolutions build graphs whose double backward is one convolution."""
    with _LinearisableConvolutions():
        yield
