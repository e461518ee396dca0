"""The loop-transformation bound over an exported graph (LipLT, Fazlyab et al. 2023; the averaged
activation of Combettes and Pesquet 2020), tighter than the product of the layers' norms.

Secant form. For two inputs x, y, every elementwise activation with slopes in [a, b] maps a difference
dz of its input to D dz with D diagonal, entries in [a, b] (a secant slope lies between the extreme
slopes). Write D = c I + r Delta, c = (a + b) / 2, r = (b - a) / 2, ||Delta|| <= 1. Every other
nonlinear operation ("opaque": max pooling, maximum, softmax, LayerNorm, an assumed constant, ...) with
constant L maps the difference of its inputs to one of norm at most L: write it 0 I + L Delta.

The c-network is the model with every activation replaced by c I and every opaque operation by 0: a
linear map (every other operation of the graph is affine, and its bias cancels in differences). The
deviations e_j = r_j Delta_j dz_j of the sites (activations and opaque operations) enter it as additive
injections, so for every value v of the graph, exactly,

    dv = P_in->v dx + sum over sites j upstream of v of P_j->v e_j,

with P_s->v the c-network's linear map from s to v. Hence, with L_in(j) the bound of site j's input,

    L_v <= ||P_in->v|| + sum_j r_j ||P_j->v|| L_in(j),

a recursion over the sites in graph order: O(m^2) norms for m sites, each of a merged linear block
(conv after conv, residual connections and linear combinations such as 2 f(x) - x folded in). This is
LipLT's recursion, extended from chains to graphs with branches. Each norm is an upper bound: an exact
SVD of the block's matrix, read from the c-network by batched forward or reverse products, when its
smaller side is small enough; else, for a block of more than one operation and within a budget, the
upper bound of a Lanczos run on the block (matrix-free, from a seeded random start), which holds with
probability at least 1 - 1e-9 over the start (docs/bounds.md); always at most the product of its
operations' certified factors (the rules of `lipcheck.bounds.rules`, with |c| for an activation).
Since |c| + r = max(|a|, |b|), the activation's factor in the product bound, the recursion with only
product norms gives back the product bound: the gain comes from the merged norms. The result is
min(loop transformation, product).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.fx import Node
from torch.utils import _pytree as pytree

from lipcheck.bounds.graph import (
    LINEAR_OPERATIONS,
    RULES,
    GraphBound,
    Site,
    bind_arguments,
    module_path,
    nodes_in,
)
from lipcheck.bounds.norms import matrix_spectral_norm, with_margin
from lipcheck.bounds.rules.slopes import GELU_SLOPE, GELU_TANH_SLOPE, MISH_SLOPE, SILU_SLOPE
from lipcheck.engine import spectral_norm
from lipcheck.errors import LipcheckError
from lipcheck.report import BoundTerm

# A block's matrix is read (and its SVD taken) when its smaller side is at most this many entries and it
# holds at most DENSE_MAX_ENTRIES numbers; larger blocks get the product of their factors.
DENSE_MAX_SIDE = 1024
DENSE_MAX_ENTRIES = 1 << 24
# ... and when reading it costs at most this many multiply-adds (its smaller side times one pass of the
# block, estimated from the weights' fan-in): a deep convolutional block read from a 32x32 input would
# take minutes for a fraction of a percent.
DENSE_MAX_WORK = 1 << 30
# ... and while all blocks read so far (with their SVDs) cost at most this many in total: a graph with many
# sites has O(m^2) blocks, each perhaps just under the limit above.
DENSE_TOTAL_WORK = 1 << 34
# Products computed per batched call of the c-network while reading a matrix (bounds memory).
PRODUCT_CHUNK = 64
# A block that is not read, and is more than one operation (whose own certified norm, exact or by the DFT
# of its circular embedding, the product already is), gets the engine's Lanczos run on B^T B from a seeded
# random start, in float64, and its upper bound sigma_upper (docs/engine.md, "Error bars"): it holds unless
# the start vector's component along the block's top singular direction is tiny, which has probability at
# most LANCZOS_FAILURE over the draw. 2^-30 (below 1e-9) keeps the union over a thousand blocks below
# 1e-6; the threshold on that component enters the bound through a root of degree the number of
# products, so each factor of 10 costs a few products (on DnCNN's blocks, docs/bounds.md: 58 and 69
# products at 1e-2, 98 and 136 at 2^-30, 137 and 174 at 1e-15).
LANCZOS_FAILURE = 2.0**-30
LANCZOS_FAILURE_TEXT = "1e-9"  # how the description states it: LANCZOS_FAILURE is below this
LANCZOS_METHOD = "Lanczos upper bound"  # how a block's description begins
# The run stops when the Ritz value is within LANCZOS_TOL and the bound (at a 10 times smaller failure
# probability) within 10 LANCZOS_TOL of it; or after LANCZOS_MAX_ITER products, its bound still valid.
LANCZOS_TOL = 1e-4
LANCZOS_MAX_ITER = 300
# A larger basis than the engine's default: the top of a deep convolutional block's spectrum is crowded,
# and a restart to two Ritz vectors loses much of what 12 products found.
LANCZOS_KRYLOV_DIM = 40
# The budget, in multiply-adds counted as for DENSE_TOTAL_WORK: a product with B^T B costs about
# LANCZOS_PASSES passes of the block (the block evaluates each operation at the tangent and at zero, and
# its reverse and double-reverse passes follow); a run that cannot afford LANCZOS_MIN_ITER products is
# not started, and the block gets the product of its factors.
LANCZOS_PASSES = 4
LANCZOS_MIN_ITER = 20
LANCZOS_TOTAL_WORK = 1 << 37
# The least slope of Mish, x tanh(softplus x): -0.1125261224 at x = -2.25638 (a float64 grid of step 1e-5
# on [-10, 10], as for its largest slope; beyond it the slope is within e^-10 of 0 or 1), rounded down.
MISH_LEAST_SLOPE = -0.112526123


def _slopes_of(
    site_args: dict[str, Any], constants: Callable[[Any], Any], name: str
) -> tuple[float, float] | None:
    """[a, b], the range of the secant slopes of an elementwise activation, or None when it has none."""
    if name in (
        "relu",
        "hardtanh",
        "clamp",
        "clip",
        "clamp_min",
        "clamp_max",
        "softplus",
        "celu",
        "softshrink",
    ):
        return 0.0, 1.0
    if name in ("tanh", "atan", "log_sigmoid"):
        return 0.0, 1.0
    if name in ("abs", "sin", "cos"):
        return -1.0, 1.0
    if name == "sigmoid":
        return 0.0, 0.25
    if name == "hardsigmoid":
        return 0.0, 1 / 6
    if name == "hardswish":
        return -0.5, 1.5  # slope (2x + 3)/6 on [-3, 3], 0 below, 1 above
    if name == "erf":
        return 0.0, 2 / math.sqrt(math.pi)
    if name in ("silu", "gelu"):
        # f = x s(x) with s(x) + s(-x) = 1 and s' even, so f'(-x) = 1 - f'(x): the least slope is 1 - the
        # largest (rounded up, so 1 - it is rounded down)
        largest = SILU_SLOPE
        if name == "gelu":
            largest = (
                GELU_TANH_SLOPE
                if constants(site_args.get("approximate")) == "tanh"
                else GELU_SLOPE * (1 + 1e-9)
            )
        return 1 - largest, largest
    if name == "mish":
        return MISH_LEAST_SLOPE, MISH_SLOPE
    if name == "leaky_relu":
        slope = float(constants(site_args["negative_slope"]))
        return min(1.0, slope), max(1.0, slope)
    if name in ("prelu", "_prelu_kernel"):
        weight = constants(site_args["weight"]).detach().to(torch.float64)
        return min(1.0, float(weight.min())), max(1.0, float(weight.max()))
    if name in ("elu", "selu"):
        if name == "selu":
            scale, alpha, input_scale = 1.0507009873554805, 1.6732632423543772, 1.0
        else:
            scale = float(constants(site_args["scale"]))
            alpha = float(constants(site_args["alpha"]))
            input_scale = float(constants(site_args["input_scale"]))
        # slopes: scale above 0, scale alpha input_scale e^(input_scale x) below (between 0 and its value
        # at 0)
        below = scale * alpha * input_scale
        return min(0.0, scale, below), max(0.0, scale, below)
    return None


BATCH_NORMS = frozenset(
    ["batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm", "_native_batch_norm_legit"]
)


def short_name(node: Node) -> str:
    if node.target is operator.getitem:
        return "getitem"
    packet = getattr(node.target, "overloadpacket", None)
    return str(packet if packet is not None else getattr(node.target, "__name__", node.target)).split(".")[-1]


@dataclass(frozen=True)
class NonlinearSite:
    """An activation (c, r from its slopes) or an opaque operation (c = 0; its rule bounds the deviation).

    `node` is where the deviation enters the c-network; `operation` is the graph node whose rule bounds it
    (the tuple-valued operation of which `node` is a piece, or `node` itself)."""

    node: Node
    operation: Node
    inputs: tuple[Node, ...]
    centre: float
    radius: float  # r for an activation; 0 for an opaque operation (its rule gives the deviation's bound)
    kind: str


@dataclass(frozen=True)
class LoopTransformationBound:
    """The bound, its terms, and the probability that it fails: 0 when every block norm it used is
    deterministic, else at most the sum of LANCZOS_FAILURE over its Lanczos-bounded blocks."""

    bound: float
    terms: tuple[BoundTerm, ...]
    failure_probability: float = 0.0


def loop_transformation_bound(walker: GraphBound, outputs: list[Node]) -> LoopTransformationBound:
    """The loop-transformation bound of the walked graph's `outputs` (taken together), using the product
    walk's factors for blocks too large to read."""
    return _LoopTransformation(walker, outputs).run()


class _LoopTransformation:
    def __init__(self, walker: GraphBound, outputs: list[Node]) -> None:
        self.walker = walker
        self.outputs = tuple(outputs)
        self.order = {node: i for i, node in enumerate(walker.program.graph.nodes)}
        self.variable = [node for node in walker.program.graph.nodes if node in walker.bounds]
        self.input = self.variable[0]
        self.sites: dict[Node, NonlinearSite] = {}
        self.opaque_tuples: set[Node] = set()
        self.constants64: dict[Node, Any] = {}
        self._classify()
        self.gains: dict[Node, dict[Node, Any]] = {}
        self.norms: dict[tuple[Node, tuple[Node, ...]], tuple[float, str]] = {}
        self.injections: dict[Node, float] = {}
        self.work_spent = 0  # multiply-adds of the blocks read so far
        self.lanczos_spent = 0  # multiply-adds (as counted for LANCZOS_TOTAL_WORK) of the Lanczos runs
        self.value_bounds: dict[Node, float] = {}

    def _classify(self) -> None:
        """Activations with their slopes, opaque operations, and (the rest) linear operations."""
        walker = self.walker
        for node in self.variable[1:]:
            inputs = tuple(item for item in nodes_in((node.args, node.kwargs)) if item in walker.bounds)
            name = short_name(node)
            if node.target is operator.getitem:
                source = inputs[0]
                if source in self.opaque_tuples and math.isfinite(_scalar(walker.bounds[node])):
                    operands = tuple(i for i in nodes_in((source.args, source.kwargs)) if i in walker.bounds)
                    self.sites[node] = NonlinearSite(node, source, operands, 0.0, 0.0, short_name(source))
                continue
            assumed = node in walker.assumed_nodes
            if not assumed and name in LINEAR_OPERATIONS:
                continue
            slopes = None if assumed else _slopes_of(bind_arguments(node), self._constant, name)
            if slopes is not None:
                low, high = slopes
                self.sites[node] = NonlinearSite(node, node, inputs, (low + high) / 2, (high - low) / 2, name)
            elif isinstance(walker.bounds[node], tuple):
                self.opaque_tuples.add(node)  # its pieces (getitem) are the sites
            else:
                self.sites[node] = NonlinearSite(node, node, inputs, 0.0, 0.0, "assumed" if assumed else name)

    def _constant(self, item: Any) -> Any:
        return self.walker.constants[item] if isinstance(item, Node) else item

    def run(self) -> LoopTransformationBound:
        bound = 0.0
        terms = []
        for source in (self.input, *self.sites):
            norm, method = self._norm(source, self.outputs)
            if norm == 0.0:
                continue
            if source is self.input:
                contribution, name, kind = norm, "input", "all activations at their centre slope"
            else:
                site = self.sites[source]
                contribution = norm * self._injection(site)
                name, kind = module_path(source) or source.name, f"{site.kind} deviation"
            bound += contribution
            terms.append(BoundTerm(name, source.name, kind, norm, contribution, method))
        # every block norm the recursion used is in self.norms, those of the value bounds included
        probabilistic = sum(1 for _, method in self.norms.values() if method.startswith(LANCZOS_METHOD))
        return LoopTransformationBound(bound, tuple(terms), probabilistic * LANCZOS_FAILURE)

    def _injection(self, site: NonlinearSite) -> float:
        """A bound on ||e_j|| / ||dx||: r L_in for an activation, the rule on the inputs' bounds otherwise."""
        if site.node not in self.injections:
            bounds = {item: self._value_bound(item) for item in site.inputs}
            if site.radius > 0 or site.centre != 0:
                injection = site.radius * math.hypot(*bounds.values())
            elif site.operation in self.walker.assumed_nodes:
                injection = self.walker.assumed_nodes[site.operation] * math.hypot(*bounds.values())
            else:
                value = self._rule_on(site.operation, bounds)
                injection = value[site.node.args[1]] if site.node is not site.operation else value
            self.injections[site.node] = float(injection)
        return self.injections[site.node]

    def _value_bound(self, value: Node) -> float:
        """L_value <= ||P_in->value|| + sum over upstream sites j of ||P_j->value|| ||e_j||."""
        if value not in self.value_bounds:
            total = self._norm(self.input, (value,))[0]
            for node, site in self.sites.items():
                # a site's own deviation enters at its output: a value that is a site counts itself
                if self.order[node] <= self.order[value]:
                    norm = self._norm(node, (value,))[0]
                    if norm > 0:
                        total += norm * self._injection(site)
            self.value_bounds[value] = min(total, _scalar(self.walker.bounds[value]))
        return self.value_bounds[value]

    # norms of the c-network's blocks
    def _norm(self, source: Node, targets: tuple[Node, ...]) -> tuple[float, str]:
        key = (source, targets)
        if key not in self.norms:
            gains = self._product_gains(source)
            product = math.hypot(*(_scalar(gains.get(target, 0.0)) for target in targets))
            found = (product, "product of its factors")
            if product > 0:
                exact = self._dense_norm(source, targets)
                if exact is None and not self._single_operation(source, targets):
                    exact = self._lanczos_norm(source, targets)
                if exact is not None and exact[0] <= product:
                    found = exact
            self.norms[key] = found
        return self.norms[key]

    def _product_gains(self, source: Node) -> dict[Node, Any]:
        """||P_source->v|| for every v, bounded by the product walk's factors along the c-network."""
        if source in self.gains:
            return self.gains[source]
        gains: dict[Node, Any] = {source: 1.0}
        for node in self.variable:
            if self.order[node] <= self.order[source]:
                continue
            inputs = [item for item in nodes_in((node.args, node.kwargs)) if item in gains]
            if not inputs:
                continue
            if node in self.sites:
                site = self.sites[node]
                if site.centre != 0:
                    gains[node] = abs(site.centre) * _scalar(gains[site.inputs[0]])
            elif node in self.opaque_tuples:
                continue
            elif node.target is operator.getitem:
                gain = gains[inputs[0]]
                gains[node] = gain[node.args[1]] if isinstance(gain, tuple) else gain
            else:
                gains[node] = self._linear_gain(node, gains)
        self.gains[source] = gains
        return gains

    def _linear_gain(self, node: Node, gains: dict[Node, Any]) -> Any:
        """A linear node's gain from its inputs' gains, as its product-walk rule composes bounds."""
        bounds = self.walker.bounds
        inputs = [item for item in nodes_in((node.args, node.kwargs)) if item in bounds]
        if len(inputs) == 1 and not isinstance(bounds[inputs[0]], tuple) and bounds[inputs[0]] > 0:
            # one input: the rule is its factor times the input's bound, as the product walk found it
            before, after, gain = float(bounds[inputs[0]]), bounds[node], _scalar(gains[inputs[0]])
            return (
                tuple(b / before * gain for b in after) if isinstance(after, tuple) else after / before * gain
            )
        return self._rule_on(node, {item: gains.get(item, 0.0) for item in inputs})

    def _rule_on(self, node: Node, bounds: dict[Node, Any]) -> Any:
        """The node's rule with its inputs' bounds replaced (the others 0); records no factor."""
        walker = self.walker
        saved_bounds, saved_layers = walker.bounds, list(walker.layers)
        walker.bounds = {item: bounds.get(item, 0.0) for item in saved_bounds}
        try:
            rule = RULES.get(node.target) or RULES.get(getattr(node.target, "overloadpacket", None))
            assert rule is not None, node  # the product walk bounded it with this rule
            return rule(Site(walker, node))
        finally:
            walker.bounds = saved_bounds
            walker.layers[:] = saved_layers

    def _dense_norm(self, source: Node, targets: tuple[Node, ...]) -> tuple[float, str] | None:
        """The exact norm of the block's matrix, read by batched products, when it is small enough."""
        n_in = _numel(source)
        n_out = sum(_numel(t) for t in targets)
        if min(n_in, n_out) > DENSE_MAX_SIDE or n_in * n_out > DENSE_MAX_ENTRIES:
            return None
        work = min(n_in, n_out) * self._pass_work(source, targets)
        work_with_svd = work + min(n_in, n_out) ** 2 * max(n_in, n_out)
        if work > DENSE_MAX_WORK or self.work_spent + work_with_svd > DENSE_TOTAL_WORK:
            return None
        self.work_spent += work_with_svd
        shape = _shape(source)
        block = self._block(source, targets)
        try:
            if n_in <= n_out:
                basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *shape)
                rows = [
                    torch.func.vmap(block)(basis[i : i + PRODUCT_CHUNK])
                    for i in range(0, n_in, PRODUCT_CHUNK)
                ]
            else:
                _, pull = torch.func.vjp(block, torch.zeros(shape, dtype=torch.float64))
                basis = torch.eye(n_out, dtype=torch.float64)
                rows = [
                    torch.func.vmap(pull)(basis[i : i + PRODUCT_CHUNK])[0].reshape(-1, n_in)
                    for i in range(0, n_out, PRODUCT_CHUNK)
                ]
        except (RuntimeError, NotImplementedError, TypeError, ValueError, IndexError):
            return None  # an operation vmap cannot batch: the product of the factors stands
        norm, how = matrix_spectral_norm(torch.cat(rows))
        return norm, f"{how} of the merged block ({n_out} x {n_in})"

    def _lanczos_norm(self, source: Node, targets: tuple[Node, ...]) -> tuple[float, str] | None:
        """An upper bound on the block's norm without reading it: the engine's Lanczos run on the block
        (a linear map, so its Jacobian anywhere), with its sigma_upper at failure probability
        LANCZOS_FAILURE; None past the budget or where the run fails."""
        n_in = _numel(source)
        n_out = sum(_numel(t) for t in targets)
        per_product = LANCZOS_PASSES * max(1, self._pass_work(source, targets))
        # one product more: the engine's adjoint test
        max_iter = min(LANCZOS_MAX_ITER, (LANCZOS_TOTAL_WORK - self.lanczos_spent) // per_product - 1)
        if max_iter < LANCZOS_MIN_ITER:
            return None
        shape = _shape(source)
        block = self._block(source, targets)
        try:
            result = spectral_norm(
                lambda x: block(x.reshape(shape)).unsqueeze(0),
                torch.zeros(1, n_in, dtype=torch.float64),
                max_iter=int(max_iter), tol=LANCZOS_TOL, confidence=1 - LANCZOS_FAILURE,
                krylov_dim=LANCZOS_KRYLOV_DIM, check_coupling=False,
            )  # fmt: skip
        except (RuntimeError, NotImplementedError, TypeError, ValueError, IndexError, LipcheckError):
            return None  # an operation the engine cannot differentiate twice: the product stands
        products = int(result.iterations[0])
        self.lanczos_spent += (products + 1) * per_product  # and the adjoint test's product
        upper = float(result.sigma_upper[0])
        if not math.isfinite(upper):
            return None
        return with_margin(upper), (
            f"{LANCZOS_METHOD} at probability 1 - {LANCZOS_FAILURE_TEXT} over its seeded start "
            f"({products} products, estimate {float(result.sigma[0]):.6g}) of the merged block "
            f"({n_out} x {n_in})"
        )

    def _single_operation(self, source: Node, targets: tuple[Node, ...]) -> bool:
        """Whether the block is one operation between scalings by centre slopes, without a join: its
        factor, the operation's own certified norm (exact, or by the DFT of a convolution's circular
        embedding), is the block's product bound and is kept."""
        last = max(self.order[t] for t in targets)
        reached, operations = {source}, 0
        for node in self.variable:
            if not self.order[source] < self.order[node] <= last:
                continue
            inputs = [item for item in nodes_in((node.args, node.kwargs)) if item in reached]
            if not inputs:
                continue
            if len(inputs) > 1:
                return False
            reached.add(node)
            if node not in self.sites and node.target is not operator.getitem:
                operations += 1
        return operations <= 1

    def _pass_work(self, source: Node, targets: tuple[Node, ...]) -> int:
        """Multiply-adds of one pass of the block: each value's entries times its weight's fan-in."""
        last = max(self.order[t] for t in targets)
        work = 0
        for node in self.variable:
            if self.order[source] < self.order[node] <= last and isinstance(node.meta.get("val"), Tensor):
                weight = bind_arguments(node).get("weight") if node.target is not operator.getitem else None
                value = self.walker.constants.get(weight) if isinstance(weight, Node) else None
                fan_in = value[0].numel() if isinstance(value, Tensor) and value.dim() >= 2 else 1
                work += _numel(node) * fan_in
        return work

    def _block(self, source: Node, targets: tuple[Node, ...]) -> Callable[[Tensor], Tensor]:
        """The c-network's linear map from `source` to `targets`, flattened and joined: (*source) -> (n,)."""
        last = max(self.order[t] for t in targets)
        nodes = [n for n in self.variable if self.order[source] < self.order[n] <= last]

        def block(tangent: Tensor) -> Tensor:
            tangents: dict[Node, Any] = {source: tangent}
            for node in nodes:
                inputs = [item for item in nodes_in((node.args, node.kwargs)) if item in tangents]
                if not inputs or node in self.opaque_tuples:
                    continue
                if node in self.sites:
                    site = self.sites[node]
                    if site.centre != 0:
                        tangents[node] = site.centre * tangents[site.inputs[0]]
                elif node.target is operator.getitem:
                    tangents[node] = tangents[inputs[0]][node.args[1]]
                else:
                    tangents[node] = self._linear_part(node, tangents)
            zeros = torch.zeros(0, dtype=torch.float64)
            flat = [tangents[t].reshape(-1) if t in tangents else zeros.new_zeros(_numel(t)) for t in targets]
            return torch.cat(flat)

        return block

    def _linear_part(self, node: Node, tangents: dict[Node, Any]) -> Any:
        """The node's operation on the tangents minus its value at zero tangents (the bias cancels)."""
        if short_name(node) in BATCH_NORMS:
            return self._batch_norm_part(node, tangents)

        def arguments(zero: bool) -> Callable[[Node], Any]:
            def value(item: Node) -> Any:
                if item in self.walker.bounds:
                    if not zero and item in tangents:
                        return tangents[item]
                    return torch.zeros(_shape(item), dtype=torch.float64)
                return self._constant64(item)

            return value

        results = [
            node.target(
                *torch.fx.node.map_arg(node.args, arguments(zero)),
                **torch.fx.node.map_arg(node.kwargs, arguments(zero)),
            )
            for zero in (False, True)
        ]
        return pytree.tree_map(lambda a, b: a - b if isinstance(a, Tensor) else a, results[0], results[1])

    def _batch_norm_part(self, node: Node, tangents: dict[Node, Any]) -> Any:
        """Eval-mode BatchNorm's linear part, x * weight / sqrt(running_var + eps) per channel (vmap has no
        batching rule for the functional batch norm: its fallback loops and warns)."""
        args = bind_arguments(node)
        value = self._constant64
        scale = (value(args["running_var"]) + float(self._constant(args["eps"]))).rsqrt()
        if args.get("weight") is not None:
            scale = scale * value(args["weight"])
        x = tangents[args["input"]]
        out = x * scale.reshape(-1, *[1] * (x.dim() - 2))
        if isinstance(node.meta["val"], list | tuple):
            return (out, *(torch.zeros(0, dtype=torch.float64) for _ in node.meta["val"][1:]))
        return out

    def _constant64(self, item: Node) -> Any:
        if item not in self.constants64:
            value = self.walker.constants[item]
            if isinstance(value, Tensor) and value.is_floating_point():
                value = value.detach().to(torch.float64)
            self.constants64[item] = value
        return self.constants64[item]


def _scalar(gain: Any) -> float:
    return max(gain) if isinstance(gain, tuple) else float(gain)


def _shape(node: Node) -> tuple[int, ...]:
    return tuple(int(d) for d in node.meta["val"].shape)


def _numel(node: Node) -> int:
    return math.prod(_shape(node))
