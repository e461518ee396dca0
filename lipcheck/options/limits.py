"""The limits of lipcheck's numeric options, each checked before any work, with the flag named."""

from __future__ import annotations

from lipcheck.errors import InputError

# The largest seed a torch.Generator and numpy take (a signed 64-bit integer).
MAX_SEED = 2**63 - 1


def check_seed(seed: int) -> None:
    """InputError naming --seed when it is not in 0..MAX_SEED."""
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"--seed must be in 0..{MAX_SEED} (2**63 - 1), got {seed}")
