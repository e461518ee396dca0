"""The one check of per-sample rows read back from a file: a journal record, a report, a baseline.

A row that comes back from disk is trusted no more than a fresh one. Whatever wrote it (an older
lipcheck, a hand edit, a damaged disk, a hostile file with a valid checksum), it must be a row an audit
can produce: a finite, non-negative sigma (and error bar and search figures, where present), at least
one iteration, an index inside the data set, each index once, and, where the reader knows which
samples the rows are of, exactly those samples. A row that is not is refused with an `InputError`
naming the file and the record; nothing is dropped, clipped or kept as it is.

Rows are checked as `ROW` tables (`lipcheck.report.columns`): a journal reads them so, and a report's
samples are turned into one by `sample_table`, which refuses an index or count that does not fit its
64-bit columns before numpy would wrap or overflow it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from lipcheck.errors import InputError
from lipcheck.report.columns import DECOMPOSITION_BITS, PRODUCT_CODES, ROW, SAMPLE_FIELDS, UNKNOWN_PRODUCT
from lipcheck.report.samples import SampleResult

_INT64 = 2**63 - 1
_OPTIONAL = ("residual", "sigma_upper", "search_sigma", "search_distance")  # NaN: absent


def sample_table(samples: Iterable[SampleResult], where: str) -> np.ndarray:
    """The `ROW` table of a report's samples; InputError naming `where` and the sample for an index or
    iteration count that is not an integer of 64 bits (numpy would refuse or wrap it)."""
    rows = list(samples)
    for position, row in enumerate(rows):
        for name in ("index", "iterations"):
            value = getattr(row, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _INT64:
                raise InputError(
                    f"{where}: sample {position} has {name} {value!r}, not an integer in 0..2**63-1: the "
                    f"file was edited or damaged; {_FIX}"
                )
    table = np.empty(len(rows), dtype=ROW)
    for name in SAMPLE_FIELDS:
        values = [getattr(row, name) for row in rows]
        if name in _OPTIONAL:
            values = [math.nan if value is None else value for value in values]
        table[name] = values
    table["adjoint_gap"], table["product"], table["decompositions"] = math.nan, UNKNOWN_PRODUCT, 0
    return table


def check_rows(table: np.ndarray, where: str, *, count: int, expected: range | None = None) -> None:
    """InputError, naming `where` (the file and the record) and the first bad row, unless every row of
    the `ROW` table is one an audit of a source of `count` samples can write.

    Each row needs a finite sigma >= 0, finite figures >= 0 or NaN (absent) for the residual, the error
    bar and the search, at least one iteration, and an index in [0, count) that no other row has. With
    `expected`, the rows must be of exactly those samples, in order (a journal's batch); a row too few
    or too many is a refusal, never a sample dropped.
    """
    if expected is not None and len(table) != len(expected):
        raise InputError(
            f"{where} holds {len(table)} rows, but its batch is samples {expected.start}.."
            f"{expected.stop - 1} ({len(expected)} rows): {_FIX}"
        )
    index = table["index"]
    problem = _first_bad_value(table)
    if problem is not None:
        raise InputError(f"{where}: {problem}: {_FIX}")
    outside = np.flatnonzero((index < 0) | (index >= count))
    if len(outside):
        k = int(outside[0])
        raise InputError(
            f"{where}: row {k} is of sample {int(index[k])}, outside the data's {count} samples "
            f"(0..{count - 1}): {_FIX}"
        )
    if expected is not None:
        wrong = np.flatnonzero(index != np.arange(expected.start, expected.stop))
        if len(wrong):
            k = int(wrong[0])
            raise InputError(
                f"{where}: row {k} is of sample {int(index[k])}, but its batch's row {k} is sample "
                f"{expected.start + k}: {_FIX}"
            )
        return
    order = np.sort(index, kind="stable")
    repeated = np.flatnonzero(order[1:] == order[:-1])
    if len(repeated):
        raise InputError(f"{where}: sample {int(order[repeated[0]])} appears more than once: {_FIX}")


def check_report_samples(samples: Iterable[SampleResult], where: str, *, count: int, total: int) -> None:
    """`check_rows` of a report's (or a baseline's) samples, whose indices are in the source's `total`
    samples, and whose number is the `count` its data section says were audited: a report read back is
    whole or refused."""
    table = sample_table(samples, where)
    check_rows(table, where, count=total)
    if len(table) != count:
        raise InputError(
            f"{where} holds {len(table)} samples, but its data section says {count} were audited: {_FIX}"
        )


def _first_bad_value(table: np.ndarray) -> str | None:
    """'row K has sigma nan' for the first row with a figure no audit writes; None when all are fine."""
    checks: list[tuple[str, np.ndarray]] = [
        ("sigma", ~(np.isfinite(table["sigma"]) & (table["sigma"] >= 0))),
        ("iterations", table["iterations"] < 1),
        ("converged", table["converged"] > 1),
    ]
    for name in (*_OPTIONAL, "adjoint_gap"):
        column = table[name]
        checks.append((name, ~np.isnan(column) & ~(np.isfinite(column) & (column >= 0))))
    products = table["product"]
    checks.append(("product", (products >= len(PRODUCT_CODES)) & (products != UNKNOWN_PRODUCT)))
    checks.append(("decompositions", table["decompositions"] >= 1 << len(DECOMPOSITION_BITS)))
    first: tuple[int, str] | None = None
    for name, bad in checks:
        found = np.flatnonzero(bad)
        if len(found) and (first is None or int(found[0]) < first[0]):
            first = (int(found[0]), name)
    if first is None:
        return None
    row, name = first
    value = table[name][row]
    shown = f"{float(value)!r}" if table.dtype[name].kind == "f" else str(int(value))
    return f"row {row} (sample {int(table['index'][row])}) has {name} {shown}, which no audit writes"


_FIX = "it was edited or damaged; audit again (or remove the file) to get rows lipcheck can trust"
