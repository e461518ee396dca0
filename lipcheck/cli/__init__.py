"""The `lipcheck` command line: parse, build one request, call, render; one map to exit codes.

Each command parses its flags, builds one value (an `AuditRequest`, rule options), calls one function,
and renders the result. `LipcheckGroup.main` is the one place where outcomes become exit codes
(`ExitStatus`): 0 passed, 1 a gate rule failed, 2 a usage or input error (one line on stderr, the
traceback with --debug), 3 the audit itself failed, 130 interrupted, 70 an internal error (a bug: a
one-line request to report it, and the traceback). `audit`, `gate` and `compare` share the gate's rule
flags and the way reports are written.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from lipcheck import __version__
from lipcheck.errors import AuditFailedError, InputError, LipcheckError, LipcheckWarning, first_line
from lipcheck.io.file_formats import MAX_READ_BYTES
from lipcheck.options.choices import (
    WORKER_TIMEOUT_SECONDS,
    BoundMethod,
    Device,
    Dtype,
    Format,
    Method,
    Operator,
    Reduction,
    format_for,
)

if TYPE_CHECKING:
    from lipcheck.auditing.request import AuditRequest
    from lipcheck.io.outputs import Destination
    from lipcheck.present.render import Renderers
    from lipcheck.report import Report, RuleVerdict
    from lipcheck.report.gate import RuleOptions

# Click's exception classes: a dependency of older typer, vendored as a private module by newer typer;
# reached through the public BadParameter so that both work.
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class ExitStatus(IntEnum):
    """Every exit code of lipcheck (README, docs/ci.md)."""

    PASSED = 0  # done; every gate rule passed, or there was no rule
    GATE_FAILED = 1  # a gate rule failed
    USAGE_OR_INPUT = 2  # a bad flag, file or input (one line naming it and the fix)
    AUDIT_FAILED = 3  # the audit failed: NaN output, no convergence, out of memory, model raised or exited
    INTERNAL_ERROR = 70  # a bug in lipcheck (EX_SOFTWARE of sysexits.h): the traceback, please report it
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


@dataclass
class _Invocation:
    """The flags that change how outcomes are shown, set while parsing (--debug, --quiet)."""

    debug: bool = False
    quiet: bool = False
    argv: list[str] = field(default_factory=list)  # the arguments of the command (for --workers)


_invocation = _Invocation()


def _error(message: str) -> None:
    typer.echo(f"lipcheck: error: {' '.join(message.split())}", err=True)


def _exit_status(error: BaseException) -> ExitStatus:
    """The exit status of an exception that ended a command, after saying what happened on stderr."""
    if isinstance(error, (KeyboardInterrupt, typer.Abort)):
        typer.echo("lipcheck: interrupted", err=True)
        return ExitStatus.INTERRUPTED
    if isinstance(error, LipcheckError):
        if _invocation.debug:
            traceback.print_exception(error, file=sys.stderr)
        if not error.shared or os.environ.get("RANK", "0") == "0":
            _error(str(error))
        return ExitStatus.AUDIT_FAILED if isinstance(error, AuditFailedError) else ExitStatus.USAGE_OR_INPUT
    traceback.print_exception(error, file=sys.stderr)
    typer.echo(
        f"lipcheck: internal error, please report it with the traceback above "
        f"({type(error).__name__}: {first_line(error)})",
        err=True,
    )
    return ExitStatus.INTERNAL_ERROR


def _warnings_to_stderr(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, *args: Any, **kwargs: Any
) -> None:
    """`warnings.showwarning` while a command runs: every warning is one 'lipcheck: warning:' line on
    stderr (one of torch or of the model with its category and where it was raised), none with --quiet."""
    if _invocation.quiet or os.environ.get("RANK", "0") != "0":  # rank 0 speaks for a sharded audit
        return
    text = " ".join(str(message).split())
    if not issubclass(category, LipcheckWarning):
        text = f"{category.__name__} at {filename}:{lineno}: {text}"
    typer.echo(f"lipcheck: warning: {text}", err=True)


class LipcheckGroup(typer.core.TyperGroup):
    """Runs a command and maps its outcome to an `ExitStatus`: the one place exit codes are decided.

    Usage errors (an unknown flag, a bad choice, a missing argument) are one line naming the flag and
    the fix, like every other error, instead of click's usage box.
    """

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        global _invocation
        argv = kwargs.get("args", args[0] if args else None)
        _invocation = _Invocation(argv=list(sys.argv[1:] if argv is None else argv))
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
            status = _exit_status(
                AuditFailedError(
                    f"model code raised SystemExit({error.code!r}): it cannot end lipcheck; remove the exit "
                    "from the model"
                )
            )
        except (Exception, KeyboardInterrupt) as error:
            if not standalone_mode:
                raise
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
        typer.echo(f"lipcheck: error: {message} (see '{command} --help')", err=True)
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


def _parse_json_object(text: str | None, flag: str) -> dict[str, Any]:
    import json

    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(
            f"{flag} {text!r} is not JSON ({error.msg}): give an object like '{{\"channels\": 4}}'"
        ) from None
    if not isinstance(value, dict):
        raise InputError(f"{flag} {text!r} is not a JSON object: give an object like '{{\"channels\": 4}}'")
    return value


def parse_model_args(pairs: list[str] | None) -> dict[str, Any]:
    """['sr=16000', 'mode=fast'] -> {'sr': 16000, 'mode': 'fast'}: JSON when the value parses."""
    import json

    kwargs: dict[str, Any] = {}
    for pair in pairs or []:
        key, equals, value = pair.partition("=")
        if not equals or not key.strip().isidentifier():
            raise InputError(
                f"--arg {pair!r} must look like KEY=VALUE with KEY a Python name, e.g. --arg sr=16000"
            )
        try:
            kwargs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key.strip()] = value
    return kwargs


def parse_assumptions(pairs: list[str] | None) -> dict[str, float]:
    """['aten.erf.default=1.13'] -> {'aten.erf.default': 1.13}: the `--assume OP=L` constants."""
    assumed: dict[str, float] = {}
    for pair in pairs or []:
        name, equals, value = pair.partition("=")
        try:
            constant = float(value)
        except ValueError:
            constant = float("nan")
        if not equals or not name.strip() or not constant >= 0 or constant == float("inf"):
            raise InputError(
                f"--assume {pair!r} must look like OP=L with L a finite Lipschitz constant >= 0, "
                "e.g. --assume aten.erf.default=1.13 (OP as the error that named it spells it)"
            )
        assumed[name.strip()] = constant
    return assumed


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} samples/s" if speed else "- samples/s", style="progress.data.speed")


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr, advanced by `run`'s calls (samples done, samples in all)."""
    if not enabled:
        yield None
        return
    bar = Progress(
        TextColumn("auditing"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("audit", total=None)

    def advance(done: int, total: int) -> None:
        bar.update(task, total=total, advance=done)

    with bar:
        yield advance


def _remember_debug(value: bool) -> bool:
    _invocation.debug = value
    return value


def _remember_quiet(value: bool) -> bool:
    _invocation.quiet = value
    return value


DebugOption = Annotated[
    bool,
    typer.Option("--debug", callback=_remember_debug, help="Show the traceback of an error."),
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", callback=_remember_quiet, help="No notes or warnings on stderr.")
]

# The flags that load a model, shared by `audit`, `bound` and `inspect`.

ArchOption = Annotated[
    str | None,
    typer.Option(
        "--arch",
        help="Architecture for weight-only files: path/to/file.py:factory or package.module:factory, "
        "a function returning the nn.Module (runs that code).",
        show_default=False,
    ),
]
ArchKwargsOption = Annotated[
    str | None,
    typer.Option(
        "--arch-kwargs",
        help="Keyword arguments of the --arch factory as a JSON object.",
        show_default=False,
    ),
]
TrustPickleOption = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Load a whole pickled module. This EXECUTES CODE from the model file: only for files "
        "from a source you trust.",
    ),
]

# The gate's rule flags and the report files, shared by `audit`, `gate` and `compare`.

FailAboveOption = Annotated[
    float | None,
    typer.Option(
        "--fail-above",
        help="Fail (exit 1) when the reduced sigma (see --reduction) exceeds X.",
        metavar="X",
        show_default=False,
    ),
]
FailAboveBoundOption = Annotated[
    float | None,
    typer.Option(
        "--fail-above-bound",
        help="Exit 1 when the certified upper bound exceeds X (audit: implies --bound; gate: the report's "
        "bound): the one rule that proves a property of the model rather than samples it.",
        metavar="X",
        show_default=False,
    ),
]
FailAboveSampleOption = Annotated[
    float | None,
    typer.Option(
        "--fail-above-sample",
        help="Fail when any one sample's sigma exceeds X; the report lists the failing samples.",
        metavar="X",
        show_default=False,
    ),
]
RequireConvergedOption = Annotated[
    bool,
    typer.Option(
        "--require-converged",
        help="Fail when a sample did not converge within --max-iter; the report lists them.",
    ),
]
BaselineOption = Annotated[
    Path | None,
    typer.Option(
        "--baseline",
        help="A JSON report of the same data and settings (e.g. the last release's) to compare with; "
        "needs --max-increase.",
        metavar="REPORT.json",
        show_default=False,
    ),
]
MaxIncreaseOption = Annotated[
    float | None,
    typer.Option(
        "--max-increase",
        help="Fail when the reduced sigma is more than PCT percent above the --baseline's (0: any rise).",
        metavar="PCT",
        show_default=False,
    ),
]
AllowMismatchOption = Annotated[
    bool,
    typer.Option(
        "--allow-mismatch",
        help="Compare with a report of other data or settings anyway (a warning says what differs).",
    ),
]
OutputOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--output",
        "-o",
        help="Write the report to FILE (atomically; never over an input of the command) instead of stdout; "
        "repeatable. The suffix sets the format: .json, .md (Markdown), .xml (JUnit), .html (a page with "
        "charts), .txt (table); any other takes --format (json).",
        metavar="FILE",
        show_default=False,
    ),
]
FormatOption = Annotated[
    Format | None,
    typer.Option(
        "--format",
        "-f",
        help="Report format. Default: table on a terminal, json when stdout is a pipe or with --output.",
        show_default=False,
    ),
]


def _rule_options(flags: dict[str, Any]) -> RuleOptions:
    """The gate's flags (`_RULE_FLAGS`, by name in a command's `locals()`) as `RuleOptions`, validated
    (InputError naming the flag)."""
    from lipcheck.report.gate import RuleOptions

    options = RuleOptions(**{name: flags[name] for name in _RULE_FLAGS})
    options.validate()
    return options


def _output_format(
    output_format: Format | None, outputs: Sequence[Destination], renderers: Renderers[Any]
) -> str:
    """--format, else table on a terminal, else json; InputError for a format this kind of report
    lacks (in --format, or in an --output's suffix)."""
    fmt = output_format.value if output_format is not None else None
    if fmt is not None:
        renderers.check(fmt, f"--format {fmt}")
    fmt = fmt or ("table" if not outputs and _is_terminal() else "json")
    for destination in outputs:
        renderers.check(format_for(destination.path, fmt), f"--output '{destination.path}'")
    return fmt


def _write(
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
            typer.echo(f"lipcheck: report written to {destination.path}", err=True)
    if outputs:
        return
    if fmt == "table":
        renderers.console(value, Console())
        return
    pieces = renderers.render(value, fmt)
    for piece in [pieces] if isinstance(pieces, str) else pieces:
        sys.stdout.write(piece)


def _write_report(report: Report, outputs: Sequence[Destination], fmt: str, quiet: bool) -> None:
    from lipcheck.present.render import REPORT

    _write(report, REPORT, outputs, fmt, quiet)


def _write_and_judge(
    value: Any,
    renderers: Renderers[Any],
    outputs: Sequence[Destination],
    fmt: str,
    quiet: bool,
    verdicts: Sequence[RuleVerdict],
) -> None:
    """Write `value` (as `_write`), then say the gate's verdict and exit 1 when a rule failed.

    When a write fails, the verdict is said all the same and the write's error (exit 2) wins over the
    gate's: the outputs a CI step reads are missing, so a passed gate must not look like success.
    """
    try:
        _write(value, renderers, outputs, fmt, quiet)
    except LipcheckError:
        _say_gate(verdicts, quiet)
        raise
    if _say_gate(verdicts, quiet):
        raise typer.Exit(ExitStatus.GATE_FAILED)


def _say_gate(verdicts: Sequence[RuleVerdict], quiet: bool) -> bool:
    """One line on stderr with the gate's verdict (and `::error::` lines in GitHub Actions); whether a
    rule failed."""
    from lipcheck.present.render import github_annotations

    failed = [verdict for verdict in verdicts if not verdict.passed]
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in github_annotations(failed):
            typer.echo(line, err=True)
    if failed:
        typer.echo(f"lipcheck: gate failed: {'; '.join(v.message for v in failed)}", err=True)
    elif verdicts and not quiet:
        typer.echo(f"lipcheck: gate passed: {', '.join(v.name for v in verdicts)}", err=True)
    return bool(failed)


def _is_terminal() -> bool:
    return sys.stdout.isatty()


# The flags of `lipcheck audit` alone.

ModelArgument = Annotated[
    Path,
    typer.Argument(
        metavar="MODEL",
        help="Model file: .pt2 (torch.export), TorchScript, .safetensors or a state dict with --arch, "
        "or a pickled module with --trust-pickle. Detected from the file's content.",
        show_default=False,
    ),
]
DataOption = Annotated[
    Path | None,
    typer.Option(
        "--data",
        "-d",
        help="Data: .npy (memory-mapped), .npz, .pt (a tensor or dict of tensors), .safetensors, "
        "or a folder of PNG/JPEG images. The first dimension indexes the samples.",
        show_default=False,
    ),
]
RandomOption = Annotated[
    str | None,
    typer.Option(
        "--random",
        help="Audit standard normal samples of this shape (without the batch), e.g. 20 or 3x32x32, "
        "instead of --data; needs --num-samples; seeded by --seed.",
        metavar="SHAPE",
        show_default=False,
    ),
]
NumSamplesOption = Annotated[
    int | None,
    typer.Option("--num-samples", min=1, help="Number of --random samples.", show_default=False),
]
DataKeyOption = Annotated[
    str | None,
    typer.Option(
        "--data-key", help="The array to audit in a data file that holds several.", show_default=False
    ),
]
LimitOption = Annotated[
    int | None,
    typer.Option("--limit", min=1, help="Audit only the first N samples.", metavar="N", show_default=False),
]
MaxReadBytesOption = Annotated[
    int,
    typer.Option(
        "--max-read-bytes",
        min=1,
        help="The largest array read whole into memory, as the file declares it: an .npz member (a .npy "
        "file is memory-mapped instead). Larger ones, and zip bombs, are refused before reading.",
        metavar="BYTES",
    ),
]
ModelArgOption = Annotated[
    list[str] | None,
    typer.Option(
        "--arg",
        help="Extra keyword argument of the model's forward, KEY=VALUE (repeatable); VALUE is parsed "
        "as JSON when it parses (sr=16000 is the int 16000), else passed as a string.",
        metavar="KEY=VALUE",
        show_default=False,
    ),
]
OutputKeyOption = Annotated[
    str | None,
    typer.Option(
        "--output-key",
        help="The output to audit when the model returns a dict (a key) or a tuple (an index).",
        show_default=False,
    ),
]
OperatorOption = Annotated[
    Operator,
    typer.Option(
        "--operator",
        help="Whose Jacobian to measure: the model f (J), fne: 2f - Id (2J - I; f is firmly nonexpansive "
        "at a sample iff its sigma <= 1), or residual: Id - f (I - J). fne and residual need an output "
        "of the input's shape; --bound and --search-steps then concern the same operator.",
    ),
]
MethodOption = Annotated[Method, typer.Option("--method", help="Solver: Lanczos or power iteration.")]
TolOption = Annotated[float, typer.Option("--tol", help="Target relative accuracy of each sigma.")]
ConfidenceOption = Annotated[
    float,
    typer.Option(
        "--confidence",
        help="Probability with which each row's sigma_upper bounds the exact norm from above "
        "(over the random start vector).",
    ),
]
MaxIterOption = Annotated[int, typer.Option("--max-iter", min=1, help="Most products with J^T J per sample.")]
SeedOption = Annotated[
    int, typer.Option("--seed", min=0, help="Seed of the start vector and of --random data.")
]
BatchSizeOption = Annotated[
    int, typer.Option("--batch-size", "-b", min=1, help="Samples per model call; bounds the memory.")
]
DeviceOption = Annotated[Device, typer.Option("--device", help="auto: CUDA when available, else the CPU.")]
DtypeOption = Annotated[Dtype, typer.Option("--dtype", help="Precision of the model and the data.")]
ReductionOption = Annotated[
    Reduction, typer.Option("--reduction", help="How sigma over the samples reduces to one value.")
]
SearchStepsOption = Annotated[
    int | None,
    typer.Option(
        "--search-steps",
        help="Worst-case search: from each sample, N steps of projected gradient ascent of sigma within "
        "--search-radius; rows add search_sigma and search_distance, and the summary's max counts them.",
        metavar="N",
        show_default=False,
    ),
]
SearchRadiusOption = Annotated[
    float | None,
    typer.Option(
        "--search-radius",
        help="The l2 radius R of the worst-case search around each sample (with --search-steps).",
        metavar="R",
        show_default=False,
    ),
]
WithBoundOption = Annotated[
    bool,
    typer.Option(
        "--bound",
        help="Also certify an upper bound on the Lipschitz constant at the data's sample shape (as "
        "`lipcheck bound`) and report the bracket [max found, upper bound].",
    ),
]
AuditAssumeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--assume",
        help="With --bound: a Lipschitz constant L for an operation lipcheck has no rule for, OP=L "
        "(repeatable); you take responsibility for it, and the report records it.",
        metavar="OP=L",
        show_default=False,
    ),
]
BoundMethodOption = Annotated[
    BoundMethod,
    typer.Option(
        "--bound-method",
        help="How the bound composes the layers' factors: liplt (the loop transformation: activations as "
        "their centre slope plus a bounded deviation, linear blocks merged and normed exactly where "
        "affordable; never above product) or product (the product of the factors along every path).",
    ),
]
SaveDirectionsOption = Annotated[
    Path | None,
    typer.Option(
        "--save-directions",
        help="Write each sample's most amplified unit input direction to FILE.safetensors: 'directions' "
        "(N, ...) like the data, largest sigma first, with 'indices', 'sigma' and 'residual' (N,) alongside.",
        metavar="FILE.safetensors",
        show_default=False,
    ),
]
DirectionsTopOption = Annotated[
    int | None,
    typer.Option(
        "--top",
        min=1,
        help="With --save-directions: keep only the K samples of largest sigma (memory and file of K rows).",
        metavar="K",
        show_default=False,
    ),
]
AuditQuietOption = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", callback=_remember_quiet, help="No progress bar, notes or warnings on stderr."
    ),
]


WorkersOption = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=1,
        help="Audit with N processes on this machine, each a shard of whole batches (torchrun "
        "--standalone --nproc-per-node N, one thread each); one report, the same rows as one process.",
        metavar="N",
        show_default=False,
    ),
]
ResumeOption = Annotated[
    Path | None,
    typer.Option(
        "--resume",
        help="Keep a progress journal in folder DIR (created; fsync'd after every batch) and continue the "
        "audit it holds: rerun the same command after a kill. A journal of another audit is refused.",
        metavar="DIR",
        show_default=False,
    ),
]
WorkerTimeoutOption = Annotated[
    float,
    typer.Option(
        "--worker-timeout",
        help="Under torchrun or --workers: seconds a rank waits for the others at a batch before the "
        "audit fails (a rank died or hangs).",
        metavar="SECONDS",
    ),
]


AUDIT_EPILOG = """\
**Examples**

```
lipcheck audit model.pt2 --data inputs.npy
lipcheck audit model.pt2 --data inputs.npz --data-key images --limit 1000 --format json | jq .summary
lipcheck audit weights.safetensors --arch nets.py:make_denoiser --arch-kwargs '{"channels": 4}' --data x.pt
lipcheck audit model.pt2 --random 3x32x32 --num-samples 256 --seed 1 --dtype float64
lipcheck audit model.pt2 --data inputs.npy --search-steps 10 --search-radius 0.5 --bound
lipcheck audit denoiser.pt2 --data images.npy --operator fne --fail-above 1 --bound
lipcheck audit model.pt2 --data images/ --fail-above 2.5 --output report.json
lipcheck audit model.pt2 --data x.npy --bound -o report.html   # charts; needs pip install "lipcheck[html]"
lipcheck audit model.pt2 --data x.npy --save-directions worst.safetensors --top 100
lipcheck audit model.pt2 --data x.npy --baseline release.json --max-increase 5 --require-converged \\
    -o report.json -o junit.xml -o summary.md
lipcheck audit model.pt2 --data big.npy --workers 4 --resume audit-journal/ -o report.json
torchrun --standalone --nproc-per-node 8 -m lipcheck audit model.pt2 --data big.npy -o report.json
```

Exit codes: 0 done (gate passed), 1 gate failed (a rule failed), 2 bad input or usage,
3 the audit failed (NaN output, no sample converged, one sample out of memory, a rank failed or
died), 130 interrupted, 70 internal error. A batch out of memory is split in halves; every rank of a
sharded audit exits with the same code.
"""


@app.command(epilog=AUDIT_EPILOG)
def audit(
    model: ModelArgument,
    data: DataOption = None,
    random: RandomOption = None,
    num_samples: NumSamplesOption = None,
    data_key: DataKeyOption = None,
    limit: LimitOption = None,
    max_read_bytes: MaxReadBytesOption = MAX_READ_BYTES,
    arch: ArchOption = None,
    arch_kwargs: ArchKwargsOption = None,
    trust_pickle: TrustPickleOption = False,
    model_arg: ModelArgOption = None,
    output_key: OutputKeyOption = None,
    operator: OperatorOption = Operator.model,
    method: MethodOption = Method.lanczos,
    tol: TolOption = 1e-4,
    confidence: ConfidenceOption = 0.99,
    max_iter: MaxIterOption = 200,
    seed: SeedOption = 0,
    batch_size: BatchSizeOption = 64,
    device: DeviceOption = Device.auto,
    dtype: DtypeOption = Dtype.float32,
    reduction: ReductionOption = Reduction.max,
    search_steps: SearchStepsOption = None,
    search_radius: SearchRadiusOption = None,
    with_bound: WithBoundOption = False,
    assume: AuditAssumeOption = None,
    bound_method: BoundMethodOption = BoundMethod.liplt,
    fail_above_bound: FailAboveBoundOption = None,
    output_format: FormatOption = None,
    output: OutputOption = None,
    save_directions: SaveDirectionsOption = None,
    top: DirectionsTopOption = None,
    quiet: AuditQuietOption = False,
    fail_above: FailAboveOption = None,
    fail_above_sample: FailAboveSampleOption = None,
    require_converged: RequireConvergedOption = False,
    baseline: BaselineOption = None,
    max_increase: MaxIncreaseOption = None,
    allow_mismatch: AllowMismatchOption = False,
    workers: WorkersOption = None,
    resume: ResumeOption = None,
    worker_timeout: WorkerTimeoutOption = WORKER_TIMEOUT_SECONDS,
    debug: DebugOption = False,
) -> None:
    """Audit MODEL on a data set: the spectral norm of its Jacobian at every sample (or of the Jacobian
    of 2f - Id or Id - f, with --operator).

    Prints the worst samples and a summary (table), or the full report (json, markdown, junit, html).
    The gate flags (--fail-above, --fail-above-sample, --require-converged, --baseline with
    --max-increase) are rules recorded in the report; any failed rule exits 1.
    """
    from lipcheck.auditing.run import give_back_freed_memory, run
    from lipcheck.io.outputs import prepare_outputs
    from lipcheck.present.render import REPORT

    flags = dict(locals())
    request = _audit_request(flags)
    outputs = prepare_outputs(request.outputs, request.inputs())
    directions_file = (
        prepare_outputs([request.save_directions], request.inputs(), "--save-directions")
        if request.save_directions is not None
        else []
    )
    fmt = _output_format(output_format, outputs, REPORT)
    if workers is not None and workers > 1 and "WORLD_SIZE" not in os.environ:
        from lipcheck.auditing.distributed import launch_workers

        raise typer.Exit(launch_workers(workers, _invocation.argv))
    give_back_freed_memory()  # memory flat in the number of samples
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 shows progress and writes
    show_progress = main_rank and not quiet and sys.stderr.isatty() and (fmt == "table" or bool(outputs))
    try:
        with _progress(show_progress) as progress:
            report = run(request, progress=progress)
    except AuditFailedError as failure:
        if failure.report is not None and main_rank:  # no sample converged: the figures are written
            _write_report(failure.report, outputs, fmt, quiet)
        raise
    if not main_rank:  # the same report and verdict as rank 0's, which writes and says it
        raise typer.Exit(ExitStatus.GATE_FAILED if report.gate.passed is False else ExitStatus.PASSED)
    try:
        for destination in directions_file:
            _write_directions(report, destination, request.top, quiet)
    except LipcheckError:
        _say_gate(report.gate.rules, quiet)  # as `_write_and_judge` does when a report cannot be written
        raise
    _write_and_judge(report, REPORT, outputs, fmt, quiet, report.gate.rules)


def _write_directions(report: Report, destination: Destination, top: int | None, quiet: bool) -> None:
    """Write the report's kept directions (`--save-directions`, `--top`) as a safetensors file."""
    from lipcheck.io.outputs import write_output

    assert report.directions is not None
    metadata = {
        "model": report.model.path,
        "model_sha256": report.model.sha256,
        "data": report.data.path or "random",
        "data_sha256": report.data.sha256 or "",
        "dtype": report.settings.dtype,
        "order": "largest sigma first",
        "lipcheck_version": report.lipcheck_version,
    }
    try:
        write_output(destination, report.directions.to_safetensors(top, metadata))
    except OSError as error:
        reason = error.strerror or error
        raise InputError(f"--save-directions '{destination.path}' cannot be written ({reason})") from error
    if not quiet:
        typer.echo(f"lipcheck: directions written to {destination.path}", err=True)


def _audit_request(flags: dict[str, Any]) -> AuditRequest:
    """The `AuditRequest` of `lipcheck audit`'s flags, validated before anything is loaded."""
    from lipcheck.auditing.request import AuditRequest, DataSource, ModelSource
    from lipcheck.io.datasets import parse_shape
    from lipcheck.report import Settings

    random = flags["random"]
    settings = Settings(
        operator=flags["operator"].value,
        method=flags["method"].value,
        tol=flags["tol"],
        confidence=flags["confidence"],
        max_iter=flags["max_iter"],
        seed=flags["seed"],
        batch_size=flags["batch_size"],
        device=flags["device"].value,
        dtype=flags["dtype"].value,
        reduction=flags["reduction"].value,
        search_steps=flags["search_steps"],
        search_radius=flags["search_radius"],
        output_key=flags["output_key"],
        model_kwargs=parse_model_args(flags["model_arg"]),
    )
    return AuditRequest(
        model=ModelSource(
            flags["model"],
            arch=flags["arch"],
            arch_kwargs=_parse_json_object(flags["arch_kwargs"], "--arch-kwargs"),
            trust_pickle=flags["trust_pickle"],
        ),
        data=DataSource(
            flags["data"],
            key=flags["data_key"],
            limit=flags["limit"],
            random_shape=parse_shape(random) if random is not None else None,
            num_samples=flags["num_samples"],
            max_read_bytes=flags["max_read_bytes"],
        ),
        settings=settings,
        rules=_rule_options(flags),
        bound=flags["with_bound"],
        assume=parse_assumptions(flags["assume"]),
        bound_method=flags["bound_method"].value,
        outputs=tuple(flags["output"] or ()),
        format=flags["output_format"],
        resume=flags["resume"],
        worker_timeout=flags["worker_timeout"],
        save_directions=flags["save_directions"],
        top=flags["top"],
        pictures=_pictures(flags["output"] or (), flags["output_format"]),
    )


def _pictures(outputs: Sequence[Path], output_format: Format | None) -> int:
    """How many of the worst samples keep their inputs: those an HTML report draws, when one is written."""
    from lipcheck.present.html import PICTURES

    fallback = output_format.value if output_format is not None else "json"
    pages = [path for path in outputs if format_for(path, fallback) == Format.html]
    return PICTURES if pages or (not outputs and output_format == Format.html) else 0


# The flags of `RuleOptions`: the parameters of `audit` and `gate` that set it.
_RULE_FLAGS = (
    "fail_above",
    "fail_above_sample",
    "require_converged",
    "fail_above_bound",
    "baseline",
    "max_increase",
    "allow_mismatch",
)


BOUND_EPILOG = """\
**Examples**

```
lipcheck bound model.pt2 --input-shape 3x32x32
lipcheck bound model.pt2 --input-shape 3x32x32 --bound-method product   # to compare the two methods
lipcheck bound model.pt2 --input-shape 20 --format json | jq .upper_bound
lipcheck bound weights.safetensors --arch nets.py:make_denoiser --input-shape 1,64,64 --format markdown
lipcheck bound model.pt2 --input-shape 3x32x32 --assume aten.erf.default=1.13 --output bound.json
lipcheck bound weights.pt --arch nets.py:make_drunet --input-shape 1x32x32 --arg sigma=0.1
lipcheck audit model.pt2 --data x.npy --bound --fail-above-bound 10
```

Exit codes: 0 done, 2 bad input or usage, or a model that cannot be bounded (TorchScript, a graph
torch.export cannot capture, an operation without a rule: the error names it and the --assume to pass),
3 a bound that overflows float64 (no finite bound is certified), or the model's code exited (sys.exit)
while it was loaded or traced.
"""


InputShapeOption = Annotated[
    str | None,
    typer.Option(
        "--input-shape",
        help="The shape of one input, without the batch dimension: 2x8x8, 2,8,8 or 20.",
        metavar="SHAPE",
        show_default=False,
    ),
]
BoundAssumeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--assume",
        help="A Lipschitz constant L for an operation lipcheck has no rule for, OP=L as the error names "
        "it (repeatable); you take responsibility for it, and the report records it.",
        metavar="OP=L",
        show_default=False,
    ),
]
BoundOutputOption = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="Write the report to this file (atomically) instead of stdout.",
        show_default=False,
    ),
]


@app.command(epilog=BOUND_EPILOG)
def bound(
    model: Annotated[
        Path,
        typer.Argument(
            metavar="MODEL",
            help="Model file, as for `lipcheck audit`: .pt2 (torch.export), .safetensors or a state dict "
            "with --arch, or a pickled module with --trust-pickle. TorchScript cannot be bounded.",
            show_default=False,
        ),
    ],
    input_shape: InputShapeOption = None,
    arch: ArchOption = None,
    arch_kwargs: ArchKwargsOption = None,
    trust_pickle: TrustPickleOption = False,
    model_arg: ModelArgOption = None,
    assume: BoundAssumeOption = None,
    bound_method: BoundMethodOption = BoundMethod.liplt,
    operator: Annotated[
        Operator,
        typer.Option(
            "--operator",
            help="Whose Lipschitz constant to bound: the model f, fne: 2f - Id (a bound <= 1 proves f firmly "
            "nonexpansive), or residual: Id - f. fne and residual need an output of the input's shape; "
            "the operator is exported as one graph and bounded through it.",
        ),
    ] = Operator.model,
    output_format: Annotated[
        Format | None,
        typer.Option(
            "--format",
            "-f",
            help="Report format (table, json or markdown; a bound has no JUnit form). Default: table on a "
            "terminal, json when stdout is a pipe or with --output.",
            show_default=False,
        ),
    ] = None,
    output: BoundOutputOption = None,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Certify an upper bound on MODEL's global l2 Lipschitz constant, composed layer by layer.

    The model is exported with torch.export at one input of --input-shape; every operation of the
    graph gets a rule (exact spectral norms where the layer allows it), composed over the graph by the
    loop transformation (--bound-method liplt, the default) or as products along a path and sums at
    residual connections (--bound-method product). Prints every layer factor, the terms, and the total.
    """
    import time

    from lipcheck.auditing.run import run_bound
    from lipcheck.io.datasets import parse_shape
    from lipcheck.io.models import arch_file, load_model
    from lipcheck.io.outputs import prepare_outputs
    from lipcheck.present.render import BOUND_REPORT

    if input_shape is None:
        raise InputError(
            "give the shape of one input with --input-shape SHAPE, without the batch, e.g. 3x32x32"
        )
    shape = parse_shape(input_shape, "--input-shape")
    assumed = parse_assumptions(assume)
    model_kwargs = parse_model_args(model_arg)
    kwargs = _parse_json_object(arch_kwargs, "--arch-kwargs")
    outputs = prepare_outputs(
        [output] if output is not None else [],
        {"the model (MODEL)": model, "the --arch file": arch_file(arch)},
    )
    fmt = _output_format(output_format, outputs, BOUND_REPORT)
    begin = time.perf_counter()
    loaded = load_model(model, arch=arch, arch_kwargs=kwargs, trust_pickle=trust_pickle)
    report = run_bound(
        loaded,
        shape,
        assume=assumed,
        model_kwargs=model_kwargs,
        load_seconds=time.perf_counter() - begin,
        method=bound_method.value,
        operator=operator.value,
    )
    _write(report, BOUND_REPORT, outputs, fmt, quiet)


INSPECT_EPILOG = """\
**Examples**

```
lipcheck inspect model.pt2
lipcheck inspect weights.safetensors --arch nets.py:make_denoiser --json | jq .parameters
```
"""


@app.command(epilog=INSPECT_EPILOG)
def inspect(
    model: Annotated[Path, typer.Argument(help="Model file, as for `lipcheck audit`.", show_default=False)],
    arch: Annotated[
        str | None,
        typer.Option(
            "--arch", help="Architecture factory for weight-only files (runs that code).", show_default=False
        ),
    ] = None,
    arch_kwargs: ArchKwargsOption = None,
    trust_pickle: Annotated[
        bool,
        typer.Option("--trust-pickle", help="Load a whole pickled module (EXECUTES CODE from the file)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of text.")] = False,
    debug: DebugOption = False,
) -> None:
    """Load MODEL and print what was loaded (format, sha256, size, parameters, input spec); no audit."""
    from lipcheck.auditing.run import model_section
    from lipcheck.io.models import load_model
    from lipcheck.present.render import render_model_json, render_model_text

    kwargs = _parse_json_object(arch_kwargs, "--arch-kwargs")
    loaded = load_model(model, arch=arch, arch_kwargs=kwargs, trust_pickle=trust_pickle)
    section = model_section(loaded)
    sys.stdout.write(render_model_json(section) if as_json else render_model_text(section))


GATE_EPILOG = """\
**Examples**

```
lipcheck gate report.json --fail-above 2.5
lipcheck gate report.json --fail-above-sample 3 --require-converged -o junit.xml
lipcheck gate report.json --baseline release.json --max-increase 5 -o gate.json -o summary.md
```

Exit codes: 0 every rule passed, 1 a rule failed, 2 bad input or usage (a missing or corrupt report,
a baseline of other data or settings without --allow-mismatch).
"""


@app.command(epilog=GATE_EPILOG)
def gate(
    report_path: Annotated[
        Path,
        typer.Argument(
            metavar="REPORT.json",
            help="A JSON report written by `lipcheck audit --output`.",
            show_default=False,
        ),
    ],
    fail_above: FailAboveOption = None,
    fail_above_sample: FailAboveSampleOption = None,
    require_converged: RequireConvergedOption = False,
    baseline: BaselineOption = None,
    max_increase: MaxIncreaseOption = None,
    allow_mismatch: AllowMismatchOption = False,
    fail_above_bound: FailAboveBoundOption = None,
    output_format: FormatOption = None,
    output: OutputOption = None,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Judge a saved audit report by the gate's rules again, without recomputing anything.

    The report's gate is replaced by these rules' verdicts; write it (JSON, Markdown, JUnit, table)
    with --output, so one audit can be gated several ways.
    """
    from lipcheck.io.outputs import prepare_outputs
    from lipcheck.present.render import REPORT
    from lipcheck.report import read_report
    from lipcheck.report.compare import comparable
    from lipcheck.report.gate import judge, rules_for

    outputs = prepare_outputs(
        output or [], {"the report judged (REPORT.json)": report_path, "the baseline (--baseline)": baseline}
    )
    fmt = _output_format(output_format, outputs, REPORT)
    options = _rule_options(dict(locals()))
    if options.empty:
        raise InputError(
            "give at least one rule: --fail-above X, --fail-above-sample X, --require-converged, "
            "--fail-above-bound X, or --baseline REPORT.json --max-increase PCT"
        )
    base = options.read_baseline()
    saved = read_report(report_path)
    judged = f"report '{report_path}'"
    mismatched: list[str] = []
    if base is not None:
        what = f"baseline report '{baseline}' and {judged}"
        mismatched = comparable(base, saved.settings, saved.data, what, allow_mismatch)
    rules = rules_for(options, saved, baseline=base, mismatched=mismatched, judged=judged)
    report = replace(saved, gate=judge(rules, saved))
    _write_and_judge(report, REPORT, outputs, fmt, quiet, report.gate.rules)


COMPARE_EPILOG = """\
**Examples**

```
lipcheck compare release.json report.json
lipcheck compare release.json report.json --max-increase 5 --top 20
lipcheck compare release.json report.json --format markdown >> "$GITHUB_STEP_SUMMARY"
lipcheck compare old.json new.json --allow-mismatch -o diff.json
```

Exit codes: 0 compared (no regression past --max-increase), 1 the reduced sigma rose more than
--max-increase percent, 2 bad input or usage (the reports are not comparable without --allow-mismatch).
"""


CompareMaxIncreaseOption = Annotated[
    float | None,
    typer.Option(
        "--max-increase",
        help="Exit 1 when NEW's reduced sigma is more than PCT percent above BASE's.",
        metavar="PCT",
        show_default=False,
    ),
]
TopOption = Annotated[
    int, typer.Option("--top", min=0, help="Show the K samples whose sigma rose most.", metavar="K")
]
CompareAllowMismatchOption = Annotated[
    bool,
    typer.Option(
        "--allow-mismatch",
        help="Compare reports of other data or settings anyway, on the sample indices both have.",
    ),
]
CompareFormatOption = Annotated[
    Format | None,
    typer.Option(
        "--format", "-f", help="Format. Default: table on a terminal, else json.", show_default=False
    ),
]


@app.command(epilog=COMPARE_EPILOG)
def compare(
    base_path: Annotated[
        Path,
        typer.Argument(metavar="BASE.json", help="The report to compare with.", show_default=False),
    ],
    new_path: Annotated[
        Path,
        typer.Argument(metavar="NEW.json", help="The report compared with BASE.json.", show_default=False),
    ],
    max_increase: CompareMaxIncreaseOption = None,
    top: TopOption = 10,
    allow_mismatch: CompareAllowMismatchOption = False,
    output_format: CompareFormatOption = None,
    output: OutputOption = None,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Compare two audit reports: per-sample changes matched by index, the samples that rose most, the
    change of every summary figure.
    """
    from lipcheck.io.outputs import prepare_outputs
    from lipcheck.present.render import COMPARISON
    from lipcheck.report import path_text, read_report
    from lipcheck.report.compare import comparable, compare_reports
    from lipcheck.report.gate import RuleOptions, check_thresholds, rules_for

    outputs = prepare_outputs(
        output or [], {"the base report (BASE.json)": base_path, "the new report (NEW.json)": new_path}
    )
    fmt = _output_format(output_format, outputs, COMPARISON)
    check_thresholds({"--max-increase": max_increase})
    options = RuleOptions(baseline=base_path, max_increase=max_increase, allow_mismatch=allow_mismatch)
    base, new = read_report(base_path), read_report(new_path)
    found = comparable(
        base, new.settings, new.data, f"reports '{base_path}' and '{new_path}'", allow_mismatch
    )
    rules = rules_for(options, new, baseline=base, mismatched=found)
    comparison = compare_reports(
        base, new, base_path=path_text(base_path), new_path=path_text(new_path), top=top, rules=rules,
        mismatched=found,
    )  # fmt: skip
    _write_and_judge(comparison, COMPARISON, outputs, fmt, quiet, comparison.gate.rules)


def main() -> None:
    """The `lipcheck` entry point: `LipcheckGroup.main` maps every outcome to an `ExitStatus`."""
    app()
