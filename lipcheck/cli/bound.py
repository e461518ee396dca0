"""`lipcheck bound`: a certified upper bound on a model's Lipschitz constant, composed layer by layer.

The command reads its flags into a `_BoundRequest`, loads the model, calls `run_bound`, and writes the
bound's report; a side path of the audit that needs no data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lipcheck.cli.options import (
    ArchKwargsOption,
    ArchOption,
    BoundMethodOption,
    DebugOption,
    ModelArgOption,
    QuietOption,
    TrustPickleOption,
    parse_assumptions,
    parse_json_object,
    parse_model_args,
)
from lipcheck.cli.output import choose_format, write
from lipcheck.cli.streams import model_prints_to_stderr
from lipcheck.errors import InputError
from lipcheck.options.choices import BoundMethod, Format, Operator

if TYPE_CHECKING:
    from lipcheck.report import ModelBoundReport

EPILOG = """\
**Examples**

```
lipcheck bound model.pt2 --input-shape 3x32x32
lipcheck bound model.pt2 --input-shape 3x32x32 --bound-method product   # to compare the two methods
lipcheck bound model.pt2 --input-shape 20 --format json | jq .upper_bound
lipcheck bound weights.safetensors --arch nets.py:make_denoiser --input-shape 1,64,64 --format markdown
lipcheck bound model.pt2 --input-shape 3x32x32 --assume aten.erf.default=1.13 --output bound.json
lipcheck bound weights.pt --arch nets.py:make_drunet --input-shape 1x32x32 --arg sigma=0.1
lipcheck audit model.pt2 --data x.npy --bound --fail-above-bound 10
```

Exit codes: 0 done, 2 bad input or usage, or a model that cannot be bounded (TorchScript, a graph
torch.export cannot capture, an operation without a rule: the error names it and the --assume to pass),
3 a bound that overflows float64 (no finite bound is certified), or the model's code exited (sys.exit)
while it was loaded or traced.
"""


InputShapeOption = Annotated[
    str | None,
    typer.Option(
        "--input-shape",
        help="The shape of one input, without the batch dimension: 2x8x8, 2,8,8 or 20.",
        metavar="SHAPE",
        show_default=False,
    ),
]
BoundAssumeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--assume",
        help="A Lipschitz constant L for an operation lipcheck has no rule for, OP=L as the error names "
        "it (repeatable); you take responsibility for it, and the report records it.",
        metavar="OP=L",
        show_default=False,
    ),
]
BoundOutputOption = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="Write the report to this file (atomically) instead of stdout.",
        show_default=False,
    ),
]
BoundModelArgument = Annotated[
    Path | None,
    typer.Argument(
        metavar="MODEL",
        help="Model file, as for `lipcheck audit`: .pt2 (torch.export), .safetensors or a state dict "
        "with --arch, or a pickled module with --trust-pickle; without it, --arch alone gives the module "
        "its factory returns. TorchScript cannot be bounded.",
        show_default=False,
    ),
]
BoundOperatorOption = Annotated[
    Operator,
    typer.Option(
        "--operator",
        help="Whose Lipschitz constant to bound: the model f, fne: 2f - Id (a bound <= 1 proves f firmly "
        "nonexpansive), or residual: Id - f. fne and residual need an output of the input's shape; "
        "the operator is exported as one graph and bounded through it.",
    ),
]
BoundFormatOption = Annotated[
    Format | None,
    typer.Option(
        "--format",
        "-f",
        help="Report format (table, json or markdown; a bound has no JUnit form). Default: table on a "
        "terminal, json when stdout is a pipe or with --output.",
        show_default=False,
    ),
]


def bound(
    model: BoundModelArgument = None,
    input_shape: InputShapeOption = None,
    arch: ArchOption = None,
    arch_kwargs: ArchKwargsOption = None,
    trust_pickle: TrustPickleOption = False,
    model_arg: ModelArgOption = None,
    assume: BoundAssumeOption = None,
    bound_method: BoundMethodOption = BoundMethod.lipsdp,
    operator: BoundOperatorOption = Operator.model,
    output_format: BoundFormatOption = None,
    output: BoundOutputOption = None,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Certify an upper bound on MODEL's global l2 Lipschitz constant, composed layer by layer.

    The model is exported with torch.export at one input of --input-shape; every operation of the
    graph gets a rule (exact spectral norms where the layer allows it), composed over the graph by
    LipSDP-Neuron multipliers checked in float64 (--bound-method lipsdp, the default, which keeps the loop
    transformation's bound where none are certified within its budget), by the loop transformation
    (--bound-method liplt) or as products along a path and sums at residual connections (--bound-method
    product). Prints every layer factor, the terms, and the total.
    """
    from lipcheck.io.architectures import arch_file
    from lipcheck.io.outputs import prepare_outputs
    from lipcheck.present.render import BOUND_REPORT

    request = _bound_request(dict(locals()))
    outputs = prepare_outputs(
        [output] if output is not None else [],
        {"the model (MODEL)": model, "the --arch file": arch_file(arch)},
    )
    fmt = choose_format(output_format, outputs, BOUND_REPORT)
    write(_run(request), BOUND_REPORT, outputs, fmt, quiet)


@dataclass(frozen=True)
class _BoundRequest:
    """What `lipcheck bound` was asked for, parsed and validated before anything is loaded."""

    model: Path | None
    arch: str | None
    arch_kwargs: dict[str, Any]
    trust_pickle: bool
    shape: tuple[int, ...]
    assume: dict[str, float]
    model_kwargs: dict[str, Any]
    method: str
    operator: str


def _bound_request(flags: dict[str, Any]) -> _BoundRequest:
    """The request of `lipcheck bound`'s flags (by name in its `locals()`); InputError naming a flag."""
    from lipcheck.io.datasets import parse_shape

    if flags["input_shape"] is None:
        raise InputError(
            "give the shape of one input with --input-shape SHAPE, without the batch, e.g. 3x32x32"
        )
    shape = parse_shape(flags["input_shape"], "--input-shape")
    assumed = parse_assumptions(flags["assume"])
    model_kwargs = parse_model_args(flags["model_arg"])
    kwargs = parse_json_object(flags["arch_kwargs"], "--arch-kwargs")
    return _BoundRequest(
        model=flags["model"],
        arch=flags["arch"],
        arch_kwargs=kwargs,
        trust_pickle=flags["trust_pickle"],
        shape=shape,
        assume=assumed,
        model_kwargs=model_kwargs,
        method=flags["bound_method"].value,
        operator=flags["operator"].value,
    )


def _run(request: _BoundRequest) -> ModelBoundReport:
    """Load the model (timed) and bound it."""
    from lipcheck.auditing.bound import run_bound
    from lipcheck.io.models import load_model

    begin = time.perf_counter()
    with model_prints_to_stderr():  # the model's prints, while it loads and is traced
        loaded = load_model(
            request.model,
            arch=request.arch,
            arch_kwargs=request.arch_kwargs,
            trust_pickle=request.trust_pickle,
        )
        return run_bound(
            loaded,
            request.shape,
            assume=request.assume,
            model_kwargs=request.model_kwargs,
            load_seconds=time.perf_counter() - begin,
            method=request.method,
            operator=request.operator,
        )
