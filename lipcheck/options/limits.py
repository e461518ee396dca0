"""The budgets of lipcheck: every size a file declares and every count a flag gives, checked before work.

A data file, a model file or a flag can ask for any size: a 1.6 KB `.pt` can declare a tensor of 17 GB
through its strides, `--input-shape 4x99999999999` a sample of 1.6 TB, `--workers` a million processes.
Each such size is checked here, against one documented limit (docs/limits.md), before anything is
allocated or started; past it, an `InputError` (exit 2) names the file or flag, the size asked for and
the limit, by its name in this module. One budget per kind of size, whoever declares it.
"""

from __future__ import annotations

from collections.abc import Sequence

from lipcheck.errors import InputError

# The largest seed a torch.Generator and numpy take (a signed 64-bit integer).
MAX_SEED = 2**63 - 1

# The most bytes of one array read whole into memory, or materialised from fewer stored bytes (an .npz
# member, which numpy cannot map; a legacy .pt; a .pt tensor whose strides repeat its storage), unless
# --max-read-bytes says more: 2 GiB.
MAX_READ_BYTES = 2**31

# The most values in one sample (a data set's sample shape, --random, --input-shape): 2 GiB as float64,
# before the Jacobian's vectors of that size.
MAX_SAMPLE_VALUES = 2**28

# The most samples of one data set (a file's first dimension, --num-samples): 2**32 rows of results
# are 245 GB spilled to disk.
MAX_SAMPLES = 2**32

# The most processes of --workers on one machine.
MAX_WORKERS = 256

# The most ascent steps of a worst-case search (--search-steps) and iterations of a solver
# (--max-iter): each is at least one model call per batch.
MAX_STEPS = 1_000_000

# The longest --worker-timeout, in seconds (a week): a rank waits that long for the others at most, and
# torch's process group takes it as a timedelta, which has no infinity.
MAX_WORKER_TIMEOUT = 7 * 24 * 3600

# The docs page that lists these limits, named in every refusal.
LIMITS_PAGE = "docs/limits.md"


def check_seed(seed: int) -> None:
    """InputError naming --seed when it is not in 0..MAX_SEED."""
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"--seed must be in 0..{MAX_SEED} (2**63 - 1), got {seed}")


def check_at_most(value: int, limit: int, name: str, what: str, fix: str = "give a smaller value") -> None:
    """InputError when `value` is more than `limit`; `what` says what asked for it ("--workers 300",
    "data file 'x.pt' has 10,000,000,000 samples"), `name` is the limit's name in this module
    (MAX_WORKERS, ...), which the message and the docs give."""
    if value > limit:
        raise InputError(f"{what}, more than lipcheck's limit {name} = {limit:,} (see {LIMITS_PAGE}): {fix}")


def check_sample_shape(shape: Sequence[int], what: str) -> int:
    """The number of values in a sample of `shape`; InputError naming `what` past MAX_SAMPLE_VALUES.

    The product is taken in Python integers, so a declared shape cannot overflow into a small number.
    """
    values = 1
    for size in shape:
        values *= int(size)
    if values > MAX_SAMPLE_VALUES:
        shown = "x".join(str(int(size)) for size in shape)
        raise InputError(
            f"{what} has samples of shape {shown}, {values:,} values each, more than lipcheck's limit "
            f"MAX_SAMPLE_VALUES = {MAX_SAMPLE_VALUES:,} values per sample (see {LIMITS_PAGE}): give "
            "smaller samples"
        )
    return values


def check_samples(count: int, what: str) -> None:
    """InputError when `what` declares more than MAX_SAMPLES samples."""
    check_at_most(count, MAX_SAMPLES, "MAX_SAMPLES", f"{what} has {count:,} samples", "give fewer samples")


def check_workers(workers: int) -> None:
    """InputError naming --workers when it is not in 1..MAX_WORKERS."""
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    check_at_most(workers, MAX_WORKERS, "MAX_WORKERS", f"--workers {workers} asks for {workers:,} processes")


def check_steps(steps: int, flag: str) -> None:
    """InputError naming `flag` (--max-iter, --search-steps) past MAX_STEPS."""
    check_at_most(steps, MAX_STEPS, "MAX_STEPS", f"{flag} {steps} asks for {steps:,} steps")


def check_worker_timeout(seconds: float) -> None:
    """InputError naming --worker-timeout past MAX_WORKER_TIMEOUT (or not a number)."""
    if not seconds <= MAX_WORKER_TIMEOUT:
        raise InputError(
            f"--worker-timeout {seconds:g} is more than lipcheck's limit MAX_WORKER_TIMEOUT = "
            f"{MAX_WORKER_TIMEOUT:,} seconds (a week; see {LIMITS_PAGE}): give a smaller value"
        )


def check_read_bytes(size: int, budget: int, what: str, fix: str) -> None:
    """InputError when `what` would put `size` bytes in memory at once, more than `budget`
    (--max-read-bytes, MAX_READ_BYTES by default); `fix` says how else to give the data."""
    if size > budget:
        raise InputError(
            f"{what} needs {size:,} bytes in memory at once, more than --max-read-bytes {budget:,} "
            f"(default MAX_READ_BYTES, see {LIMITS_PAGE}): {fix}, or raise --max-read-bytes"
        )
