"""One audited sample's result, and its line of the JSON report.

`columns.py` keeps millions of them as compact arrays; everything else reads them as `SampleResult`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SampleResult:
    """One audited sample: `index` in the data set, sigma = ||J(x)||_2 and how it was reached.

    `residual` is ||J^T J u - sigma^2 u|| / sigma^2 at the returned vector, None when not finite.
    `sigma_upper` bounds the exact norm from above with probability `Settings.confidence` over the
    random start vector (docs/engine.md, "Error bars"); None when the run could not bound it.
    With a worst-case search (`--search-steps`, `--search-radius`), `search_sigma` is the largest
    sigma the search found within the radius (never below `sigma`: the sample itself counts) and
    `search_distance` the l2 distance of that point from the sample; both None without a search.
    """

    index: int
    sigma: float
    iterations: int
    converged: bool
    residual: float | None
    sigma_upper: float | None = None
    search_sigma: float | None = None
    search_distance: float | None = None


def largest_sigma(sample: SampleResult) -> float:
    """The largest sigma found for a sample: its searched value after a worst-case search, else sigma."""
    return sample.sigma if sample.search_sigma is None else max(sample.sigma, sample.search_sigma)


def sample_dict(s: SampleResult) -> dict[str, Any]:
    """A sample's object in the JSON report; the search's keys only after a worst-case search."""
    row = {"index": s.index, "sigma": s.sigma, "iterations": s.iterations, "converged": s.converged,
           "residual": s.residual, "sigma_upper": s.sigma_upper}  # fmt: skip
    if s.search_sigma is not None:
        row["search_sigma"] = s.search_sigma
        row["search_distance"] = s.search_distance
    return row


def sample_json(s: SampleResult) -> str:
    """`json.dumps(sample_dict(s))`, twice as fast: written out for the plain case (int index and
    iterations, finite floats), which is every row of an audit; anything else goes through json."""
    plain = (
        type(s.index) is int
        and type(s.iterations) is int
        and type(s.sigma) is float
        and math.isfinite(s.sigma)
        and (s.residual is None or (type(s.residual) is float and math.isfinite(s.residual)))
        and (s.sigma_upper is None or (type(s.sigma_upper) is float and math.isfinite(s.sigma_upper)))
        and s.search_sigma is None
    )
    if not plain:
        return json.dumps(sample_dict(s))
    residual = "null" if s.residual is None else repr(s.residual)
    upper = "null" if s.sigma_upper is None else repr(s.sigma_upper)
    converged = "true" if s.converged is True else "false" if s.converged is False else None
    if converged is None:
        return json.dumps(sample_dict(s))
    return (
        f'{{"index": {s.index}, "sigma": {s.sigma!r}, "iterations": {s.iterations}, '
        f'"converged": {converged}, "residual": {residual}, "sigma_upper": {upper}}}'
    )
