"""The standard streams of a command: stdout carries only the report, and no state of a stream is a
traceback.

- Closed descriptors 0, 1 and 2 (`lipcheck ... >&-`) get /dev/null at start, so that no file opened
  later takes their number and receives what is printed; a report asked for on a closed stdout is an
  InputError before any work.
- stdout and stderr degrade to backslash escapes where their encoding cannot show a character
  (`PYTHONIOENCODING=ascii`), instead of raising UnicodeEncodeError.
- `model_prints_to_stderr` points descriptor 1 at stderr while model code runs (loading, tracing,
  the audit), so the model's `print` and the C++ prints of TorchScript land on stderr and
  `lipcheck audit ... -f json | jq` reads only the report.
- `write_stdout` writes and flushes the report; a full or failing stdout is an InputError (exit 2).
- Every line lipcheck says on stderr goes through `say`, escaped for a terminal.
- A broken pipe (`lipcheck ... | head -c 10`) is not an error of anyone's: `end_broken_pipe` silences
  both streams and the command exits with `BROKEN_PIPE`, 141, the status a shell reports for a tool
  that SIGPIPE ended (128 + 13), with nothing said.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, redirect_stdout, suppress

import typer

from lipcheck.errors import InputError
from lipcheck.present import escape

BROKEN_PIPE = 141  # 128 + SIGPIPE: what `yes | head -1` reports for `yes`

# The errors of a write that failed for want of room or of a device: a full disk, a quota, a file size
# limit, an I/O error (a file on a full device written without a name: stdout, stderr).
WRITE_FAILURES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


class _Closed:
    """Whether stdout was closed when the command started (Python then sets `sys.stdout` to None)."""

    stdout = False


def prepare_standard_streams() -> None:
    """At the start of a command: /dev/null on closed descriptors 0-2, escapes for unencodable text."""
    _Closed.stdout = sys.stdout is None
    for descriptor, mode in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(descriptor)
        except OSError:
            opened = os.open(os.devnull, mode)
            if opened != descriptor:  # the lowest free number; another one when a lower one is open
                os.dup2(opened, descriptor)
                os.close(opened)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the process's stderr, open until it exits
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def say(line: str) -> None:
    """One line on stderr, 'lipcheck: ' and `line` escaped for a terminal: a name in a message cannot
    move the cursor, colour the line or reorder it."""
    typer.echo(f"lipcheck: {escape.terminal(line)}", err=True)


def require_stdout(what: str) -> None:
    """InputError when stdout was closed and `what` (the report) would go there."""
    if _Closed.stdout or sys.stdout is None:
        raise InputError(f"stdout is closed, so {what} cannot be printed: write it to a file with --output")


@contextmanager
def model_prints_to_stderr() -> Iterator[None]:
    """Within the block, descriptor 1 and `sys.stdout` are stderr: what model code prints, from Python
    or from C++, goes there. stdout is back (and nothing is lost) when the block ends."""
    _flush(sys.stdout)
    try:
        saved = os.dup(1)
    except OSError:  # no descriptor left to save it in: leave the streams alone
        yield
        return
    try:
        os.dup2(2, 1)
        with redirect_stdout(sys.stderr):
            yield
    finally:
        _flush(sys.stderr)
        _flush_c_streams()  # a C++ print still in the C library's buffer belongs to stderr too
        os.dup2(saved, 1)
        os.close(saved)


def _flush(stream: object) -> None:
    flush = getattr(stream, "flush", None)
    if flush is None:
        return
    with suppress(OSError, ValueError):  # a stream that cannot be flushed fails where the report is written
        flush()


def _flush_c_streams() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):
        pass  # no C library to reach (not a POSIX system): C++ prints there are unbuffered or lost


def write_stdout(pieces: Iterable[str]) -> None:
    """Write the report to stdout and flush it. InputError (exit 2) when stdout cannot take it (a full
    disk, /dev/full); BrokenPipeError is left to the command's one handler."""
    try:
        for piece in pieces:
            sys.stdout.write(piece)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as error:
        raise stdout_failed(error) from error


def stdout_failed(error: OSError) -> InputError:
    return InputError(
        f"stdout cannot be written ({error.strerror or error}): free space where it goes, or write the "
        "report to a file with --output FILE"
    )


def is_broken_pipe(error: BaseException) -> bool:
    """Whether `error` is a broken pipe, or click's SystemExit(1) raised for one (its context)."""
    for cause in (error, error.__context__):
        if isinstance(cause, OSError) and cause.errno == errno.EPIPE:
            return True
    return False


def end_broken_pipe() -> int:
    """Silence stdout and stderr for the rest of the process (Python flushes them at exit, which would
    raise again) and return the exit status of a broken pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)
    except OSError:
        pass
    return BROKEN_PIPE
