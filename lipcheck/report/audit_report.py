"""The audit report as one frozen dataclass, and its JSON round trip.

`Report.to_dict` and `Report.from_dict` are the one place where it is (de)serialised;
`lipcheck.io.outputs` writes it to files. Its JSON Schema ships at
`lipcheck/report/schemas/report.schema.json`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lipcheck.report.bound import BoundReport, bound_details, bound_from_dict
from lipcheck.report.records import SCHEMA_VERSION, build
from lipcheck.report.samples import SampleResult, sample_dict, sample_json
from lipcheck.report.sections import (
    AdjointBatch,
    DataSection,
    Derivatives,
    Environment,
    Gate,
    ModelSection,
    Settings,
    Summary,
    Timing,
)


@dataclass(frozen=True, eq=False)
class Directions:
    """The most amplified unit input directions of audited samples, largest sigma first (ties by index).

    Not part of the JSON report: `lipcheck audit --save-directions` writes them to a safetensors file,
    and the HTML report draws the first rows beside their inputs.

    Attributes:
        indices: (K,) int64, the data indices of the rows.
        sigma: (K,) float64, each row's sigma at the sample itself (not a worst-case search's).
        residual: (K,) float64, ||J^T J v - sigma^2 v|| / sigma^2 at the row's direction v; NaN where
            it was not finite.
        vectors: (K, ...) the directions v, unit l2 norm each, shaped like a sample, in the audit's dtype.
        inputs: (M, ...) the samples of the first M <= K rows, for pictures; (0, ...) when none kept.
    """

    indices: np.ndarray
    sigma: np.ndarray
    residual: np.ndarray
    vectors: np.ndarray
    inputs: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def to_safetensors(self, count: int | None = None, metadata: Mapping[str, str] | None = None) -> bytes:
        """The first `count` rows (all when None) as a safetensors file: `directions` (K, ...), `indices`
        (K,) int64, `sigma` and `residual` (K,) float64; `metadata` as the file's string metadata."""
        from safetensors.numpy import save

        rows = slice(None) if count is None else slice(0, count)
        tensors = {
            "directions": np.ascontiguousarray(self.vectors[rows]),
            "indices": np.ascontiguousarray(self.indices[rows], dtype=np.int64),
            "sigma": np.ascontiguousarray(self.sigma[rows], dtype=np.float64),
            "residual": np.ascontiguousarray(self.residual[rows], dtype=np.float64),
        }
        return save(tensors, metadata=dict(metadata or {}))


@dataclass(frozen=True)
class Report:
    model: ModelSection
    data: DataSection
    settings: Settings
    environment: Environment
    timing: Timing
    samples: Sequence[SampleResult]  # a tuple, or `columns.SampleColumns` (compact) after an audit
    summary: Summary
    gate: Gate = Gate()
    lipcheck_version: str = ""
    schema_version: int = SCHEMA_VERSION
    bound: BoundReport | None = None
    notes: tuple[str, ...] = ()  # what a reader of the figures must know (a Jacobian zero everywhere)
    derivatives: Derivatives | None = None  # the product used and the adjoint tests (None before them)
    # The worst samples' directions, when the audit was asked to keep them; never in the JSON.
    directions: Directions | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict whose keys follow the schema; lists where the dataclasses hold tuples."""
        return self._sections(samples=[sample_dict(s) for s in self.samples])

    def _sections(self, samples: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "schema_version": self.schema_version,
            "lipcheck_version": self.lipcheck_version,
        }
        for name in ("model", "data", "settings", "environment", "timing"):
            body[name] = json.loads(json.dumps(asdict(getattr(self, name))))
        body["samples"] = samples
        body["summary"] = asdict(self.summary)
        body["gate"] = {"passed": self.gate.passed, "rules": [asdict(rule) for rule in self.gate.rules]}
        body.update(self.bound_sections())
        if self.derivatives is not None:
            body["derivatives"] = json.loads(json.dumps(asdict(self.derivatives)))
        if self.notes:
            body["notes"] = list(self.notes)
        return body

    def bound_sections(self) -> dict[str, Any]:
        """With --bound: the certified `upper_bound`, its factors, and the bracket [max found, bound]."""
        if self.bound is None:
            return {}
        lower, upper = self.summary.max, self.bound.upper_bound
        return {
            "upper_bound": upper,
            "bound": bound_details(self.bound),
            "bracket": [lower, upper],
            "bracket_ratio": upper / lower if lower > 0 else None,
        }

    def to_json(self) -> str:
        """Indented JSON with one line per sample (`json_chunks` joined)."""
        return "".join(self.json_chunks())

    def json_chunks(self, rows_per_chunk: int = 4096) -> Iterator[str]:
        """The JSON of `to_json` in pieces, a few thousand sample lines each, to write as they come: the
        text of a report of millions of samples is never whole in memory, nor is a dict per sample."""
        yield "{\n"
        for position, (name, value) in enumerate(self._sections(samples=None).items()):
            comma = ",\n" if position else ""
            yield f"{comma}  {json.dumps(name)}: "
            if name != "samples":
                yield json.dumps(value, indent=2).replace("\n", "\n  ")
            elif not self.samples:
                yield "[]"
            else:
                yield "[\n    "
                for start in range(0, len(self.samples), rows_per_chunk):
                    chunk = self.samples[start : start + rows_per_chunk]
                    separator = ",\n    " if start else ""
                    yield separator + ",\n    ".join(sample_json(row) for row in chunk)
                yield "\n  ]"
        yield "\n}\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        return cls(
            model=build(ModelSection, data["model"], input_spec=lambda v: tuple(dict(s) for s in v)),
            data=build(DataSection, data["data"], sample_shape=tuple),
            settings=build(Settings, data["settings"]),
            environment=build(Environment, data["environment"]),
            timing=build(Timing, data["timing"]),
            samples=tuple(build(SampleResult, row) for row in data["samples"]),
            summary=build(Summary, data["summary"]),
            gate=Gate.from_dict(data["gate"]),
            lipcheck_version=data["lipcheck_version"],
            schema_version=data["schema_version"],
            bound=bound_from_dict(data) if "upper_bound" in data else None,
            notes=tuple(data.get("notes", ())),
            derivatives=_derivatives(data.get("derivatives")),
        )

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls.from_dict(json.loads(text))


def _derivatives(data: Mapping[str, Any] | None) -> Derivatives | None:
    if data is None:
        return None
    return build(
        Derivatives,
        data,
        decompositions=tuple,
        adjoint=lambda batches: tuple(build(AdjointBatch, batch) for batch in batches),
    )
