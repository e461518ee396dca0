"""Rules of pooling and resampling: max pooling by its window overlap, average pooling and interpolation
(linear, bilinear, bicubic, trilinear, antialiased) by their separable norms."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from lipcheck.bounds.graph import Site, aten, constant_value, expand, rule, where
from lipcheck.bounds.norms import with_margin
from lipcheck.errors import UnsupportedOperationError


def _pool_axes(site: Site, d: int) -> tuple[list[int], ...]:
    """kernel, stride, padding, dilation, input sizes and output sizes of a pooling, per spatial axis."""
    kernel = expand(site.value("kernel_size"), d)
    stride = expand(site.value("stride") or kernel, d)
    padding = expand(site.value("padding"), d)
    dilation = expand(site.value("dilation"), d) if "dilation" in site.args else [1] * d
    in_sizes = list(site.shape("self")[-d:])
    out_index = 0 if isinstance(site.node.meta["val"], list | tuple) else None
    out_sizes = list(site.out_shape(out_index)[-d:])
    return kernel, stride, padding, dilation, in_sizes, out_sizes


def _max_windows(n: int, starts: Iterable[int], length: int, dilation: int) -> int:
    """The largest number of windows (start + t dilation, t < length) that share one index in [0, n)."""
    counts = [0] * n
    for start in starts:
        for t in range(length):
            j = start + t * dilation
            if 0 <= j < n:
                counts[j] += 1
    return max(counts) if counts else 0


def _max_pool_factor(copies: int, method: str) -> tuple[float, str]:
    return math.sqrt(copies), f"sqrt({copies}): {method}"


@rule(
    aten(
        "max_pool1d",
        "max_pool2d",
        "max_pool3d",
        "max_pool1d_with_indices",
        "max_pool2d_with_indices",
        "max_pool3d_with_indices",
    )
)
def _max_pool(site: Site) -> Any:
    """|max a - max b| <= ||a - b||_window, so L^2 <= max number of windows holding one entry."""
    d = int(str(site.node.target.overloadpacket).split("max_pool")[1][0])
    kernel, stride, padding, dilation, in_sizes, out_sizes = _pool_axes(site, d)
    copies = 1
    for n, n_out, k, s, p, dil in zip(in_sizes, out_sizes, kernel, stride, padding, dilation, strict=True):
        copies *= _max_windows(n, (i * s - p for i in range(n_out)), k, dil)
    factor, method = _max_pool_factor(copies, "an entry lies in at most that many windows")
    bound = site.scale("self", f"max_pool{d}d", factor, method)
    if isinstance(site.node.meta["val"], list | tuple):
        return (bound, math.inf)  # the indices are not a Lipschitz function of the input
    return bound


@rule(aten("adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d"))
def _adaptive_max_pool(site: Site) -> Any:
    d = len(expand(site.value("output_size"), 1)) if site.args.get("output_size") is not None else 1
    in_sizes = site.shape("self")[-d:]
    out_sizes = site.out_shape(0)[-d:]
    copies = 1
    for n, n_out in zip(in_sizes, out_sizes, strict=True):
        counts = [0] * n
        for i in range(n_out):
            for j in range(i * n // n_out, -(-(i + 1) * n // n_out)):
                counts[j] += 1
        copies *= max(counts)
    factor, method = _max_pool_factor(copies, "an entry lies in at most that many windows")
    bound = site.scale("self", f"adaptive_max_pool{d}d", factor, method)
    return (bound, math.inf)


def _separable_pool_norm(site: Site, d: int, one_axis: Callable[[int, int], Tensor]) -> float:
    """Pooling that acts as A_1 (x) ... (x) A_d on each channel has norm prod ||A_i||_2 (exact).

    `one_axis(axis, n)` returns the (n_out x n) matrix of the pooling along one axis.
    """
    factor = 1.0
    for axis, n in enumerate(site.shape("self")[-d:]):
        factor *= float(torch.linalg.matrix_norm(one_axis(axis, n).to(torch.float64), ord=2))
    return with_margin(factor)


@rule(aten("avg_pool1d", "avg_pool2d", "avg_pool3d"), linear=True)
def _avg_pool(site: Site) -> float:
    """Average pooling is separable: the window and its divisor factor per axis (including the
    count_include_pad and ceil_mode rules), so each axis matrix is the 1-D pooling of the identity."""
    d = int(str(site.node.target.overloadpacket).split("avg_pool")[1][0])
    kernel, stride, padding, _, _, _ = _pool_axes(site, d)
    ceil_mode = bool(site.value("ceil_mode"))
    include_pad = bool(site.value("count_include_pad"))
    override = site.args.get("divisor_override")
    divisor = None if override is None else float(constant_value(site, override))

    def one_axis(axis: int, n: int) -> Tensor:
        identity = torch.eye(n, dtype=torch.float64).reshape(n, 1, n)
        pooled = torch.nn.functional.avg_pool1d(
            identity, kernel[axis], stride[axis], padding[axis], ceil_mode, include_pad
        ).reshape(n, -1)
        if divisor is not None:  # a fixed divisor: window sums, divided once (on the first axis)
            pooled = (pooled > 0).to(pooled.dtype) / (divisor if axis == 0 else 1.0)
        return pooled.T

    factor = _separable_pool_norm(site, d, one_axis)
    return site.scale("self", f"avg_pool{d}d", factor, "exact: product of the per-axis pooling norms")


@rule(
    aten(
        "adaptive_avg_pool1d",
        "adaptive_avg_pool2d",
        "adaptive_avg_pool3d",
        "_adaptive_avg_pool2d",
        "_adaptive_avg_pool3d",
    ),
    linear=True,
)
def _adaptive_avg_pool(site: Site) -> float:
    """Adaptive average pooling is separable too: per axis, the 1-D adaptive pooling of the identity."""
    out_sizes = expand(site.value("output_size"), 1)
    d = len(out_sizes)
    sizes = site.out_shape()[-d:]

    def one_axis(axis: int, n: int) -> Tensor:
        identity = torch.eye(n, dtype=torch.float64).reshape(n, 1, n)
        return torch.nn.functional.adaptive_avg_pool1d(identity, sizes[axis]).reshape(n, -1).T

    factor = _separable_pool_norm(site, d, one_axis)
    method = "exact: product of the per-axis pooling norms"
    return site.scale("self", f"adaptive_avg_pool{d}d", factor, method)


@rule(
    aten(
        "upsample_linear1d",
        "upsample_bilinear2d",
        "upsample_bicubic2d",
        "upsample_trilinear3d",
        "_upsample_bilinear2d_aa",
        "_upsample_bicubic2d_aa",
    ),
    linear=True,
)
def _interpolation(site: Site) -> float:
    """Interpolation is separable, A_1 (x) ... (x) A_d on each channel, so its norm is prod ||A_i||_2.

    A_a is read by calling the operation on a batch of n_a inputs e_i (along axis a) (x) ones (along the
    others): output i is (A_a e_i) (x) (x)_{b != a} A_b 1. The interpolation weights of every output sum
    to 1, so the operation maps the all-ones input to all ones; that is checked, and it implies
    A_b 1 = c_b 1 with prod c_b = 1, so the scales of the columns read cancel in the product of norms.
    """
    argument = "input" if "input" in site.args else "self"
    shape = site.shape(argument)
    d = len(shape) - 2
    spatial = shape[2:]
    ones = site.call_with(argument, torch.ones((1, 1, *spatial), dtype=torch.float64))
    if not torch.allclose(ones, torch.ones_like(ones), rtol=0, atol=1e-12):
        raise UnsupportedOperationError(
            f"cannot bound {site.name!r} (node {site.node.name!r}{where(site.node)}): its weights do not sum "
            "to 1, so lipcheck's separable rule does not apply"
        )
    factor = 1.0
    for axis, n in enumerate(spatial):
        basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, *[n if b == axis else 1 for b in range(d)])
        inputs = basis.expand(n, 1, *spatial)
        outputs = site.call_with(argument, inputs.contiguous())  # (n, 1, *out_spatial)
        index = [slice(None), 0] + [slice(None) if b == axis else 0 for b in range(d)]
        columns = outputs[tuple(index)]  # (n, n_out): column i of A_axis in row i
        factor *= float(torch.linalg.matrix_norm(columns, ord=2))
    factor = with_margin(factor)
    kind = site.name.split(".")[1].lstrip("_")  # aten._upsample_bilinear2d_aa.vec: upsample_bilinear2d_aa
    return site.scale(argument, kind, factor, "exact: product of the per-axis interpolation norms")
