"""The progress journal of `--resume DIR`: every finished batch's rows, durable, one file per rank.

`DIR/rank-R.journal` starts with one line of JSON, the identity of the audit (model and data hashes,
the settings that change a row, the world size, the device type, lipcheck's version), then one record
per finished batch: b"LJB1", the batch number, the row count and the CRC-32 of the rows (little-endian
int64, int64, uint32), then the rows as `columns.ROW`. Each record is written with one write and
fsync'd before the next batch starts. Opening a journal reads its records back and cuts off a last one
that is short or fails its CRC (a kill during the write): that batch is done again, never counted twice.
A whole record is then checked like any rows read back (`lipcheck.report.rows`): a record of a batch
this rank does not audit, a second record of one batch, or rows that are not exactly its batch's
samples with figures an audit writes (a finite sigma >= 0, ...) is refused with an InputError naming
the file and the record, even when its CRC is valid: a CRC tells a torn write, not a forged one.

A journal whose identity differs from this audit's (another model, data, settings, world size) is
refused with an InputError that names each difference: its rows are not this audit's.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from lipcheck.errors import InputError
from lipcheck.report.columns import ROW
from lipcheck.report.rows import check_rows

MAGIC = b"LJB1"
_HEAD = struct.Struct("<qqI")  # batch number, rows, CRC-32 of the rows


def journal_name(rank: int) -> str:
    return f"rank-{rank}.journal"


class Journal:
    """One rank's journal, open for appending; `done` maps batch number -> (offset, rows) of its record."""

    def __init__(self, path: Path, descriptor: int, done: dict[int, tuple[int, int]]) -> None:
        self.path = path
        self._descriptor = descriptor
        self.done = done

    @classmethod
    def open(cls, folder: Path, identity: dict[str, Any], rank: int) -> Journal:
        """Open (or start) rank `rank`'s journal in `folder` for the audit `identity` (JSON-ready).

        InputError naming --resume when the folder cannot be used or holds a journal of another audit.
        """
        where = f"--resume '{folder}'"
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{where} is a file: give a folder for the audit's journal (it is created)")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(f"{where} cannot be created ({error.strerror or error})") from None
        header = (json.dumps(identity, sort_keys=True, default=repr) + "\n").encode()
        expected = json.loads(header)
        for other in sorted(folder.glob("rank-*.journal")):
            _check_identity(other, expected, where)
        path = folder / journal_name(rank)
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise InputError(f"{where}: '{path}' cannot be opened ({error.strerror or error})") from None
        size = os.fstat(descriptor).st_size
        first = os.pread(descriptor, min(size, 1 << 20), 0).split(b"\n", 1)[0]
        if size == 0 or len(first) == size:  # new, or killed before its header was whole
            os.ftruncate(descriptor, 0)
            journal = cls(path, descriptor, {})
            journal._write(0, header)
            _sync_folder(folder)
            return journal
        try:
            done = _records(descriptor, len(first) + 1, size, _Layout.of(path, identity, rank))
        except InputError:
            os.close(descriptor)
            raise
        return cls(path, descriptor, done)

    def read(self, batch: int) -> np.ndarray:
        """The rows of a finished batch (a `ROW` table)."""
        offset, rows = self.done[batch]
        return np.frombuffer(os.pread(self._descriptor, rows * ROW.itemsize, offset), dtype=ROW)

    def append(self, batch: int, table: np.ndarray) -> None:
        """Add a finished batch's rows and make them durable (fsync) before returning."""
        payload = np.ascontiguousarray(table, dtype=ROW).tobytes()
        record = MAGIC + _HEAD.pack(batch, len(table), zlib.crc32(payload)) + payload
        offset = os.lseek(self._descriptor, 0, os.SEEK_END)
        self._write(offset, record)
        self.done[batch] = (offset + len(MAGIC) + _HEAD.size, len(table))

    def _write(self, offset: int, data: bytes) -> None:
        """Write `data` at `offset` (the end), whole, and fsync it. A failed write (a full disk, a quota,
        an I/O error) is cut off again and is an InputError naming --resume and the file: the journal
        keeps the batches before it, and the same command continues once there is room."""
        try:
            written = os.pwrite(self._descriptor, data, offset)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"wrote {written} of {len(data)} bytes")
            os.fsync(self._descriptor)
        except OSError as error:
            with contextlib.suppress(OSError):  # else the short record is cut off when read back
                os.ftruncate(self._descriptor, offset)
            raise InputError(
                f"--resume '{self.path.parent}': the journal '{self.path}' cannot be written "
                f"({error.strerror or error}): free some space (or choose another folder) and run the same "
                "command again to continue"
            ) from error

    def close(self) -> None:
        os.close(self._descriptor)


class _Layout:
    """Which batches a rank's journal may hold, and which samples each is: from the audit's identity."""

    def __init__(self, path: Path, count: int, batch_size: int, world_size: int, rank: int) -> None:
        self.path, self.count, self.batch_size = path, count, batch_size
        self.world_size, self.rank = world_size, rank

    @classmethod
    def of(cls, path: Path, identity: dict[str, Any], rank: int) -> _Layout:
        settings = identity.get("settings") or {}
        return cls(
            path, int(identity["data_count"]), int(settings["batch_size"]), int(identity["world_size"]), rank
        )

    def check(self, record: int, batch: int, table: np.ndarray, seen: dict[int, Any]) -> None:
        """InputError naming the journal and its record `record` (0-based) unless `table` is batch
        `batch`'s rows, once, of a batch this rank audits."""
        where = f"journal '{self.path}' record {record} (batch {batch})"
        batches = -(-self.count // self.batch_size)
        fix = f"it was edited or damaged; remove '{self.path}' to audit its batches again"
        if not 0 <= batch < batches or batch % self.world_size != self.rank:
            raise InputError(
                f"{where} is of no batch that rank {self.rank} of {self.world_size} audits ({batches} "
                f"batches of {self.batch_size}): {fix}"
            )
        if batch in seen:
            raise InputError(f"{where} repeats batch {batch}, which an earlier record holds: {fix}")
        samples = range(batch * self.batch_size, min((batch + 1) * self.batch_size, self.count))
        check_rows(table, where, count=self.count, expected=samples)


def _records(descriptor: int, start: int, size: int, layout: _Layout) -> dict[int, tuple[int, int]]:
    """The whole records from `start` on, each checked by `layout`; the file is cut after the last
    whole one (a torn write is done again)."""
    done: dict[int, tuple[int, int]] = {}
    offset = start
    head = len(MAGIC) + _HEAD.size
    while offset + head <= size:
        prefix = os.pread(descriptor, head, offset)
        if prefix[: len(MAGIC)] != MAGIC:
            break
        batch, rows, crc = _HEAD.unpack(prefix[len(MAGIC) :])
        length = rows * ROW.itemsize
        if rows < 0 or offset + head + length > size:
            break
        payload = os.pread(descriptor, length, offset + head)
        if zlib.crc32(payload) != crc:
            break
        layout.check(len(done), batch, np.frombuffer(payload, dtype=ROW), done)
        done[batch] = (offset + head, rows)
        offset += head + length
    if offset < size:
        os.ftruncate(descriptor, offset)
        os.fsync(descriptor)
    return done


def _check_identity(path: Path, expected: dict[str, Any], where: str) -> None:
    with path.open("rb") as stream:
        first = stream.readline(1 << 20)
    if not first.endswith(b"\n"):
        return  # killed before its header was whole: no rows to refuse
    try:
        found = json.loads(first)
    except ValueError:
        found = None
    if not isinstance(found, dict):
        raise InputError(
            f"{where} holds '{path.name}', which is not a lipcheck journal: give an empty folder or the "
            "folder of an earlier run of this same audit"
        )
    differences = _differences(found, expected)
    if differences:
        raise InputError(
            f"{where} holds the journal of another audit ({'; '.join(differences)}): rerun the command "
            f"that started it, or give another folder (or remove '{path.parent}') to start this one"
        )


_NAMES = {
    "model_sha256": "model sha256",
    "model_arch": "--arch and --arch-kwargs",
    "data_sha256": "data sha256",
    "data_count": "samples",
    "world_size": "world size",
    "device": "device",
    "lipcheck_version": "lipcheck version",
}


_FLAGS = {"model_kwargs": "--arg", "krylov_dim": "krylov_dim"}


def _differences(found: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """'what: journal's vs this audit's' for each field of the identity that differs."""
    said = []
    for key in sorted(set(found) | set(expected)):
        old, new = found.get(key), expected.get(key)
        if old == new:
            continue
        if key == "settings" and isinstance(old, dict) and isinstance(new, dict):
            for name in sorted(set(old) | set(new)):
                if old.get(name) != new.get(name):
                    flag = _FLAGS.get(name, f"--{name.replace('_', '-')}")
                    said.append(f"{flag} {_shown(old.get(name))} vs {_shown(new.get(name))}")
            continue
        said.append(f"{_NAMES.get(key, key)} {_shown(old)} vs {_shown(new)}")
    return said


def _shown(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:
        return value[:12]  # a sha256
    return json.dumps(value)


def _sync_folder(folder: Path) -> None:
    """fsync the folder, so that a new journal file's name is durable too (not on every platform)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
