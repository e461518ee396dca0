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

import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.fx import Node

from lipcheck.errors import InputError, UnsupportedOperationError, first_line
from lipcheck.report import BoundReport, LayerBound

__all__ = ["BoundReport", "LayerBound", "upper_bound"]

# Relative margin added to factors that are exact up to float64 rounding.
SAFETY_MARGIN = 1e-9
# Matrices whose smaller side is at most this get an exact SVD; larger ones get Gram iteration.
EXACT_SVD_MAX_SIDE = 2048
GRAM_ITERATIONS = 12
# Complex entries per batch of frequency matrices in the convolution rule (bounds memory).
_FREQUENCY_CHUNK_ENTRIES = 1 << 23


def upper_bound(
    model: nn.Module | torch.export.ExportedProgram,
    input_shape: int | Sequence[int],
    *,
    assume: Mapping[str, float] | None = None,
) -> BoundReport:
    """A certified upper bound on the global l2 Lipschitz constant of `model` on inputs of one shape.

    Args:
        model: an `nn.Module` (in eval mode when it has BatchNorm or dropout), an `ExportedProgram`,
            or an exported program's `.module()`. It takes one tensor of shape (1, *input_shape).
        input_shape: the shape of one input without the batch dimension, e.g. (3, 224, 224).
        assume: operation name (as named by `UnsupportedOperationError`, e.g. "aten.erf.default" or
            "aten.erf") -> a Lipschitz constant of that operation, jointly in all its tensor inputs,
            that the user takes responsibility for. It replaces lipcheck's rule where there is one.

    Raises:
        UnsupportedOperationError: the model cannot be exported, or holds an operation without a rule
            and without an assumption; the message names it and the `assume` entry that would help.
        InputError: a bad input shape or assumption.
    """
    shape = _check_shape(input_shape)
    assumptions = _check_assumptions(assume)
    program = _export(model, shape)
    walker = _GraphBound(program, assumptions)
    bound = walker.run()
    unused = sorted(set(assumptions) - walker.operations)
    if unused:
        present = ", ".join(sorted(walker.operations)) or "none"
        raise InputError(
            f"assume names {', '.join(repr(name) for name in unused)}, which the model's graph does not "
            f"contain; its operations are: {present}"
        )
    return BoundReport(
        upper_bound=bound,
        layers=tuple(walker.layers),
        assumptions=dict(walker.used_assumptions),
        input_shape=shape,
    )


def _check_shape(input_shape: int | Sequence[int]) -> tuple[int, ...]:
    dims = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise InputError(
            f"input shape {input_shape!r} is not a non-empty sequence of positive integers "
            "(the shape of one input, without the batch dimension, e.g. (3, 32, 32))"
        )
    return dims


def _check_assumptions(assume: Mapping[str, float] | None) -> dict[str, float]:
    checked: dict[str, float] = {}
    for name, value in (assume or {}).items():
        constant = float(value)
        if not math.isfinite(constant) or constant < 0:
            raise InputError(f"assume[{name!r}] = {value!r} is not a finite non-negative Lipschitz constant")
        checked[str(name)] = constant
    return checked


def _export(model: Any, shape: tuple[int, ...]) -> torch.export.ExportedProgram:
    if isinstance(model, torch.export.ExportedProgram):
        return model
    if isinstance(model, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        raise UnsupportedOperationError(
            f"cannot bound the TorchScript module {type(model).__name__}: its graph is opaque to "
            "torch.export; bound the original nn.Module instead (from the command line: its torch.export "
            ".pt2 file, or its weights with --arch)"
        )
    if not isinstance(model, nn.Module):
        raise UnsupportedOperationError(
            f"cannot bound a {type(model).__name__}: expected an nn.Module or a torch.export.ExportedProgram"
        )
    reference = next(iter(model.parameters()), None)
    if reference is None:
        reference = next(iter(model.buffers()), None)
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    device = reference.device if reference is not None else torch.device("cpu")
    example = torch.zeros((1, *shape), dtype=dtype, device=device)
    try:
        return torch.export.export(model, (example,), strict=False)
    except Exception as error:  # export raises many unrelated types; all mean "no graph to walk"
        reason = first_line(error) or type(error).__name__
        raise UnsupportedOperationError(
            f"cannot bound {type(model).__name__}: torch.export could not trace it at input shape "
            f"{(1, *shape)} ({reason}); only models torch.export can capture as one graph can be bounded"
        ) from error


def operation_name(target: Any) -> str:
    """The name of a graph node's operation, as `assume` and the errors spell it: "aten.relu.default"."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__name__", str(target))


def _packet_name(target: Any) -> str | None:
    packet = getattr(target, "overloadpacket", None)
    return None if packet is None else str(packet)


# ----------------------------------------------------------------------------------------------------
# The graph walk


class _GraphBound:
    """Propagates Lipschitz bounds through an exported program's graph, node by node."""

    def __init__(self, program: torch.export.ExportedProgram, assumptions: dict[str, float]) -> None:
        self.program = program
        self.assumptions = assumptions
        self.constants: dict[Node, Any] = {}
        self.bounds: dict[Node, Any] = {}  # float, or a tuple of floats for tuple-valued nodes
        self.layers: list[LayerBound] = []
        self.used_assumptions: dict[str, float] = {}
        self.operations: set[str] = set()

    def run(self) -> float:
        graph = self.program.graph
        self._bind_placeholders()
        for node in graph.nodes:
            if node.op == "call_function":
                self._visit(node)
            elif node.op == "get_attr":
                self.constants[node] = _get_attr(self.program.graph_module, node.target)
            elif node.op == "output":
                return self._output_bound(node)
            elif node.op != "placeholder":
                raise UnsupportedOperationError(f"cannot bound graph node {node.name!r} of kind {node.op!r}")
        raise UnsupportedOperationError("the exported graph has no output")

    def _bind_placeholders(self) -> None:
        from torch.export.graph_signature import InputKind

        by_name = {node.name: node for node in self.program.graph.nodes if node.op == "placeholder"}
        user_inputs = []
        for spec in self.program.graph_signature.input_specs:
            node = by_name[spec.arg.name]
            if spec.kind == InputKind.USER_INPUT:
                user_inputs.append(node)
            elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                if spec.target in self.program.state_dict:
                    self.constants[node] = self.program.state_dict[spec.target]
                else:
                    self.constants[node] = self.program.constants[spec.target]
            else:
                raise UnsupportedOperationError(f"cannot bound a model with a {spec.kind.name} input")
        tensor_inputs = [node for node in user_inputs if isinstance(node.meta.get("val"), Tensor)]
        if len(tensor_inputs) != 1 or len(user_inputs) != 1:
            raise UnsupportedOperationError(
                f"cannot bound a model with {len(user_inputs)} inputs: a bound is taken with respect to one "
                "input tensor"
            )
        self.bounds[tensor_inputs[0]] = 1.0

    def _output_bound(self, node: Node) -> float:
        total = 0.0
        for item in _nodes_in(node.args[0]):
            if item in self.bounds:
                total += _finite(self, item) ** 2
        return math.sqrt(total)

    def _visit(self, node: Node) -> None:
        name = operation_name(node.target)
        self.operations.add(name)
        packet = _packet_name(node.target)
        if packet is not None:
            self.operations.add(packet)
        inputs = [item for item in _nodes_in((node.args, node.kwargs)) if item in self.bounds]
        if not inputs:
            self.constants[node] = self._evaluate(node)
            return
        site = _Site(self, node)
        assumed = self.assumptions.get(name, self.assumptions.get(packet or name))
        if assumed is not None:
            key = name if name in self.assumptions else str(packet)
            self.used_assumptions[key] = assumed
            joint = math.sqrt(sum(_finite(self, item) ** 2 for item in inputs))
            site.record("assumed", assumed, f"assumed by the user ({key})")
            self.bounds[node] = _like_value(node, assumed * joint)
            return
        rule = _RULES.get(node.target) or _RULES.get(getattr(node.target, "overloadpacket", None))
        if rule is None:
            raise UnsupportedOperationError(
                f"cannot bound operation {name!r} (node {node.name!r}{_where(node)}): lipcheck has no "
                f"Lipschitz rule for it; if you know a Lipschitz constant L for it, pass "
                f"assume={{{name!r}: L}} (on the command line: --assume {name}=L) and take responsibility "
                "for it"
            )
        self.bounds[node] = rule(site)

    def _evaluate(self, node: Node) -> Any:
        def value(item: Node) -> Any:
            return self.constants[item]

        args = torch.fx.node.map_arg(node.args, value)
        kwargs = torch.fx.node.map_arg(node.kwargs, value)
        with torch.no_grad():
            return node.target(*args, **kwargs)


def _get_attr(module: nn.Module, target: str) -> Any:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _nodes_in(tree: Any) -> list[Node]:
    found: list[Node] = []
    torch.fx.node.map_arg(tree, lambda item: found.append(item) or item)
    return found


def _finite(walker: _GraphBound, node: Node) -> float:
    bound = walker.bounds[node]
    if isinstance(bound, tuple) or not math.isfinite(bound):
        raise UnsupportedOperationError(
            f"cannot bound node {node.name!r}{_where(node)}: it is not a Lipschitz function of the input "
            "(e.g. the indices of a max pooling)"
        )
    return float(bound)


def _like_value(node: Node, bound: float) -> Any:
    value = node.meta.get("val")
    if isinstance(value, list | tuple):
        return tuple(bound for _ in value)
    return bound


def _module_path(node: Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [entry[0] for entry in stack.values() if entry and entry[0]]
    return paths[-1] if paths else ""


def _where(node: Node) -> str:
    path = _module_path(node)
    return f", in module {path!r}" if path else ""


class _Site:
    """One operation being bounded: its arguments by schema name, their bounds and constant values."""

    def __init__(self, walker: _GraphBound, node: Node) -> None:
        self.walker = walker
        self.node = node
        self.name = operation_name(node.target)
        self.args = _bind_arguments(node)

    def depends(self, argument: str) -> bool:
        return any(item in self.walker.bounds for item in _nodes_in(self.args.get(argument)))

    def lip(self, argument: str) -> float:
        """The bound of an argument (0 for a constant, sqrt of the sum of squares for a list)."""
        items = [item for item in _nodes_in(self.args.get(argument)) if item in self.walker.bounds]
        return math.sqrt(sum(_finite(self.walker, item) ** 2 for item in items))

    def value(self, argument: str) -> Any:
        """The concrete value of an argument that must not depend on the input."""
        if self.depends(argument):
            raise UnsupportedOperationError(
                f"cannot bound operation {self.name!r} (node {self.node.name!r}{_where(self.node)}): its "
                f"argument {argument!r} depends on the input, so the operation is not Lipschitz with a "
                f"constant lipcheck can compute; pass assume={{{self.name!r}: L}} (--assume "
                f"{self.name}=L) if you know one"
            )
        return torch.fx.node.map_arg(self.args.get(argument), lambda item: self.walker.constants[item])

    def shape(self, argument: str) -> tuple[int, ...]:
        item = self.args[argument]
        return tuple(int(d) for d in (item.meta["val"].shape if isinstance(item, Node) else item.shape))

    def out_shape(self, index: int | None = None) -> tuple[int, ...]:
        value = self.node.meta["val"]
        if index is not None:
            value = value[index]
        return tuple(int(d) for d in value.shape)

    def record(self, kind: str, bound: float, method: str) -> None:
        path = _module_path(self.node)
        self.walker.layers.append(LayerBound(path or self.node.name, self.node.name, kind, bound, method))

    def scale(self, argument: str, kind: str | None, factor: float, method: str) -> float:
        """Records a factor (unless kind is None) and returns factor times the argument's bound."""
        if kind is not None:
            self.record(kind, factor, method)
        return factor * self.lip(argument)

    def call_with(self, argument: str, tensor: Tensor) -> Any:
        """Calls the operation with `tensor` in place of one argument and constants for the others."""
        args = {name: (tensor if name == argument else self.value(name)) for name in self.args}
        schema = self.node.target._schema
        positional = [args[a.name] for a in schema.arguments if not a.kwarg_only]
        keywords = {a.name: args[a.name] for a in schema.arguments if a.kwarg_only}
        return self.node.target(*positional, **keywords)


def _bind_arguments(node: Node) -> dict[str, Any]:
    target = node.target
    schema = getattr(target, "_schema", None)
    if schema is None:
        return {str(i): arg for i, arg in enumerate(node.args)} | dict(node.kwargs)
    bound: dict[str, Any] = {}
    positional = list(node.args)
    for argument in schema.arguments:
        if not argument.kwarg_only and positional:
            bound[argument.name] = positional.pop(0)
        elif argument.name in node.kwargs:
            bound[argument.name] = node.kwargs[argument.name]
        elif argument.has_default_value():
            bound[argument.name] = argument.default_value
        else:
            bound[argument.name] = None
    return bound


# ----------------------------------------------------------------------------------------------------
# Linear algebra: certified spectral norms in float64


def _with_margin(value: float) -> float:
    return value * (1 + SAFETY_MARGIN)


def matrix_spectral_norm(matrix: Tensor) -> tuple[float, str]:
    """An upper bound on ||matrix||_2 (batched: the max over leading dims) and how it was computed.

    Small matrices get an exact SVD in float64 (plus the rounding margin). Large ones get Gram
    iteration (Delattre et al. 2023): with G_0 = W and G_{k+1} = G_k^T G_k, sigma_1(W)^(2^t) =
    sigma_1(G_t) <= ||G_t||_F, so ||W||_2 <= ||G_t||_F^(1/2^t) for every t; G is rescaled at each step
    (the scale is kept in a logarithm) so that nothing overflows.
    """
    w = matrix.detach().to(torch.float64)
    if w.dim() < 2:
        return _with_margin(float(torch.linalg.vector_norm(w))), "exact (Euclidean norm of a vector)"
    w = w.reshape(-1, *w.shape[-2:])
    if w.shape[-2] < w.shape[-1]:
        w = w.mT
    if w.shape[-1] <= EXACT_SVD_MAX_SIDE:
        return _with_margin(float(torch.linalg.svdvals(w)[..., 0].max())), "exact SVD"
    return gram_iteration_bound(w, GRAM_ITERATIONS), f"Gram iteration ({GRAM_ITERATIONS} steps)"


def gram_iteration_bound(matrix: Tensor, steps: int) -> float:
    """||matrix||_2 <= ||G_steps||_F^(1/2^steps) (Gram iteration; max over leading batch dims)."""
    g = matrix.detach().to(torch.float64).reshape(-1, *matrix.shape[-2:])
    if g.shape[-2] < g.shape[-1]:
        g = g.mT
    tiny = torch.finfo(torch.float64).tiny
    largest = g.abs().amax(dim=(-2, -1)).clamp_min(tiny)
    g = g / largest[:, None, None]  # so that the first Frobenius norm cannot overflow
    log_scale = largest.log()
    for _ in range(steps):
        norm = torch.linalg.matrix_norm(g).clamp_min(tiny)
        g = g / norm[:, None, None]
        log_scale = 2 * (log_scale + norm.log())
        g = g.mT @ g
    last = torch.linalg.matrix_norm(g).clamp_min(tiny)
    bound = ((log_scale + last.log()) / 2**steps).exp().max()
    return _with_margin(float(bound))


def circular_conv_norm(weight: Tensor, sizes: Sequence[int], dilation: Sequence[int], groups: int) -> float:
    """The exact l2 norm of a multi-channel circular convolution at spatial size `sizes` (Sedghi 2019).

    weight: (C_out, C_in / groups, k_1, ..., k_d). The circulant operator is diagonalised by the
    d-dimensional DFT: its norm is the max over frequencies w of ||K(w)||_2, where K(w) is the
    (C_out x C_in) DFT of the kernel taps placed at (t * dilation) mod size (taps that land on the same
    position add up). Groups make the operator block diagonal: the max over groups. For real kernels
    K(-w) = conj(K(w)), so half the spectrum (rfftn) is enough.
    """
    d = len(sizes)
    w = weight.detach().to(torch.float64)
    c_out, c_in_group = w.shape[:2]
    if math.prod(w.shape[2:]) == 1:
        blocks = w.reshape(groups, c_out // groups, c_in_group)
        return _with_margin(float(torch.linalg.matrix_norm(blocks, ord=2).max()))
    taps = w
    for axis in range(d):
        k = w.shape[2 + axis]
        positions = torch.arange(k, device=w.device) * dilation[axis] % sizes[axis]
        placed_shape = list(taps.shape)
        placed_shape[2 + axis] = sizes[axis]
        taps = torch.zeros(placed_shape, dtype=w.dtype, device=w.device).index_add_(2 + axis, positions, taps)
    spectrum = torch.fft.rfftn(taps, dim=tuple(range(2, 2 + d)))
    spectrum = spectrum.reshape(groups, c_out // groups, c_in_group, -1).permute(3, 0, 1, 2)
    spectrum = spectrum.reshape(-1, c_out // groups, c_in_group)
    if spectrum.shape[-2] > spectrum.shape[-1]:
        spectrum = spectrum.mH
    side = spectrum.shape[-2]
    chunk = max(1, _FREQUENCY_CHUNK_ENTRIES // (spectrum.shape[-1] * side))
    largest = 0.0
    for start in range(0, spectrum.shape[0], chunk):
        block = spectrum[start : start + chunk]
        gram = block @ block.mH
        largest = max(largest, float(torch.linalg.eigvalsh(gram)[..., -1].max()))
    return _with_margin(math.sqrt(max(largest, 0.0)))


def zero_padded_conv_bound(
    weight: Tensor,
    in_sizes: Sequence[int],
    out_sizes: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> tuple[float, str]:
    """An upper bound on the norm of a zero-padded, strided, dilated, grouped convolution.

    Per spatial axis (input size N, output size N_o, stride s, left padding p, dilation d, kernel k),
    output i reads inputs j = i s - p + t d, which lie in [-p, J] with J = (N_o - 1) s - p + (k - 1) d.
    Extend the input by zeros to a size M >= max(N + p, J + 1, (k - 1) d + 1). Then each index j outside
    [0, N) lands, taken mod M, on an appended zero, so every zero-padded output is an output of the
    circular convolution at size M applied to the zero-extended input: conv = R C_M E with E the
    zero-extension (an isometry) and R a selection of rows (stride included), hence
    ||conv|| <= ||C_M||, computed exactly by `circular_conv_norm`.
    """
    sizes = []
    axes = zip(in_sizes, out_sizes, stride, padding, dilation, weight.shape[2:], strict=True)
    for n, n_out, s, p, d, k in axes:
        last = (n_out - 1) * s - p + (k - 1) * d
        sizes.append(max(n + p, last + 1, (k - 1) * d + 1, n))
    grid = "x".join(str(m) for m in sizes)
    if math.prod(weight.shape[2:]) == 1:
        method = "exact SVD of the channel matrix (1x1 kernel)"
    else:
        method = f"exact norm of the circular convolution at {grid} that embeds it (DFT)"
    return circular_conv_norm(weight, sizes, dilation, groups), method


# ----------------------------------------------------------------------------------------------------
# Rules: one per operation; each returns the bound of the node's output.

_Rule = Callable[[_Site], Any]
_RULES: dict[Any, _Rule] = {}


def _aten(*names: str) -> list[Any]:
    found = []
    for name in names:
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None:
            found.append(packet)
    return found


def _rule(*targets: Any) -> Callable[[_Rule], _Rule]:
    def register(function: _Rule) -> _Rule:
        for target in targets:
            if isinstance(target, list):
                for item in target:
                    _RULES[item] = function
            else:
                _RULES[target] = function
        return function

    return register


def _first_tensor(site: _Site) -> str:
    return next(iter(site.args))


@_rule(
    _aten(
        "view",
        "reshape",
        "_unsafe_view",
        "flatten",
        "unflatten",
        "permute",
        "transpose",
        "t",
        "contiguous",
        "clone",
        "squeeze",
        "unsqueeze",
        "alias",
        "detach",
        "movedim",
        "swapaxes",
        "view_as",
        "reshape_as",
        "lift_fresh_copy",
        "numpy_T",
        "mT",
        "neg",
        "pixel_shuffle",
        "pixel_unshuffle",
        "channel_shuffle",
    )
)
def _rearrangement(site: _Site) -> float:
    """A permutation of the entries (or a sign flip): an isometry, factor 1."""
    return site.lip(_first_tensor(site))


@_rule(_aten("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout"))
def _dropout(site: _Site) -> float:
    if site.value("train"):
        raise UnsupportedOperationError(
            f"cannot bound {site.name!r} (node {site.node.name!r}{_where(site.node)}) in training mode: "
            "dropout is random; call model.eval() before bounding"
        )
    return site.lip("input")


@_rule(_aten("_to_copy", "to", "type_as", "_assert_tensor_metadata"))
def _conversion(site: _Site) -> float:
    value = site.node.meta.get("val")
    if isinstance(value, Tensor) and not value.is_floating_point():
        raise UnsupportedOperationError(
            f"cannot bound {site.name!r} (node {site.node.name!r}{_where(site.node)}): it converts to "
            f"{value.dtype}, which is not a Lipschitz function of the input"
        )
    return site.lip(_first_tensor(site))


def _monomial_norm(site: _Site, argument: str) -> float:
    """The exact norm of an operation that copies (and scales) entries of one argument.

    Such a map is linear (up to a constant, removed by subtracting its value at 0) with at most one
    nonzero per row, P[i, r(i)] = c_i, so P^T P is diagonal with entries sum over copies of c_i^2 and
    ||P||^2 = max(P^T P 1). With y = P 1 that diagonal is the vector-Jacobian product P^T y.
    """
    shape = site.shape(argument)
    ones = torch.ones(shape, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        y = site.call_with(argument, ones) - site.call_with(argument, torch.zeros(shape, dtype=torch.float64))
        (diagonal,) = torch.autograd.grad(y, ones, grad_outputs=y.detach(), allow_unused=True)
    if diagonal is None:
        return 0.0
    return _with_margin(math.sqrt(float(diagonal.max().clamp_min(0))))


@_rule(
    _aten(
        "slice",
        "select",
        "narrow",
        "expand",
        "expand_as",
        "repeat",
        "tile",
        "index_select",
        "roll",
        "flip",
        "constant_pad_nd",
        "reflection_pad1d",
        "reflection_pad2d",
        "reflection_pad3d",
        "replication_pad1d",
        "replication_pad2d",
        "replication_pad3d",
        "upsample_nearest1d",
        "upsample_nearest2d",
        "upsample_nearest3d",
        "_unsafe_index",
        "index",
    )
)
def _copy(site: _Site) -> float:
    """Each output entry is a copy of one input entry (or a constant): sqrt(max copies of an entry)."""
    argument = _first_tensor(site)
    factor = _monomial_norm(site, argument)
    if factor > 1 + 2 * SAFETY_MARGIN:
        site.record(
            site.node.target.__name__.split(".")[0],
            factor,
            f"exact (an entry is copied at most {round(factor**2)} times)",
        )
    return factor * site.lip(argument)


@_rule(_aten("copy"))
def _copy_into(site: _Site) -> float:
    """copy(self, src) is src broadcast to self's shape (self's values are overwritten): sqrt(copies)."""
    return _broadcast_copies(site, "src") * site.lip("src")


@_rule(_aten("slice_scatter", "select_scatter", "diagonal_scatter"))
def _scatter(site: _Site) -> float:
    """self with a part replaced by src: the two parts are disjoint, so sqrt(L_self^2 + L_src^2)."""
    return math.hypot(site.lip("self"), site.lip("src"))


@_rule(_aten("pad"))
def _pad(site: _Site) -> float:
    if site.value("mode") == "circular" and all(_absorbs_circular_pad(user) for user in site.node.users):
        return site.lip("self")  # unused: every user is a convolution bounded exactly through the pad
    return _copy(site)


def _absorbs_circular_pad(node: Node) -> bool:
    """Whether a node is a convolution without padding, which bounds a circular pad before it exactly."""
    packet = getattr(node.target, "overloadpacket", None)
    if node.op != "call_function" or packet not in _CONV_PACKETS or "transpose" in str(packet):
        return False
    args = _bind_arguments(node)
    padding = args.get("padding")
    if args.get("transposed", False) or args.get("input") is None:
        return False
    return padding == "valid" or (not isinstance(padding, str) and not any(padding or []))


@_rule(_aten("linear"))
def _linear(site: _Site) -> float:
    weight = site.value("weight")
    factor, method = matrix_spectral_norm(weight)
    return site.scale("input", "linear", factor, method)


def _matmul_bound(site: _Site, left: str, right: str, kind: str) -> float:
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


@_rule(_aten("mm", "matmul", "bmm"))
def _mm(site: _Site) -> float:
    return _matmul_bound(site, "self", "other" if "other" in site.args else "mat2", "linear")


@_rule(_aten("addmm"))
def _addmm(site: _Site) -> float:
    alpha, beta = abs(float(site.value("alpha"))), abs(float(site.value("beta")))
    product = 0.0
    if site.depends("mat1") or site.depends("mat2"):
        product = alpha * _matmul_bound(site, "mat1", "mat2", "linear")
    return beta * site.lip("self") + product


_CONV_PACKETS = tuple(
    _aten(
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


@_rule(list(_CONV_PACKETS))
def _convolution(site: _Site) -> float:
    weight = site.value("weight")
    d = weight.dim() - 2
    packet_name = str(site.node.target.overloadpacket).split(".")[-1]
    transposed = packet_name.startswith("conv_transpose") or bool(site.args.get("transposed", False))
    kind = f"conv_transpose{d}d" if transposed else f"conv{d}d"
    stride = _expand(site.value("stride"), d)
    dilation = _expand(site.value("dilation"), d)
    groups = int(site.value("groups"))
    padding = site.value("padding")
    in_sizes, out_sizes = site.shape("input")[-d:], site.out_shape()[-d:]
    source = site.args["input"]
    if _is_circular_pad(source) and source in site.walker.bounds and _absorbs_circular_pad(site.node):
        return _circular_convolution(site, weight, source, stride, dilation, groups, kind)
    if isinstance(padding, str):
        padding = _string_padding(padding, weight.shape[2:], dilation)
    padding = _expand(padding, d)
    if transposed:
        # conv_transpose is the adjoint of the convolution from its output size to its input size.
        in_sizes, out_sizes = out_sizes, in_sizes
    factor, method = zero_padded_conv_bound(weight, in_sizes, out_sizes, stride, padding, dilation, groups)
    return site.scale("input", kind, factor, method)


def _constant(site: _Site, item: Any) -> Any:
    return site.walker.constants[item] if isinstance(item, Node) else item


def _is_circular_pad(node: Any) -> bool:
    return (
        isinstance(node, Node)
        and node.op == "call_function"
        and getattr(node.target, "overloadpacket", None) is torch.ops.aten.pad
        and _bind_arguments(node).get("mode") == "circular"
    )


def _circular_convolution(
    site: _Site,
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
    source = _bind_arguments(pad)["self"]
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
    return factor * _finite(site.walker, source)


def _expand(value: Any, d: int) -> list[int]:
    items = [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]
    return items * d if len(items) == 1 else items


def _string_padding(padding: str, kernel: Sequence[int], dilation: Sequence[int]) -> list[int]:
    if padding == "valid":
        return [0] * len(kernel)
    return [d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True)]  # "same": left side


@_rule(
    _aten(
        "batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm", "_native_batch_norm_legit"
    )
)
def _batch_norm(site: _Site) -> Any:
    """Eval-mode BatchNorm is the per-channel affine map x -> gamma (x - mean) / sqrt(var + eps) + beta."""
    if site.args.get("training", False) or site.args.get("running_var") is None:
        raise UnsupportedOperationError(
            f"cannot bound BatchNorm in training mode (node {site.node.name!r}{_where(site.node)}): it mixes "
            "the samples of a batch; call model.eval() before bounding"
        )
    variance = site.value("running_var").detach().to(torch.float64)
    gamma = site.value("weight")
    scale = (variance + float(site.value("eps"))).rsqrt()
    if gamma is not None:
        scale = scale * gamma.detach().to(torch.float64).abs()
    factor = _with_margin(float(scale.max()))
    bound = site.scale("input", "batch_norm", factor, "exact: max |gamma| / sqrt(running_var + eps)")
    return _like_value(site.node, bound)


def _centred_scaling_norm(gamma: Tensor) -> Tensor:
    """||diag(g) P_k||_2 for each row g of gamma (G, k), P_k = I - 1 1^T / k the centring of k entries."""
    k = gamma.shape[-1]
    matrix = torch.diag_embed(gamma) - gamma.unsqueeze(-1) / k  # diag(g) - g 1^T / k
    return torch.linalg.matrix_norm(matrix, ord=2)


def _normalization_bound(site: _Site, kind: str, gamma: Tensor, entries: int) -> float:
    """LayerNorm and GroupNorm (any mode: they do not mix samples): y = g * (x - mean) / sqrt(var + eps) + b
    over groups of d entries, var the biased variance.

    With P = I - 1 1^T / d, z = P x and s = sqrt(||z||^2 / d + eps), the normalisation is z / s and its
    Jacobian is (1/s) A P with A = I - z z^T / (d s^2). A P is symmetric with eigenvalues in [0, 1]
    (1 - ||z||^2 / (d s^2) = eps / s^2 along z, 1 across it, 0 along 1) below those of P, so
    (A P)^2 <= P and ||diag(g) A P|| <= ||diag(g) P||, while 1/s <= 1/sqrt(eps). Hence
    L <= max over groups ||diag(g) P|| / sqrt(eps), and this is the exact constant: at an input that is
    constant over a group (z = 0) the Jacobian is diag(g) P / sqrt(eps). It is large (316 max |g| for
    eps = 1e-5) because the normalisation divides by at least sqrt(eps) wherever the group is flat.

    gamma: (G, k) the scale of each entry of a group, where each of the k values covers d / k entries.
    When d / k >= 2, ||diag(g) P_d|| = max |g| (a vector with zero sum inside one value's entries is
    scaled by that value, and the rest reduces to diag(g^2) - g g^T / k <= diag(g^2)); else it is
    computed exactly (an SVD of k x k, for k <= EXACT_SVD_MAX_SIDE) or bounded by max |g|.
    """
    eps = float(site.value("eps"))
    if not eps > 0:
        raise UnsupportedOperationError(
            f"cannot bound {site.name!r} (node {site.node.name!r}{_where(site.node)}) with eps = {eps:g}: "
            "it divides by the standard deviation, which is 0 on constant inputs, so it is not Lipschitz"
        )
    gamma = gamma.detach().to(torch.float64)
    k = gamma.shape[-1]
    if entries // k >= 2:
        scale, how = float(gamma.abs().max()), "exact: max |weight|"
    elif k <= EXACT_SVD_MAX_SIDE:
        scale, how = float(_centred_scaling_norm(gamma).max()), "exact: ||diag(weight) (I - 11^T/d)||"
    else:
        scale, how = float(gamma.abs().max()), f"max |weight| (at most {k}/{k - 1} times the exact constant)"
    factor = _with_margin(scale / math.sqrt(eps))
    bound = site.scale("input", kind, factor, f"{how} / sqrt(eps), eps = {eps:g}, reached on flat groups")
    return bound


@_rule(_aten("layer_norm", "native_layer_norm"))
def _layer_norm(site: _Site) -> Any:
    shape = [int(d) for d in site.value("normalized_shape")]
    entries = math.prod(shape)
    weight = site.value("weight")
    gamma = torch.ones(entries, dtype=torch.float64) if weight is None else weight.reshape(-1)
    bound = _normalization_bound(site, "layer_norm", gamma.reshape(1, entries), entries)
    if isinstance(site.node.meta["val"], list | tuple):
        return (bound, math.inf, math.inf)  # native_layer_norm also returns the mean and 1 / std
    return bound


@_rule(_aten("group_norm", "native_group_norm"))
def _group_norm(site: _Site) -> Any:
    shape = site.shape("input")
    groups = int(site.value("num_groups" if "num_groups" in site.args else "group"))
    channels = shape[1]
    entries = math.prod(shape[1:]) // groups
    weight = site.value("weight")
    gamma = torch.ones(channels, dtype=torch.float64) if weight is None else weight.reshape(-1)
    bound = _normalization_bound(site, "group_norm", gamma.reshape(groups, channels // groups), entries)
    if isinstance(site.node.meta["val"], list | tuple):
        return (bound, math.inf, math.inf)
    return bound


# Elementwise functions: name -> (Lipschitz constant from the node's arguments, why).
def _constant_rule(constant: float, why: str) -> Callable[[_Site], tuple[float, str]]:
    return lambda site: (constant, why)


def _leaky_relu(site: _Site) -> tuple[float, str]:
    slope = abs(float(site.value("negative_slope")))
    return max(1.0, slope), "max(1, |negative_slope|)"


def _elu(site: _Site) -> tuple[float, str]:
    alpha = float(site.value("alpha"))
    scale = float(site.value("scale"))
    input_scale = float(site.value("input_scale"))
    if input_scale < 0:
        raise UnsupportedOperationError(f"cannot bound {site.name!r} with input_scale < 0: not Lipschitz")
    return abs(scale) * max(1.0, abs(alpha * input_scale)), "|scale| max(1, |alpha input_scale|)"


def _prelu(site: _Site) -> tuple[float, str]:
    weight = site.value("weight").detach().to(torch.float64)
    return max(1.0, float(weight.abs().max())), "max(1, max |weight|)"


def _softmax(site: _Site) -> tuple[float, str]:
    # J = diag(p) - p p^T is symmetric PSD and v^T J v = Var_p(v) <= (max v - min v)^2 / 4 <= 1/2 for unit v.
    return 0.5, "1/2: the Jacobian diag(p) - p p^T has v^T J v = Var_p(v) <= 1/2"


def _log_softmax(site: _Site) -> tuple[float, str]:
    n = site.shape(_first_tensor(site))[int(site.value("dim"))]
    # Jacobian I - 1 p^T: norm <= 1 + ||1|| ||p|| <= 1 + sqrt(n).
    return 1 + math.sqrt(n), f"1 + sqrt({n}) (Jacobian I - 1 p^T)"


_ACTIVATIONS: dict[str, Callable[[_Site], tuple[float, str]]] = {
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
    "silu": _constant_rule(1.1, "1.1 >= max silu' = 1.0998"),
    "gelu": _constant_rule(1.13, "1.13 >= max gelu' = 1.1290 (exact and tanh forms)"),
    "mish": _constant_rule(1.09, "1.09 >= max mish' = 1.0885"),
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


@_rule([getattr(torch.ops.aten, name) for name in _ACTIVATIONS if hasattr(torch.ops.aten, name)])
def _activation(site: _Site) -> float:
    """An elementwise L-Lipschitz function (or a row-wise one, softmax) scales every difference by L."""
    short = str(site.node.target.overloadpacket).split(".")[-1]
    argument = _first_tensor(site)
    for other in site.args:
        if other != argument:
            site.value(other)  # raises when a parameter of the function depends on the input
    constant, why = _ACTIVATIONS[short](site)
    kind = short.lstrip("_")
    if constant == 1.0 and kind in ("relu", "hardtanh", "clamp", "clip", "clamp_min", "clamp_max", "abs"):
        return site.lip(argument)
    return site.scale(argument, kind, constant, why)


@_rule(_aten("mean", "sum"))
def _reduction(site: _Site) -> float:
    """A sum over groups of n entries: each output is w 1^T x_group, so the norm is |w| sqrt(n)."""
    argument = _first_tensor(site)
    shape = site.shape(argument)
    dims = site.args.get("dim")
    dims = list(range(len(shape))) if not dims else [int(d) % len(shape) for d in dims]
    n = math.prod(shape[d] for d in dims) if shape else 1
    is_mean = "mean" in str(site.node.target)
    factor = 1 / math.sqrt(n) if is_mean else math.sqrt(n)
    method = f"{'1/sqrt' if is_mean else 'sqrt'}({n}): {'average' if is_mean else 'sum'} of {n} entries"
    return site.scale(argument, "mean" if is_mean else "sum", factor, method)


def _broadcast_copies(site: _Site, argument: str) -> float:
    """sqrt(number of copies) of each entry when an argument is broadcast to the output shape."""
    item = site.args.get(argument)
    if not isinstance(item, Node) or item not in site.walker.bounds:
        return 0.0
    return math.sqrt(math.prod(site.out_shape()) / math.prod(site.shape(argument)))


@_rule(_aten("add", "sub", "rsub"))
def _add(site: _Site) -> float:
    """L(a + alpha b) <= L(a) + |alpha| L(b); broadcasting copies an entry k times: sqrt(k)."""
    alpha = abs(float(site.value("alpha"))) if "alpha" in site.args else 1.0
    first, second = list(site.args)[:2]
    if "rsub" in str(site.node.target):  # other - alpha self
        first, second = second, first
    return _broadcast_copies(site, first) * site.lip(first) + alpha * _broadcast_copies(
        site, second
    ) * site.lip(second)


@_rule(_aten("maximum", "minimum", "fmax", "fmin"))
def _maximum(site: _Site) -> float:
    """|max(a, b) - max(a', b')| <= max(|a - a'|, |b - b'|), so L <= sqrt(L_a^2 + L_b^2)."""
    first, second = list(site.args)[:2]
    return math.hypot(
        _broadcast_copies(site, first) * site.lip(first), _broadcast_copies(site, second) * site.lip(second)
    )


@_rule(_aten("mul", "div"))
def _scaling(site: _Site) -> float:
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
            f"cannot bound {site.name!r} (node {site.node.name!r}{_where(site.node)}): a rounded division "
            "is not a Lipschitz function of the input"
        )
    value = site.value(constant)
    if isinstance(value, Tensor) and value.numel() > 1:
        factor = _monomial_norm(site, variable)
        method = "exact: max over entries of the (broadcast) constant factor"
    else:
        scalar = float(value)
        factor = 1 / abs(scalar) if divide else abs(scalar)
        factor = math.inf if math.isnan(factor) else factor
        method = f"|{'1/' if divide else ''}{scalar:g}|"
    if factor == 1.0:
        return site.lip(variable)
    return site.scale(variable, "scale", factor, method)


@_rule(_aten("cat", "concat", "concatenate", "stack", "hstack", "vstack"))
def _concatenation(site: _Site) -> float:
    """[f(x), g(x)] has ||difference||^2 = ||f difference||^2 + ||g difference||^2: sqrt(sum L^2)."""
    return site.lip("tensors")


@_rule(_aten("split", "split_with_sizes", "chunk", "unbind", "tensor_split", "unsafe_split"))
def _split(site: _Site) -> tuple[float, ...]:
    """Each piece is a restriction of the input: its bound is at most the input's."""
    return _like_value(site.node, site.lip(_first_tensor(site)))


@_rule(operator.getitem)
def _getitem(site: _Site) -> float:
    source, index = site.node.args
    bound = site.walker.bounds[source]
    return bound[index] if isinstance(bound, tuple) else bound


def _pool_axes(site: _Site, d: int) -> tuple[list[int], ...]:
    """kernel, stride, padding, dilation, input sizes and output sizes of a pooling, per spatial axis."""
    kernel = _expand(site.value("kernel_size"), d)
    stride = _expand(site.value("stride") or kernel, d)
    padding = _expand(site.value("padding"), d)
    dilation = _expand(site.value("dilation"), d) if "dilation" in site.args else [1] * d
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


@_rule(
    _aten(
        "max_pool1d",
        "max_pool2d",
        "max_pool3d",
        "max_pool1d_with_indices",
        "max_pool2d_with_indices",
        "max_pool3d_with_indices",
    )
)
def _max_pool(site: _Site) -> Any:
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


@_rule(_aten("adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d"))
def _adaptive_max_pool(site: _Site) -> Any:
    d = len(_expand(site.value("output_size"), 1)) if site.args.get("output_size") is not None else 1
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


def _separable_pool_norm(site: _Site, d: int, one_axis: Callable[[int, int], Tensor]) -> float:
    """Pooling that acts as A_1 (x) ... (x) A_d on each channel has norm prod ||A_i||_2 (exact).

    `one_axis(axis, n)` returns the (n_out x n) matrix of the pooling along one axis.
    """
    factor = 1.0
    for axis, n in enumerate(site.shape("self")[-d:]):
        factor *= float(torch.linalg.matrix_norm(one_axis(axis, n).to(torch.float64), ord=2))
    return _with_margin(factor)


@_rule(_aten("avg_pool1d", "avg_pool2d", "avg_pool3d"))
def _avg_pool(site: _Site) -> float:
    """Average pooling is separable: the window and its divisor factor per axis (including the
    count_include_pad and ceil_mode rules), so each axis matrix is the 1-D pooling of the identity."""
    d = int(str(site.node.target.overloadpacket).split("avg_pool")[1][0])
    kernel, stride, padding, _, _, _ = _pool_axes(site, d)
    ceil_mode = bool(site.value("ceil_mode"))
    include_pad = bool(site.value("count_include_pad"))
    override = site.args.get("divisor_override")
    divisor = None if override is None else float(_constant(site, override))

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


@_rule(
    _aten(
        "adaptive_avg_pool1d",
        "adaptive_avg_pool2d",
        "adaptive_avg_pool3d",
        "_adaptive_avg_pool2d",
        "_adaptive_avg_pool3d",
    )
)
def _adaptive_avg_pool(site: _Site) -> float:
    """Adaptive average pooling is separable too: per axis, the 1-D adaptive pooling of the identity."""
    out_sizes = _expand(site.value("output_size"), 1)
    d = len(out_sizes)
    sizes = site.out_shape()[-d:]

    def one_axis(axis: int, n: int) -> Tensor:
        identity = torch.eye(n, dtype=torch.float64).reshape(n, 1, n)
        return torch.nn.functional.adaptive_avg_pool1d(identity, sizes[axis]).reshape(n, -1).T

    factor = _separable_pool_norm(site, d, one_axis)
    method = "exact: product of the per-axis pooling norms"
    return site.scale("self", f"adaptive_avg_pool{d}d", factor, method)
