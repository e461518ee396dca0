"""The sections of a report as plain data: the model, the data, the settings, where and how long it
ran, the summary of sigma, and the gate's verdicts.

`Report` (the audit) and `ModelBoundReport` (`lipcheck bound`) are built from these.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipcheck.errors import InputError
from lipcheck.options.choices import Device, Dtype, Method, Operator, Product, Reduction, choose
from lipcheck.options.limits import MAX_SAMPLES, check_at_most, check_seed, check_steps
from lipcheck.report.records import build


@dataclass(frozen=True)
class ModelSection:
    path: str
    format: str
    sha256: str
    size_bytes: int
    parameters: int
    trusted: bool
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    input_spec: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class DataSection:
    """`count` samples were audited, the first of `total` in the source; `path` is None for random data.

    `sha256` is the hash of the audited samples' bytes as stored (`Dataset.sha256`); None only in
    reports written before lipcheck recorded it.
    """

    path: str | None
    kind: str
    key: str | None
    count: int
    total: int
    sample_shape: tuple[int, ...]
    dtype: str
    seed: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Settings:
    """How the audit runs: part of an `AuditRequest`, and the input of `auditing.run_audit`.

    `operator` says whose Jacobian every sigma is the norm of (`choices.Operator`): the model f's
    ("model", J), 2f - Id's ("fne", 2J - I) or Id - f's ("residual", I - J); reports written before
    lipcheck recorded it measured f. `product` is how J u is asked for (`choices.Product`); the
    product actually used is in the report's `Derivatives`.
    """

    operator: str = "model"
    method: str = "lanczos"
    tol: float = 1e-4
    max_iter: int = 200
    seed: int = 0
    batch_size: int = 64
    device: str = "auto"
    dtype: str = "float32"
    reduction: str = "max"
    krylov_dim: int = 12
    confidence: float = 0.99
    output_key: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    search_steps: int | None = None
    search_radius: float | None = None
    product: str = "auto"

    def validate(self) -> None:
        """InputError naming the flag of the first setting that is not a choice or is out of range."""
        choose(Operator, self.operator, "--operator")
        choose(Product, self.product, "--product")
        choose(Method, self.method, "--method")
        choose(Dtype, self.dtype, "--dtype")
        choose(Device, self.device, "--device")
        choose(Reduction, self.reduction, "--reduction")
        if not 0 < self.tol < 1:
            raise InputError(f"--tol must be in (0, 1), got {self.tol:g}")
        if not 0 < self.confidence < 1:
            raise InputError(f"--confidence must be in (0, 1), such as 0.99, got {self.confidence:g}")
        if self.max_iter < 1:
            raise InputError(f"--max-iter must be at least 1, got {self.max_iter}")
        check_steps(self.max_iter, "--max-iter")
        check_seed(self.seed)
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {self.batch_size}")
        # a batch is never larger than an audit's samples, and numpy's indices stop at 2**63
        batch = f"--batch-size {self.batch_size:,}"
        check_at_most(self.batch_size, MAX_SAMPLES, "MAX_SAMPLES", batch, "give a smaller batch")
        steps, radius = self.search_steps, self.search_radius
        if steps is not None and radius is None:
            raise InputError(
                "--search-steps needs --search-radius R, the l2 radius of the search around each sample"
            )
        if radius is not None and steps is None:
            raise InputError("--search-radius needs --search-steps N, the number of ascent steps")
        if steps is not None and self.product == Product.forward.value:
            raise InputError(
                "--search-steps needs the gradient of sigma, which the forward-mode product does not give: "
                "use --product auto or double-backward with a worst-case search"
            )
        if steps is not None and steps < 0:
            raise InputError(f"--search-steps must be at least 0, got {steps}")
        if steps is not None:
            check_steps(steps, "--search-steps")
        if radius is not None and not (radius >= 0 and math.isfinite(radius)):
            raise InputError(f"--search-radius must be a finite number >= 0, got {radius:g}")


@dataclass(frozen=True)
class AdjointBatch:
    """The adjoint test of one batch (data indices `first`..`last`): the largest relative gap between
    <J u, w> and <u, J^T w> over its samples, and whether it was within the tolerance."""

    first: int
    last: int
    gap: float
    passed: bool


@dataclass(frozen=True)
class Derivatives:
    """How the audit's products were computed, and the adjoint test of each batch.

    Attributes:
        product: "double-backward" (J u by differentiating J^T w: the model is called once per batch)
            or "forward" (J u by forward-mode AD: one more model call per product); J^T v is reverse
            mode in both. Chosen at the first batch when `Settings.product` is "auto".
        decompositions: the operations evaluated by differentiable decompositions (hardsigmoid,
            hardswish, scaled_dot_product_attention under its math backend).
        model_calls_per_product: 0 for double-backward, 1 for forward.
        adjoint_tolerance: the largest relative gap a batch may show in the audit's dtype.
        adjoint: per batch (indices [k B, (k+1) B) of the batch size B), the test's outcome: every
            batch of a report passed it (a failing one stops the audit). Kept in each row, so a
            resumed or sharded audit lists the same batches as an uninterrupted one.
    """

    product: str
    decompositions: tuple[str, ...] = ()
    model_calls_per_product: int = 0
    adjoint_tolerance: float = 0.0
    adjoint: tuple[AdjointBatch, ...] = ()


def path_text(path: str | Path) -> str:
    """A path as text that every output can hold: bytes of the name that are not UTF-8 (which Python
    keeps as lone surrogates) become '\\xNN' escapes, as `ls -b` shows them."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Environment:
    """Where the audit ran. `world_size` processes audited a shard each (torchrun, --workers), each
    with `threads` threads; `fitted_batch_size` is the largest batch that fit after an out-of-memory
    batch was split (None when every batch of --batch-size fit)."""

    python: str
    platform: str
    torch: str
    device: str
    threads: int
    world_size: int = 1
    fitted_batch_size: int | None = None


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds; `samples_per_second` counts audited samples over `audit_seconds`."""

    started: str
    load_seconds: float
    audit_seconds: float
    total_seconds: float
    samples_per_second: float


@dataclass(frozen=True)
class Summary:
    """Statistics of sigma over the audited samples; `value` is the `reduction` of them all.

    After a worst-case search, `max` and `argmax` (and `value` when the reduction is "max") count each
    sample's searched value (`largest_sigma`); `mean`, `min`, `median`, `p95` and the other reductions
    describe sigma at the samples themselves.
    """

    count: int
    converged: int
    max: float
    mean: float
    min: float
    median: float
    p95: float
    reduction: str
    value: float
    argmax: int


@dataclass(frozen=True)
class RuleVerdict:
    """One gate rule's verdict: `passed` when `value` is within `threshold`.

    `failing_samples` are the data indices that failed a per-sample rule (all of them, in data order);
    `baseline` and `baseline_value` name the report and the figure a baseline rule compared with.
    """

    name: str
    threshold: float
    value: float
    passed: bool
    message: str
    failing_samples: tuple[int, ...] = ()
    baseline: str | None = None
    baseline_value: float | None = None


@dataclass(frozen=True)
class Gate:
    """`passed` is None when no rule was given, else whether every rule passed."""

    passed: bool | None = None
    rules: tuple[RuleVerdict, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Gate:
        """The gate of a report read back (an audit's or a series')."""
        return build(
            cls, data, rules=lambda rules: tuple(build(RuleVerdict, r, failing_samples=tuple) for r in rules)
        )
