"""Walk an exported graph and compose the Lipschitz bound of every value from its operations' rules.

`export_program` exports the model, `GraphBound` visits the nodes in order (the input carries 1,
constants 0), and each operation's rule (registered with `rule`, looked up in `RULES`) gets a `Site`:
the operation's arguments by schema name, their bounds and constant values. compose.py's
`upper_bound` runs the walk and hands it to the method that composes the factors."""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.fx import Node

from lipcheck.bounds.norms import with_margin
from lipcheck.errors import AuditFailedError, InputError, UnsupportedOperationError, first_line
from lipcheck.report import LayerBound


def export_program(model: Any, shape: tuple[int, ...]) -> torch.export.ExportedProgram:
    if isinstance(model, torch.export.ExportedProgram):
        # traced again at (1, *shape), as a file's program is: its graph may hold another (or a symbolic)
        # batch size, and every norm is taken at the shapes the graph records
        model = model.module()
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
        fix = "only models torch.export can capture as one graph can be bounded"
        if isinstance(error, TypeError) and "missing" in reason and "argument" in reason:
            fix = (
                "its forward needs arguments besides the input: give them with --arg KEY=VALUE on the "
                "command line, or from Python bound a module whose forward supplies them"
            )
        raise UnsupportedOperationError(
            f"cannot bound {type(model).__name__}: torch.export could not trace it at input shape "
            f"{(1, *shape)} ({reason}); {fix}"
        ) from error


def functional(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """The program without in-place operations, when it has any.

    An exported graph may keep `aten.relu_` and `aten.add_`, whose effect reaches later nodes through
    aliasing rather than through graph edges (`y.view(...).relu_()` changes what a later node reading `y`
    sees), so a rule per node would be unsound there. Functionalisation rewrites them into their
    out-of-place forms with explicit data flow; the empty decomposition table keeps every other operation
    as it was exported.
    """
    if not any(_mutates(node) for node in program.graph.nodes):
        return program
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecations, not the user's
        return program.run_decompositions({})


def _mutates(node: Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return node.op == "call_function" and schema is not None and schema.is_mutable


def operation_name(target: Any) -> str:
    """The name of a graph node's operation, as `assume` and the errors spell it: "aten.relu.default"."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__name__", str(target))


def packet_name(target: Any) -> str | None:
    packet = getattr(target, "overloadpacket", None)
    return None if packet is None else str(packet)


class GraphBound:
    """Propagates Lipschitz bounds through an exported program's graph, node by node."""

    def __init__(self, program: torch.export.ExportedProgram, assumptions: dict[str, float]) -> None:
        self.program = program
        self.assumptions = assumptions
        self.constants: dict[Node, Any] = {}
        self.bounds: dict[Node, Any] = {}  # float, or a tuple of floats for tuple-valued nodes
        self.layers: list[LayerBound] = []
        self.used_assumptions: dict[str, float] = {}
        self.operations: set[str] = set()
        self.output_nodes: list[Node] = []  # the user outputs that depend on the input, once walked
        self.assumed_nodes: dict[Node, float] = {}  # node -> the constant the user assumed for it

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
        from torch.export.graph_signature import OutputKind

        specs = self.program.graph_signature.output_specs
        user_outputs = {spec.arg.name for spec in specs if spec.kind == OutputKind.USER_OUTPUT}
        items = [item for item in nodes_in(node.args[0]) if item in self.bounds and item.name in user_outputs]
        self.output_nodes = items
        return math.hypot(*(finite_bound(self, item) for item in items))

    def _visit(self, node: Node) -> None:
        name = operation_name(node.target)
        self.operations.add(name)
        packet = packet_name(node.target)
        if packet is not None:
            self.operations.add(packet)
        inputs = [item for item in nodes_in((node.args, node.kwargs)) if item in self.bounds]
        if not inputs:
            self.constants[node] = self._evaluate(node)
            return
        site = Site(self, node)
        rule = RULES.get(node.target) or RULES.get(getattr(node.target, "overloadpacket", None))
        assumed = self.assumptions.get(name, self.assumptions.get(packet or name))
        key = name if name in self.assumptions else str(packet)
        if assumed is None and rule is None:
            raise UnsupportedOperationError(
                f"cannot bound operation {name!r} (node {node.name!r}{where(node)}): lipcheck has no "
                f"Lipschitz rule for it; if you know a Lipschitz constant L for it, pass --assume {name}=L "
                f"(from Python: assume={{{name!r}: L}}) and take responsibility for it"
            )
        if rule is not None:
            try:
                bound = rule(site)
            except ArithmeticError as error:  # float arithmetic of a rule: a fact about this node, not a bug
                raise self._overflow(node, f"{type(error).__name__}: {first_line(error)}") from error
            except UnsupportedOperationError:
                if assumed is None:  # the rule refuses this node (attention, a division by 0) ...
                    raise  # ... where an assumption may stand in
            else:
                if assumed is not None:
                    raise self._assumed_over_rule(node, key, assumed)
                self.bounds[node] = self._checked(node, bound)
                return
        assert assumed is not None  # no rule, or one that refused: the assumption stands in
        self.used_assumptions[key] = assumed
        self.assumed_nodes[node] = assumed
        joint = math.hypot(*(finite_bound(self, item) for item in inputs))
        site.record("assumed", assumed, f"assumed by the user ({key})")
        self.bounds[node] = self._checked(node, like_value(node, assumed * joint))

    def _assumed_over_rule(self, node: Node, key: str, assumed: float) -> InputError:
        """The refusal of an assumption (`key`: its name in `assume`) for an operation that lipcheck's rule
        bounds: an assumption only stands in where there is no rule (or the rule refuses the node), never
        replaces one, which could certify a bound below the truth."""
        return InputError(
            f"--assume {key}={assumed:g} names an operation that lipcheck bounds with its own rule (node "
            f"{node.name!r}{where(node)}): an assumption only stands in for an operation without a rule, "
            "never replaces one, which could certify a bound below the truth; drop it"
        )

    def _checked(self, node: Node, bound: Any) -> Any:
        """The bound of a node, refused when finite inputs composed to an infinite (overflowed) bound."""
        # getitem passes on a tuple's entries, whose infinite ones mark outputs that are not Lipschitz
        if isinstance(bound, float | int) and math.isinf(bound) and node.target is not operator.getitem:
            raise self._overflow(node, "the composed bound exceeds the largest float64, about 1.8e308")
        return bound

    def _overflow(self, node: Node, reason: str) -> AuditFailedError:
        largest = sorted(self.layers, key=lambda layer: layer.bound, reverse=True)[:3]
        factors = ", ".join(f"{layer.kind} {layer.name!r} {layer.bound:.3g}" for layer in largest) or "none"
        return AuditFailedError(
            f"the bound overflows at node {node.name!r}{where(node)} ({reason}): no finite bound is "
            f"certified for this model, whose layer factors multiply past float64 (largest: {factors})"
        )

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


def nodes_in(tree: Any) -> list[Node]:
    found: list[Node] = []
    torch.fx.node.map_arg(tree, lambda item: found.append(item) or item)
    return found


def finite_bound(walker: GraphBound, node: Node) -> float:
    bound = walker.bounds[node]
    if isinstance(bound, tuple) or not math.isfinite(bound):
        raise UnsupportedOperationError(
            f"cannot bound node {node.name!r}{where(node)}: it is not a Lipschitz function of the input "
            "(e.g. the indices of a max pooling)"
        )
    return float(bound)


def like_value(node: Node, bound: float) -> Any:
    value = node.meta.get("val")
    if isinstance(value, list | tuple):
        return tuple(bound for _ in value)
    return bound


def module_path(node: Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [entry[0] for entry in stack.values() if entry and entry[0]]
    return paths[-1] if paths else ""


def where(node: Node) -> str:
    path = module_path(node)
    return f", in module {path!r}" if path else ""


class Site:
    """One operation being bounded: its arguments by schema name, their bounds and constant values."""

    def __init__(self, walker: GraphBound, node: Node) -> None:
        self.walker = walker
        self.node = node
        self.name = operation_name(node.target)
        self.args = bind_arguments(node)

    def depends(self, argument: str) -> bool:
        return any(item in self.walker.bounds for item in nodes_in(self.args.get(argument)))

    def lip(self, argument: str) -> float:
        """The bound of an argument (0 for a constant, sqrt of the sum of squares for a list)."""
        items = [item for item in nodes_in(self.args.get(argument)) if item in self.walker.bounds]
        return math.hypot(*(finite_bound(self.walker, item) for item in items))

    def value(self, argument: str) -> Any:
        """The concrete value of an argument that must not depend on the input."""
        if self.depends(argument):
            raise UnsupportedOperationError(
                f"cannot bound operation {self.name!r} (node {self.node.name!r}{where(self.node)}): its "
                f"argument {argument!r} depends on the input, so the operation is not Lipschitz with a "
                f"constant lipcheck can compute; pass --assume {self.name}=L (from Python: "
                f"assume={{{self.name!r}: L}}) if you know one"
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
        path = module_path(self.node)
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


def bind_arguments(node: Node) -> dict[str, Any]:
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


Rule = Callable[[Site], Any]
RULES: dict[Any, Rule] = {}
# The names of the operations whose rules are registered with linear=True: affine in their input-dependent
# arguments (the loop transformation's c-network keeps them; every other operation is a site).
LINEAR_OPERATIONS: set[str] = set()


def aten(*names: str) -> list[Any]:
    found = []
    for name in names:
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None:
            found.append(packet)
    return found


def rule(*targets: Any, linear: bool = False) -> Callable[[Rule], Rule]:
    """Register a rule for the targets (operator packets, or lists of them). `linear`: the operations are
    affine in their input-dependent arguments (a layer, a sum, a copy), which the loop transformation
    merges into its linear blocks instead of treating them as sites."""

    def register(function: Rule) -> Rule:
        for target in targets:
            for item in target if isinstance(target, list) else [target]:
                RULES[item] = function
                if linear:
                    LINEAR_OPERATIONS.add(str(item).split(".")[-1])
        return function

    return register


def first_tensor(site: Site) -> str:
    return next(iter(site.args))


def expand(value: Any, d: int) -> list[int]:
    items = [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]
    return items * d if len(items) == 1 else items


def monomial_norm(site: Site, argument: str) -> float:
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
    return with_margin(math.sqrt(float(diagonal.max().clamp_min(0))))


def broadcast_copies(site: Site, argument: str) -> float:
    """sqrt(number of copies) of each entry when an argument is broadcast to the output shape."""
    item = site.args.get(argument)
    if not isinstance(item, Node) or item not in site.walker.bounds:
        return 0.0
    return math.sqrt(math.prod(site.out_shape()) / math.prod(site.shape(argument)))


def constant_value(site: Site, item: Any) -> Any:
    """The value of a constant argument (a node computed from constants, or a literal)."""
    return site.walker.constants[item] if isinstance(item, Node) else item
