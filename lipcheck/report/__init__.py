"""The audit report as plain data, its summary statistics, and its JSON round trip (no torch).

The modules, each one idea: `sections` (the model, data, settings, timing, summary and gate of a
report), `samples` (one sample's result), `audit_report` (`Report`), `bound` (certified bounds and
`ModelBoundReport`), `summary` (statistics of sigma, the worst samples), `read` (reading and checking
a saved report), `rows` (the check of every row read back), `columns` (compact per-sample columns),
`gate`, `compare` and `json_schema`. The JSON Schemas ship in `lipcheck/report/schemas/`.

This package re-exports the report model's names, so that `from lipcheck.report import Report` reads
as it always has. It imports only the modules below it; none of them imports it back.
"""

from __future__ import annotations

from lipcheck.report.audit_report import Directions, Report
from lipcheck.report.bound import (
    BoundReport,
    BoundTerm,
    BoundTiming,
    LayerBound,
    ModelBoundReport,
    bound_details,
    bound_from_dict,
)
from lipcheck.report.read import (
    MAX_NESTING,
    bound_schema,
    inconsistency,
    nesting_depth,
    read_report,
    report_schema,
)
from lipcheck.report.records import SCHEMA_VERSION
from lipcheck.report.samples import SampleResult, largest_sigma
from lipcheck.report.sections import (
    AdjointBatch,
    DataSection,
    Derivatives,
    Environment,
    Gate,
    ModelSection,
    RuleVerdict,
    Settings,
    Summary,
    Timing,
    path_text,
)
from lipcheck.report.summary import REDUCTIONS, summarise, worst_samples

__all__ = [
    "MAX_NESTING",
    "AdjointBatch",
    "REDUCTIONS",
    "SCHEMA_VERSION",
    "BoundReport",
    "BoundTerm",
    "BoundTiming",
    "DataSection",
    "Derivatives",
    "Directions",
    "Environment",
    "Gate",
    "LayerBound",
    "ModelBoundReport",
    "ModelSection",
    "Report",
    "RuleVerdict",
    "SampleResult",
    "Settings",
    "Summary",
    "Timing",
    "bound_details",
    "bound_from_dict",
    "bound_schema",
    "inconsistency",
    "largest_sigma",
    "nesting_depth",
    "path_text",
    "read_report",
    "report_schema",
    "summarise",
    "worst_samples",
]
