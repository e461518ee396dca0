"""Data-parallel audits on PyTorch's own distributed runtime: torchrun, and `--workers N` through it.

Under `torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous), every process is a rank
of one audit. Rank r of N audits batches r, r+N, r+2N, ... of the single-process run, whole, so each
batch, and with the engine's shared start vector each sample's row, is what one process would compute.
The ranks advance in rounds of one batch each and add up, after every round, the samples done and
whether a rank failed (one small all-reduce, under the collectives' timeout): rank 0 shows progress for
the whole data set, a rank whose batch failed stops every rank at once with its message, and a rank
that died or hangs fails the others within the timeout instead of leaving them waiting. At the end the
rows are gathered on every rank, so every rank builds the same report and judges the same gate; only
rank 0 writes it, and `agree` makes every rank exit with the same code.

CPU tensors go through gloo; with CUDA, each rank uses cuda:LOCAL_RANK and nccl for CUDA tensors.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from lipcheck.errors import AuditFailedError, InputError, LipcheckError, describe
from lipcheck.options.choices import WORKER_TIMEOUT_SECONDS
from lipcheck.options.limits import check_workers


@dataclass(frozen=True)
class World:
    """This process's place in the audit: rank `rank` of `size`, `local_rank` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    timeout: float = WORKER_TIMEOUT_SECONDS

    @property
    def sharded(self) -> bool:
        return self.size > 1

    def batches(self, count: int) -> range:
        """The batches (of `count` in the data set) this rank audits: rank, rank + size, ..."""
        return range(self.rank, count, self.size)


def launched() -> bool:
    """Whether this process was started by torchrun (or `--workers`) as one rank of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_from_environment() -> int:
    return int(os.environ.get("RANK", "0"))


def join(timeout: float = WORKER_TIMEOUT_SECONDS) -> World:
    """This process's `World`: the process group that torchrun set up, joined once; one rank alone
    when not launched by torchrun."""
    if not launched():
        return World(timeout=timeout)
    world = World(
        rank=rank_from_environment(),
        size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        timeout=timeout,
    )
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(world.local_rank)  # "cuda" is then cuda:LOCAL_RANK
        try:
            dist.init_process_group(
                "cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout)
            )
        except (RuntimeError, ValueError) as error:
            raise AuditFailedError(
                f"rank {world.rank} of {world.size} could not join the other ranks within "
                f"{timeout:g} s ({describe(error)}): check that every rank started"
            ) from error
    return world


_lost_contact = False  # a collective failed: the exit status is not agreed (it would wait again)


def _lost(world: World, what: str, error: BaseException) -> AuditFailedError:
    global _lost_contact
    _lost_contact = True
    return AuditFailedError(
        f"rank {world.rank} of {world.size} lost the other ranks while {what} ({describe(error)}): a rank "
        f"died or did not answer within --worker-timeout {world.timeout:g} s; its own output says why"
    )


def round_done(world: World, samples: int, failed: bool, what: str) -> tuple[int, bool]:
    """End of a round: (samples done by all ranks in it, whether any rank failed)."""
    figures = torch.tensor([samples, int(failed)], dtype=torch.int64)
    try:
        dist.all_reduce(figures)
    except RuntimeError as error:
        raise _lost(world, what, error) from error
    return int(figures[0]), bool(figures[1])


def raise_first_failure(world: World, own: LipcheckError | None, what: str) -> None:
    """After a round in which a rank failed: every rank raises the failure of the lowest failing rank,
    of the same kind (bad input or a failed audit), so every rank exits with the same code."""
    said = None if own is None else (isinstance(own, AuditFailedError), str(own))
    failures = all_gather(world, said, what)
    rank, (audit_failed, message) = next((r, f) for r, f in enumerate(failures) if f is not None)
    if own is not None and rank == world.rank:
        own.shared = True
        raise own
    kind = AuditFailedError if audit_failed else InputError
    error = kind(message)
    error.shared = True  # every rank has it: rank 0 says it
    raise error


def all_gather(world: World, value: Any, what: str) -> list[Any]:
    """`value` of every rank, in rank order (pickled: plain data only)."""
    gathered: list[Any] = [None] * world.size
    try:
        dist.all_gather_object(gathered, value)
    except RuntimeError as error:
        raise _lost(world, what, error) from error
    return gathered


def from_rank_zero(world: World, value: Any, what: str) -> Any:
    """Rank 0's `value`, on every rank."""
    box = [value]
    try:
        dist.broadcast_object_list(box, src=0)
    except RuntimeError as error:
        raise _lost(world, what, error) from error
    return box[0]


def agree(status: int) -> int:
    """The exit status every rank ends with: the highest of all ranks' (a rank whose write failed makes
    every rank fail), after which the process group is closed. Only when a group was joined; a rank
    that cannot reach the others keeps its own."""
    if not (dist.is_available() and dist.is_initialized()):
        return status
    figures = torch.tensor([int(status)], dtype=torch.int64)
    try:
        if not _lost_contact:
            dist.all_reduce(figures, op=dist.ReduceOp.MAX)
            status = int(figures[0])
    except RuntimeError:
        pass
    finally:
        dist.destroy_process_group()
    return status


def launch_workers(workers: int, argv: Sequence[str]) -> int:
    """`lipcheck audit --workers N`: run `python -m lipcheck ARGV` as N ranks on this machine through
    torch.distributed.run (torchrun --standalone), and return the exit status they agreed on.

    A rank killed by a signal (not the SIGTERM the launcher sends the others then) fails the audit
    (AuditFailedError naming the rank and the batches it audits). More than MAX_WORKERS is an
    InputError (`lipcheck.options.limits`).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    check_workers(workers)  # before a process starts: each one holds a model and its batches
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread a rank, and torchrun says nothing of it
    # The ranks say what failed; the launcher's own log of a rank's exit status would say it again.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    arguments = parse_args(
        ["--standalone", "--nproc-per-node", str(workers), "--monitor-interval", "0.1", "-m", "lipcheck",
         *argv]
    )  # fmt: skip
    try:
        run(arguments)
    except ChildFailedError as failed:
        return _launch_status(failed.failures, workers)
    return 0


def _launch_status(failures: dict[int, Any], workers: int) -> int:
    """The exit status of ranks that did not all exit 0: the one they agreed on, unless one was killed."""
    killed = {
        rank: failure for rank, failure in failures.items()
        if failure.exitcode < 0 and -failure.exitcode != signal.SIGTERM
    }  # fmt: skip
    if killed:
        rank, failure = min(killed.items())
        batches = f"{rank}, {rank + workers}, {rank + 2 * workers}, ..."
        raise AuditFailedError(
            f"worker rank {rank} of {workers} was killed by {failure.signal_name()} while it audited its "
            f"shard (batches {batches}): the audit is incomplete; rerun it (with --resume DIR to continue)"
        )
    statuses = [failure.exitcode for failure in failures.values() if failure.exitcode > 0]
    if statuses:
        return max(statuses)
    print("lipcheck: error: the workers were terminated", file=sys.stderr)
    return 130
