"""The `lipcheck` command line: parse, call, render, exit code.

Exit codes: 0 success (gate passed or no gate), 1 the gate failed, 2 a usage or input error (one line
on stderr, no traceback unless --debug), 3 the audit itself failed (NaN output, no sample converged).
`audit`, `gate` and `compare` share the gate's rule flags and the way reports are written.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import Enum
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
from lipcheck.errors import AuditFailedError, InputError, LipcheckError

# Click's exception classes: a dependency of older typer, vendored as a private module by newer typer;
# reached through the public BadParameter so that both work.
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _OneLineUsageErrors(typer.core.TyperGroup):
    """Usage errors (an unknown flag, a bad choice, a missing argument) as one line, like every other error.

    Click would print a usage box of several lines; lipcheck's contract is one line on stderr that names
    the flag and the fix, and exit 2.
    """

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except _ClickException as error:
            if not standalone_mode:
                raise
            context = getattr(error, "ctx", None)
            if type(error).__name__ == "NoArgsIsHelpError" and context is not None:
                typer.echo(context.get_help(), err=True)
                sys.exit(2)
            command = context.command_path if context is not None else "lipcheck"
            message = " ".join(error.format_message().replace("Value error, ", "").split())
            typer.echo(f"lipcheck: error: {message} (see '{command} --help')", err=True)
            sys.exit(error.exit_code)
        except typer.Abort:
            if not standalone_mode:
                raise
            typer.echo("lipcheck: aborted", err=True)
            sys.exit(1)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


if TYPE_CHECKING:
    from lipcheck.gate import MaxIncrease, Rule
    from lipcheck.outputs import Destination
    from lipcheck.report import DataSection, Report, RuleVerdict, Settings

app = typer.Typer(
    cls=_OneLineUsageErrors,
    name="lipcheck",
    help="Audit how much a PyTorch model can amplify a perturbation of its input.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)


class Method(str, Enum):
    lanczos = "lanczos"
    power = "power"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Dtype(str, Enum):
    float32 = "float32"
    float64 = "float64"


class Reduction(str, Enum):
    max = "max"
    mean = "mean"
    sum = "sum"
    median = "median"
    p95 = "p95"


class Format(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"
    junit = "junit"


class BoundFormat(str, Enum):
    """The formats of `lipcheck bound`'s report (it has no rules, so no JUnit)."""

    table = "table"
    json = "json"
    markdown = "markdown"


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


@contextmanager
def _errors_to_exit_codes(debug: bool) -> Iterator[None]:
    """LipcheckError -> one line on stderr and exit 2 (3 for AuditFailedError); --debug adds the traceback."""
    try:
        yield
    except LipcheckError as error:
        if debug:
            traceback.print_exc(file=sys.stderr)
        message = " ".join(str(error).split())
        typer.echo(f"lipcheck: error: {message}", err=True)
        raise typer.Exit(3 if isinstance(error, AuditFailedError) else 2) from None


def _parse_json_object(text: str | None, flag: str) -> dict[str, Any]:
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
def _progress(enabled: bool, total: int) -> Iterator[Callable[[int], None] | None]:
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
    task = bar.add_task("audit", total=total)
    with bar:
        yield lambda done: bar.advance(task, done)


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
        "repeatable. The suffix sets the format: .json, .md (Markdown), .xml (JUnit), .txt (table); any "
        "other takes --format (json).",
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


@dataclass(frozen=True)
class _Baseline:
    """`--baseline PATH --max-increase PERCENT [--allow-mismatch]`, the baseline report loaded."""

    path: Path
    report: Report
    percent: float
    allow_mismatch: bool

    def rule(self, settings: Settings, data: DataSection, judged: str, quiet: bool) -> MaxIncrease:
        """The max_increase rule for figures measured with `settings` on `data` (`judged` names them);
        InputError when they do not compare with the baseline's, unless --allow-mismatch (then a
        warning on stderr)."""
        from lipcheck.compare import mismatches
        from lipcheck.gate import MaxIncrease

        found = mismatches(self.report, settings, data)
        what = f"baseline report '{self.path}' and {judged}"
        _check_comparable(found, what, self.allow_mismatch, quiet)
        return MaxIncrease(self.percent, self.report.summary.value, str(self.path), tuple(found))


def _check_comparable(found: Sequence[str], what: str, allow_mismatch: bool, quiet: bool) -> None:
    if found and not allow_mismatch:
        raise InputError(
            f"{what} differ: {'; '.join(found)}: audit the same data with the same settings, or pass "
            "--allow-mismatch to compare anyway"
        )
    if found and not quiet:
        typer.echo(f"lipcheck: warning: comparing despite: {'; '.join(found)}", err=True)


def _check_thresholds(thresholds: dict[str, float | None]) -> None:
    """InputError naming the flag of a threshold that is negative or not finite."""
    for flag, value in thresholds.items():
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise InputError(f"{flag} must be a number >= 0, got {value:g}")


def _gate_rules(
    fail_above: float | None,
    fail_above_sample: float | None,
    require_converged: bool,
    baseline: Path | None,
    max_increase: float | None,
    allow_mismatch: bool,
) -> tuple[list[Rule], _Baseline | None]:
    """The rules of the gate flags, and the baseline to build the max_increase rule from once the
    judged figures' settings and data are known; InputError for flags that do not go together."""
    from lipcheck.gate import FailAbove, FailAboveSample, RequireConverged
    from lipcheck.report import read_report

    _check_thresholds(
        {"--fail-above": fail_above, "--fail-above-sample": fail_above_sample, "--max-increase": max_increase}
    )
    if max_increase is not None and baseline is None:
        raise InputError("--max-increase needs --baseline REPORT.json, the report to compare with")
    if baseline is not None and max_increase is None:
        raise InputError(
            "--baseline needs --max-increase PCT, how many percent the reduced sigma may rise (0: none)"
        )
    if allow_mismatch and baseline is None:
        raise InputError("--allow-mismatch goes with --baseline REPORT.json --max-increase PCT")
    rules: list[Rule] = []
    if fail_above is not None:
        rules.append(FailAbove(fail_above))
    if fail_above_sample is not None:
        rules.append(FailAboveSample(fail_above_sample))
    if require_converged:
        rules.append(RequireConverged())
    if baseline is None or max_increase is None:
        return rules, None
    report = read_report(baseline, "baseline report (--baseline)")
    return rules, _Baseline(baseline, report, max_increase, allow_mismatch)


def _output_format(output_format: Format | BoundFormat | None, outputs: Sequence[Destination]) -> str:
    """--format, else table on a terminal, else json."""
    if output_format is not None:
        return output_format.value
    return "table" if not outputs and _is_terminal() else "json"


def _write(
    outputs: Sequence[Destination],
    fmt: str,
    quiet: bool,
    text: Callable[[str], str | Iterable[str]],
    table: Callable[[Console], None],
) -> None:
    """Write `text(format)` (a string or its pieces) to each output (its format from its suffix, else
    `fmt`), or to stdout."""
    from lipcheck.outputs import write_output
    from lipcheck.render import format_for

    for destination in outputs:
        try:
            write_output(destination, text(format_for(destination.path, fmt)))
        except OSError as error:
            reason = error.strerror or error
            raise InputError(f"--output '{destination.path}' cannot be written ({reason})") from error
        if not quiet:
            typer.echo(f"lipcheck: report written to {destination.path}", err=True)
    if outputs:
        return
    if fmt == "table":
        table(Console())
        return
    pieces = text(fmt)
    for piece in [pieces] if isinstance(pieces, str) else pieces:
        sys.stdout.write(piece)


def _write_report(report: Report, outputs: Sequence[Destination], fmt: str, quiet: bool) -> None:
    from lipcheck.render import render_chunks, render_table

    _write(
        outputs,
        fmt,
        quiet,
        lambda name: render_chunks(report, name),
        lambda console: render_table(report, console),
    )


def _exit_on_gate(verdicts: Sequence[RuleVerdict], quiet: bool) -> None:
    """Exit 1 when a rule failed, after one line on stderr (and `::error::` lines in GitHub Actions)."""
    from lipcheck.render import github_annotations

    failed = [verdict for verdict in verdicts if not verdict.passed]
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in github_annotations(failed):
            typer.echo(line, err=True)
    if failed:
        typer.echo(f"lipcheck: gate failed: {'; '.join(v.message for v in failed)}", err=True)
        raise typer.Exit(1)
    if verdicts and not quiet:
        typer.echo(f"lipcheck: gate passed: {', '.join(v.name for v in verdicts)}", err=True)


AUDIT_EPILOG = """\
**Examples**

```
lipcheck audit model.pt2 --data inputs.npy
lipcheck audit model.pt2 --data inputs.npz --data-key images --limit 1000 --format json | jq .summary
lipcheck audit weights.safetensors --arch nets.py:make_denoiser --arch-kwargs '{"channels": 4}' --data x.pt
lipcheck audit model.pt2 --random 3x32x32 --num-samples 256 --seed 1 --dtype float64
lipcheck audit model.pt2 --data inputs.npy --search-steps 10 --search-radius 0.5 --bound
lipcheck audit model.pt2 --data images/ --fail-above 2.5 --output report.json
lipcheck audit model.pt2 --data x.npy --baseline release.json --max-increase 5 --require-converged \\
    -o report.json -o junit.xml -o summary.md
```

Exit codes: 0 done (gate passed), 1 gate failed (a rule failed), 2 bad input or usage,
3 the audit failed (NaN output, no sample converged).
"""


@app.command(epilog=AUDIT_EPILOG)
def audit(
    model: Annotated[
        Path,
        typer.Argument(
            metavar="MODEL",
            help="Model file: .pt2 (torch.export), TorchScript, .safetensors or a state dict with --arch, "
            "or a pickled module with --trust-pickle. Detected from the file's content.",
            show_default=False,
        ),
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            "-d",
            help="Data: .npy (memory-mapped), .npz, .pt (a tensor or dict of tensors), .safetensors, "
            "or a folder of PNG/JPEG images. The first dimension indexes the samples.",
            show_default=False,
        ),
    ] = None,
    random: Annotated[
        str | None,
        typer.Option(
            "--random",
            help="Audit standard normal samples of this shape (without the batch), e.g. 20 or 3x32x32, "
            "instead of --data; needs --num-samples; seeded by --seed.",
            metavar="SHAPE",
            show_default=False,
        ),
    ] = None,
    num_samples: Annotated[
        int | None,
        typer.Option("--num-samples", min=1, help="Number of --random samples.", show_default=False),
    ] = None,
    data_key: Annotated[
        str | None,
        typer.Option(
            "--data-key", help="The array to audit in a data file that holds several.", show_default=False
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", min=1, help="Audit only the first N samples.", metavar="N", show_default=False
        ),
    ] = None,
    arch: ArchOption = None,
    arch_kwargs: ArchKwargsOption = None,
    trust_pickle: TrustPickleOption = False,
    model_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--arg",
            help="Extra keyword argument of the model's forward, KEY=VALUE (repeatable); VALUE is parsed "
            "as JSON when it parses (sr=16000 is the int 16000), else passed as a string.",
            metavar="KEY=VALUE",
            show_default=False,
        ),
    ] = None,
    output_key: Annotated[
        str | None,
        typer.Option(
            "--output-key",
            help="The output to audit when the model returns a dict (a key) or a tuple (an index).",
            show_default=False,
        ),
    ] = None,
    method: Annotated[Method, typer.Option("--method", help="Solver: Lanczos or power iteration.")] = (
        Method.lanczos
    ),
    tol: Annotated[float, typer.Option("--tol", help="Target relative accuracy of each sigma.")] = 1e-4,
    confidence: Annotated[
        float,
        typer.Option(
            "--confidence",
            help="Probability with which each row's sigma_upper bounds the exact norm from above "
            "(over the random start vector).",
        ),
    ] = 0.99,
    max_iter: Annotated[
        int, typer.Option("--max-iter", min=1, help="Most products with J^T J per sample.")
    ] = 200,
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Seed of the start vector and of --random data.")
    ] = 0,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="Samples per model call; bounds the memory.")
    ] = 64,
    device: Annotated[
        Device, typer.Option("--device", help="auto: CUDA when available, else the CPU.")
    ] = Device.auto,
    dtype: Annotated[Dtype, typer.Option("--dtype", help="Precision of the model and the data.")] = (
        Dtype.float32
    ),
    reduction: Annotated[
        Reduction, typer.Option("--reduction", help="How sigma over the samples reduces to one value.")
    ] = Reduction.max,
    search_steps: Annotated[
        int | None,
        typer.Option(
            "--search-steps",
            help="Worst-case search: from each sample, N steps of projected gradient ascent of sigma within "
            "--search-radius; rows add search_sigma and search_distance, and the summary's max counts them.",
            metavar="N",
            show_default=False,
        ),
    ] = None,
    search_radius: Annotated[
        float | None,
        typer.Option(
            "--search-radius",
            help="The l2 radius R of the worst-case search around each sample (with --search-steps).",
            metavar="R",
            show_default=False,
        ),
    ] = None,
    with_bound: Annotated[
        bool,
        typer.Option(
            "--bound",
            help="Also certify an upper bound on the Lipschitz constant at the data's sample shape (as "
            "`lipcheck bound`) and report the bracket [max found, upper bound].",
        ),
    ] = False,
    assume: Annotated[
        list[str] | None,
        typer.Option(
            "--assume",
            help="With --bound: a Lipschitz constant L for an operation lipcheck has no rule for, OP=L "
            "(repeatable); you take responsibility for it, and the report records it.",
            metavar="OP=L",
            show_default=False,
        ),
    ] = None,
    fail_above_bound: FailAboveBoundOption = None,
    output_format: FormatOption = None,
    output: OutputOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes on stderr.")] = False,
    fail_above: FailAboveOption = None,
    fail_above_sample: FailAboveSampleOption = None,
    require_converged: RequireConvergedOption = False,
    baseline: BaselineOption = None,
    max_increase: MaxIncreaseOption = None,
    allow_mismatch: AllowMismatchOption = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
) -> None:
    """Audit MODEL on a data set: the spectral norm of its Jacobian at every sample.

    Prints the worst samples and a summary (table), or the full report (json, markdown, junit). The
    gate flags (--fail-above, --fail-above-sample, --require-converged, --baseline with
    --max-increase) are rules recorded in the report; any failed rule exits 1.
    """
    from lipcheck.audit import bound_model, check_converged, check_settings, data_section, run_audit
    from lipcheck.datasets import open_dataset, parse_shape, random_dataset
    from lipcheck.gate import FailAboveBound
    from lipcheck.models import arch_file, load_model
    from lipcheck.outputs import prepare_outputs
    from lipcheck.report import Settings

    with _errors_to_exit_codes(debug):
        if (data is None) == (random is None):
            raise InputError(
                "give the data with --data PATH, or --random SHAPE --num-samples N (one of them)"
            )
        if random is not None and num_samples is None:
            raise InputError("--random needs --num-samples N, the number of samples to draw")
        if random is None and num_samples is not None:
            raise InputError("--num-samples goes with --random; with --data use --limit N")
        kwargs = _parse_json_object(arch_kwargs, "--arch-kwargs")
        model_kwargs = parse_model_args(model_arg)
        settings = Settings(
            method=method.value,
            tol=tol,
            confidence=confidence,
            max_iter=max_iter,
            seed=seed,
            batch_size=batch_size,
            device=device.value,
            dtype=dtype.value,
            reduction=reduction.value,
            search_steps=search_steps,
            search_radius=search_radius,
            output_key=output_key,
            model_kwargs=model_kwargs,
        )
        check_settings(settings)
        with_bound = with_bound or fail_above_bound is not None
        assumed = parse_assumptions(assume)
        if assumed and not with_bound:
            raise InputError("--assume goes with --bound (or --fail-above-bound): it is used by the bound")
        _check_thresholds({"--fail-above-bound": fail_above_bound})
        outputs = prepare_outputs(
            output or [],
            {"the model (MODEL)": model, "the data (--data)": data, "the baseline (--baseline)": baseline,
             "the --arch file": arch_file(arch)},
        )  # fmt: skip
        fmt = _output_format(output_format, outputs)
        rules, compared = _gate_rules(
            fail_above, fail_above_sample, require_converged, baseline, max_increase, allow_mismatch
        )

        begin = time.perf_counter()
        loaded = load_model(model, arch=arch, arch_kwargs=kwargs, trust_pickle=trust_pickle)
        if random is not None:
            dataset = random_dataset(parse_shape(random), num_samples or 0, seed=seed)
            if limit is not None:
                raise InputError("--limit goes with --data; with --random use --num-samples N")
        else:
            dataset = open_dataset(data or Path(), key=data_key, limit=limit)
        load_seconds = time.perf_counter() - begin
        # Bounded before the audit: a model that cannot be bounded fails in seconds, not after the audit.
        certified = (
            bound_model(loaded, dataset.info.sample_shape, assume=assumed, settings=settings)
            if with_bound
            else None
        )
        if fail_above_bound is not None and certified is not None:
            rules.append(FailAboveBound(fail_above_bound, certified.upper_bound))
        if compared is not None:  # hashes the data now, so a mismatch stops before the audit
            rules.append(compared.rule(settings, data_section(dataset), "this audit", quiet))
        show_progress = not quiet and sys.stderr.isatty() and (fmt == "table" or bool(outputs))
        with _progress(show_progress, len(dataset)) as progress:
            report = run_audit(
                loaded,
                dataset,
                settings,
                rules=rules,
                progress=progress,
                load_seconds=load_seconds,
                bound=certified,
            )

        _write_report(report, outputs, fmt, quiet)
        check_converged(report)
    _exit_on_gate(report.gate.rules, quiet)


def _is_terminal() -> bool:
    return sys.stdout.isatty()


BOUND_EPILOG = """\
**Examples**

```
lipcheck bound model.pt2 --input-shape 3x32x32
lipcheck bound model.pt2 --input-shape 20 --format json | jq .upper_bound
lipcheck bound weights.safetensors --arch nets.py:make_denoiser --input-shape 1,64,64 --format markdown
lipcheck bound model.pt2 --input-shape 3x32x32 --assume aten.erf.default=1.13 --output bound.json
lipcheck audit model.pt2 --data x.npy --bound --fail-above-bound 10
```

Exit codes: 0 done, 2 bad input or usage, or a model that cannot be bounded (TorchScript, a graph
torch.export cannot capture, an operation without a rule: the error names it and the --assume to pass).
"""


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
    input_shape: Annotated[
        str | None,
        typer.Option(
            "--input-shape",
            help="The shape of one input, without the batch dimension: 2x8x8, 2,8,8 or 20.",
            metavar="SHAPE",
            show_default=False,
        ),
    ] = None,
    arch: ArchOption = None,
    arch_kwargs: ArchKwargsOption = None,
    trust_pickle: TrustPickleOption = False,
    assume: Annotated[
        list[str] | None,
        typer.Option(
            "--assume",
            help="A Lipschitz constant L for an operation lipcheck has no rule for, OP=L as the error names "
            "it (repeatable); you take responsibility for it, and the report records it.",
            metavar="OP=L",
            show_default=False,
        ),
    ] = None,
    output_format: Annotated[
        BoundFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="Report format. Default: table on a terminal, json when stdout is a pipe or with --output.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the report to this file (atomically) instead of stdout.",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No notes on stderr.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
) -> None:
    """Certify an upper bound on MODEL's global l2 Lipschitz constant, composed layer by layer.

    The model is exported with torch.export at one input of --input-shape; every operation of the
    graph gets a rule (exact spectral norms where the layer allows it), composed over the graph:
    products along a path, sums at residual connections. Prints every layer factor and the total.
    """
    from lipcheck.audit import run_bound
    from lipcheck.datasets import parse_shape
    from lipcheck.models import arch_file, load_model
    from lipcheck.outputs import prepare_outputs
    from lipcheck.render import format_for, render_bound_table, render_bound_text

    with _errors_to_exit_codes(debug):
        if input_shape is None:
            raise InputError(
                "give the shape of one input with --input-shape SHAPE, without the batch, e.g. 3x32x32"
            )
        shape = parse_shape(input_shape, "--input-shape")
        assumed = parse_assumptions(assume)
        kwargs = _parse_json_object(arch_kwargs, "--arch-kwargs")
        outputs = prepare_outputs(
            [output] if output is not None else [],
            {"the model (MODEL)": model, "the --arch file": arch_file(arch)},
        )
        fmt = _output_format(output_format, outputs)
        if outputs and format_for(output, fmt) == "junit":
            raise InputError(
                f"--output '{output}': a bound report has no JUnit form (it has no rules); "
                "write .json, .md or .txt, or gate it with lipcheck audit --fail-above-bound"
            )
        begin = time.perf_counter()
        loaded = load_model(model, arch=arch, arch_kwargs=kwargs, trust_pickle=trust_pickle)
        report = run_bound(loaded, shape, assume=assumed, load_seconds=time.perf_counter() - begin)
        _write(
            outputs,
            fmt,
            quiet,
            lambda name: render_bound_text(report, name),
            lambda console: render_bound_table(report, console),
        )


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
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
) -> None:
    """Load MODEL and print what was loaded (format, sha256, size, parameters, input spec); no audit."""
    from lipcheck.audit import model_section
    from lipcheck.models import load_model

    with _errors_to_exit_codes(debug):
        loaded = load_model(
            model,
            arch=arch,
            arch_kwargs=_parse_json_object(arch_kwargs, "--arch-kwargs"),
            trust_pickle=trust_pickle,
        )
    section = model_section(loaded).__dict__
    if as_json:
        typer.echo(json.dumps(section, indent=2, default=list))
        return
    for name, value in section.items():
        if name == "input_spec":
            value = (
                ", ".join(f"{s['name']} ({', '.join(map(str, s['shape']))}) {s['dtype']}" for s in value)
                or "-"
            )
        elif name == "arch_kwargs":
            value = json.dumps(value) if value else "-"
        elif name == "trusted":
            value = (
                "yes (loading executed code from the file)" if value else "no (nothing from the file was run)"
            )
        typer.echo(f"{name + ':':<13} {'-' if value is None else value}")


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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No notes on stderr.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
) -> None:
    """Judge a saved audit report by the gate's rules again, without recomputing anything.

    The report's gate is replaced by these rules' verdicts; write it (JSON, Markdown, JUnit, table)
    with --output, so one audit can be gated several ways.
    """
    from lipcheck.gate import FailAboveBound, judge
    from lipcheck.outputs import prepare_outputs
    from lipcheck.report import read_report

    with _errors_to_exit_codes(debug):
        outputs = prepare_outputs(
            output or [],
            {"the report judged (REPORT.json)": report_path, "the baseline (--baseline)": baseline},
        )
        fmt = _output_format(output_format, outputs)
        _check_thresholds({"--fail-above-bound": fail_above_bound})
        rules, compared = _gate_rules(
            fail_above, fail_above_sample, require_converged, baseline, max_increase, allow_mismatch
        )
        if not rules and compared is None and fail_above_bound is None:
            raise InputError(
                "give at least one rule: --fail-above X, --fail-above-sample X, --require-converged, "
                "--fail-above-bound X, or --baseline REPORT.json --max-increase PCT"
            )
        saved = read_report(report_path)
        if fail_above_bound is not None:
            if saved.bound is None:
                raise InputError(
                    f"--fail-above-bound: report '{report_path}' holds no certified bound; "
                    "write it with lipcheck audit --bound"
                )
            rules.append(FailAboveBound(fail_above_bound, saved.bound.upper_bound))
        if compared is not None:
            rules.append(compared.rule(saved.settings, saved.data, f"report '{report_path}'", quiet))
        judged = replace(saved, gate=judge(rules, saved))
        _write_report(judged, outputs, fmt, quiet)
    _exit_on_gate(judged.gate.rules, quiet)


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
    max_increase: Annotated[
        float | None,
        typer.Option(
            "--max-increase",
            help="Exit 1 when NEW's reduced sigma is more than PCT percent above BASE's.",
            metavar="PCT",
            show_default=False,
        ),
    ] = None,
    top: Annotated[
        int, typer.Option("--top", min=0, help="Show the K samples whose sigma rose most.", metavar="K")
    ] = 10,
    allow_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-mismatch",
            help="Compare reports of other data or settings anyway, on the sample indices both have.",
        ),
    ] = False,
    output_format: Annotated[
        Format | None,
        typer.Option(
            "--format", "-f", help="Format. Default: table on a terminal, else json.", show_default=False
        ),
    ] = None,
    output: OutputOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No notes on stderr.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
) -> None:
    """Compare two audit reports: per-sample changes matched by index, the samples that rose most, the
    change of every summary figure.
    """
    from lipcheck.compare import compare_reports, mismatches
    from lipcheck.gate import MaxIncrease
    from lipcheck.outputs import prepare_outputs
    from lipcheck.render import render_comparison, render_comparison_table
    from lipcheck.report import read_report

    with _errors_to_exit_codes(debug):
        outputs = prepare_outputs(
            output or [], {"the base report (BASE.json)": base_path, "the new report (NEW.json)": new_path}
        )
        fmt = _output_format(output_format, outputs)
        _check_thresholds({"--max-increase": max_increase})
        base, new = read_report(base_path), read_report(new_path)
        found = mismatches(base, new.settings, new.data)
        _check_comparable(found, f"reports '{base_path}' and '{new_path}'", allow_mismatch, quiet)
        rules = (
            [MaxIncrease(max_increase, base.summary.value, str(base_path), tuple(found))]
            if max_increase is not None
            else []
        )
        comparison = compare_reports(
            base, new, base_path=str(base_path), new_path=str(new_path), top=top, rules=rules,
            mismatched=found,
        )  # fmt: skip
        _write(
            outputs,
            fmt,
            quiet,
            lambda name: render_comparison(comparison, name),
            lambda console: render_comparison_table(comparison, console),
        )
    _exit_on_gate(comparison.gate.rules, quiet)


def main() -> None:
    app()
