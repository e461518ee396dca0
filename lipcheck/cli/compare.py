"""`lipcheck compare`: two audit reports side by side, matched by sample index, with a regression rule."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lipcheck.cli.options import DebugOption, OutputOption, QuietOption
from lipcheck.cli.output import choose_format, write_and_judge
from lipcheck.options.choices import Format

EPILOG = """\
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
BaseArgument = Annotated[
    Path,
    typer.Argument(metavar="BASE.json", help="The report to compare with.", show_default=False),
]
NewArgument = Annotated[
    Path,
    typer.Argument(metavar="NEW.json", help="The report compared with BASE.json.", show_default=False),
]


def compare(
    base_path: BaseArgument,
    new_path: NewArgument,
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
    fmt = choose_format(output_format, outputs, COMPARISON)
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
    write_and_judge(comparison, COMPARISON, outputs, fmt, quiet, comparison.gate.rules)
