"""The layout is the architecture (docs/architecture.md): each subpackage imports only the parts
below it, no modules import each other in a circle, and no room grows past a screenful of reading.

The imports are read with `ast` from the source, every one of them: at module level, inside
functions (lazy imports are dependencies too) and under `TYPE_CHECKING`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lipcheck"

# What each part may import, besides itself: the table of docs/architecture.md. `errors` is the
# one module every part shares; the root package is the public facade and imports lazily. `bounds`
# builds the report's plain bound dataclasses (BoundReport, LayerBound), which are torch-free.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "options": frozenset({"errors"}),
    "engine": frozenset({"errors", "options"}),
    "bounds": frozenset({"errors", "options", "engine", "report"}),
    "io": frozenset({"errors", "options"}),
    "report": frozenset({"errors", "options"}),
    "present": frozenset({"errors", "options", "report"}),
    "auditing": frozenset({"errors", "options", "engine", "bounds", "io", "report"}),
    "cli": frozenset({"errors", "options", "engine", "bounds", "io", "report", "present", "auditing"}),
}
TOP_LEVEL = {"__init__.py", "__main__.py", "errors.py", "py.typed"}
MAX_MODULE_LINES = 600
MAX_CLI_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str | None:
    """The module an imported dotted name lands in: the longest prefix that is one of ours."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def type_only_lines(tree: ast.Module) -> set[int]:
    """The lines of the imports under `if TYPE_CHECKING:`, which never run."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in {"TYPE_CHECKING", "typing.TYPE_CHECKING"}:
            body = [inner for child in node.body for inner in ast.walk(child)]
            lines |= {inner.lineno for inner in body if hasattr(inner, "lineno")}
    return lines


def imports(module: str, *, run_time: bool = False) -> Iterator[tuple[str, int, str]]:
    """(imported module, line, the names taken) for every import of lipcheck code in `module`; with
    `run_time`, without those under `TYPE_CHECKING`."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    skipped = type_only_lines(tree) if run_time else set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = resolve(alias.name)
                if target is not None:
                    yield target, node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = resolve(f"{base}.{alias.name}") or resolve(base)
                if target is not None:
                    yield target, node.lineno, alias.name


def part(module: str) -> str:
    """The subpackage (or top-level module) a module belongs to: lipcheck.report.gate -> report."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "lipcheck"


# The imports that run, for the circles: a `TYPE_CHECKING` import is for the type checker only.
GRAPH = {
    module: sorted({target for target, _, _ in imports(module, run_time=True)} - {module})
    for module in MODULES
}


def test_every_part_is_in_the_table() -> None:
    parts = {part(module) for module in MODULES} - {"lipcheck", "__main__"}
    assert parts == set(MAY_IMPORT), "a new subpackage needs a row in MAY_IMPORT and docs/architecture.md"


def test_no_import_runs_against_the_layers() -> None:
    broken = []
    for module in MODULES:
        here = part(module)
        if here in {"lipcheck", "__main__"}:  # the facade and `python -m lipcheck` may import anything
            continue
        for target, line, _ in imports(module):
            there = part(target)
            if there == here:
                continue
            if there not in MAY_IMPORT[here]:
                broken.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not broken, "imports against the layers of docs/architecture.md:\n" + "\n".join(broken)


def strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's components of more than one module, or of one module that imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, []):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_circles() -> None:
    circles = strongly_connected(GRAPH)
    assert not circles, "modules that import each other: " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_circle_finder_finds_circles() -> None:
    assert strongly_connected({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert strongly_connected({"a": ["b"], "b": []}) == []


def test_the_top_level_holds_only_the_facade_errors_and_subpackages() -> None:
    loose = sorted(
        entry.name
        for entry in PACKAGE.iterdir()
        if entry.name not in TOP_LEVEL
        and not (entry.is_dir() and (entry / "__init__.py").exists())
        and entry.name != "__pycache__"
    )
    assert not loose, f"lipcheck/ should hold only {sorted(TOP_LEVEL)} and subpackages, not {loose}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_longer_than_a_reading(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines (at most {MAX_MODULE_LINES})"


def test_no_command_line_function_is_longer_than_a_screen() -> None:
    long = []
    for module, path in MODULES.items():
        if part(module) != "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = node.end_lineno - first + 1
                if length > MAX_CLI_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {length} lines")
    assert not long, f"cli functions over {MAX_CLI_FUNCTION_LINES} lines: " + ", ".join(long)
