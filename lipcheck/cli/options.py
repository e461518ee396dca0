"""The flags that several commands share, as `Annotated` aliases, and the parsing of their values.

A flag declared once here reads the same in every command's --help; its value is parsed into plain
data (a dict, `RuleOptions`) by the functions below, which raise `InputError` naming the flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lipcheck.cli.status import invocation
from lipcheck.errors import InputError
from lipcheck.options.choices import BoundMethod, Format

if TYPE_CHECKING:
    from lipcheck.report.gate import RuleOptions


def _remember_debug(value: bool) -> bool:
    invocation.debug = value
    return value


def remember_quiet(value: bool) -> bool:
    invocation.quiet = value
    return value


DebugOption = Annotated[
    bool,
    typer.Option("--debug", callback=_remember_debug, help="Show the traceback of an error."),
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", callback=remember_quiet, help="No notes or warnings on stderr.")
]

# The flags that load a model and bound it, shared by `audit`, `bound` and `inspect`.

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
BoundMethodOption = Annotated[
    BoundMethod,
    typer.Option(
        "--bound-method",
        help="How the bound composes the layers' factors: liplt (the loop transformation: activations as "
        "their centre slope plus a bounded deviation, linear blocks merged and normed exactly where "
        "affordable; never above product) or product (the product of the factors along every path).",
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


# The flags of `RuleOptions`: the parameters of `audit` and `gate` that set it.
RULE_FLAGS = (
    "fail_above",
    "fail_above_sample",
    "require_converged",
    "fail_above_bound",
    "baseline",
    "max_increase",
    "allow_mismatch",
)


def rule_options(flags: dict[str, Any]) -> RuleOptions:
    """The gate's flags (`RULE_FLAGS`, by name in a command's `locals()`) as `RuleOptions`, validated
    (InputError naming the flag)."""
    from lipcheck.report.gate import RuleOptions

    options = RuleOptions(**{name: flags[name] for name in RULE_FLAGS})
    options.validate()
    return options


def parse_json_object(text: str | None, flag: str) -> dict[str, Any]:
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
