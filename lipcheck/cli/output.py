"""How a command writes what it made: the format chosen, each --output written, the gate's verdict said.

`audit`, `bound`, `gate` and `compare` write through `write` (or `write_and_judge`, which also exits 1
when a rule failed), so that every command picks formats, refuses outputs and reports writes alike.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import typer

from lipcheck.cli.status import ExitStatus
from lipcheck.cli.streams import require_stdout, say, stdout_failed, write_stdout
from lipcheck.errors import InputError, LipcheckError
from lipcheck.options.choices import Format, format_for
from lipcheck.present import escape

if TYPE_CHECKING:
    from lipcheck.io.outputs import Destination
    from lipcheck.present.render import Renderers
    from lipcheck.report import Report, RuleVerdict


def choose_format(
    output_format: Format | None, outputs: Sequence[Destination], renderers: Renderers[Any]
) -> str:
    """--format, else table on a terminal, else json; InputError for a format this kind of report
    lacks (in --format, or in an --output's suffix)."""
    fmt = output_format.value if output_format is not None else None
    if fmt is not None:
        renderers.check(fmt, f"--format {fmt}")
    fmt = fmt or ("table" if not outputs and is_terminal() else "json")
    if not outputs:
        require_stdout(renderers.kind)
    for destination in outputs:
        renderers.check(format_for(destination.path, fmt), f"--output '{destination.path}'")
    return fmt


def write(
    value: Any, renderers: Renderers[Any], outputs: Sequence[Destination], fmt: str, quiet: bool
) -> None:
    """Write `value` rendered to each output (its format from its suffix, else `fmt`), or to stdout."""
    from lipcheck.io.outputs import write_output

    # Rendered before any is written (JSON streams, lazily, but is ASCII), so that a report that cannot
    # be rendered fails before the first output is written, not after it.
    rendered = [renderers.render(value, format_for(destination.path, fmt)) for destination in outputs]
    for destination, text in zip(outputs, rendered, strict=True):
        try:
            write_output(destination, text)
        except OSError as error:
            reason = error.strerror or error
            raise InputError(f"--output '{destination.path}' cannot be written ({reason})") from error
        if not quiet:
            say(f"report written to {destination.path}")
    if outputs:
        return
    if fmt == "table":
        try:
            renderers.console(value, escape.console())
            sys.stdout.flush()
        except BrokenPipeError:
            raise
        except OSError as error:
            raise stdout_failed(error) from error
        return
    pieces = renderers.render(value, fmt)
    write_stdout([pieces] if isinstance(pieces, str) else pieces)


def write_report(report: Report, outputs: Sequence[Destination], fmt: str, quiet: bool) -> None:
    """`write` for an audit's report (also the figures of an audit that failed)."""
    from lipcheck.present.render import REPORT

    write(report, REPORT, outputs, fmt, quiet)


def write_and_judge(
    value: Any,
    renderers: Renderers[Any],
    outputs: Sequence[Destination],
    fmt: str,
    quiet: bool,
    verdicts: Sequence[RuleVerdict],
) -> None:
    """Write `value` (as `write`), then say the gate's verdict and exit 1 when a rule failed.

    When a write fails, the verdict is said all the same and the write's error (exit 2) wins over the
    gate's: the outputs a CI step reads are missing, so a passed gate must not look like success.
    """
    try:
        write(value, renderers, outputs, fmt, quiet)
    except LipcheckError:
        say_gate(verdicts, quiet)
        raise
    if say_gate(verdicts, quiet):
        raise typer.Exit(ExitStatus.GATE_FAILED)


def say_gate(verdicts: Sequence[RuleVerdict], quiet: bool) -> bool:
    """One line on stderr with the gate's verdict (and `::error::` lines in GitHub Actions); whether a
    rule failed."""
    from lipcheck.present.render import github_annotations

    failed = [verdict for verdict in verdicts if not verdict.passed]
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in github_annotations(failed):
            typer.echo(line, err=True)
    if failed:
        say(f"gate failed: {'; '.join(v.message for v in failed)}")
    elif verdicts and not quiet:
        say(f"gate passed: {', '.join(v.name for v in verdicts)}")
    return bool(failed)


def is_terminal() -> bool:
    """Whether stdout is a terminal: a table for a person, else JSON for a program."""
    return sys.stdout is not None and sys.stdout.isatty()
