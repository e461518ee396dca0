"""`lipcheck inspect`: what was loaded, as 'name: value' lines or JSON."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lipcheck.report import ModelSection


def _input_spec(specs: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{s['name']} ({', '.join(map(str, s['shape']))}) {s['dtype']}" for s in specs) or "-"


# How a field of `ModelSection` reads, where `str` would not do.
_INSPECTED: dict[str, Callable[[Any], str]] = {
    "input_spec": _input_spec,
    "arch_kwargs": lambda value: json.dumps(value) if value else "-",
    "trusted": lambda value: (
        "yes (loading executed code from the file)" if value else "no (nothing from the file was run)"
    ),
}


def _inspected(name: str, value: Any) -> str:
    shown = _INSPECTED.get(name)
    return shown(value) if shown is not None else "-" if value is None else str(value)


def render_model_text(model: ModelSection) -> str:
    """One 'name: value' line per field of a loaded model's description."""
    return "".join(f"{name + ':':<13} {_inspected(name, value)}\n" for name, value in model.__dict__.items())


def render_model_json(model: ModelSection) -> str:
    return json.dumps(model.__dict__, indent=2, default=list) + "\n"
