"""The model's calls under seeded global generators, and whether the model drew random numbers.

"Same seed, same figures" must hold for a model that draws random numbers in its forward too (dropout
left in training mode, a TorchScript `dropout(x, p, True)`, `torch.rand` in forward, `numpy.random`,
`random`). Such a model is audited at one draw of its randomness, so that draw must be the seed's:
every call of the model runs with torch's, numpy's and Python's global generators seeded from
`--seed`, and the caller's generators are put back as they were afterwards (an audit from a training
loop does not reset the loop's randomness).

A model that drew is detected by comparing each generator's state before and after the call, the
call itself and no second one, and reported (`RandomnessWatch.note`): its figures repeat with the
seed, but are of one draw, not of the model's behaviour in general.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

_NUMPY_SEEDS = 2**32  # numpy's legacy global generator takes a seed below 2**32


class RandomnessWatch:
    """Calls a model under generators seeded from `seed`, and remembers which generators it drew from."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.drew: set[str] = set()

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """function(*args, **kwargs) with the global generators seeded; the caller's states restored."""
        saved = _states()
        _seed(self.seed)
        seeded = _states()
        try:
            return function(*args, **kwargs)
        finally:
            self.drew.update(name for name, state in _states().items() if not _same(state, seeded[name]))
            _restore(saved)

    def note(self) -> str | None:
        """The report's note about a model that drew random numbers in its forward; None if it did not."""
        if not self.drew:
            return None
        which = ", ".join(sorted(self.drew))
        return (
            f"the model draws random numbers in its forward ({which}): every call was seeded from --seed "
            f"{self.seed}, so these figures repeat with that seed, but they are of one draw of its "
            "randomness; put the model in eval mode (dropout) or remove the randomness to audit the model "
            "itself"
        )


def _seed(seed: int) -> None:
    torch.manual_seed(seed)  # the CPU generator and every CUDA device's
    np.random.seed(seed % _NUMPY_SEEDS)  # noqa: NPY002 - the global generator is what model code draws from
    random.seed(seed)


def _states() -> dict[str, Any]:
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy.random": np.random.get_state(),  # noqa: NPY002
        "random": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy.random"])  # noqa: NPY002
    random.setstate(states["random"])
    if "torch.cuda" in states:
        torch.cuda.set_rng_state_all(states["torch.cuda"])


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)
