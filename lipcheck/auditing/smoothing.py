"""A smoothed surrogate of a piecewise-linear model, for the worst-case search's gradient only.

On a ReLU network sigma(x) = ||J(x)|| is piecewise constant: its gradient is zero almost everywhere and
gradient ascent cannot leave the sample. Under `Smoothing`, every piecewise-linear operation the model
calls is replaced by a smooth one close to it (softplus with sharpness beta for ReLU, and the same
construction for LeakyReLU, ReLU6 and hardtanh; a log-sum-exp over each window for max pooling), whose
sigma varies smoothly and points towards regions where the real model's slopes line up. The search
follows the surrogate's gradient but measures every point it visits on the real model, so what it
reports is still the real model's sigma at a real point: a true lower bound on its Lipschitz constant.

It works at the level of Python calls (`torch.overrides.TorchFunctionMode`), so it covers eager modules
(`nn.ReLU`, `F.relu`, `x.relu()`) and exported programs (`aten.relu.default` and its in-place form)
alike, without copying or editing the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional
from torch.overrides import TorchFunctionMode

# The sharpness of the surrogate: softplus(beta x) / beta is within log(2) / beta of relu(x).
SMOOTHING_BETA = 20.0


def _positive_part(x: Tensor, beta: float) -> Tensor:
    return functional.softplus(x, beta=beta)


def _relu(beta: float, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    return _positive_part(x, beta)


def _leaky_relu(beta: float, x: Tensor, negative_slope: float = 0.01, *args: Any, **kwargs: Any) -> Tensor:
    slope = float(kwargs.get("negative_slope", negative_slope))
    return slope * x + (1 - slope) * _positive_part(x, beta)


def _hardtanh(
    beta: float, x: Tensor, min_val: float = -1.0, max_val: float = 1.0, *args: Any, **kwargs: Any
) -> Tensor:
    low, high = float(kwargs.get("min_val", min_val)), float(kwargs.get("max_val", max_val))
    return low + _positive_part(x - low, beta) - _positive_part(x - high, beta)


def _relu6(beta: float, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    return _hardtanh(beta, x, 0.0, 6.0)


def _max_pool2d(
    beta: float,
    x: Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Tensor | None:
    """(1 / beta) log sum over the window of exp(beta x): a smooth maximum (None: not handled)."""
    kernel = _pair(kernel_size)
    strides = _pair(stride) if stride not in (None, [], ()) else kernel
    pads = _pair(padding)
    if ceil_mode or return_indices or _pair(dilation) != (1, 1) or x.dim() not in (3, 4):
        return None
    batched = x if x.dim() == 4 else x.unsqueeze(0)
    padded = functional.pad(batched, (pads[1], pads[1], pads[0], pads[0]), value=-math.inf)
    height = (padded.shape[-2] - kernel[0]) // strides[0] + 1
    width = (padded.shape[-1] - kernel[1]) // strides[1] + 1
    windows = padded.unfold(2, kernel[0], strides[0]).unfold(3, kernel[1], strides[1])
    windows = windows.reshape(*batched.shape[:2], height, width, -1)
    pooled = torch.logsumexp(beta * windows, dim=-1) / beta
    return pooled if x.dim() == 4 else pooled.squeeze(0)


def _pair(value: Any) -> tuple[int, int]:
    items = [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]
    return (items[0], items[0]) if len(items) == 1 else (items[0], items[1])


_SMOOTH: dict[str, Callable[..., Tensor | None]] = {
    "relu": _relu,
    "leaky_relu": _leaky_relu,
    "hardtanh": _hardtanh,
    "relu6": _relu6,
    "max_pool2d": _max_pool2d,
}


def _name(func: Any) -> str:
    """relu for F.relu, torch.relu, Tensor.relu_, aten.relu.default and aten.relu_.default alike."""
    name = str(getattr(func, "__name__", "")).split(".")[0].lstrip("_")
    return name[:-1] if name.endswith("_") else name


class Smoothing(TorchFunctionMode):
    """Within it, the model's piecewise-linear operations are their smooth surrogates; `replaced` says
    whether any was met (if none was, the surrogate is the model itself)."""

    def __init__(self, beta: float = SMOOTHING_BETA) -> None:
        super().__init__()
        self.beta = beta
        self.replaced = False

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        smooth = _SMOOTH.get(_name(func))
        if smooth is not None and args and isinstance(args[0], Tensor) and args[0].is_floating_point():
            extra = {k: v for k, v in kwargs.items() if k != "inplace"}
            result = smooth(self.beta, *args, **extra)
            if result is not None:
                self.replaced = True
                return result
        return func(*args, **kwargs)
