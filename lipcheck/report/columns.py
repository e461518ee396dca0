"""Per-sample results as compact columns, spilled to a file once they outgrow a small buffer.

An audit of millions of samples must not hold a Python object per sample (about 240 bytes each). Rows
are kept as one NumPy structured array (`ROW`, 67 bytes a sample). Past `SPILL_ROWS` rows they go to
an unlinked temporary file, read back in chunks with plain reads (never mapped, so the rows never count
in the process's resident memory). `SampleColumns` is a read-only `Sequence[SampleResult]` over them:
the report, the gate and the renderers use it as they used a tuple of rows, and the JSON report is
streamed from it chunk by chunk.

None (a residual or error bar that was not finite, no worst-case search) is stored as NaN.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any, overload

import numpy as np

from lipcheck.report.samples import SampleResult
from lipcheck.report.sections import AdjointBatch, Derivatives

ROW = np.dtype(
    [
        ("index", "<i8"),
        ("sigma", "<f8"),
        ("iterations", "<i8"),
        ("converged", "u1"),
        ("residual", "<f8"),
        ("sigma_upper", "<f8"),
        ("search_sigma", "<f8"),
        ("search_distance", "<f8"),
        # How the row's products were computed (`derivatives`): its batch's adjoint gap at the sample,
        # the product (`PRODUCT_CODES`) and the decompositions used (bits of `DECOMPOSITION_BITS`).
        ("adjoint_gap", "<f8"),
        ("product", "u1"),
        ("decompositions", "u1"),
    ]
)

# The fields of a `SampleResult`, in its order.
SAMPLE_FIELDS: tuple[str, ...] = (
    "index", "sigma", "iterations", "converged", "residual", "sigma_upper", "search_sigma", "search_distance"
)  # fmt: skip
PRODUCT_CODES: tuple[str, ...] = ("double-backward", "forward")
UNKNOWN_PRODUCT = 255  # rows made from `SampleResult`s, which do not say
DECOMPOSITION_BITS: tuple[str, ...] = ("hardsigmoid", "hardswish", "scaled_dot_product_attention")

# Rows kept in memory before the store moves them to a temporary file (3.7 MB).
SPILL_ROWS = 1 << 16
# Rows read back at a time from a spilled store.
READ_ROWS = 1 << 15


def rows_to_table(rows: Iterable[SampleResult]) -> np.ndarray:
    """The `ROW` table of some rows."""
    rows = list(rows)
    table = np.empty(len(rows), dtype=ROW)
    nan = math.nan
    table["index"] = [r.index for r in rows]
    table["sigma"] = [r.sigma for r in rows]
    table["iterations"] = [r.iterations for r in rows]
    table["converged"] = [bool(r.converged) for r in rows]
    table["residual"] = [nan if r.residual is None else r.residual for r in rows]
    table["sigma_upper"] = [nan if r.sigma_upper is None else r.sigma_upper for r in rows]
    table["search_sigma"] = [nan if r.search_sigma is None else r.search_sigma for r in rows]
    table["search_distance"] = [nan if r.search_distance is None else r.search_distance for r in rows]
    table["adjoint_gap"] = nan
    table["product"] = UNKNOWN_PRODUCT
    table["decompositions"] = 0
    return table


def decomposition_bits(names: Iterable[str]) -> int:
    """The `decompositions` column's value for the operations `names`."""
    return sum(1 << DECOMPOSITION_BITS.index(name) for name in set(names) if name in DECOMPOSITION_BITS)


def derivatives_of(columns: SampleColumns, batch_size: int, tolerance: float) -> Derivatives | None:
    """The report's `Derivatives` from the rows' own columns: the product of the first row that says,
    the decompositions of all, and each batch's (batch k: indices [k B, (k+1) B)) largest adjoint gap.
    Read from the rows, it is the same whether a batch was audited here, by another rank or read back
    from a journal. None when no row says (rows made from `SampleResult`s)."""
    product, bits, batches = UNKNOWN_PRODUCT, 0, {}
    for table in columns.tables():
        known = table[table["product"] != UNKNOWN_PRODUCT]
        if not len(known):
            continue
        if product == UNKNOWN_PRODUCT:
            product = int(known["product"][0])
        bits |= int(np.bitwise_or.reduce(known["decompositions"]))
        for k in np.unique(known["index"] // batch_size).tolist():
            rows = known[known["index"] // batch_size == k]
            gaps = rows["adjoint_gap"][~np.isnan(rows["adjoint_gap"])]
            first, last = int(rows["index"].min()), int(rows["index"].max())
            gap = float(gaps.max()) if len(gaps) else 0.0
            if k in batches:
                before = batches[k]
                first, last, gap = min(first, before[0]), max(last, before[1]), max(gap, before[2])
            batches[k] = (first, last, gap)
    if product == UNKNOWN_PRODUCT:
        return None
    return Derivatives(
        product=PRODUCT_CODES[product],
        decompositions=tuple(name for bit, name in enumerate(DECOMPOSITION_BITS) if bits >> bit & 1),
        model_calls_per_product=1 if PRODUCT_CODES[product] == "forward" else 0,
        adjoint_tolerance=tolerance,
        adjoint=tuple(
            AdjointBatch(first, last, gap, gap <= tolerance)
            for first, last, gap in (batches[k] for k in sorted(batches))
        ),
    )


def table_to_rows(table: np.ndarray) -> list[SampleResult]:
    """The rows of a `ROW` table, as `SampleResult`s."""
    columns = zip(*(table[name].tolist() for name in SAMPLE_FIELDS), strict=True)
    return [
        SampleResult(
            index, sigma, iterations, bool(converged), _none(residual), _none(upper), _none(search),
            _none(distance),
        )
        for index, sigma, iterations, converged, residual, upper, search, distance in columns
    ]  # fmt: skip


def _none(value: float) -> float | None:
    return None if math.isnan(value) else value


class ColumnStore:
    """Rows appended a table at a time; `finish()` gives them as `SampleColumns`.

    The first `SPILL_ROWS` rows stay in memory; past that, every row goes to an unlinked temporary
    file (in `folder`, else the system's), so memory stays flat however many samples there are.
    """

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self._folder = folder
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._file: IO[bytes] | None = None
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append(self, table: np.ndarray) -> None:
        table = np.ascontiguousarray(table, dtype=ROW)
        self._count += len(table)
        if self._file is not None:
            self._file.write(table.tobytes())
            return
        self._pending.append(table)
        self._pending_rows += len(table)
        if self._pending_rows > SPILL_ROWS:
            self._file = tempfile.TemporaryFile(dir=self._folder, prefix="lipcheck-rows-")  # noqa: SIM115
            for pending in self._pending:
                self._file.write(pending.tobytes())
            self._pending, self._pending_rows = [], 0

    def extend(self, rows: Sequence[SampleResult]) -> None:
        """Append `SampleResult`s (a `RowSink`)."""
        self.append(rows_to_table(rows))

    def finish(self) -> SampleColumns:
        if self._file is None:
            table = np.concatenate(self._pending) if self._pending else np.empty(0, dtype=ROW)
            return SampleColumns(table)
        self._file.flush()
        return SampleColumns(None, self._file, self._count)


class SampleColumns(Sequence[SampleResult]):
    """The rows of an audit, read-only: in memory (`table`) or in a spilled file of `count` rows.

    Indexing and iteration give `SampleResult`s made on demand; `column(name)` one column whole;
    `tables()` the rows a chunk at a time, which is how the report's JSON is streamed.
    """

    def __init__(self, table: np.ndarray | None, file: IO[bytes] | None = None, count: int = 0) -> None:
        self._table = table
        self._file = file
        self._count = len(table) if table is not None else count

    @classmethod
    def of(cls, rows: Iterable[SampleResult]) -> SampleColumns:
        return cls(rows_to_table(rows))

    def __len__(self) -> int:
        return self._count

    def _read(self, start: int, stop: int) -> np.ndarray:
        if self._table is not None:
            return self._table[start:stop]
        assert self._file is not None
        size = ROW.itemsize
        data = os.pread(self._file.fileno(), (stop - start) * size, start * size)
        return np.frombuffer(data, dtype=ROW)

    def tables(self, rows: int = READ_ROWS) -> Iterator[np.ndarray]:
        """The rows as `ROW` tables of at most `rows` rows, in order."""
        for start in range(0, self._count, rows):
            yield self._read(start, min(start + rows, self._count))

    def table(self) -> np.ndarray:
        """Every row as one `ROW` table in memory."""
        return self._table if self._table is not None else self._read(0, self._count)

    def column(self, name: str) -> np.ndarray:
        """One column (a `ROW` field) of every row, as a new array."""
        out = np.empty(self._count, dtype=ROW[name])
        position = 0
        for table in self.tables():
            out[position : position + len(table)] = table[name]
            position += len(table)
        return out

    @overload
    def __getitem__(self, item: int) -> SampleResult: ...

    @overload
    def __getitem__(self, item: slice) -> list[SampleResult]: ...

    def __getitem__(self, item: int | slice) -> SampleResult | list[SampleResult]:
        if isinstance(item, slice):
            start, stop, step = item.indices(self._count)
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return table_to_rows(self._read(start, max(start, stop)))
        index = item + self._count if item < 0 else item
        if not 0 <= index < self._count:
            raise IndexError(f"row {item} is outside the {self._count} rows")
        return table_to_rows(self._read(index, index + 1))[0]

    def __iter__(self) -> Iterator[SampleResult]:
        for table in self.tables():
            yield from table_to_rows(table)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or len(other) != len(self):
            return NotImplemented if not isinstance(other, Sequence) else False
        return all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        where = "in memory" if self._table is not None else "spilled to a file"
        return f"SampleColumns({self._count} rows, {where})"

    def __getstate__(self) -> dict[str, Any]:  # a spilled file's handle cannot be pickled: its rows can
        return {"table": self._table if self._table is not None else self._read(0, self._count).copy()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["table"])  # type: ignore[misc]
