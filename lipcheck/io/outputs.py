"""Where reports go: the `--output` files of a command, checked before any work and written safely.

`prepare_outputs` runs before a command loads anything. It refuses (InputError naming --output) an
output that is one of the command's inputs (the model, the data, a baseline, a report read by `gate` or
`compare`, the `--arch` file), compared by resolved path and by (st_dev, st_ino), so a symlink or a
hard link to an input is caught; two outputs that are the same file (`refuse_shared_outputs`: one
would replace the other, e.g. `-o r.json --save-directions r.json`); and an output that cannot be
written (a folder, a missing or read-only folder, a read-only file, a closed /dev/fd/N).
`write_output` then writes each report:

- a regular file (or a new one) atomically: a temporary file in the same folder, fsync, then
  `os.replace`, so the file is complete or untouched. A symlink is followed: its target is replaced and
  the link stays. An existing file keeps its permission bits.
- anything else (a character device such as /dev/null, a FIFO, /dev/stdout, /dev/fd/N, a process
  substitution `>(...)`) by streaming into it, never by renaming over it. It is opened (for appending,
  never truncated) by `prepare_outputs`, so a closed descriptor fails before the audit and a FIFO's
  reader sees one writer from start to end.

Temporary files are named `.NAME.lipcheck-PID-XXXXXXXX.tmp`. They are removed when the write fails,
is interrupted, or the process gets SIGTERM or SIGHUP during it; one left by a process that was killed
(kill -9) is removed by the next write into the same folder, once its PID is no longer running and
the file is older than the writing process.
"""

from __future__ import annotations

import io
import os
import re
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from lipcheck.errors import InputError

_STARTED = time.time()
_TEMPORARY = re.compile(r"^\..+\.lipcheck-(\d+)-[A-Za-z0-9_]+\.tmp$")
# Paths that name an open file descriptor (Linux, macOS, the BSDs): always streamed into.
_DESCRIPTOR = re.compile(r"^/(dev/fd|proc/(self|thread-self|\d+)/fd)/\d+$|^/dev/std(in|out|err)$")
_TERMINATING = (signal.SIGTERM, *((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()))


@dataclass
class Destination:
    """One output: `path` as the user gave it (for messages and the format's suffix).

    `target` is the regular file replaced atomically (a symlink's target), None for a special file;
    `stream` the open handle of a special file, written in place.
    """

    path: Path
    target: Path | None
    stream: IO[str] | None = None


def prepare_outputs(
    paths: Sequence[Path], inputs: Mapping[str, Path | None], flag: str = "--output"
) -> list[Destination]:
    """Check every output before the command does any work; open the special files among them.

    `inputs` maps what each input is ("the model (MODEL)") to its path, None when not given.
    Raises InputError naming `flag` and the output when it is an input or cannot be written.
    """
    for path in paths:
        for what, source in inputs.items():
            if source is not None and _same_file(path, source):
                raise InputError(
                    f"{flag} '{path}' is {what} of this command: writing the report there would destroy "
                    "it; write the report to another file"
                )
    refuse_shared_outputs([(flag, path) for path in paths])
    return [_destination(path, flag) for path in paths]


def refuse_shared_outputs(outputs: Sequence[tuple[str, Path]]) -> None:
    """InputError when two of a command's outputs, given as (flag, path), are the same file (by resolved
    path, or by (st_dev, st_ino) for links to an existing file): the second written would silently
    replace the first. Special files (a terminal, /dev/null, a pipe) are streamed into, not replaced, so
    two outputs may share one. Called before any work."""
    replaced = [(flag, path) for flag, path in outputs if not _is_special(path)]
    for position, (flag, path) in enumerate(replaced):
        for other_flag, other in replaced[:position]:
            if _same_file(path, other):
                raise InputError(
                    f"{flag} '{path}' and {other_flag} '{other}' are the same file: one would replace the "
                    "other; give each output its own file"
                )


def _same_file(first: Path, second: Path) -> bool:
    if os.path.realpath(first) == os.path.realpath(second):
        return True
    try:
        one, other = os.stat(first), os.stat(second)
    except (OSError, ValueError):
        return False
    return (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino)


def _destination(path: Path, flag: str) -> Destination:
    where = f"{flag} '{path}'"
    try:
        found = os.stat(path)
    except FileNotFoundError:
        found = None
    except (OSError, ValueError) as error:
        raise InputError(f"{where} cannot be written ({_reason(error)})") from None
    if _is_descriptor(path) or (found is not None and not stat.S_ISREG(found.st_mode)):
        if found is not None and stat.S_ISDIR(found.st_mode):
            raise InputError(f"{where} is a folder: give a file name in it, e.g. '{Path(path) / 'r.json'}'")
        try:
            handle = os.open(path, os.O_WRONLY | os.O_APPEND)
        except OSError as error:
            hint = ": is that file descriptor open?" if _is_descriptor(path) else ""
            raise InputError(f"{where} cannot be opened for writing ({_reason(error)}){hint}") from None
        return Destination(Path(path), None, os.fdopen(handle, "w", encoding="utf-8"))
    target = Path(os.path.realpath(path))
    folder = target.parent
    if not folder.is_dir():
        raise InputError(f"{where} cannot be written: its folder '{folder}' does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{where} cannot be written: its folder '{folder}' is not writable")
    if found is not None and not os.access(target, os.W_OK):
        raise InputError(f"{where} is read-only: make it writable, or write the report to another file")
    return Destination(Path(path), target)


def _is_special(path: Path) -> bool:
    """Whether `path` is streamed into rather than replaced: an open descriptor, or an existing file that
    is not a regular file (a folder is refused elsewhere)."""
    if _is_descriptor(path):
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _is_descriptor(path: Path) -> bool:
    """Whether `path`, or a symlink on the way to its file, names an open file descriptor."""
    current = os.path.abspath(path)
    for _ in range(40):
        if _DESCRIPTOR.match(current):
            return True
        if not os.path.islink(current):
            return False
        current = os.path.join(os.path.dirname(current), os.readlink(current))
        current = os.path.abspath(current)
    return False


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def write_output(destination: Destination, text: str | bytes | Iterable[str]) -> None:
    """Write `text` (a string or its pieces, or bytes) to `destination`: stream it into a special file,
    or replace a regular file atomically. OSError when the write fails; a regular file is then untouched."""
    if destination.stream is None:
        assert destination.target is not None
        write_atomic(destination.target, text)
        return
    with destination.stream as stream:
        if isinstance(text, bytes):
            stream.flush()
            cast(io.TextIOWrapper, stream).buffer.write(text)  # opened by `_destination` with os.fdopen
            return
        for piece in [text] if isinstance(text, str) else text:
            stream.write(piece)


def write_atomic(path: str | Path, text: str | bytes | Iterable[str]) -> None:
    """Write `text` (a string, pieces of one, or bytes) to the regular file `path` so that it is complete or
    untouched: a temporary file in the same folder, fsync, then `os.replace`.

    The temporary file never outlives the call: it is removed when writing fails, on KeyboardInterrupt,
    and on SIGTERM or SIGHUP (then delivered again to the handler that was there before). Stale ones of
    killed processes in the folder are removed first.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    remove_stale_temporaries(folder)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    try:
        with _termination_raises():
            handle, temporary = tempfile.mkstemp(
                dir=folder, prefix=f".{target.name}.lipcheck-{os.getpid()}-", suffix=".tmp"
            )
            try:
                binary = isinstance(text, bytes)
                with os.fdopen(
                    handle, "wb" if binary else "w", encoding=None if binary else "utf-8"
                ) as stream:
                    for piece in [text] if isinstance(text, (str, bytes)) else text:
                        stream.write(piece)
                    stream.flush()
                    os.fsync(stream.fileno())
                os.chmod(temporary, mode)  # mkstemp makes the file private
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
    except _Terminated as terminated:
        signal.raise_signal(terminated.signum)  # the default handler ends the process here
        raise KeyboardInterrupt from None  # a handler of the application's that returned: stop anyway


def remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporary files of lipcheck in `folder` left by a process that no longer runs (it was
    killed during a write): named by `write_atomic`, with a PID not running, and older than this process."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        found = _TEMPORARY.match(name)
        if found is None or _running(int(found.group(1))):
            continue
        file = folder / name
        try:
            if file.is_file() and not file.is_symlink() and file.stat().st_mtime < _STARTED:
                file.unlink()
        except OSError:
            continue  # another process removed it, or the folder forbids it: not ours to insist


def _running(pid: int) -> bool:
    if pid <= 0:
        return True  # not a PID we wrote; never signal a process group
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


class _Terminated(BaseException):
    """SIGTERM or SIGHUP arrived while a temporary file existed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated(signum)


@contextmanager
def _termination_raises() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise `_Terminated` (so `finally` and `except` run); the
    previous handlers are back when the block ends. Only the main thread can set signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        signum: signal.signal(signum, _raise_terminated)
        for signum in _TERMINATING
        if signal.getsignal(signum) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
