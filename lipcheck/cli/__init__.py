"""The `lipcheck` command line: one module per command, each parse -> request -> run -> render.

`program.py` holds the typer app, `main()` and the one map from outcomes to exit codes (`ExitStatus`,
in `status.py`); `options.py` the flags that commands share; `output.py` how reports are written and
the gate's verdict said; `audit.py`, `bound.py`, `inspect.py`, `gate.py` and `compare.py` the commands.
"""

from __future__ import annotations

from lipcheck.cli.program import app, main
from lipcheck.cli.status import ExitStatus

__all__ = ["ExitStatus", "app", "main"]
