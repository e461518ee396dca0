"""Every exit code of lipcheck, and the flags of the running command that change how outcomes are shown.

Kept apart from the program (`program.py`), which maps outcomes to these codes, so that the commands
and the option callbacks can use them without importing the program that registers the commands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from lipcheck.cli.streams import BROKEN_PIPE


class ExitStatus(IntEnum):
    """Every exit code of lipcheck (README, docs/ci.md)."""

    PASSED = 0  # done; every gate rule passed, or there was no rule
    GATE_FAILED = 1  # a gate rule failed
    USAGE_OR_INPUT = 2  # a bad flag, file or input (one line naming it and the fix)
    AUDIT_FAILED = 3  # the audit failed: NaN output, no convergence, out of memory, model raised or exited
    INTERNAL_ERROR = 70  # a bug in lipcheck (EX_SOFTWARE of sysexits.h): the traceback, please report it
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it
    BROKEN_PIPE = BROKEN_PIPE  # 141 (128 + SIGPIPE): the reader of stdout left (`| head`); nothing is said


@dataclass
class Invocation:
    """The flags that change how outcomes are shown, set while parsing (--debug, --quiet)."""

    debug: bool = False
    quiet: bool = False
    argv: list[str] = field(default_factory=list)  # the arguments of the command (for --workers)

    def start(self, argv: list[str]) -> None:
        """Forget the flags of the last command (one process may run several, as the tests do)."""
        self.debug, self.quiet, self.argv = False, False, argv


# One object, changed in place, so that every module that imported it sees the running command's flags.
invocation = Invocation()
