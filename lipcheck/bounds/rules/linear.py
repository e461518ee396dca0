"""Rules of linear layers: Linear, matrix products and convolutions (exact spectral norms)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.fx import Node

from lipcheck.bounds.graph import Site, aten, bind_arguments, expand, finite_bound, rule
from lipcheck.bounds.norms import circular_conv_norm, matrix_spectral_norm, zero_padded_conv_bound


@rule(aten("linear"), linear=True)
def _linear(site: Site) -> float:
    weight = site.value("weight")
    factor, method = matrix_spectral_norm(weight)
    return site.scale("input", "linear", factor, method)


def _matmul_bound(site: Site, left: str, right: str, kind: str) -> float:
    """x @ W or W @ x with a constant W: ||W||_2 (the max over W's batch), times sqrt(copies of x)."""
    if site.depends(left) and site.depends(right):
        site.value(right)  # raises: a product of two input-dependent tensors
    variable, constant = (left, right) if site.depends(left) else (right, left)
    weight = site.value(constant)
    factor, method = matrix_spectral_norm(weight)
    if weight.dim() >= 2:
        rows, columns = weight.shape[-2], weight.shape[-1]
        n_in, n_out = (rows, columns) if variable == left else (columns, rows)
    else:
        n_in, n_out = weight.shape[0], 1
    copies = math.prod(site.out_shape()) * n_in / (math.prod(site.shape(variable)) * n_out)
    if copies > 1:
        factor *= math.sqrt(copies)
        method += f", input used {copies:g} times"
    return site.scale(variable, kind, factor, method)


@rule(aten("mm", "matmul", "bmm"), linear=True)
def _mm(site: Site) -> float:
    return _matmul_bound(site, "self", "other" if "other" in site.args else "mat2", "linear")


@rule(aten("addmm"), linear=True)
def _addmm(site: Site) -> float:
    alpha, beta = abs(float(site.value("alpha"))), abs(float(site.value("beta")))
    product = 0.0
    if site.depends("mat1") or site.depends("mat2"):
        product = alpha * _matmul_bound(site, "mat1", "mat2", "linear")
    return beta * site.lip("self") + product


CONV_PACKETS = tuple(
    aten(
        "conv1d",
        "conv2d",
        "conv3d",
        "convolution",
        "_convolution",
        "conv_transpose1d",
        "conv_transpose2d",
        "conv_transpose3d",
    )
)


@rule(list(CONV_PACKETS), linear=True)
def _convolution(site: Site) -> float:
    weight = site.value("weight")
    d = weight.dim() - 2
    packet_name = str(site.node.target.overloadpacket).split(".")[-1]
    transposed = packet_name.startswith("conv_transpose") or bool(site.args.get("transposed", False))
    kind = f"conv_transpose{d}d" if transposed else f"conv{d}d"
    stride = expand(site.value("stride"), d)
    dilation = expand(site.value("dilation"), d)
    groups = int(site.value("groups"))
    padding = site.value("padding")
    in_sizes, out_sizes = site.shape("input")[-d:], site.out_shape()[-d:]
    source = site.args["input"]
    if _is_circular_pad(source) and source in site.walker.bounds and absorbs_circular_pad(site.node):
        return _circular_convolution(site, weight, source, stride, dilation, groups, kind)
    if isinstance(padding, str):
        padding = _string_padding(padding, weight.shape[2:], dilation)
    padding = expand(padding, d)
    if transposed:
        # conv_transpose is the adjoint of the convolution from its output size to its input size.
        in_sizes, out_sizes = out_sizes, in_sizes
    factor, method = zero_padded_conv_bound(weight, in_sizes, out_sizes, stride, padding, dilation, groups)
    return site.scale("input", kind, factor, method)


def _is_circular_pad(node: Any) -> bool:
    return (
        isinstance(node, Node)
        and node.op == "call_function"
        and getattr(node.target, "overloadpacket", None) is torch.ops.aten.pad
        and bind_arguments(node).get("mode") == "circular"
    )


def _circular_convolution(
    site: Site,
    weight: Tensor,
    pad: Node,
    stride: list[int],
    dilation: list[int],
    groups: int,
    kind: str,
) -> float:
    """A circular pad followed by an unpadded convolution: rows of the circulant at the unpadded size.

    Output i reads (i s - p + t d) mod N, i.e. row (i s) mod N of the circular convolution C_N at the
    unpadded size N (up to a permutation of columns). Rows selected m times scale the norm by at most
    sqrt(m); with stride 1 and the usual padding every row is selected once, and the bound is exact.
    """
    d = weight.dim() - 2
    source = bind_arguments(pad)["self"]
    sizes = [int(n) for n in source.meta["val"].shape[-d:]]
    out_sizes = site.out_shape()[-d:]
    copies = 1
    for n, n_out, s in zip(sizes, out_sizes, stride, strict=True):
        residues = [0] * n
        for i in range(n_out):
            residues[i * s % n] += 1
        copies *= max(residues)
    factor = circular_conv_norm(weight, sizes, dilation, groups) * math.sqrt(copies)
    grid = "x".join(str(n) for n in sizes)
    method = f"exact norm of the circular convolution at {grid} (DFT)"
    if copies > 1:
        method += f", rows repeated up to {copies} times"
    site.record(kind, factor, method)
    return factor * finite_bound(site.walker, source)


def _string_padding(padding: str, kernel: Sequence[int], dilation: Sequence[int]) -> list[int]:
    if padding == "valid":
        return [0] * len(kernel)
    return [d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True)]  # "same": left side


def absorbs_circular_pad(node: Node) -> bool:
    """Whether a node is a convolution without padding, which bounds a circular pad before it exactly."""
    packet = getattr(node.target, "overloadpacket", None)
    if node.op != "call_function" or packet not in CONV_PACKETS or "transpose" in str(packet):
        return False
    args = bind_arguments(node)
    padding = args.get("padding")
    if args.get("transposed", False) or args.get("input") is None:
        return False
    return padding == "valid" or (not isinstance(padding, str) and not any(padding or []))
