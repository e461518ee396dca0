"""The audit report as plain data, its summary statistics, and its JSON round trip.

Everything an audit produces is a frozen dataclass here; `Report.to_dict` and `Report.from_dict` are
the one place where it is (de)serialised; `lipcheck.io.outputs` writes it to files. The JSON Schema of
`Report.to_dict()` ships at `lipcheck/schemas/report.schema.json`; that of `ModelBoundReport.to_dict()`,
the report of `lipcheck bound`, at `lipcheck/schemas/bound.schema.json`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from lipcheck.errors import InputError
from lipcheck.options.choices import Device, Dtype, Method, Operator, Reduction, choose
from lipcheck.options.limits import check_seed
from lipcheck.report.json_schema import first_problem

SCHEMA_VERSION = 1

REDUCTIONS: dict[Reduction, Callable[[np.ndarray], float]] = {
    Reduction.max: lambda s: float(np.max(s)),
    Reduction.mean: lambda s: float(np.mean(s)),
    Reduction.sum: lambda s: float(np.sum(s)),
    Reduction.median: lambda s: float(np.median(s)),
    Reduction.p95: lambda s: float(np.percentile(s, 95)),
}


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
    lipcheck recorded it measured f.
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

    def validate(self) -> None:
        """InputError naming the flag of the first setting that is not a choice or is out of range."""
        choose(Operator, self.operator, "--operator")
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
        check_seed(self.seed)
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {self.batch_size}")
        steps, radius = self.search_steps, self.search_radius
        if steps is not None and radius is None:
            raise InputError(
                "--search-steps needs --search-radius R, the l2 radius of the search around each sample"
            )
        if radius is not None and steps is None:
            raise InputError("--search-radius needs --search-steps N, the number of ascent steps")
        if steps is not None and steps < 0:
            raise InputError(f"--search-steps must be at least 0, got {steps}")
        if radius is not None and not (radius >= 0 and math.isfinite(radius)):
            raise InputError(f"--search-radius must be a finite number >= 0, got {radius:g}")


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


@dataclass(frozen=True, eq=False)
class Directions:
    """The most amplified unit input directions of audited samples, largest sigma first (ties by index).

    Not part of the JSON report: `lipcheck audit --save-directions` writes them to a safetensors file,
    and the HTML report draws the first rows beside their inputs.

    Attributes:
        indices: (K,) int64, the data indices of the rows.
        sigma: (K,) float64, each row's sigma at the sample itself (not a worst-case search's).
        residual: (K,) float64, ||J^T J v - sigma^2 v|| / sigma^2 at the row's direction v; NaN where
            it was not finite.
        vectors: (K, ...) the directions v, unit l2 norm each, shaped like a sample, in the audit's dtype.
        inputs: (M, ...) the samples of the first M <= K rows, for pictures; (0, ...) when none kept.
    """

    indices: np.ndarray
    sigma: np.ndarray
    residual: np.ndarray
    vectors: np.ndarray
    inputs: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def to_safetensors(self, count: int | None = None, metadata: Mapping[str, str] | None = None) -> bytes:
        """The first `count` rows (all when None) as a safetensors file: `directions` (K, ...), `indices`
        (K,) int64, `sigma` and `residual` (K,) float64; `metadata` as the file's string metadata."""
        from safetensors.numpy import save

        rows = slice(None) if count is None else slice(0, count)
        tensors = {
            "directions": np.ascontiguousarray(self.vectors[rows]),
            "indices": np.ascontiguousarray(self.indices[rows], dtype=np.int64),
            "sigma": np.ascontiguousarray(self.sigma[rows], dtype=np.float64),
            "residual": np.ascontiguousarray(self.residual[rows], dtype=np.float64),
        }
        return save(tensors, metadata=dict(metadata or {}))


@dataclass(frozen=True)
class Report:
    model: ModelSection
    data: DataSection
    settings: Settings
    environment: Environment
    timing: Timing
    samples: Sequence[SampleResult]  # a tuple, or `columns.SampleColumns` (compact) after an audit
    summary: Summary
    gate: Gate = Gate()
    lipcheck_version: str = ""
    schema_version: int = SCHEMA_VERSION
    bound: BoundReport | None = None
    notes: tuple[str, ...] = ()  # what a reader of the figures must know (a Jacobian zero everywhere)
    # The worst samples' directions, when the audit was asked to keep them; never in the JSON.
    directions: Directions | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict whose keys follow the schema; lists where the dataclasses hold tuples."""
        return self._sections(samples=[_sample_dict(s) for s in self.samples])

    def _sections(self, samples: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "schema_version": self.schema_version,
            "lipcheck_version": self.lipcheck_version,
        }
        for name in ("model", "data", "settings", "environment", "timing"):
            body[name] = json.loads(json.dumps(asdict(getattr(self, name))))
        body["samples"] = samples
        body["summary"] = asdict(self.summary)
        body["gate"] = {"passed": self.gate.passed, "rules": [asdict(rule) for rule in self.gate.rules]}
        body.update(self._bound_sections())
        if self.notes:
            body["notes"] = list(self.notes)
        return body

    def _bound_sections(self) -> dict[str, Any]:
        """With --bound: the certified `upper_bound`, its factors, and the bracket [max found, bound]."""
        if self.bound is None:
            return {}
        lower, upper = self.summary.max, self.bound.upper_bound
        return {
            "upper_bound": upper,
            "bound": bound_details(self.bound),
            "bracket": [lower, upper],
            "bracket_ratio": upper / lower if lower > 0 else None,
        }

    def to_json(self) -> str:
        """Indented JSON with one line per sample (`json_chunks` joined)."""
        return "".join(self.json_chunks())

    def json_chunks(self, rows_per_chunk: int = 4096) -> Iterator[str]:
        """The JSON of `to_json` in pieces, a few thousand sample lines each, to write as they come: the
        text of a report of millions of samples is never whole in memory, nor is a dict per sample."""
        yield "{\n"
        for position, (name, value) in enumerate(self._sections(samples=None).items()):
            comma = ",\n" if position else ""
            yield f"{comma}  {json.dumps(name)}: "
            if name != "samples":
                yield json.dumps(value, indent=2).replace("\n", "\n  ")
            elif not self.samples:
                yield "[]"
            else:
                yield "[\n    "
                for start in range(0, len(self.samples), rows_per_chunk):
                    chunk = self.samples[start : start + rows_per_chunk]
                    separator = ",\n    " if start else ""
                    yield separator + ",\n    ".join(_sample_json(row) for row in chunk)
                yield "\n  ]"
        yield "\n}\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        return cls(
            model=_build(ModelSection, data["model"], input_spec=lambda v: tuple(dict(s) for s in v)),
            data=_build(DataSection, data["data"], sample_shape=tuple),
            settings=_build(Settings, data["settings"]),
            environment=_build(Environment, data["environment"]),
            timing=_build(Timing, data["timing"]),
            samples=tuple(_build(SampleResult, row) for row in data["samples"]),
            summary=_build(Summary, data["summary"]),
            gate=_build(
                Gate,
                data["gate"],
                rules=lambda rules: tuple(_build(RuleVerdict, rule, failing_samples=tuple) for rule in rules),
            ),
            lipcheck_version=data["lipcheck_version"],
            schema_version=data["schema_version"],
            bound=bound_from_dict(data) if "upper_bound" in data else None,
            notes=tuple(data.get("notes", ())),
        )

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls.from_dict(json.loads(text))


def _sample_dict(s: SampleResult) -> dict[str, Any]:
    row = {"index": s.index, "sigma": s.sigma, "iterations": s.iterations, "converged": s.converged,
           "residual": s.residual, "sigma_upper": s.sigma_upper}  # fmt: skip
    if s.search_sigma is not None:
        row["search_sigma"] = s.search_sigma
        row["search_distance"] = s.search_distance
    return row


def _sample_json(s: SampleResult) -> str:
    """`json.dumps(_sample_dict(s))`, twice as fast: written out for the plain case (int index and
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
        return json.dumps(_sample_dict(s))
    residual = "null" if s.residual is None else repr(s.residual)
    upper = "null" if s.sigma_upper is None else repr(s.sigma_upper)
    converged = "true" if s.converged is True else "false" if s.converged is False else None
    if converged is None:
        return json.dumps(_sample_dict(s))
    return (
        f'{{"index": {s.index}, "sigma": {s.sigma!r}, "iterations": {s.iterations}, '
        f'"converged": {converged}, "residual": {residual}, "sigma_upper": {upper}}}'
    )


def _build(cls: Any, data: Mapping[str, Any], **convert: Callable[[Any], Any]) -> Any:
    values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
    for name, function in convert.items():
        if name in values:
            values[name] = function(values[name])
    return cls(**values)


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def summarise(samples: Sequence[SampleResult], reduction: str) -> Summary:
    """Summary statistics of sigma over `samples` (at least one); `reduction` names `value`.

    Compact columns (`columns.SampleColumns`) are summarised from their arrays, a chunk at a time, with
    one column of sigma in memory (for the median and p95), never an object per sample.
    """
    choose(Reduction, reduction, "reduction")
    if hasattr(samples, "tables"):
        return _summarise_columns(samples, reduction)
    sigma = np.array([s.sigma for s in samples], dtype=np.float64)
    found = np.array([largest_sigma(s) for s in samples], dtype=np.float64)
    worst = int(np.argmax(found))
    return Summary(
        count=len(samples),
        converged=sum(1 for s in samples if s.converged),
        max=float(found[worst]),
        mean=float(np.mean(sigma)),
        min=float(np.min(sigma)),
        median=float(np.median(sigma)),
        p95=float(np.percentile(sigma, 95)),
        reduction=reduction,
        value=REDUCTIONS[Reduction(reduction)](found if reduction == "max" else sigma),
        argmax=samples[worst].index,
    )


def _summarise_columns(samples: Any, reduction: str) -> Summary:
    """`summarise` of `SampleColumns`: the same figures, from the arrays (NaN is a missing search)."""
    largest, argmax, converged = -math.inf, 0, 0
    for table in samples.tables():
        found = np.fmax(table["sigma"], table["search_sigma"])
        k = int(np.argmax(found))
        if found[k] > largest:  # the first of equal maxima, as np.argmax over all of them
            largest, argmax = float(found[k]), int(table["index"][k])
        converged += int(np.count_nonzero(table["converged"]))
    sigma = samples.column("sigma")
    mean, low, total = float(np.mean(sigma)), float(np.min(sigma)), float(np.sum(sigma))
    median = float(np.median(sigma, overwrite_input=True))  # reorders sigma: the sums are taken
    p95 = float(np.percentile(sigma, 95, overwrite_input=True))
    values = {"max": largest, "mean": mean, "sum": total, "median": median, "p95": p95}
    return Summary(
        count=len(samples), converged=converged, max=largest, mean=mean, min=low, median=median,
        p95=p95, reduction=reduction, value=values[Reduction(reduction).value], argmax=argmax,
    )  # fmt: skip


def largest_sigma(sample: SampleResult) -> float:
    """The largest sigma found for a sample: its searched value after a worst-case search, else sigma."""
    return sample.sigma if sample.search_sigma is None else max(sample.sigma, sample.search_sigma)


def worst_samples(report: Report, count: int = 10) -> list[SampleResult]:
    """The `count` samples with the largest sigma (searched, when searched), largest first (ties by index)."""
    samples = report.samples
    if not hasattr(samples, "tables"):
        return sorted(samples, key=lambda s: (-largest_sigma(s), s.index))[:count]
    from lipcheck.report.columns import table_to_rows  # columns.py builds on this module

    best: list[SampleResult] = []  # compact columns: the best of each chunk, merged
    for table in samples.tables():
        order = np.lexsort((table["index"], -np.fmax(table["sigma"], table["search_sigma"])))[:count]
        chunk = table_to_rows(table[order])
        best = sorted([*best, *chunk], key=lambda s: (-largest_sigma(s), s.index))[:count]
    return best


MAX_NESTING = 64  # a report nests 5 deep; --arg and --arch-kwargs objects have room to nest


def read_report(path: str | Path, what: str = "report") -> Report:
    """The report saved at `path` (by `lipcheck audit --output`), checked before anything trusts it.

    InputError naming `what`, the path and the first problem when the file is missing, is not JSON
    (NaN and Infinity are not), nests deeper than `MAX_NESTING`, was written with a newer schema, does
    not validate against the shipped schema, or holds a summary (or bracket) that its samples do not
    give: a report edited by hand cannot tell the gate what it wants to hear.
    """
    source = Path(path)
    where = f"{what} '{source}'"
    fix = "give a JSON report written by lipcheck audit --output FILE.json"
    if not source.is_file():
        problem = "is not a file" if source.exists() else "does not exist"
        raise InputError(f"{where} {problem}: {fix}")
    text = source.read_bytes()
    depth = nesting_depth(text)
    if depth > MAX_NESTING:
        raise InputError(f"{where} nests {depth} levels deep, more than a report's {MAX_NESTING}: {fix}")
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as error:
        if isinstance(error, json.JSONDecodeError):
            detail = f"{error.msg} at line {error.lineno}"
        else:
            detail = "binary" if isinstance(error, UnicodeDecodeError) else str(error)
        raise InputError(f"{where} is not JSON ({detail}): {fix}") from None
    if not isinstance(data, dict) or "schema_version" not in data or "summary" not in data:
        raise InputError(f"{where} is not a lipcheck report (no schema_version and summary): {fix}")
    version = data["schema_version"]
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise InputError(
            f"{where} has schema version {version}, newer than this lipcheck reads ({SCHEMA_VERSION}): "
            "upgrade lipcheck"
        )
    problem = first_problem(data, report_schema())
    if problem is not None:
        raise InputError(f"{where} is not a valid lipcheck report ({problem}): {fix}")
    report = Report.from_dict(data)
    problem = inconsistency(report, data)
    if problem is not None:
        raise InputError(
            f"{where} contradicts itself ({problem}): it was edited or damaged; audit again to get a report"
        )
    return report


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def nesting_depth(text: bytes) -> int:
    """How deep the arrays and objects of the JSON `text` nest, counted without parsing it (so without
    recursion) at the speed of bytes methods: brackets inside strings do not count."""
    unescaped = text.replace(b"\\\\", b"").replace(b'\\"', b"")  # escaped backslashes, then quotes
    structure = re.sub(rb'"[^"]*"', b"", unescaped.translate(None, _NOT_STRUCTURE))
    steps = np.frombuffer(structure, dtype=np.uint8)
    opening = (steps == ord("[")) | (steps == ord("{"))
    return int(np.cumsum(np.where(opening, 1, -1)).max(initial=0))


_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')


def inconsistency(report: Report, stored: Mapping[str, Any]) -> str | None:
    """What in the report `stored` (its JSON, read as `report`) its own samples contradict: a summary
    figure that `summarise` does not give again (to 1e-9, for sums taken in another order), or a
    bracket that is not [summary max, upper bound]."""
    again = summarise(report.samples, report.summary.reduction)
    for name in (f.name for f in fields(Summary)):
        written, computed = getattr(report.summary, name), getattr(again, name)
        if not (written == computed or _close(written, computed)):
            return f"summary {name} is {written:g} but its samples give {computed:g}"
    for name, computed in report._bound_sections().items():
        written = stored.get(name)
        if name in ("bracket", "bracket_ratio") and not _same_figures(written, computed):
            return (
                f"{name} is {json.dumps(written)} but its summary and upper bound give {json.dumps(computed)}"
            )
    return None


def _same_figures(written: Any, computed: Any) -> bool:
    if isinstance(written, list) and isinstance(computed, list):
        return len(written) == len(computed) and all(map(_same_figures, written, computed))
    return written == computed or _close(written, computed)


def _close(stored: Any, computed: Any) -> bool:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (stored, computed))
    return numbers and math.isclose(stored, computed, rel_tol=1e-9, abs_tol=1e-300)


def report_schema() -> dict[str, Any]:
    """The JSON Schema that every report validates against."""
    text = resources.files("lipcheck").joinpath("schemas/report.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def bound_schema() -> dict[str, Any]:
    """The JSON Schema of the report of `lipcheck bound` (`ModelBoundReport.to_json`)."""
    text = resources.files("lipcheck").joinpath("schemas/bound.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


# ----------------------------------------------------------------------------------------------------
# Certified upper bounds: `lipcheck bound`, and `lipcheck audit --bound`


@dataclass(frozen=True)
class LayerBound:
    """One factor of the bound: the Lipschitz constant of one operation of the graph.

    Attributes:
        name: the module path of the operation ("layer1.0.conv1"), or its graph node name at top level.
        node: the graph node name, unique in the graph.
        kind: what the operation is ("linear", "conv2d", "relu", "batch_norm", "assumed", ...).
        bound: an upper bound on the operation's l2 Lipschitz constant with respect to its input.
        method: how the bound was computed ("exact SVD", "DFT of the kernel at 10x10", ...).
    """

    name: str
    node: str
    kind: str
    bound: float
    method: str


@dataclass(frozen=True)
class BoundTerm:
    """One term of the loop-transformation bound: what one source of deviation adds to the total.

    Attributes:
        name: the module path of the activation or operation whose deviation this is, or "input" for the
            term with every activation at its centre slope.
        node: the graph node where the deviation enters.
        kind: "relu deviation", "max_pool2d deviation", ...
        norm: the certified norm of the merged linear block from that node to the output.
        contribution: what the term adds to the bound (the norm times the deviation's own bound).
        method: how the block's norm was computed ("exact SVD of the merged block (256 x 4096)", ...).
    """

    name: str
    node: str
    kind: str
    norm: float
    contribution: float
    method: str


@dataclass(frozen=True)
class BoundReport:
    """A certified upper bound on the l2 Lipschitz constant of a model on inputs of one shape.

    Attributes:
        upper_bound: the bound, composed over the graph (never below the model's Lipschitz constant,
            except through the constants in `assumptions`, which the user vouched for).
        layers: the factors of the operations that scale perturbations, in graph order. The total is
            not their product when the graph has residual connections or concatenations.
        assumptions: operation name -> Lipschitz constant supplied by the user with `assume`, for the
            operations of the graph it was used on.
        input_shape: the shape of one input, without the batch dimension.
        method: how the factors were composed: "liplt" (the loop transformation, never above the product)
            or "product" (the product of the factors along every path).
        product_bound: the product composition's bound, for comparison (equal to `upper_bound` when
            `method` is "product").
        terms: with "liplt", the terms of the sum, one per source of deviation (which block contributes
            most).
        operator: whose Lipschitz constant is bounded: "model" (f), "fne" (2f - Id) or "residual"
            (Id - f), each exported as one graph.
    """

    upper_bound: float
    layers: tuple[LayerBound, ...]
    assumptions: Mapping[str, float] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()
    method: str = "product"
    product_bound: float | None = None
    terms: tuple[BoundTerm, ...] = ()
    operator: str = "model"


def bound_details(bound: BoundReport) -> dict[str, Any]:
    """The JSON object under the key `bound`: input shape, factors and assumptions (the total is
    `upper_bound`, next to it)."""
    return {
        "input_shape": list(bound.input_shape),
        "layers": [asdict(layer) for layer in bound.layers],
        "assumptions": dict(bound.assumptions),
        "method": bound.method,
        "product_bound": bound.product_bound,
        "terms": [asdict(term) for term in bound.terms],
        "operator": bound.operator,
    }


def bound_from_dict(data: Mapping[str, Any]) -> BoundReport:
    """The inverse of `bound_details`, from a report holding the keys `upper_bound` and `bound`."""
    details = data["bound"]
    return BoundReport(
        upper_bound=data["upper_bound"],
        layers=tuple(_build(LayerBound, layer) for layer in details["layers"]),
        assumptions=dict(details["assumptions"]),
        input_shape=tuple(details["input_shape"]),
        method=details.get("method", "product"),  # reports before the loop transformation: the product
        product_bound=details.get("product_bound", data["upper_bound"] if "method" not in details else None),
        terms=tuple(_build(BoundTerm, term) for term in details.get("terms", ())),
        operator=details.get("operator", "model"),  # reports before --operator bounded the model
    )


@dataclass(frozen=True)
class BoundTiming:
    """Wall-clock seconds of `lipcheck bound`: loading the model, and bounding it (export included)."""

    started: str
    load_seconds: float
    bound_seconds: float


@dataclass(frozen=True)
class ModelBoundReport:
    """The report of `lipcheck bound`: a model file's certified bound, with provenance.

    Its JSON has the keys `upper_bound` and `bound` of an audit report run with `--bound`, so the same
    `jq .upper_bound` reads both. Schema: `lipcheck/schemas/bound.schema.json`.
    """

    model: ModelSection
    environment: Environment
    timing: BoundTiming
    bound: BoundReport
    lipcheck_version: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "lipcheck_version": self.lipcheck_version,
            "model": json.loads(json.dumps(asdict(self.model))),
            "environment": asdict(self.environment),
            "timing": asdict(self.timing),
            "upper_bound": self.bound.upper_bound,
            "bound": bound_details(self.bound),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelBoundReport:
        return cls(
            model=_build(ModelSection, data["model"], input_spec=lambda v: tuple(dict(s) for s in v)),
            environment=_build(Environment, data["environment"]),
            timing=_build(BoundTiming, data["timing"]),
            bound=bound_from_dict(data),
            lipcheck_version=data["lipcheck_version"],
            schema_version=data["schema_version"],
        )

    @classmethod
    def from_json(cls, text: str) -> ModelBoundReport:
        return cls.from_dict(json.loads(text))
