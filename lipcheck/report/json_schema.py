"""A validator for the part of JSON Schema (draft 2020-12) that lipcheck's shipped schemas use.

`first_problem(instance, schema)` says what is wrong with a parsed JSON document, as one line naming
the place ("samples[3].sigma: -0.5 is below the minimum 0"), or None when it is valid. It is generic
over the schema: a field added to `lipcheck/schemas/*.json` is checked without a line of code here.
lipcheck does not depend on the `jsonschema` package at run time; the tests check that both agree.

Supported keywords: type, enum, const, minimum, maximum, exclusiveMinimum, exclusiveMaximum,
minLength, maxLength, pattern, items, minItems, maxItems, properties, required,
additionalProperties, dependentRequired, allOf, anyOf, oneOf, not, and $ref to a place in the same
schema ("#/$defs/count"); the annotations ($schema, $id, $defs, title, description, ...) are ignored.
A schema with any other keyword raises ValueError when it is compiled, so a schema cannot rely on a
check that silently does not happen. One deliberate difference from the standard: a number must be
finite (JSON cannot write NaN or infinity, but Python's parser reads 1e999 as infinity).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$defs", "$comment", "title", "description", "default", "examples", "deprecated",
     "readOnly", "writeOnly", "format"}
)  # fmt: skip


@dataclass
class _Problem:
    """What is wrong, and where: `place` holds keys and indices from the innermost outwards."""

    message: str
    place: list[str | int] = field(default_factory=list)

    def at(self, key: str | int) -> _Problem:
        self.place.append(key)
        return self

    def __str__(self) -> str:
        where = ""
        for key in reversed(self.place):
            if isinstance(key, int):
                where += f"[{key}]"
            elif key.isidentifier():
                where += f".{key}" if where else key
            else:
                where += f"[{json.dumps(key)}]"
        return f"{where or 'top level'}: {self.message}"


_Check = Callable[[Any], "_Problem | None"]


def first_problem(instance: Any, schema: Mapping[str, Any]) -> str | None:
    """The first thing in `instance` (parsed JSON) that `schema` does not allow, or None when valid."""
    problem = compile_schema(json.dumps(schema, sort_keys=True))(instance)
    return None if problem is None else str(problem)


@lru_cache(maxsize=8)
def compile_schema(text: str) -> _Check:
    """The check of the schema given as JSON text (cached: the shipped schemas compile once)."""
    root = json.loads(text)
    return _Compiler(root).compile(root)


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    """A number a double holds: not NaN or infinity, and no int beyond the largest double."""
    return _is_number(value) and -sys.float_info.max <= value <= sys.float_info.max


def _json_equal(one: Any, other: Any) -> bool:
    """Equality as JSON Schema defines it: numbers by value, booleans apart from numbers."""
    if _is_number(one) and _is_number(other):
        return bool(one == other)
    if type(one) is not type(other):
        return False
    if isinstance(one, list):
        return len(one) == len(other) and all(_json_equal(a, b) for a, b in zip(one, other, strict=True))
    if isinstance(one, dict):
        return one.keys() == other.keys() and all(_json_equal(one[k], other[k]) for k in one)
    return bool(one == other)


_TYPES: dict[str, Callable[[Any], bool]] = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "number": _is_finite,
    "integer": lambda v: _is_finite(v) and (isinstance(v, int) or float(v).is_integer()),
}
_NAMES = {"null": "null", "boolean": "a boolean", "string": "a string", "array": "an array",
          "object": "an object", "number": "a finite number", "integer": "an integer"}  # fmt: skip


class _Compiler:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.references: dict[str, _Check] = {}

    def compile(self, schema: Any) -> _Check:
        if schema is True:
            return lambda value: None
        if schema is False:
            return lambda value: _Problem("is not allowed here")
        if not isinstance(schema, dict):
            raise ValueError(f"a schema must be an object or a boolean, not {_shown(schema)}")
        checks: list[_Check] = []
        for keyword, argument in schema.items():
            if keyword in _ANNOTATIONS or keyword in _BY_OBJECT:
                continue
            build = _KEYWORDS.get(keyword)
            if build is None:
                raise ValueError(f"schema keyword {keyword!r} is not supported by lipcheck's validator")
            checks.append(build(self, argument))
        if any(keyword in schema for keyword in _BY_OBJECT):
            checks.append(self._object(schema))
        if len(checks) == 1:
            return checks[0]

        def check(value: Any) -> _Problem | None:
            for one in checks:
                problem = one(value)
                if problem is not None:
                    return problem
            return None

        return check

    def reference(self, pointer: str) -> _Check:
        if pointer not in self.references:
            if not pointer.startswith("#"):
                raise ValueError(f"$ref {pointer!r}: only references into the same schema are supported")
            target: Any = self.root
            for part in pointer[1:].split("/")[1:]:
                target = target[part.replace("~1", "/").replace("~0", "~")]
            compiling = self.references
            compiling[pointer] = lambda value: compiling[pointer](value)  # a recursive schema's own ref
            compiling[pointer] = self.compile(target)
        return self.references[pointer]

    def _object(self, schema: Mapping[str, Any]) -> _Check:
        properties = {name: self.compile(sub) for name, sub in schema.get("properties", {}).items()}
        required = list(schema.get("required", []))
        extra = schema.get("additionalProperties", True)
        additional = None if extra is True else self.compile(extra)
        dependent = dict(schema.get("dependentRequired", {}))

        def check(value: Any) -> _Problem | None:
            if not isinstance(value, dict):
                return None
            for name in required:
                if name not in value:
                    return _Problem(f"has no {name!r}")
            for name, item in value.items():
                one = properties.get(name)
                if one is None and additional is not None:
                    if extra is False:
                        return _Problem(f"has the unexpected key {name!r}")
                    one = additional
                problem = one(item) if one is not None else None
                if problem is not None:
                    return problem.at(name)
            for name, needed in dependent.items():
                missing = [other for other in needed if name in value and other not in value]
                if missing:
                    return _Problem(f"has {name!r} but no {missing[0]!r}")
            return None

        return check


def _type(compiler: _Compiler, argument: Any) -> _Check:
    names = [argument] if isinstance(argument, str) else list(argument)
    tests = [_TYPES[name] for name in names]
    expected = " or ".join(_NAMES[name] for name in names)
    return lambda v: None if any(test(v) for test in tests) else _Problem(f"{_shown(v)} is not {expected}")


def _enum(compiler: _Compiler, argument: Any) -> _Check:
    allowed = list(argument)
    listed = ", ".join(_shown(a) for a in allowed)
    return lambda v: (
        None if any(_json_equal(v, a) for a in allowed) else _Problem(f"{_shown(v)} is not one of {listed}")
    )


def _const(compiler: _Compiler, argument: Any) -> _Check:
    return lambda v: None if _json_equal(v, argument) else _Problem(f"{_shown(v)} is not {_shown(argument)}")


def _bound(compare: Callable[[float, float], bool], words: str) -> Callable[[_Compiler, Any], _Check]:
    def build(compiler: _Compiler, limit: Any) -> _Check:
        return lambda v: (
            None if not _is_number(v) or compare(v, limit) else _Problem(f"{_shown(v)} is {words} {limit}")
        )

    return build


def _size(
    of: type, unit: str, compare: Callable[[int, int], bool], words: str
) -> Callable[[_Compiler, Any], _Check]:
    """minLength and friends: the number of characters of a string, or of items of an array."""

    def build(compiler: _Compiler, limit: Any) -> _Check:
        def check(v: Any) -> _Problem | None:
            if isinstance(v, of) and not compare(len(v), limit):
                return _Problem(f"{_shown(v)} has {len(v)} {unit}, {words} {limit}")
            return None

        return check

    return build


def _pattern(compiler: _Compiler, argument: Any) -> _Check:
    regex = re.compile(argument)
    return lambda v: (
        None
        if not isinstance(v, str) or regex.search(v)
        else _Problem(f"{_shown(v)} does not match {argument}")
    )


def _items(compiler: _Compiler, argument: Any) -> _Check:
    each = compiler.compile(argument)

    def check(value: Any) -> _Problem | None:
        if not isinstance(value, list):
            return None
        for position, item in enumerate(value):
            problem = each(item)
            if problem is not None:
                return problem.at(position)
        return None

    return check


def _all_of(compiler: _Compiler, argument: Any) -> _Check:
    checks = [compiler.compile(sub) for sub in argument]
    return lambda v: next((p for p in (c(v) for c in checks) if p is not None), None)


def _any_of(compiler: _Compiler, argument: Any) -> _Check:
    checks = [compiler.compile(sub) for sub in argument]

    def check(value: Any) -> _Problem | None:
        problems = [c(value) for c in checks]
        return None if any(p is None for p in problems) else problems[0]

    return check


def _one_of(compiler: _Compiler, argument: Any) -> _Check:
    checks = [compiler.compile(sub) for sub in argument]

    def check(value: Any) -> _Problem | None:
        problems = [c(value) for c in checks]
        passed = sum(p is None for p in problems)
        if passed == 1:
            return None
        return (
            _Problem(f"{_shown(value)} fits {passed} of the alternatives, not exactly one")
            if passed
            else problems[0]
        )

    return check


def _not(compiler: _Compiler, argument: Any) -> _Check:
    inner = compiler.compile(argument)
    return lambda v: _Problem(f"{_shown(v)} is not allowed here") if inner(v) is None else None


# Keywords handled together by `_Compiler._object`, and the builders of every other keyword.
_BY_OBJECT = frozenset({"properties", "required", "additionalProperties", "dependentRequired"})
_KEYWORDS: dict[str, Callable[[_Compiler, Any], _Check]] = {
    "type": _type,
    "enum": _enum,
    "const": _const,
    "minimum": _bound(lambda v, m: v >= m, "below the minimum"),
    "maximum": _bound(lambda v, m: v <= m, "above the maximum"),
    "exclusiveMinimum": _bound(lambda v, m: v > m, "not above"),
    "exclusiveMaximum": _bound(lambda v, m: v < m, "not below"),
    "minLength": _size(str, "characters", lambda n, m: n >= m, "fewer than"),
    "maxLength": _size(str, "characters", lambda n, m: n <= m, "more than"),
    "minItems": _size(list, "items", lambda n, m: n >= m, "fewer than"),
    "maxItems": _size(list, "items", lambda n, m: n <= m, "more than"),
    "pattern": _pattern,
    "items": _items,
    "allOf": _all_of,
    "anyOf": _any_of,
    "oneOf": _one_of,
    "not": _not,
    "$ref": lambda compiler, pointer: compiler.reference(pointer),
}
