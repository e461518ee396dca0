"""Architecture factories (``--arch``): the Python code the user names to build a module.

``--arch path/to/file.py:factory`` or ``package.module:factory`` is imported and called with
``--arch-kwargs``. This runs code the user chose, as ``python file.py`` would: a file's folder is first on
``sys.path`` while it is imported and its factory runs, and a file inside a package is imported as its
package's module. `lipcheck.io.models` fills the module with a weights file, or audits it as it is.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from lipcheck.errors import AuditFailedError, InputError, describe


def arch_file(arch: str | None) -> Path | None:
    """The Python file of ``--arch path/to/file.py:factory``; None for ``package.module:factory``."""
    source = (arch or "").rpartition(":")[0]
    return Path(source) if source.endswith(".py") or "/" in source or "\\" in source else None


def load_arch(arch: str, arch_kwargs: Mapping[str, Any]) -> nn.Module:
    """Build a module from ``path/to/file.py:factory`` or ``package.module:factory``.

    This runs the file (or module): it is code the user chose. As ``python file.py`` would, a file's
    folder is first on ``sys.path`` while it is imported and its factory runs, so a module beside it
    (``import blocks``) imports; the path is as it was afterwards.
    """
    file = arch_file(arch)
    with _first_on_import_path(file.resolve().parent if file is not None and file.is_file() else None):
        return _build_arch(arch, arch_kwargs, file)


@contextlib.contextmanager
def _first_on_import_path(folder: Path | None) -> Iterator[None]:
    if folder is None:
        yield
        return
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def _build_arch(arch: str, arch_kwargs: Mapping[str, Any], file: Path | None) -> nn.Module:
    source, _, name = arch.rpartition(":")
    if not source or not name:
        raise InputError(f"--arch {arch!r} must look like path/to/file.py:factory or package.module:factory")
    try:
        if file is not None:
            if not file.is_file():
                raise InputError(f"--arch file '{file}' does not exist: give the path of a Python file")
            module = _import_file(file)
        else:
            module = importlib.import_module(source)
    except InputError:
        raise
    except SystemExit as error:
        raise _exited(arch, "at import", error) from error
    except Exception as error:
        raise InputError(
            f"--arch {arch!r} cannot be imported ({describe(error)}): fix the file or the module path"
        ) from error
    factory = getattr(module, name, None)
    if not callable(factory):
        raise InputError(f"--arch {arch!r}: '{source}' has no callable named '{name}'")
    try:
        built = factory(**arch_kwargs)
    except SystemExit as error:
        raise _exited(arch, f"in '{name}'", error) from error
    except Exception as error:
        raise InputError(
            f"--arch {arch!r} failed with --arch-kwargs {json.dumps(dict(arch_kwargs))} ({describe(error)})"
        ) from error
    if not isinstance(built, nn.Module):
        raise InputError(f"--arch {arch!r} returned {type(built).__name__}, expected a torch.nn.Module")
    return built


def _exited(arch: str, when: str, error: SystemExit) -> AuditFailedError:
    """The audit failure of an --arch file that tried to end the process (`sys.exit`, `exit()`)."""
    return AuditFailedError(
        f"--arch {arch!r} raised SystemExit({error.code!r}) {when}: model code cannot end lipcheck; "
        "remove the exit (put a script's code under `if __name__ == '__main__':`)"
    )


def _import_file(file: Path) -> Any:
    """Import an --arch file: as its package's module when it is in a package (so that its relative
    imports work, as with ``python -m package.module``), else on its own."""
    package = _package_of(file)
    if package is not None:
        root, dotted = package
        with _first_on_import_path(root):
            return importlib.import_module(dotted)
    spec = importlib.util.spec_from_file_location(f"lipcheck_arch_{file.stem}", file)
    if spec is None or spec.loader is None:
        raise InputError(f"--arch file '{file}' cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _package_of(file: Path) -> tuple[Path, str] | None:
    """(the folder above the top package, the module's dotted name) for a file in a package, i.e. whose
    folder holds an __init__.py; None otherwise, or when a package of that name is already imported
    from elsewhere (importing by name would find that one, not this file)."""
    folder, parts = file.resolve().parent, [] if file.stem == "__init__" else [file.stem]
    while (folder / "__init__.py").is_file() and folder.name.isidentifier():
        parts.insert(0, folder.name)
        folder = folder.parent
    if not parts or parts == [file.stem]:
        return None
    loaded = sys.modules.get(parts[0])
    here = (folder / parts[0]).resolve()
    if loaded is not None and here not in {Path(p).resolve() for p in getattr(loaded, "__path__", [])}:
        return None
    return folder, ".".join(parts)
