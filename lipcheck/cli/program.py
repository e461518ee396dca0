"""The `lipcheck` program: the typer app with its commands, and the one map from outcomes to exit codes.

`LipcheckGroup.main` is the one place where outcomes become exit codes (`ExitStatus`): 0 passed, 1 a
gate rule failed, 2 a usage or input error (one line on stderr, the traceback with --debug), 3 the
audit itself failed, 130 interrupted, 141 a broken pipe (nothing said), 70 an internal error (a bug: a
one-line request to report it, and the traceback). Each command lives in a module of its own and is
registered here.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from typing import Annotated, Any

import typer
import typer.core

from lipcheck.cli import audit, bound, compare, gate, inspect
from lipcheck.cli.status import ExitStatus, invocation
from lipcheck.cli.streams import (
    WRITE_FAILURES,
    end_broken_pipe,
    is_broken_pipe,
    prepare_standard_streams,
    say,
    stdout_failed,
)
from lipcheck.errors import AuditFailedError, LipcheckError, LipcheckWarning, first_line
from lipcheck.options.version import __version__

# Click's exception class: a dependency of older typer, vendored as a private module by newer typer;
# reached through the public BadParameter so that both work.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _error(message: str) -> None:
    say(f"error: {' '.join(message.split())}")


def _exit_status(error: BaseException) -> ExitStatus:
    """The exit status of an exception that ended a command, after saying what happened on stderr."""
    if isinstance(error, (KeyboardInterrupt, typer.Abort)):
        say("interrupted")
        return ExitStatus.INTERRUPTED
    if isinstance(error, LipcheckError):
        if invocation.debug:
            traceback.print_exception(error, file=sys.stderr)
        if not error.shared or os.environ.get("RANK", "0") == "0":
            _error(str(error))
        return ExitStatus.AUDIT_FAILED if isinstance(error, AuditFailedError) else ExitStatus.USAGE_OR_INPUT
    traceback.print_exception(error, file=sys.stderr)
    say(
        f"internal error, please report it with the traceback above ({type(error).__name__}: "
        f"{first_line(error)})"
    )
    return ExitStatus.INTERNAL_ERROR


def _warnings_to_stderr(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, *args: Any, **kwargs: Any
) -> None:
    """`warnings.showwarning` while a command runs: every warning is one 'lipcheck: warning:' line on
    stderr (one of torch or of the model with its category and where it was raised), none with --quiet."""
    if invocation.quiet or os.environ.get("RANK", "0") != "0":  # rank 0 speaks for a sharded audit
        return
    text = " ".join(str(message).split())
    if not issubclass(category, LipcheckWarning):
        text = f"{category.__name__} at {filename}:{lineno}: {text}"
    say(f"warning: {text}")


class LipcheckGroup(typer.core.TyperGroup):
    """Runs a command and maps its outcome to an `ExitStatus`: the one place exit codes are decided.

    Usage errors (an unknown flag, a bad choice, a missing argument) are one line naming the flag and
    the fix, like every other error, instead of click's usage box.
    """

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        argv = kwargs.get("args", args[0] if args else None)
        invocation.start(list(sys.argv[1:] if argv is None else argv))
        prepare_standard_streams()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", LipcheckWarning)
                # as Python does outside __main__: deprecations are for the developers of torch's users
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", PendingDeprecationWarning)
                warnings.showwarning = _warnings_to_stderr
                result = super().main(*args, standalone_mode=False, **kwargs)
            # typer turns Ctrl-C into exit code 130 itself (older versions: into Abort, below)
            status = result if isinstance(result, int) else ExitStatus.PASSED
            if status == ExitStatus.INTERRUPTED:
                status = _exit_status(KeyboardInterrupt())
        except _ClickException as error:
            if not standalone_mode:
                raise
            status = self._usage_error(error)
        except typer.Exit as done:
            status = done.exit_code
        except SystemExit as error:  # lipcheck exits only below: this is model code (torch.export traces it)
            if not standalone_mode:
                raise
            if is_broken_pipe(error):  # click's exit for a broken pipe, the cause in its context
                sys.exit(end_broken_pipe())
            status = _exit_status(
                AuditFailedError(
                    f"model code raised SystemExit({error.code!r}): it cannot end lipcheck; remove the exit "
                    "from the model"
                )
            )
        except (Exception, KeyboardInterrupt) as error:
            if not standalone_mode:
                raise
            if is_broken_pipe(error):
                sys.exit(end_broken_pipe())
            if isinstance(error, OSError) and error.errno in WRITE_FAILURES:  # stdout or stderr is full
                error = stdout_failed(error)
            status = _exit_status(error)
        if not standalone_mode:
            return result
        if "torch.distributed" in sys.modules:  # one rank of several: every rank ends with one code
            from lipcheck.auditing.distributed import agree

            status = agree(status)
        sys.exit(int(status))

    @staticmethod
    def _usage_error(error: Any) -> ExitStatus:
        context = getattr(error, "ctx", None)
        if type(error).__name__ == "NoArgsIsHelpError" and context is not None:
            typer.echo(context.get_help(), err=True)
            return ExitStatus.USAGE_OR_INPUT
        command = context.command_path if context is not None else "lipcheck"
        message = " ".join(error.format_message().replace("Value error, ", "").split())
        say(f"error: {message} (see '{command} --help')")
        return ExitStatus.USAGE_OR_INPUT


app = typer.Typer(
    cls=LipcheckGroup,
    name="lipcheck",
    help="Audit how much a PyTorch model can amplify a perturbation of its input.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"lipcheck {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Audit how much a PyTorch model can amplify a perturbation of its input."""


@app.command()
def version() -> None:
    """Print the version of lipcheck and of torch."""
    import torch

    typer.echo(f"lipcheck {__version__} (torch {torch.__version__})")


# In the order of `lipcheck --help`.
app.command(epilog=audit.EPILOG)(audit.audit)
app.command(epilog=bound.EPILOG)(bound.bound)
app.command(epilog=inspect.EPILOG)(inspect.inspect)
app.command(epilog=gate.EPILOG)(gate.gate)
app.command(epilog=compare.EPILOG)(compare.compare)


def main() -> None:
    """The `lipcheck` entry point: `LipcheckGroup.main` maps every outcome to an `ExitStatus`."""
    app()
