"""Certified upper bounds: the bound of `lipcheck audit --bound` and the report of `lipcheck bound`.

`ModelBoundReport` is a model file's bound with provenance; its JSON Schema ships at
`lipcheck/report/schemas/bound.schema.json`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from lipcheck.report.records import SCHEMA_VERSION, build
from lipcheck.report.sections import Environment, ModelSection


@dataclass(frozen=True)
class LayerBound:
    """One factor of the bound: the Lipschitz constant of one operation of the graph.

    Attributes:
        name: the module path of the operation ("layer1.0.conv1"), or its graph node name at top level.
        node: the graph node name, unique in the graph.
        kind: what the operation is ("linear", "conv2d", "relu", "batch_norm", "assumed", ...).
        bound: an upper bound on the operation's l2 Lipschitz constant with respect to its input.
        method: how the bound was computed ("exact SVD", "DFT of the kernel at 10x10", ...).
    """

    name: str
    node: str
    kind: str
    bound: float
    method: str


@dataclass(frozen=True)
class BoundTerm:
    """One term of the loop-transformation bound: what one source of deviation adds to the total.

    Attributes:
        name: the module path of the activation or operation whose deviation this is, or "input" for the
            term with every activation at its centre slope.
        node: the graph node where the deviation enters.
        kind: "relu deviation", "max_pool2d deviation", ...
        norm: the certified norm of the merged linear block from that node to the output.
        contribution: what the term adds to the bound (the norm times the deviation's own bound).
        method: how the block's norm was computed ("exact SVD of the merged block (256 x 4096)", ...).
    """

    name: str
    node: str
    kind: str
    norm: float
    contribution: float
    method: str


@dataclass(frozen=True)
class BoundReport:
    """A certified upper bound on the l2 Lipschitz constant of a model on inputs of one shape.

    Attributes:
        upper_bound: the bound, composed over the graph (never below the model's Lipschitz constant,
            except through the constants in `assumptions`, which the user vouched for).
        layers: the factors of the operations that scale perturbations, in graph order. The total is
            not their product when the graph has residual connections or concatenations.
        assumptions: operation name -> Lipschitz constant supplied by the user with `assume`, for the
            operations of the graph it was used on.
        input_shape: the shape of one input, without the batch dimension.
        method: how the factors were composed: "lipsdp" (LipSDP-Neuron multipliers certified in float64,
            below the loop transformation), "liplt" (the loop transformation, never above the product)
            or "product" (the product of the factors along every path).
        product_bound: the product composition's bound, for comparison (equal to `upper_bound` when
            `method` is "product").
        terms: with "liplt" (and "lipsdp", whose bound is below their sum), the loop transformation's
            terms, one per source of deviation (which block contributes
            most).
        operator: whose Lipschitz constant is bounded: "model" (f), "fne" (2f - Id) or "residual"
            (Id - f), each exported as one graph.
        failure_probability: 0 when every norm the bound used is deterministic; with "liplt" whose large
            blocks were bounded by Lanczos runs from seeded random start vectors, at most the
            probability, over those vectors, that `upper_bound` is below the constant (the sum of
            each run's, a union bound).
    """

    upper_bound: float
    layers: tuple[LayerBound, ...]
    assumptions: Mapping[str, float] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()
    method: str = "product"
    product_bound: float | None = None
    terms: tuple[BoundTerm, ...] = ()
    operator: str = "model"
    failure_probability: float = 0.0


def bound_details(bound: BoundReport) -> dict[str, Any]:
    """The JSON object under the key `bound`: input shape, factors and assumptions (the total is
    `upper_bound`, next to it)."""
    return {
        "input_shape": list(bound.input_shape),
        "layers": [asdict(layer) for layer in bound.layers],
        "assumptions": dict(bound.assumptions),
        "method": bound.method,
        "product_bound": bound.product_bound,
        "terms": [asdict(term) for term in bound.terms],
        "operator": bound.operator,
        "failure_probability": bound.failure_probability,
    }


def bound_from_dict(data: Mapping[str, Any]) -> BoundReport:
    """The inverse of `bound_details`, from a report holding the keys `upper_bound` and `bound`."""
    details = data["bound"]
    return BoundReport(
        upper_bound=data["upper_bound"],
        layers=tuple(build(LayerBound, layer) for layer in details["layers"]),
        assumptions=dict(details["assumptions"]),
        input_shape=tuple(details["input_shape"]),
        method=details.get("method", "product"),  # reports before the loop transformation: the product
        product_bound=details.get("product_bound", data["upper_bound"] if "method" not in details else None),
        terms=tuple(build(BoundTerm, term) for term in details.get("terms", ())),
        operator=details.get("operator", "model"),  # reports before --operator bounded the model
        failure_probability=details.get("failure_probability", 0.0),  # before Lanczos-bounded blocks
    )


@dataclass(frozen=True)
class BoundTiming:
    """Wall-clock seconds of `lipcheck bound`: loading the model, and bounding it (export included)."""

    started: str
    load_seconds: float
    bound_seconds: float


@dataclass(frozen=True)
class ModelBoundReport:
    """The report of `lipcheck bound`: a model file's certified bound, with provenance.

    Its JSON has the keys `upper_bound` and `bound` of an audit report run with `--bound`, so the same
    `jq .upper_bound` reads both. Schema: `lipcheck/report/schemas/bound.schema.json`.
    """

    model: ModelSection
    environment: Environment
    timing: BoundTiming
    bound: BoundReport
    lipcheck_version: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "lipcheck_version": self.lipcheck_version,
            "model": json.loads(json.dumps(asdict(self.model))),
            "environment": asdict(self.environment),
            "timing": asdict(self.timing),
            "upper_bound": self.bound.upper_bound,
            "bound": bound_details(self.bound),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelBoundReport:
        return cls(
            model=build(ModelSection, data["model"], input_spec=lambda v: tuple(dict(s) for s in v)),
            environment=build(Environment, data["environment"]),
            timing=build(BoundTiming, data["timing"]),
            bound=bound_from_dict(data),
            lipcheck_version=data["lipcheck_version"],
            schema_version=data["schema_version"],
        )

    @classmethod
    def from_json(cls, text: str) -> ModelBoundReport:
        return cls.from_dict(json.loads(text))
