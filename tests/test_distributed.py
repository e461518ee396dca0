"""Data-parallel audits: ranks started as torchrun starts them (gloo on localhost), torchrun itself, and
`--workers`, against a single-process run, sample by sample; the gate's code on every rank; a model
error on one rank's shard and a killed rank fail every rank with exit 3 instead of hanging."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_fixtures import ARCH, EXIT_SECONDS, STARTUP_SECONDS, mlp_inputs, read_json, run, saved_mlp

from lipcheck.cli import ExitStatus

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gloo on localhost, POSIX signals")

SAMPLES, BATCH = 18, 4  # 5 batches: rank 0 audits 0, 2, 4 (the last one short), rank 1 audits 1, 3


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ranks")
    saved = saved_mlp(folder)
    np.save(folder / "x.npy", mlp_inputs(SAMPLES))
    broken = mlp_inputs(SAMPLES)
    broken[13] *= 1000  # batch 3 (samples 12-15), rank 1's, makes make_fragile raise
    np.save(folder / "broken.npy", broken)
    return {**saved, "data": folder / "x.npy", "broken": folder / "broken.npy", "folder": folder}


def audit_args(files: dict[str, Path], factory: str = "make_mlp", *flags: str) -> list[str]:
    return ["audit", str(files["model"]), "--arch", f"{ARCH}:{factory}", "--data", str(files["data"]),
            "--batch-size", str(BATCH), "--device", "cpu", *flags]  # fmt: skip


@pytest.fixture(scope="module")
def single(files: dict[str, Path]) -> dict:
    """The report of one process (in this one)."""
    out = files["folder"] / "single.json"
    result = run(*audit_args(files), "-o", str(out))
    assert result.exit_code == 0, result.stderr
    return read_json(out)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_ranks(args: list[str], world: int = 2) -> list[subprocess.Popen[str]]:
    """`python -m lipcheck ARGS` as `world` ranks, with the environment torchrun gives its workers."""
    port = str(free_port())
    ranks = []
    for rank in range(world):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": str(world),
               "RANK": str(rank), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"}  # fmt: skip
        command = [sys.executable, "-m", "lipcheck", *args]
        ranks.append(
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    return ranks


def finish(ranks: list[subprocess.Popen[str]], timeout: float = EXIT_SECONDS) -> list[tuple[int, str, str]]:
    return [(rank.wait(timeout), *rank.communicate()) for rank in ranks]


def assert_same_samples(report: dict, single: dict) -> None:
    assert report["samples"] == single["samples"]  # every field of every row, exactly
    assert report["summary"] == single["summary"] and report["data"] == single["data"]
    assert report["environment"]["world_size"] == 2 and single["environment"]["world_size"] == 1


def test_two_ranks_give_the_rows_of_one_process_and_every_rank_exits_with_the_gate_code(
    files: dict[str, Path], single: dict, tmp_path: Path
) -> None:
    out = tmp_path / "two.json"
    threshold = single["summary"]["max"] / 2  # fails: every rank exits 1
    results = finish(
        start_ranks(audit_args(files, "make_mlp", "--fail-above", str(threshold), "-o", str(out)))
    )
    assert [code for code, _, _ in results] == [ExitStatus.GATE_FAILED] * 2, results
    report = read_json(out)  # rank 0's, the one report
    assert_same_samples(report, single)
    assert report["gate"]["passed"] is False
    (_, _, said_by_0), (_, out_1, said_by_1) = results
    assert "lipcheck: gate failed" in said_by_0 and "report written" in said_by_0
    assert out_1 == "" and said_by_1 == ""  # rank 1 writes nothing and says nothing


@pytest.mark.parametrize("launcher", ["torchrun", "--workers"])
def test_torchrun_and_workers_give_the_rows_of_one_process(
    files: dict[str, Path], single: dict, tmp_path: Path, launcher: str
) -> None:
    out = tmp_path / "report.json"
    args = audit_args(files, "make_mlp", "-o", str(out))
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "lipcheck", *args]  # fmt: skip
    else:
        command = [sys.executable, "-m", "lipcheck", *args, "--workers", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=EXIT_SECONDS)
    assert done.returncode == 0, done.stderr
    assert_same_samples(read_json(out), single)
    if launcher == "--workers":
        assert done.stderr.strip().splitlines() == [f"lipcheck: report written to {out}"]


def test_a_model_error_on_one_rank_fails_every_rank_naming_the_rank_and_the_batch(
    files: dict[str, Path],
) -> None:
    args = audit_args(files, "make_fragile", "--arch-kwargs", '{"limit": 100}')
    args[args.index(str(files["data"]))] = str(files["broken"])
    results = finish(start_ranks(args))
    assert [code for code, _, _ in results] == [ExitStatus.AUDIT_FAILED] * 2, results
    said = results[0][2].strip().splitlines()
    assert len(said) == 1 and said[0].startswith("lipcheck: error: rank 1 of 2, batch 3: ")
    assert "samples 12-15" in said[0] and "ValueError: an input above 100" in said[0]


def wait_for(path: Path, seconds: float = STARTUP_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_a_killed_rank_fails_the_others_within_the_timeout(files: dict[str, Path], tmp_path: Path) -> None:
    paced = json.dumps({"folder": str(tmp_path), "seconds": 0.2})
    ranks = start_ranks(audit_args(files, "make_paced", "--arch-kwargs", paced, "--worker-timeout", "30"))
    wait_for(tmp_path / "pid-1")
    os.kill(int((tmp_path / "pid-1").read_text()), signal.SIGKILL)
    code, _, said = finish(ranks[:1])[0]
    ranks[1].wait(EXIT_SECONDS)
    assert code == ExitStatus.AUDIT_FAILED, said
    assert "rank 0 of 2 lost the other ranks while auditing batches" in said


def test_a_rank_that_hangs_fails_the_others_after_the_worker_timeout(
    files: dict[str, Path], tmp_path: Path
) -> None:
    paced = json.dumps({"folder": str(tmp_path), "seconds": 0.2})
    ranks = start_ranks(audit_args(files, "make_paced", "--arch-kwargs", paced, "--worker-timeout", "3"))
    wait_for(tmp_path / "pid-1")
    hung = int((tmp_path / "pid-1").read_text())
    os.kill(hung, signal.SIGSTOP)  # alive, holding its connections, answering nothing
    try:
        begin = time.monotonic()
        code, _, said = finish(ranks[:1])[0]
        waited = time.monotonic() - begin
    finally:
        os.kill(hung, signal.SIGKILL)
        ranks[1].wait(EXIT_SECONDS)
    assert code == ExitStatus.AUDIT_FAILED, said
    assert "rank 0 of 2 lost the other ranks" in said and "--worker-timeout 3 s" in said
    # it waited for the timeout (its clock may start a batch before the stop), once, not the default 30 min;
    # the upper end is generous so that a busy machine cannot fail it
    assert 2 <= waited < 300


def test_workers_say_which_rank_was_killed(files: dict[str, Path], tmp_path: Path) -> None:
    paced = json.dumps({"folder": str(tmp_path), "seconds": 0.2})
    args = audit_args(files, "make_paced", "--arch-kwargs", paced, "--workers", "2")
    launcher = subprocess.Popen([sys.executable, "-m", "lipcheck", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(tmp_path / "pid-1")
    os.kill(int((tmp_path / "pid-1").read_text()), signal.SIGKILL)
    code = launcher.wait(EXIT_SECONDS)
    said = launcher.communicate()[1]
    assert code == ExitStatus.AUDIT_FAILED, said
    assert "worker rank 1 of 2 was killed by SIGKILL" in said and "batches 1, 3, 5" in said


def test_ranks_refuse_the_journal_of_one_process_together(files: dict[str, Path], tmp_path: Path) -> None:
    args = audit_args(files, "make_mlp", "--resume", str(tmp_path / "journal"), "--format", "json")
    assert run(*args).exit_code == 0  # a journal of one process
    results = finish(start_ranks(args))
    assert [code for code, _, _ in results] == [ExitStatus.USAGE_OR_INPUT] * 2, results
    said = results[0][2].strip().splitlines()
    assert len(said) == 1 and "holds the journal of another audit (world size 1 vs 2)" in said[0]
    assert results[1][2] == ""  # said once, by rank 0
