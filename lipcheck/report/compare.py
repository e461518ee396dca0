"""Compare two audit reports: whether they are comparable, and how the figures changed.

Two audits are comparable when they measured the same data (count, shape, dtype and content hash) with
the settings that change the numbers (`COMPARED_SETTINGS`); the seed, the batch size, the device and
the gate or output options do not count. `mismatches` says what differs; `compare_reports` matches the
samples by index and reports the change of every sigma and of every summary figure, as plain data.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lipcheck.errors import InputError, LipcheckWarning
from lipcheck.report.audit_report import Report
from lipcheck.report.gate import Rule, judge, percent_change
from lipcheck.report.records import SCHEMA_VERSION
from lipcheck.report.sections import DataSection, Gate, Settings

# The settings that change the figures, and the flag that sets each.
COMPARED_SETTINGS: dict[str, str] = {
    "operator": "--operator",
    "method": "--method",
    "tol": "--tol",
    "confidence": "--confidence",
    "max_iter": "--max-iter",
    "dtype": "--dtype",
    "reduction": "--reduction",
    "output_key": "--output-key",
    "model_kwargs": "--arg",
}
FIGURES = ("count", "converged", "max", "mean", "min", "median", "p95", "value")


def mismatches(base: Report, settings: Settings, data: DataSection) -> list[str]:
    """What keeps figures measured with `settings` on `data` from comparing with `base`'s.

    Each entry reads 'what: base's vs the other's', e.g. '--tol 0.0001 vs 1e-05'; empty when comparable.
    """
    found = []
    old = base.data
    if old.count != data.count:
        found.append(f"{old.count} vs {data.count} samples (--limit)")
    if old.sample_shape != data.sample_shape or old.dtype != data.dtype:
        found.append(f"samples of {_shape(old)} vs {_shape(data)}")
    if not found:
        if old.sha256 is None or data.sha256 is None:
            found.append("no data hash in a report written before lipcheck recorded it")
        elif old.sha256 != data.sha256:
            found.append(f"data content (sha256 {old.sha256[:12]} vs {data.sha256[:12]})")
    for name, flag in COMPARED_SETTINGS.items():
        before, after = getattr(base.settings, name), getattr(settings, name)
        if before != after:
            found.append(f"{flag} {_shown(before)} vs {_shown(after)}")
    return found


def comparable(
    base: Report, settings: Settings, data: DataSection, what: str, allow_mismatch: bool
) -> list[str]:
    """The `mismatches` of figures measured with `settings` on `data` against `base` (`what` names
    both); InputError when there are some, unless `allow_mismatch`: then a `LipcheckWarning`."""
    found = mismatches(base, settings, data)
    if found and not allow_mismatch:
        raise InputError(
            f"{what} differ: {'; '.join(found)}: audit the same data with the same settings, or pass "
            "--allow-mismatch to compare anyway"
        )
    if found:
        warnings.warn(f"comparing despite: {'; '.join(found)}", LipcheckWarning, stacklevel=2)
    return found


def _shape(data: DataSection) -> str:
    return f"{'x'.join(str(d) for d in data.sample_shape) or 'scalar'} {data.dtype}"


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value) if isinstance(value, dict) or value is None else str(value)


@dataclass(frozen=True)
class SampleChange:
    """The sigma of sample `index` in the base and the new report; `change_percent` None if base is 0."""

    index: int
    base: float
    new: float
    change: float
    change_percent: float | None


@dataclass(frozen=True)
class FigureChange:
    """A summary figure (`count`, `max`, ..., `value`) in the base and the new report."""

    figure: str
    base: float
    new: float
    change: float
    change_percent: float | None


@dataclass(frozen=True)
class Comparison:
    """How `new` differs from `base` (paths of the reports); samples are matched by index.

    `matched` samples have an index in both; of them `rose` have a larger sigma in `new`, `fell` a
    smaller. `top` are the samples that rose most, largest rise first. `mismatches` are the
    differences the user chose to compare across (`--allow-mismatch`); `gate` judges `new`.
    """

    base: str
    new: str
    model: str
    reduction: str
    matched: int
    rose: int
    fell: int
    figures: tuple[FigureChange, ...]
    top: tuple[SampleChange, ...]
    mismatches: tuple[str, ...] = ()
    gate: Gate = Gate()
    # Every matched sample in index order, for the HTML form's scatter; not in the JSON.
    samples: tuple[SampleChange, ...] = field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, `schema_version` first (the report's: a comparison holds its verdicts)."""
        body = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "samples"}
        # allow_nan=False: a figure that is not finite is a defect to raise, never `Infinity` in a file
        text = json.dumps(body, default=_plain, allow_nan=False)
        return {"schema_version": SCHEMA_VERSION, **json.loads(text)}


def compare_reports(
    base: Report,
    new: Report,
    *,
    base_path: str,
    new_path: str,
    top: int = 10,
    rules: Sequence[Rule] = (),
    mismatched: Sequence[str] = (),
) -> Comparison:
    """Match the samples of `base` and `new` by index and measure every change; `rules` judge `new`.

    InputError when the reports have no sample index in common. Reports read from files were checked
    by `read_report`, rows and all (`rows.check_report_samples`).
    """
    before = {s.index: s.sigma for s in base.samples}
    changes = [_sample(s.index, before[s.index], s.sigma) for s in new.samples if s.index in before]
    if not changes:
        raise InputError(f"reports '{base_path}' and '{new_path}' have no sample index in common")
    rising = sorted((c for c in changes if c.change > 0), key=lambda c: (-c.change, c.index))
    return Comparison(
        base=base_path,
        new=new_path,
        model=new.model.path,
        reduction=new.summary.reduction,
        matched=len(changes),
        rose=len(rising),
        fell=sum(1 for c in changes if c.change < 0),
        figures=tuple(
            _figure(name, getattr(base.summary, name), getattr(new.summary, name)) for name in FIGURES
        ),
        top=tuple(rising[:top]),
        mismatches=tuple(mismatched),
        gate=judge(rules, new),
        samples=tuple(sorted(changes, key=lambda c: c.index)),
    )


def _plain(value: Any) -> Any:
    """The JSON form of the dataclasses a `Comparison` holds."""
    return asdict(value)


def _figure(name: str, base: float, new: float) -> FigureChange:
    return FigureChange(name, base, new, new - base, percent_change(base, new))


def _sample(index: int, base: float, new: float) -> SampleChange:
    return SampleChange(index, base, new, new - base, percent_change(base, new))
