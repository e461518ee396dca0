"""The `lipcheck` command line: parse, call, render, exit code."""

from __future__ import annotations

from typing import Annotated

import typer

from lipcheck import __version__

app = typer.Typer(
    name="lipcheck",
    help="Audit how much a PyTorch model can amplify a perturbation of its input.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"lipcheck {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Audit how much a PyTorch model can amplify a perturbation of its input."""


@app.command()
def version() -> None:
    """Print the version of lipcheck and of torch."""
    import torch

    typer.echo(f"lipcheck {__version__} (torch {torch.__version__})")


def main() -> None:
    app()
