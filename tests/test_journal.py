"""`--resume DIR`: an audit killed (SIGKILL) at random points and rerun gives the report of an
uninterrupted run; a half-written batch is done again, once; a journal of another audit is refused."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_fixtures import (
    ARCH,
    EXIT_SECONDS,
    STARTUP_SECONDS,
    assert_one_line_error,
    mlp_inputs,
    read_json,
    run,
    saved_mlp,
)

from lipcheck.auditing.journal import MAGIC, Journal, journal_name
from lipcheck.errors import InputError
from lipcheck.report.columns import ROW

SAMPLES, BATCH = 24, 2  # 12 batches


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("journal")
    saved = saved_mlp(folder)
    np.save(folder / "x.npy", mlp_inputs(SAMPLES))
    np.save(folder / "other.npy", mlp_inputs(SAMPLES) + 1)
    return {**saved, "data": folder / "x.npy", "other": folder / "other.npy"}


def audit_args(files: dict[str, Path], factory: str, kwargs: dict[str, Any], *flags: str) -> list[str]:
    return ["audit", str(files["model"]), "--arch", f"{ARCH}:{factory}", "--arch-kwargs", json.dumps(kwargs),
            "--data", str(files["data"]), "--batch-size", str(BATCH), "--device", "cpu", *flags]  # fmt: skip


def without_timing(report: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in report.items() if key != "timing"}


def records(journal: Path) -> int:
    """The batches a journal holds (whole or not): its record markers."""
    return journal.read_bytes().count(MAGIC) if journal.exists() else 0


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_an_audit_killed_at_random_points_and_resumed_gives_the_uninterrupted_report(
    files: dict[str, Path], tmp_path: Path
) -> None:
    paced = {"folder": str(tmp_path), "seconds": 0.1}
    whole = tmp_path / "whole.json"
    assert run(*audit_args(files, "make_paced", paced, "-o", str(whole))).exit_code == 0
    journal, out = tmp_path / "journal", tmp_path / "resumed.json"
    args = audit_args(files, "make_paced", paced, "--resume", str(journal), "-o", str(out))
    chance = random.Random(11)
    held = [0]
    for _ in range(3):  # killed at a random point after it made progress, three times
        process = subprocess.Popen([sys.executable, "-m", "lipcheck", *args], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + STARTUP_SECONDS
        while records(journal / journal_name(0)) <= held[-1] and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(chance.uniform(0.0, 0.2))
        process.send_signal(signal.SIGKILL)
        assert process.wait(EXIT_SECONDS) == -signal.SIGKILL
        held.append(records(journal / journal_name(0)))
    assert held == sorted(held) and held[-1] < SAMPLES // BATCH, held  # it went on, and was cut short
    assert not out.exists()
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    assert without_timing(read_json(out)) == without_timing(read_json(whole))


def test_a_half_written_batch_is_done_again_and_the_others_are_not(
    files: dict[str, Path], tmp_path: Path
) -> None:
    calls = tmp_path / "calls"
    bound = {"most": 100, "calls": str(calls)}
    journal, out = tmp_path / "journal", tmp_path / "r.json"
    args = audit_args(files, "make_memory_bound", bound, "--resume", str(journal), "-o", str(out))
    assert run(*args).exit_code == 0
    first = read_json(out)
    file = journal / journal_name(0)
    whole = file.stat().st_size
    with file.open("r+b") as stream:  # the last record cut in the middle of its rows, as a kill leaves it
        stream.truncate(whole - 20)
    calls.unlink()
    assert run(*args).exit_code == 0
    assert calls.read_text().split() == ["2"]  # only the last batch (samples 16-17) was audited again
    assert file.stat().st_size == whole and records(file) == SAMPLES // BATCH
    assert without_timing(read_json(out)) == without_timing(first)
    calls.unlink()
    assert run(*args).exit_code == 0 and not calls.exists()  # a finished journal: nothing is audited


def test_a_journal_of_another_audit_is_refused_naming_what_differs(
    files: dict[str, Path], tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    args = audit_args(files, "make_mlp", {}, "--resume", str(journal), "--format", "json")
    assert run(*args).exit_code == 0
    refused = run(*args, "--batch-size", "3")
    assert_one_line_error(
        refused, f"--resume '{journal}' holds the journal of another audit", "--batch-size 2 vs 3"
    )
    other = list(args)
    other[other.index(str(files["data"]))] = str(files["other"])
    assert_one_line_error(run(*other), "data sha256")
    assert_one_line_error(run(*args, "--tol", "0.001"), "--tol 0.0001 vs 0.001")
    assert run(*args, "--reduction", "mean").exit_code == 0  # the rows do not depend on it
    (tmp_path / "note.txt").write_text("not a folder")
    assert_one_line_error(
        run(*audit_args(files, "make_mlp", {}, "--resume", str(tmp_path / "note.txt"))), "is a file"
    )
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / journal_name(0)).write_bytes(b"\x00\x01 not json\n")
    assert_one_line_error(
        run(*audit_args(files, "make_mlp", {}, "--resume", str(garbage))), "not a lipcheck journal"
    )


def test_a_journal_of_another_world_size_is_refused(tmp_path: Path) -> None:
    identity = {"model_sha256": "a" * 64, "settings": {"batch_size": 2}, "world_size": 1, "data_count": 7}
    Journal.open(tmp_path, identity, 0).close()
    with pytest.raises(InputError, match="world size 1 vs 2"):
        Journal.open(tmp_path, {**identity, "world_size": 2}, 1)
    journal = Journal.open(tmp_path, identity, 0)
    rows = np.zeros(2, dtype=ROW)
    rows["index"] = [4, 5]
    rows["iterations"] = 1
    journal.append(2, rows)
    journal.close()
    again = Journal.open(tmp_path, identity, 0)
    assert list(again.done) == [2] and again.read(2)["index"].tolist() == [4, 5]
    again.close()


def test_lipcheck_audit_resumes_from_python(tmp_path: Path) -> None:
    import torch
    from cli_fixtures import MLP

    import lipcheck

    x = torch.from_numpy(mlp_inputs(10))
    first = lipcheck.audit(MLP(), x, batch_size=4, device="cpu", resume=tmp_path / "j")
    assert records(tmp_path / "j" / journal_name(0)) == 3
    again = lipcheck.audit(MLP(), x, batch_size=4, device="cpu", resume=tmp_path / "j")
    assert list(again.samples) == list(first.samples) and again.summary == first.summary


def test_a_full_disk_stops_the_audit_with_exit_2_and_the_journal_continues_later(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    journal, out = tmp_path / "journal", tmp_path / "r.json"
    args = audit_args(files, "make_mlp", {}, "--resume", str(journal), "-o", str(out))
    real = os.pwrite
    writes: list[int] = []

    def fills_up(descriptor: int, data: bytes, offset: int) -> int:
        writes.append(len(data))
        if len(writes) == 4:  # the header, two batches, then the disk is full in the middle of the third
            real(descriptor, data[: len(data) // 2], offset)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(descriptor, data, offset)

    monkeypatch.setattr("lipcheck.auditing.journal.os.pwrite", fills_up)
    result = run(*args)
    said = ("--resume", journal_name(0), "No space left on device", "run the same command")
    assert_one_line_error(result, *said)
    assert not out.exists() and records(journal / journal_name(0)) == 2  # the half record was cut off
    monkeypatch.setattr("lipcheck.auditing.journal.os.pwrite", real)
    assert run(*args).exit_code == 0
    uninterrupted = tmp_path / "u.json"
    assert run(*audit_args(files, "make_mlp", {}, "-o", str(uninterrupted))).exit_code == 0
    assert without_timing(read_json(out)) == without_timing(read_json(uninterrupted))


def test_the_journal_refuses_a_short_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal.open(tmp_path, {"audit": 1}, 0)
    monkeypatch.setattr("lipcheck.auditing.journal.os.pwrite", lambda fd, data, offset: len(data) - 1)
    with pytest.raises(InputError, match="cannot be written"):
        journal.append(0, np.zeros(2, dtype=ROW))
    journal.close()
