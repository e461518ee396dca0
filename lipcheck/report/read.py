"""Reading a saved report, checked before anything trusts it: JSON, nesting, schema version, the
shipped JSON Schema (`lipcheck/report/schemas/`), rows an audit can write, and a summary its own
samples give again.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from lipcheck.errors import InputError
from lipcheck.report.audit_report import Report
from lipcheck.report.json_schema import first_problem
from lipcheck.report.records import SCHEMA_VERSION
from lipcheck.report.rows import check_report_samples
from lipcheck.report.sections import Summary
from lipcheck.report.summary import summarise

MAX_NESTING = 64  # a report nests 5 deep; --arg and --arch-kwargs objects have room to nest


def read_report(path: str | Path, what: str = "report") -> Report:
    """The report saved at `path` (by `lipcheck audit --output`), checked before anything trusts it.

    InputError naming `what`, the path and the first problem when the file is missing, is not JSON
    (NaN and Infinity are not), nests deeper than `MAX_NESTING`, was written with a newer schema, does
    not validate against the shipped schema, holds samples no audit writes (`rows.check_report_samples`:
    a repeated index, one outside its data, fewer samples than its data section says), or a summary
    (or bracket) that its samples do not give: a report edited by hand cannot tell the gate what it
    wants to hear.
    """
    source = Path(path)
    where = f"{what} '{source}'"
    fix = "give a JSON report written by lipcheck audit --output FILE.json"
    if not source.is_file():
        problem = "is not a file" if source.exists() else "does not exist"
        raise InputError(f"{where} {problem}: {fix}")
    text = source.read_bytes()
    depth = nesting_depth(text)
    if depth > MAX_NESTING:
        raise InputError(f"{where} nests {depth} levels deep, more than a report's {MAX_NESTING}: {fix}")
    try:
        data = json.loads(text, parse_constant=refuse_constant)
    except (UnicodeDecodeError, ValueError) as error:
        if isinstance(error, json.JSONDecodeError):
            detail = f"{error.msg} at line {error.lineno}"
        else:
            detail = "binary" if isinstance(error, UnicodeDecodeError) else str(error)
        raise InputError(f"{where} is not JSON ({detail}): {fix}") from None
    if not isinstance(data, dict) or "schema_version" not in data or "summary" not in data:
        raise InputError(f"{where} is not a lipcheck report (no schema_version and summary): {fix}")
    version = data["schema_version"]
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise InputError(
            f"{where} has schema version {version}, newer than this lipcheck reads ({SCHEMA_VERSION}): "
            "upgrade lipcheck"
        )
    problem = first_problem(data, report_schema())
    if problem is not None:
        raise InputError(f"{where} is not a valid lipcheck report ({problem}): {fix}")
    report = Report.from_dict(data)
    check_report_samples(report.samples, where, count=report.data.count, total=report.data.total)
    problem = inconsistency(report, data)
    if problem is not None:
        raise InputError(
            f"{where} contradicts itself ({problem}): it was edited or damaged; audit again to get a report"
        )
    return report


def refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def nesting_depth(text: bytes) -> int:
    """How deep the arrays and objects of the JSON `text` nest, counted without parsing it (so without
    recursion) at the speed of bytes methods: brackets inside strings do not count."""
    unescaped = text.replace(b"\\\\", b"").replace(b'\\"', b"")  # escaped backslashes, then quotes
    structure = re.sub(rb'"[^"]*"', b"", unescaped.translate(None, _NOT_STRUCTURE))
    steps = np.frombuffer(structure, dtype=np.uint8)
    opening = (steps == ord("[")) | (steps == ord("{"))
    return int(np.cumsum(np.where(opening, 1, -1)).max(initial=0))


_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')


def inconsistency(report: Report, stored: Mapping[str, Any]) -> str | None:
    """What in the report `stored` (its JSON, read as `report`) its own samples contradict: a summary
    figure that `summarise` does not give again (to 1e-9, for sums taken in another order), or a
    bracket that is not [summary max, upper bound]."""
    again = summarise(report.samples, report.summary.reduction)
    for name in (f.name for f in fields(Summary)):
        written, computed = getattr(report.summary, name), getattr(again, name)
        if not (written == computed or _close(written, computed)):
            return f"summary {name} is {written:g} but its samples give {computed:g}"
    for name, computed in report.bound_sections().items():
        written = stored.get(name)
        if name in ("bracket", "bracket_ratio") and not _same_figures(written, computed):
            return (
                f"{name} is {json.dumps(written)} but its summary and upper bound give {json.dumps(computed)}"
            )
    return None


def _same_figures(written: Any, computed: Any) -> bool:
    if isinstance(written, list) and isinstance(computed, list):
        return len(written) == len(computed) and all(map(_same_figures, written, computed))
    return written == computed or _close(written, computed)


def _close(stored: Any, computed: Any) -> bool:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (stored, computed))
    return numbers and math.isclose(stored, computed, rel_tol=1e-9, abs_tol=1e-300)


def report_schema() -> dict[str, Any]:
    """The JSON Schema that every report validates against."""
    return shipped_schema("report.schema.json")


def bound_schema() -> dict[str, Any]:
    """The JSON Schema of the report of `lipcheck bound` (`ModelBoundReport.to_json`)."""
    return shipped_schema("bound.schema.json")


def shipped_schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped with the package, in `lipcheck/report/schemas/`."""
    text = resources.files("lipcheck.report").joinpath(f"schemas/{name}").read_text(encoding="utf-8")
    return json.loads(text)
