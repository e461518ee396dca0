"""`lipcheck inspect`: load a model and say what was loaded, without auditing it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lipcheck.cli.options import ArchKwargsOption, DebugOption, parse_json_object
from lipcheck.cli.streams import model_prints_to_stderr, require_stdout, write_stdout

EPILOG = """\
**Examples**

```
lipcheck inspect model.pt2
lipcheck inspect weights.safetensors --arch nets.py:make_denoiser --json | jq .parameters
lipcheck inspect --arch nets.py:make_denoiser --arch-kwargs '{"channels": 4}'
```
"""


def inspect(
    model: Annotated[
        Path | None,
        typer.Argument(
            metavar="MODEL",
            help="Model file, as for `lipcheck audit`; without it, --arch alone.",
            show_default=False,
        ),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(
            "--arch",
            help="Architecture factory for weight-only files, or alone to build the model (runs that code).",
            show_default=False,
        ),
    ] = None,
    arch_kwargs: ArchKwargsOption = None,
    trust_pickle: Annotated[
        bool,
        typer.Option("--trust-pickle", help="Load a whole pickled module (EXECUTES CODE from the file)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of text.")] = False,
    debug: DebugOption = False,
) -> None:
    """Load MODEL and print what was loaded (format, sha256, size, parameters, input spec; for ONNX, the
    outputs, opset, operator count and how it was converted); no audit."""
    from lipcheck.auditing.provenance import model_section
    from lipcheck.io.models import load_model
    from lipcheck.present.render import render_model_json, render_model_text

    kwargs = parse_json_object(arch_kwargs, "--arch-kwargs")
    require_stdout("the model's description")
    with model_prints_to_stderr():  # an --arch factory's or a pickled module's prints
        loaded = load_model(model, arch=arch, arch_kwargs=kwargs, trust_pickle=trust_pickle)
        section = model_section(loaded)
    graph = {**loaded.graph, "notes": list(loaded.notes)} if loaded.graph else None
    write_stdout([render_model_json(section, graph) if as_json else render_model_text(section, graph)])
