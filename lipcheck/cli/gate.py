"""`lipcheck gate`: judge a saved audit report by the gate's rules again, without recomputing anything."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lipcheck.cli.options import (
    AllowMismatchOption,
    BaselineOption,
    DebugOption,
    FailAboveBoundOption,
    FailAboveOption,
    FailAboveSampleOption,
    FormatOption,
    MaxIncreaseOption,
    OutputOption,
    QuietOption,
    RequireConvergedOption,
    rule_options,
)
from lipcheck.cli.output import choose_format, write_and_judge
from lipcheck.errors import InputError

if TYPE_CHECKING:
    from lipcheck.report import Report
    from lipcheck.report.gate import RuleOptions

EPILOG = """\
**Examples**

```
lipcheck gate report.json --fail-above 2.5
lipcheck gate report.json --fail-above-sample 3 --require-converged -o junit.xml
lipcheck gate report.json --baseline release.json --max-increase 5 -o gate.json -o summary.md
```

Exit codes: 0 every rule passed, 1 a rule failed, 2 bad input or usage (a missing or corrupt report,
a baseline of other data or settings without --allow-mismatch).
"""

ReportArgument = Annotated[
    Path,
    typer.Argument(
        metavar="REPORT.json",
        help="A JSON report written by `lipcheck audit --output`.",
        show_default=False,
    ),
]


def gate(
    report_path: ReportArgument,
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

    outputs = prepare_outputs(
        output or [], {"the report judged (REPORT.json)": report_path, "the baseline (--baseline)": baseline}
    )
    fmt = choose_format(output_format, outputs, REPORT)
    report = _judge(report_path, rule_options(dict(locals())))
    write_and_judge(report, REPORT, outputs, fmt, quiet, report.gate.rules)


def _judge(report_path: Path, options: RuleOptions) -> Report:
    """The saved report with its gate replaced by the verdicts of `options`' rules."""
    from lipcheck.report import read_report
    from lipcheck.report.compare import comparable
    from lipcheck.report.gate import judge, rules_for

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
        what = f"baseline report '{options.baseline}' and {judged}"
        mismatched = comparable(base, saved.settings, saved.data, what, options.allow_mismatch)
    rules = rules_for(options, saved, baseline=base, mismatched=mismatched, judged=judged)
    return replace(saved, gate=judge(rules, saved))
