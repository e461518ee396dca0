"""`lipcheck inspect`: what was loaded, as 'name: value' lines or JSON."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lipcheck.present import escape
from lipcheck.report import ModelSection


def _input_spec(specs: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{s['name']} ({', '.join(map(str, s['shape']))}) {s['dtype']}" for s in specs) or "-"


# How a field of `ModelSection` reads, where `str` would not do.
_INSPECTED: dict[str, Callable[[Any], str]] = {
    "input_spec": _input_spec,
    "outputs": _input_spec,
    "notes": lambda value: "; ".join(value) or "-",
    "arch_kwargs": lambda value: json.dumps(value) if value else "-",
    "trusted": lambda value: (
        "yes (loading executed code from the file)" if value else "no (nothing from the file was run)"
    ),
}
# A factory alone has no file: its code is the --arch the user named.
_FACTORY_TRUST = "no file (the --arch factory ran: code you named)"


def _inspected(name: str, value: Any) -> str:
    shown = _INSPECTED.get(name)
    return shown(value) if shown is not None else "-" if value is None else str(value)


def render_model_text(model: ModelSection, graph: Mapping[str, Any] | None = None) -> str:
    """One 'name: value' line per field of a loaded model's description, then per fact of its `graph`
    (what an ONNX file says: outputs, opset, operators, producer, notes), escaped for a terminal."""
    fields = {**model.__dict__, **(graph or {})}
    shown = {name: _inspected(name, value) for name, value in fields.items()}
    if model.format == "factory":
        shown["trusted"] = _FACTORY_TRUST
    return "".join(f"{name + ':':<13} {escape.terminal(text)}\n" for name, text in shown.items())


def render_model_json(model: ModelSection, graph: Mapping[str, Any] | None = None) -> str:
    return json.dumps({**model.__dict__, **(graph or {})}, indent=2, default=list) + "\n"
