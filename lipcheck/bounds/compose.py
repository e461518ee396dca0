"""The certified bound of a model: its exported graph walked by the rules (graph.py), then composed
by the loop transformation (loop_transformation.py) or by the product of the factors.

This module sits above both: the walk does not know the method that consumes it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from lipcheck.bounds.frequency import circulant_transformation
from lipcheck.bounds.graph import GraphBound, export_program, functional
from lipcheck.bounds.lipsdp import dense_transformation, lipsdp_bound
from lipcheck.bounds.loop_transformation import loop_transformation_bound
from lipcheck.errors import InputError
from lipcheck.options.limits import check_sample_shape
from lipcheck.report import BoundReport


def upper_bound(
    model: nn.Module | torch.export.ExportedProgram,
    input_shape: int | Sequence[int],
    *,
    assume: Mapping[str, float] | None = None,
    method: str = "lipsdp",
) -> BoundReport:
    """A certified upper bound on the global l2 Lipschitz constant of `model` on inputs of one shape.

    Args:
        model: an `nn.Module` (in eval mode when it has BatchNorm or dropout), an `ExportedProgram`,
            or an exported program's `.module()`. It takes one tensor of shape (1, *input_shape).
        input_shape: the shape of one input without the batch dimension, e.g. (3, 224, 224).
        assume: operation name (as named by `UnsupportedOperationError`, e.g. "aten.erf.default" or
            "aten.erf") -> a Lipschitz constant of that operation, jointly in all its tensor inputs,
            that the user takes responsibility for. Only an operation without a rule can be assumed: an
            assumption that names one with a rule is an InputError.
        method: "lipsdp" (default): LipSDP-Neuron multipliers found by a first-order solver and checked
            in float64 (`lipsdp.py`; per neuron on small networks, per channel on stride-1 convolutional
            ones, `frequency.py`), taken when certified and below the loop transformation; otherwise, or
            outside their budget, the loop transformation's bound stands and `method` says "liplt".
            "liplt": the loop-transformation composition (`loop_transformation.py`), never above
            "product", the product of the factors along every path; the report keeps the product's total.
            Its blocks too large to read are bounded by Lanczos runs from seeded random starts, whose
            bounds hold with probability at least 1 - 1e-9 each: the report's `failure_probability`
            (their sum; 0 when none was used) says how probable it is that the bound fails.

    In-place operations (`relu_`, `add_`, ...) are bounded by the rule of their out-of-place form: a graph
    that mutates tensors is functionalised first (`run_decompositions({})`, which decomposes nothing), so
    every later use of a mutated tensor, or of a view of it, reads the value the mutation produced.

    Raises:
        UnsupportedOperationError: the model cannot be exported, or holds an operation without a rule
            and without an assumption; the message names it and the `assume` entry that would help.
        InputError: a bad input shape or assumption.
        AuditFailedError: the bound overflows float64 (the composed factors exceed about 1.8e308).
    """
    shape = _check_shape(input_shape)
    assumptions = _check_assumptions(assume)
    if method not in METHODS:
        raise InputError(f"bound method {method!r} is not one of {', '.join(map(repr, METHODS))}")
    program = functional(export_program(model, shape))
    walker = GraphBound(program, assumptions)
    bound = walker.run()
    unused = sorted(set(assumptions) - walker.operations)
    if unused:
        present = ", ".join(sorted(walker.operations)) or "none"
        raise InputError(
            f"assume names {', '.join(repr(name) for name in unused)}, which the model's graph does not "
            f"contain; its operations are: {present}"
        )
    product, terms, failure = bound, (), 0.0
    wanted, method = method, "product"
    if wanted != "product" and walker.output_nodes:
        try:
            composed = loop_transformation_bound(walker, walker.output_nodes)
        except COMPOSITION_ERRORS:
            # a graph the loop transformation does not handle keeps the product's certified bound, and the
            # report says that the product made it
            pass
        else:
            bound, terms, method = min(product, composed.bound), composed.terms, "liplt"
            # a bound that used Lanczos-bounded blocks holds with a probability over their start vectors
            failure = composed.failure_probability if composed.bound < product else 0.0
    if wanted == "lipsdp" and walker.output_nodes:
        semidefinite = _lipsdp(walker)
        if semidefinite is not None and semidefinite < bound:
            bound, method, failure = semidefinite, "lipsdp", 0.0
    return BoundReport(
        upper_bound=bound,
        layers=tuple(walker.layers),
        assumptions=dict(walker.used_assumptions),
        input_shape=shape,
        method=method,
        product_bound=product,
        terms=terms,
        failure_probability=failure,
    )


METHODS = ("lipsdp", "liplt", "product")
COMPOSITION_ERRORS = (
    ArithmeticError,
    AttributeError,
    IndexError,
    KeyError,
    RuntimeError,
    TypeError,
    ValueError,
)


def _lipsdp(walker: GraphBound) -> float | None:
    """The certified LipSDP bound, per neuron where the network is small enough to read, else per channel
    where it is a stride-1 convolutional network; None where neither applies or nothing was certified."""
    outputs = walker.output_nodes
    try:
        problem = dense_transformation(walker, outputs) or circulant_transformation(walker, outputs)
        found = None if problem is None else lipsdp_bound(problem)
    except COMPOSITION_ERRORS:
        return None  # an operation the reading cannot batch: the loop transformation stands
    return None if found is None else found.bound


def _check_shape(input_shape: int | Sequence[int]) -> tuple[int, ...]:
    dims = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise InputError(
            f"input shape {input_shape!r} is not a non-empty sequence of positive integers "
            "(the shape of one input, without the batch dimension, e.g. (3, 32, 32))"
        )
    check_sample_shape(dims, "the input shape")
    return dims


def _check_assumptions(assume: Mapping[str, float] | None) -> dict[str, float]:
    checked: dict[str, float] = {}
    for name, value in (assume or {}).items():
        constant = float(value)
        if not math.isfinite(constant) or constant < 0:
            raise InputError(f"assume[{name!r}] = {value!r} is not a finite non-negative Lipschitz constant")
        checked[str(name)] = constant
    return checked
