"""How a report's records come back from JSON, and the schema version every report file carries.

`Report.from_dict` and `ModelBoundReport.from_dict` build their frozen dataclasses field by field from
the JSON objects: a field the object lacks (a report written before it existed) keeps its default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

SCHEMA_VERSION = 1


def build(cls: Any, data: Mapping[str, Any], **convert: Callable[[Any], Any]) -> Any:
    """An instance of the dataclass `cls` from the JSON object `data`, with `convert[name]` applied to
    the value of field `name` (JSON lists to tuples, for instance)."""
    values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
    for name, function in convert.items():
        if name in values:
            values[name] = function(values[name])
    return cls(**values)
