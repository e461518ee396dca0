"""The c-network of a convolutional network as channel symbols on a periodic grid: the per-channel form
of the LipSDP bound (`lipsdp.py`), which never reads a block as a matrix.

Which networks. Every input-dependent value has the input's spatial shape (1, C, *S): stride-1
convolutions padded to keep the size (zero padding through the convolution's own argument), eval-mode
BatchNorm, sums and differences (residual connections), scaling by a scalar or per-channel constant, and
elementwise activations between them. Anything else (strides, pooling, explicit pads, concatenation,
reshapes) returns None and the caller keeps the loop transformation.

Why zero padding is sound here (and only where every convolution reads the input or an activation's
output, possibly scaled or summed: never another convolution's output directly). Let M >= N + p per
axis for every convolution (N the size, p its padding), so that each zero-padded convolution is R K E:
the zero-extension E of its input to the grid M, the circular convolution K there, and the restriction
R to the image (the same embedding as `norms.zero_padded_conv_bound`). Run the whole c-network on the
grid M instead, with circular convolutions and every activation's slope diagonal D extended to the
added positions by the slope 0.
Then the values on the image are exactly those of the zero-padded network, and the added positions of
every activation's output are 0, which is what the next zero-padded convolution reads there: the
zero-padded network's difference map is R T(D') E, with T(D') the periodic network's map. The slope 0
must lie in every activation's slope range, so the ranges are widened to [min(a, 0), max(b, 0)] (only
LeakyReLU-like ranges change, and only by their small side). A bound valid for all diagonals with
entries in those ranges, as LipSDP's is, therefore bounds the zero-padded network, whose norm is at most
the periodic one's. Composing zero-padded convolutions into one kernel would not be sound (docs/bounds.md):
here no kernels are composed, the activations sit between the convolutions and the grid's added
positions are switched off by them.

Why per channel. With one multiplier per channel of each activation (the same at every position),
every block of the inequality is block circulant, so the DFT on the grid M splits it into one small
Hermitian inequality per frequency, of side (input channels + activation channels): the inequality
holds iff it holds at every frequency. Each block's symbol at frequency w is the channel matrix
sum over taps t of W[:, :, t] exp(i w . (t d - p)) (a convolution), a diagonal (BatchNorm, scaling), or
the identity (the residual path).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
from torch import Tensor
from torch.fx import Node

from lipcheck.bounds.graph import GraphBound, bind_arguments, nodes_in
from lipcheck.bounds.lipsdp import Transformation, activation_sites
from lipcheck.bounds.loop_transformation import BATCH_NORMS, _LoopTransformation, short_name

CONVOLUTIONS = frozenset(["conv1d", "conv2d", "conv3d", "convolution"])
COPIES = frozenset(["clone", "alias", "contiguous", "detach", "dropout", "_to_copy", "lift_fresh_copy"])
# The most frequencies times squared side of the per-frequency inequality (bounds memory and time).
MAX_WORK = 1 << 24


class _Unsupported(Exception):
    """The graph is outside the per-channel form; the caller keeps the loop transformation."""


def circulant_transformation(walker: GraphBound, outputs: list[Node]) -> Transformation | None:
    """The per-frequency symbols of the network's difference map on the smallest sound grid, or None."""
    try:
        return _Symbols(walker, outputs).build()
    except _Unsupported:
        return None


class _Symbols:
    def __init__(self, walker: GraphBound, outputs: list[Node]) -> None:
        self.walker = walker
        self.outputs = outputs
        self.lt = _LoopTransformation(walker, outputs)
        sites = activation_sites(self.lt)
        if not sites:
            raise _Unsupported
        self.sites = {site.node: site for site in sites}
        self.input = self.lt.input
        shape = _shape(self.input)
        if len(shape) < 3:
            raise _Unsupported  # no spatial axes: the dense form is the one for it
        self.channels, self.spatial = shape[1], shape[2:]

    def build(self) -> Transformation:
        nodes = [node for node in self.walker.program.graph.nodes if node in self.walker.bounds]
        for node in nodes:
            value = node.meta.get("val")
            if isinstance(value, Tensor) and (value.dim() < 3 or tuple(value.shape[2:]) != self.spatial):
                raise _Unsupported
        grid = self._grid(nodes)
        # the symbols are real kernels' DFTs: the block at -w is the conjugate of the one at w, with the same
        # eigenvalues, so half the last axis (as rfft keeps it) covers every frequency
        axes = [torch.arange(m, dtype=torch.float64) * (2 * math.pi / m) for m in grid[:-1]]
        axes.append(torch.arange(grid[-1] // 2 + 1, dtype=torch.float64) * (2 * math.pi / grid[-1]))
        frequencies = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))
        widths = [_shape(site.node)[1] for site in self.sites.values()]
        columns = self.channels + sum(widths)
        if frequencies.shape[0] * columns * columns > MAX_WORK:
            raise _Unsupported
        self.frequencies = frequencies
        count = frequencies.shape[0]
        offsets = {node: self.channels + sum(widths[:i]) for i, node in enumerate(self.sites)}
        symbols: dict[Node, Any] = {}
        eye = torch.eye(self.channels, columns, dtype=torch.complex128)
        symbols[self.input] = eye.expand(count, -1, -1)
        z_rows: dict[Node, Tensor] = {}
        # values that are 0 at the grid's added positions: the input (zero-extended), an activation's
        # output (slope 0 there), and linear maps of them other than a convolution
        self.clean: set[Node] = {self.input}
        for node in nodes[1:]:
            operands = [item for item in nodes_in((node.args, node.kwargs)) if item in self.walker.bounds]
            if node in self.sites or (
                short_name(node) not in CONVOLUTIONS and all(item in self.clean for item in operands)
            ):
                self.clean.add(node)
            if node in self.sites:
                site = self.sites[node]
                source = symbols[site.inputs[0]]
                z_rows[node] = source
                width = _shape(node)[1]
                injection = torch.zeros(width, columns, dtype=torch.complex128)
                injection[:, offsets[node] : offsets[node] + width] = torch.eye(width)
                symbols[node] = self._centre(site) * source + injection
            else:
                symbols[node] = self._linear(node, symbols)
        rows = [z_rows[node] for node in self.sites]
        for output in self.outputs:
            if not isinstance(symbols.get(output), Tensor):
                raise _Unsupported
            rows.append(symbols[output])
        radius = torch.cat(
            [
                torch.full((w,), self._radius(site), dtype=torch.float64)
                for w, site in zip(widths, self.sites.values(), strict=True)
            ]
        )
        centre = torch.cat(
            [
                torch.full((w,), self._centre(site), dtype=torch.float64)
                for w, site in zip(widths, self.sites.values(), strict=True)
            ]
        )
        index = torch.cat([torch.full((w,), i, dtype=torch.int64) for i, w in enumerate(widths)])
        grid_name = "x".join(str(m) for m in grid)
        how = f"per-channel multipliers, the {grid_name} periodic grid ({count} frequency blocks)"
        return Transformation(torch.cat(rows, dim=1), radius, centre, index, self.channels, how)

    def _grid(self, nodes: list[Node]) -> list[int]:
        """M per axis: N + the largest padding (the embedding of every zero-padded convolution)."""
        grid = list(self.spatial)
        for node in nodes:
            if short_name(node) in CONVOLUTIONS:
                args = bind_arguments(node)
                padding = _expand(args.get("padding", 0), len(grid))
                if isinstance(args.get("padding"), str):
                    raise _Unsupported
                for axis, p in enumerate(padding):
                    grid[axis] = max(grid[axis], self.spatial[axis] + p)
        return grid

    def _slopes(self, site: Any) -> tuple[float, float]:
        low, high = site.centre - site.radius, site.centre + site.radius
        return min(low, 0.0), max(high, 0.0)

    def _centre(self, site: Any) -> float:
        low, high = self._slopes(site)
        return (low + high) / 2

    def _radius(self, site: Any) -> float:
        low, high = self._slopes(site)
        return (high - low) / 2

    def _constant(self, item: Any) -> Any:
        return self.walker.constants[item] if isinstance(item, Node) else item

    def _linear(self, node: Node, symbols: dict[Node, Any]) -> Any:
        name = short_name(node)
        inputs = [item for item in nodes_in((node.args, node.kwargs)) if item in self.walker.bounds]
        if node.target is operator.getitem:
            source = symbols[inputs[0]]
            if isinstance(source, tuple):
                return source[node.args[1]]
            raise _Unsupported
        if name in CONVOLUTIONS:
            return self._convolution(node, symbols[inputs[0]])
        if name in BATCH_NORMS:
            return self._batch_norm(node, symbols[inputs[0]])
        if name in COPIES and len(inputs) == 1:
            return symbols[inputs[0]]
        if name == "neg":
            return -symbols[inputs[0]]
        if name in ("add", "sub"):
            return self._sum(node, symbols, -1.0 if name == "sub" else 1.0)
        if name in ("mul", "div") and len(inputs) == 1:
            return self._scale(node, symbols[inputs[0]], name)
        raise _Unsupported

    def _sum(self, node: Node, symbols: dict[Node, Any], sign: float) -> Tensor:
        args = bind_arguments(node)
        alpha = args.get("alpha")
        alpha = 1.0 if alpha is None else float(self._constant(alpha))
        total: Tensor | None = None
        for key, factor in (("self", 1.0), ("other", sign * alpha)):
            item = args.get(key)
            if isinstance(item, Node) and item in self.walker.bounds:
                if _shape(item) != _shape(node):
                    raise _Unsupported  # broadcasting an input-dependent value
                term = factor * symbols[item]
                total = term if total is None else total + term
        if total is None:
            raise _Unsupported
        return total

    def _scale(self, node: Node, symbol: Tensor, name: str) -> Tensor:
        args = bind_arguments(node)
        if not (isinstance(args.get("self"), Node) and args["self"] in self.walker.bounds):
            if name == "div":
                raise _Unsupported
            args = {"self": args.get("other"), "other": args.get("self")}
        factor = self._constant(args.get("other"))
        if isinstance(factor, Tensor):
            factor = factor.detach().to(torch.float64)
            channels = symbol.shape[1]
            shape = tuple(factor.shape)
            flat = factor.reshape(-1)
            if factor.numel() == 1:
                factor = float(flat[0])
            elif factor.numel() == channels and shape[-len(self.spatial) :] == (1,) * len(self.spatial):
                factor = flat.to(torch.complex128).reshape(1, channels, 1)
            else:
                raise _Unsupported
        if not isinstance(factor, float | int | Tensor):
            raise _Unsupported
        if name == "div":
            if isinstance(factor, Tensor):
                return symbol / factor
            if factor == 0:
                raise _Unsupported
            return symbol / float(factor)
        return symbol * factor

    def _batch_norm(self, node: Node, symbol: Tensor) -> Any:
        args = bind_arguments(node)
        if "training" in args and bool(self._constant(args["training"])):
            raise _Unsupported
        variance = self._constant(args["running_var"]).detach().to(torch.float64)
        scale = (variance + float(self._constant(args["eps"]))).rsqrt()
        if args.get("weight") is not None:
            scale = scale * self._constant(args["weight"]).detach().to(torch.float64)
        out = symbol * scale.to(torch.complex128).reshape(1, -1, 1)
        if isinstance(node.meta["val"], list | tuple):
            return (out, *[None for _ in node.meta["val"][1:]])
        return out

    def _convolution(self, node: Node, symbol: Tensor) -> Tensor:
        args = bind_arguments(node)
        if args["input"] not in self.clean:
            # a convolution reading another one's output (directly, or through BatchNorm or a sum) would
            # read the periodic grid's added positions, which the zero-padded network does not have
            raise _Unsupported
        d = len(self.spatial)
        if bool(self._constant(args.get("transposed", False))):
            raise _Unsupported
        stride = _expand(self._constant(args.get("stride", 1)), d)
        dilation = _expand(self._constant(args.get("dilation", 1)), d)
        padding = _expand(self._constant(args.get("padding", 0)), d)
        groups = int(self._constant(args.get("groups", 1)))
        if any(s != 1 for s in stride):
            raise _Unsupported
        weight = self._constant(args["weight"]).detach().to(torch.float64)
        c_out, c_in_group = weight.shape[:2]
        taps = torch.stack(
            torch.meshgrid(*[torch.arange(k, dtype=torch.float64) for k in weight.shape[2:]], indexing="ij"),
            dim=-1,
        ).reshape(-1, d)
        shifts = taps * torch.tensor(dilation, dtype=torch.float64) - torch.tensor(
            padding, dtype=torch.float64
        )
        phases = torch.exp(1j * (self.frequencies @ shifts.T))  # (F, taps)
        kernel = weight.reshape(c_out, c_in_group, -1).to(torch.complex128)
        blocks = torch.einsum("ft,oit->foi", phases, kernel)  # (F, c_out, c_in / groups)
        if groups == 1:
            matrix = blocks
        else:
            out_group = c_out // groups
            matrix = torch.zeros(blocks.shape[0], c_out, c_in_group * groups, dtype=torch.complex128)
            for g in range(groups):
                rows = slice(g * out_group, (g + 1) * out_group)
                matrix[:, rows, g * c_in_group : (g + 1) * c_in_group] = blocks[:, rows]
        return matrix @ symbol


def _expand(value: Any, d: int) -> list[int]:
    if isinstance(value, str):
        raise _Unsupported
    items = [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]
    return items * d if len(items) == 1 else items


def _shape(node: Node) -> tuple[int, ...]:
    return tuple(int(d) for d in node.meta["val"].shape)
