"""The certified bound of a model: its exported graph walked by the rules (graph.py), then composed
by the loop transformation (loop_transformation.py) or by the product of the factors.

This module sits above both: the walk does not know the method that consumes it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from lipcheck.bounds.graph import GraphBound, export_program, functional
from lipcheck.bounds.loop_transformation import loop_transformation_bound
from lipcheck.errors import InputError
from lipcheck.options.limits import check_sample_shape
from lipcheck.report import BoundReport


def upper_bound(
    model: nn.Module | torch.export.ExportedProgram,
    input_shape: int | Sequence[int],
    *,
    assume: Mapping[str, float] | None = None,
    method: str = "liplt",
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
        method: "liplt" (default), the loop-transformation composition (`loop_transformation.py`), never
            above "product", the product of the factors along every path; the report keeps both totals.

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
    if method not in ("liplt", "product"):
        raise InputError(f"bound method {method!r} is not one of 'liplt', 'product'")
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
    product, terms = bound, ()
    if method == "liplt" and walker.output_nodes:
        try:
            composed = loop_transformation_bound(walker, walker.output_nodes)
        except (ArithmeticError, AttributeError, IndexError, KeyError, RuntimeError, TypeError, ValueError):
            # a graph the loop transformation does not handle keeps the product's certified bound, and the
            # report says that the product made it
            method = "product"
        else:
            bound, terms = min(product, composed.bound), composed.terms
    return BoundReport(
        upper_bound=bound,
        layers=tuple(walker.layers),
        assumptions=dict(walker.used_assumptions),
        input_shape=shape,
        method=method,
        product_bound=product,
        terms=terms,
    )


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
