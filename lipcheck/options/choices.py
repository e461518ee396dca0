"""Every list of choices lipcheck offers, each defined once as a str Enum.

The command line's option types are these enums, `Settings.validate` checks against them, and the
tables that act on a choice (the renderers per format in present/render.py, the reductions in
report/summary.py) are keyed by them, so adding a choice is one entry here and one in its table.
Torch-free: `lipcheck --help`, `gate` and `compare` import this module and must start fast.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from lipcheck.errors import InputError


class Method(str, Enum):
    """The solver of the engine: Lanczos (default) or the power method."""

    lanczos = "lanczos"
    power = "power"


class Operator(str, Enum):
    """Whose Jacobian an audit measures, for a model f: f itself, 2f - Id, or Id - f.

    `fne` is the question of plug-and-play restoration with a firmly nonexpansive denoiser (arXiv
    2012.13247): f is firmly nonexpansive iff 2f - Id is nonexpansive, so a sample passes when
    ||2 J - I|| <= 1. `residual` is that of Ryu et al. (2019), who need Id - f contractive. Both need
    an output of the input's shape. `symbol` is the operator's Jacobian in J, f's Jacobian.
    """

    symbol: str
    function: str

    def __new__(cls, value: str, symbol: str = "", function: str = "") -> Operator:
        member = str.__new__(cls, value)
        member._value_ = value
        member.symbol = symbol
        member.function = function
        return member

    model = "model", "J", "f"
    fne = "fne", "2J - I", "2f - Id"
    residual = "residual", "I - J", "Id - f"


class Product(str, Enum):
    """How the engine gets J u: by double backward through the model's one evaluation (the default,
    the fastest), or by forward-mode AD, one model call per product; `auto` tries double backward at
    the first batch and falls back to forward mode where the model has operations without a double
    backward. J^T v is reverse mode in both."""

    auto = "auto"
    double_backward = "double-backward"
    forward = "forward"


class BoundMethod(str, Enum):
    """How the certified bound composes the layers' factors: LipSDP-Neuron multipliers checked in
    float64 (lipsdp; where they cannot be found or certified within its budget, the loop transformation
    stands and the report says so), the loop transformation (liplt, never above the product) or the
    product of the factors along every path."""

    lipsdp = "lipsdp"
    liplt = "liplt"
    product = "product"


class Reduction(str, Enum):
    """How sigma over the samples reduces to the one value a gate judges."""

    max = "max"
    mean = "mean"
    sum = "sum"
    median = "median"
    p95 = "p95"


class Dtype(str, Enum):
    """The precision of the model and the data during an audit (the torch dtype of the same name)."""

    float32 = "float32"
    float64 = "float64"


class Device(str, Enum):
    """Where the audit runs; auto is CUDA when available, else the CPU."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Format(str, Enum):
    """A report format, with the suffix of an output file that selects it."""

    suffix: str

    def __new__(cls, value: str, suffix: str = "") -> Format:
        member = str.__new__(cls, value)
        member._value_ = value
        member.suffix = suffix
        return member

    table = "table", ".txt"
    json = "json", ".json"
    markdown = "markdown", ".md"
    junit = "junit", ".xml"
    html = "html", ".html"


def format_for(path: str | Path, default: str | Format) -> Format:
    """The format of an output file: from its suffix (.json, .md, .xml, .html, .txt), else `default`."""
    suffix = Path(path).suffix.lower()
    return next((f for f in Format if f.suffix == suffix), Format(default))


def choose(choices: type[Enum], value: object, flag: str) -> None:
    """InputError naming `flag` unless `value` is one of the enum `choices` (a member or its value)."""
    if value not in {member.value for member in choices}:
        names = ", ".join(str(member.value) for member in choices)
        raise InputError(f"{flag} {value!r} is not one of {names}")


# How long a rank of a sharded audit waits for the others in one collective (--worker-timeout).
WORKER_TIMEOUT_SECONDS = 1800.0
