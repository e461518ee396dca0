"""Outputs never destroy files: inputs are refused, special files are streamed into, links are followed,
every output is checked before the audit, and temporary files do not outlive a failed or killed write."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_fixtures import EXIT_SECONDS, assert_one_line_error, exported_mlp, make_report, run

from lipcheck.io.outputs import prepare_outputs, remove_stale_temporaries, write_atomic

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("outputs")
    model, data = exported_mlp(folder)
    report = folder / "report.json"
    report.write_text(make_report([0.5, 1.0, 0.25], threshold=2.0).to_json())
    arch = folder / "nets.py"
    arch.write_text("from cli_fixtures import make_mlp\n")
    return {"model": model, "data": data, "report": report, "arch": arch, "folder": folder}


def _snapshot(paths: list[Path]) -> list[bytes]:
    return [path.read_bytes() for path in paths]


# ----------------------------------------------------------------------------------------------------
# An output that is an input of the same command is refused before any work.

# (name, the command's arguments before -o, the input the output names, what the error calls it)
SAME_AS_INPUT: list[tuple[str, Callable[[dict[str, Path]], list[Any]], str, str]] = [
    ("audit data", lambda f: ["audit", f["model"], "--data", f["data"]], "data", "(--data)"),
    ("audit model", lambda f: ["audit", f["model"], "--data", f["data"]], "model", "(MODEL)"),
    (
        "audit baseline",
        lambda f: ["audit", f["model"], "--data", f["data"], "--baseline", f["report"], "--max-increase", 5],
        "report",
        "(--baseline)",
    ),
    ("bound model", lambda f: ["bound", f["model"], "--input-shape", 6], "model", "(MODEL)"),
    ("gate its report", lambda f: ["gate", f["report"], "--fail-above", 1], "report", "(REPORT.json)"),
    (
        "gate baseline",
        lambda f: ["gate", f["report"], "--baseline", f["report"], "--max-increase", 1],
        "report",
        "(REPORT.json)",
    ),
    ("compare both", lambda f: ["compare", f["report"], f["report"]], "report", "(BASE.json)"),
]


@pytest.mark.parametrize(
    ("name", "command", "key", "named"), SAME_AS_INPUT, ids=[c[0] for c in SAME_AS_INPUT]
)
@pytest.mark.parametrize("spelling", ["same", "other spelling", "symlink", "hard link"])
def test_an_output_that_is_an_input_is_refused(
    mlp: dict[str, Path], tmp_path: Path, name: str, command: Any, key: str, named: str, spelling: str
) -> None:
    source = mlp[key]
    target = {
        "same": source,
        "other spelling": source.parent / "." / ".." / source.parent.name / source.name,
        "symlink": tmp_path / "link",
        "hard link": tmp_path / "hard",
    }[spelling]
    if spelling == "symlink":
        target.symlink_to(source)
    elif spelling == "hard link":
        os.link(source, target)
    before = _snapshot([mlp["model"], mlp["data"], mlp["report"]])
    result = run(*command(mlp), "-o", target)
    assert_one_line_error(result, "--output", str(target), named, "another file")
    assert _snapshot([mlp["model"], mlp["data"], mlp["report"]]) == before


def test_the_check_comes_before_loading_anything(mlp: dict[str, Path], tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pt2"
    corrupt.write_bytes(b"PK\x03\x04 not a zip")
    result = run("audit", corrupt, "--data", mlp["data"], "-o", mlp["data"])
    assert_one_line_error(result, "--output", "(--data)")
    result = run("compare", tmp_path / "missing.json", mlp["report"], "-o", mlp["report"])
    assert_one_line_error(result, "--output", "(NEW.json)")


def test_new_report_of_compare_and_the_arch_file_are_inputs(mlp: dict[str, Path]) -> None:
    base = mlp["folder"] / "base.json"
    base.write_text(mlp["report"].read_text())
    assert_one_line_error(run("compare", base, mlp["report"], "-o", mlp["report"]), "(NEW.json)")
    args = ["audit", mlp["model"], "--data", mlp["data"], "--arch", f"{mlp['arch']}:make_mlp"]
    assert_one_line_error(run(*args, "-o", mlp["arch"]), "the --arch file")


# ----------------------------------------------------------------------------------------------------
# Special files are streamed into, never replaced; a symlink writes its target.


def test_a_fifo_is_streamed_into_and_stays_a_fifo(mlp: dict[str, Path], tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = run("audit", mlp["model"], "--data", mlp["data"], "-o", fifo, "-q")
    reader.join(30)
    assert result.exit_code == 0, result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert json.loads(received[0])["summary"]["count"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_a_character_device_stays_one(mlp: dict[str, Path]) -> None:
    # As root, the rename of the temporary file over /dev/null replaced it with a regular file.
    result = run("gate", mlp["report"], "--fail-above", 5, "-o", "/dev/null", "-q")
    assert result.exit_code == 0, result.stderr
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    assert not [name for name in os.listdir("/dev") if ".lipcheck-" in name]


def test_a_symlink_writes_its_target_and_stays_a_link(mlp: dict[str, Path], tmp_path: Path) -> None:
    real, dangling = tmp_path / "real.json", tmp_path / "new.json"
    real.write_text("old")
    (tmp_path / "link.json").symlink_to(real)
    (tmp_path / "dangling.json").symlink_to(dangling)
    for link, target in ((tmp_path / "link.json", real), (tmp_path / "dangling.json", dangling)):
        result = run("gate", mlp["report"], "--fail-above", 5, "-o", link, "-q")
        assert result.exit_code == 0, result.stderr
        assert link.is_symlink() and json.loads(target.read_text())["gate"]["passed"] is True


def _lipcheck(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lipcheck", *map(str, args)], capture_output=True, text=True,
        timeout=EXIT_SECONDS, **kwargs,
    )  # fmt: skip


def test_dev_fd_and_dev_stdout_are_streamed_into(mlp: dict[str, Path], tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as pipe:
        process = subprocess.Popen(
            [sys.executable, "-m", "lipcheck", "gate", str(mlp["report"]), "--fail-above", "5",
             "-o", f"/dev/fd/{write_end}", "-q"],
            pass_fds=[write_end],
        )  # fmt: skip
        os.close(write_end)
        written = pipe.read()
        assert process.wait(EXIT_SECONDS) == 0
    assert json.loads(written)["gate"]["passed"] is True

    # Streamed, so a file that stdout appends to keeps what it held (a rename would replace it).
    log = tmp_path / "log.txt"
    log.write_text("earlier line\n")
    with log.open("a") as stdout:
        completed = subprocess.run(
            [sys.executable, "-m", "lipcheck", "gate", str(mlp["report"]), "--fail-above", "5", "-o",
             "/dev/stdout", "-q"], stdout=stdout, timeout=EXIT_SECONDS,
        )  # fmt: skip
    assert completed.returncode == 0
    earlier, report = log.read_text().split("\n", 1)
    assert earlier == "earlier line" and json.loads(report)["gate"]["passed"] is True


def test_a_closed_descriptor_fails_before_the_audit(mlp: dict[str, Path], tmp_path: Path) -> None:
    # The model does not exist: the --output error shows that the check came first.
    completed = _lipcheck("audit", tmp_path / "missing.pt2", "--data", mlp["data"], "-o", "/dev/fd/9")
    assert completed.returncode == 2, completed.stderr
    assert "--output '/dev/fd/9' cannot be opened for writing" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_unwritable_outputs_fail_before_the_audit(mlp: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt2"
    assert_one_line_error(run("audit", missing, "--data", mlp["data"], "-o", tmp_path), "--output", "folder")
    result = run("audit", missing, "--data", mlp["data"], "-o", tmp_path / "nowhere" / "r.json")
    assert_one_line_error(result, "--output", "nowhere' does not exist")


@pytest.mark.skipif(AS_ROOT, reason="root may write into read-only folders and files")
def test_read_only_folders_and_files_fail_before_the_audit(mlp: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt2"
    locked, frozen = tmp_path / "locked", tmp_path / "frozen.json"
    locked.mkdir(mode=0o555)
    frozen.write_text("keep")
    frozen.chmod(0o444)
    result = run("audit", missing, "--data", mlp["data"], "-o", locked / "r.json")
    assert_one_line_error(result, "--output", "not writable")
    assert_one_line_error(run("audit", missing, "--data", mlp["data"], "-o", frozen), "--output", "read-only")


def test_read_only_folders_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same as above for a user who is root: os.access decides, as it would for anyone else.
    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: access(path, mode) and Path(path) != locked)
    with pytest.raises(
        ValueError, match="--output '.*r.json' cannot be written: its folder .* is not writable"
    ):
        prepare_outputs([locked / "r.json"], {})


# ----------------------------------------------------------------------------------------------------
# Temporary files: never outlive a write, and stale ones of killed processes are removed.


def test_write_atomic_replaces_whole_or_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    write_atomic(target, "old")
    write_atomic(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["report.json"]

    def failing() -> Iterator[str]:
        yield "partial"
        raise OSError(28, "No space left on device")

    for text in (12, failing()):
        with pytest.raises((TypeError, OSError)):
            write_atomic(target, text)  # type: ignore[arg-type]
        assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_an_existing_file_keeps_its_permissions(tmp_path: Path) -> None:
    target = tmp_path / "private.json"
    target.write_text("old")
    target.chmod(0o600)
    write_atomic(target, "new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and target.read_text() == "new"


WRITER = """
import sys, time
from lipcheck.io.outputs import write_atomic

def pieces():
    yield "partial"
    print("writing", flush=True)
    time.sleep(60)
    yield "rest"

write_atomic(sys.argv[1], pieces())
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_during_a_write_removes_the_temporary_file(tmp_path: Path, signum: int) -> None:
    target = tmp_path / "r.json"
    target.write_text("old")
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "writing\n"
    assert len(list(tmp_path.iterdir())) == 2  # the temporary file exists now
    process.send_signal(signum)
    assert process.wait(EXIT_SECONDS) == -signum  # still ended by the signal, as the shell expects
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"] and target.read_text() == "old"


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temporaries_of_killed_writers_are_removed(tmp_path: Path) -> None:
    past = time.time() - 3600
    dead, alive = _dead_pid(), os.getppid()
    stale = tmp_path / f".r.json.lipcheck-{dead}-abc_123.tmp"
    kept = [
        tmp_path / f".r.json.lipcheck-{alive}-abc_123.tmp",  # its writer still runs
        tmp_path / ".r.json.x8f2k.tmp",  # not named by lipcheck
        tmp_path / "notes.txt",
    ]
    for file in [stale, *kept]:
        file.write_text("x")
        os.utime(file, (past, past))
    fresh = tmp_path / f".other.json.lipcheck-{dead}-new.tmp"  # newer than this process: left alone
    fresh.write_text("x")
    write_atomic(tmp_path / "r.json", "report")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in [*kept, fresh, tmp_path / "r.json"]
    )
    remove_stale_temporaries(tmp_path / "no such folder")  # nothing to do, no error
