"""deepinv's denoisers as `lipcheck audit` models (docs/deepinv.md), when deepinv is installed.

Small configurations of DnCNN, DRUNet, SCUNet, UNet and GSDRUNet are saved as safetensors, audited from
the command line with `--arch deepinv.models:NAME` (and `--arg sigma=...`), and compared with
`spectral_norm` on the same callable: the model built by the same factory with the same weights,
called as the audit calls it. The gradient-step denoiser as deepinv builds it frees its own graph
and gets the one-line explanation; the factory of docs/deepinv.md that sets `detach = False` audits.

The page's own commands, at deepinv's default sizes, take minutes on a CPU: with
LIPCHECK_DEEPINV_DOCS=1 they run as printed too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_fixtures import assert_one_line_error, audit_json, run, sigmas
from safetensors.torch import save_file
from torch import nn

import lipcheck

models = pytest.importorskip("deepinv.models")

HERE = Path(__file__).resolve()
DOC = HERE.parents[1] / "docs" / "deepinv.md"


def gsdrunet(**kwargs: Any) -> nn.Module:
    """deepinv's GSDRUNet, differentiable as called: the factory docs/deepinv.md shows."""
    model = models.GSDRUNet(pretrained=None, **kwargs)
    model.detach = False
    return model


# name -> (--arch, --arch-kwargs of a small configuration, --arg keywords of forward)
SMALL: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "DnCNN": (
        "deepinv.models:DnCNN",
        {"in_channels": 1, "out_channels": 1, "depth": 3, "nf": 8, "pretrained": None},
        {},
    ),
    "DRUNet": (
        "deepinv.models:DRUNet",
        {"in_channels": 1, "out_channels": 1, "nc": [8, 8, 8, 8], "nb": 1, "pretrained": None},
        {"sigma": 0.1},
    ),
    "SCUNet": (
        "deepinv.models:SCUNet",
        {"in_nc": 1, "config": [1, 1, 1, 1, 1, 1, 1], "dim": 64, "pretrained": None},
        {},
    ),
    "UNet": ("deepinv.models:UNet", {"in_channels": 1, "out_channels": 1, "channels_per_scale": [4, 8]}, {}),
    "GSDRUNet": (
        f"{HERE}:gsdrunet",
        {"in_channels": 1, "out_channels": 1, "nc": [8, 8, 8, 8], "nb": 1},
        {"sigma": 0.1},
    ),
}


def build(arch: str, arch_kwargs: dict[str, Any]) -> nn.Module:
    factory: Callable[..., nn.Module] = (
        gsdrunet if arch.endswith(":gsdrunet") else getattr(models, arch.rpartition(":")[2])
    )
    return factory(**arch_kwargs)


def save_model(folder: Path, name: str) -> tuple[Path, Path, nn.Module]:
    """A seeded model of `SMALL[name]` saved as safetensors, two 1x16x16 images, and the model (eval)."""
    arch, arch_kwargs, _ = SMALL[name]
    torch.manual_seed(0)
    model = build(arch, arch_kwargs).eval()
    weights = folder / f"{name}.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, weights)
    images = folder / "images.npy"
    np.save(images, np.random.default_rng(0).random((2, 1, 16, 16), dtype=np.float32))
    return weights, images, model


# SCUNet pads its input to 64x64 and costs about two seconds a product here: one image, tol 1e-2.
CHEAPER: dict[str, tuple[int, float]] = {"SCUNet": (1, 1e-2)}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_cli_audit_equals_spectral_norm_on_the_same_callable(name: str, tmp_path: Path) -> None:
    arch, arch_kwargs, forward_kwargs = SMALL[name]
    weights, images, model = save_model(tmp_path, name)
    count, tol = CHEAPER.get(name, (2, 1e-4))
    arguments = [item for key, value in forward_kwargs.items() for item in ("--arg", f"{key}={value}")]
    arguments += ["--limit", str(count), "--tol", str(tol)]
    report = audit_json(
        weights, "--arch", arch, "--arch-kwargs", json.dumps(arch_kwargs), "-d", images, *arguments
    )
    expected = lipcheck.spectral_norm(
        lambda z: model(z, **forward_kwargs), torch.from_numpy(np.load(images)[:count]), tol=tol, seed=0
    )
    np.testing.assert_allclose(sigmas(report), expected.sigma.numpy(), rtol=1e-5)
    assert [row["iterations"] for row in report["samples"]] == expected.iterations.tolist()
    assert all(row["converged"] for row in report["samples"])


def test_fne_of_a_deepinv_denoiser_equals_spectral_norm(tmp_path: Path) -> None:
    arch, arch_kwargs, _ = SMALL["DnCNN"]
    weights, images, model = save_model(tmp_path, "DnCNN")
    report = audit_json(
        weights, "--arch", arch, "--arch-kwargs", json.dumps(arch_kwargs), "-d", images, "--operator", "fne"
    )
    expected = lipcheck.spectral_norm(model, torch.from_numpy(np.load(images)), operator="fne")
    np.testing.assert_allclose(sigmas(report), expected.sigma.numpy(), rtol=1e-5)


def test_gradient_step_denoiser_as_deepinv_builds_it_gets_the_one_line_explanation(tmp_path: Path) -> None:
    _, arch_kwargs, _ = SMALL["GSDRUNet"]
    weights, images, _ = save_model(tmp_path, "GSDRUNet")
    result = run(
        "audit", weights, "--arch", "deepinv.models:GSDRUNet",
        "--arch-kwargs", json.dumps({**arch_kwargs, "pretrained": None}), "-d", images, "--arg", "sigma=0.1",
    )  # fmt: skip
    assert_one_line_error(result, "not differentiable as called", "model.detach = False", code=3)
    assert "retain_graph" not in result.stderr


def shell_blocks() -> list[str]:
    """The ```bash blocks of docs/deepinv.md, in order."""
    return re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


@pytest.mark.skipif(
    os.environ.get("LIPCHECK_DEEPINV_DOCS") != "1", reason="minutes on a CPU: set LIPCHECK_DEEPINV_DOCS=1"
)
def test_the_pages_commands_run_as_printed(tmp_path: Path) -> None:
    """Every ```bash block of the page but the sample model's (tests/test_operator.py runs that one), in
    order, in an empty folder, with `lipcheck` the entry point of this checkout; then the one-line
    message the page prints for GSDRUNet as deepinv builds it."""
    script = "\n".join(block for block in shell_blocks() if "sample_models/" not in block)
    bin_folder = tmp_path / ".bin"
    bin_folder.mkdir()
    for name, command in (("lipcheck", f'"{sys.executable}" -m lipcheck'), ("python", f'"{sys.executable}"')):
        shim = bin_folder / name  # this interpreter (the one with deepinv) and this checkout's lipcheck
        shim.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        shim.chmod(0o755)
    environment = {
        **os.environ,
        "PATH": f"{bin_folder}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parents[1]), os.environ.get("PYTHONPATH")])),
    }

    def shell(text: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-e", "-c", text],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            check=False,
        )

    done = shell(script)
    assert done.returncode == 0, done.stderr[-4000:]
    for name in ("dncnn", "drunet", "scunet", "unet", "gsdrunet"):
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert report["summary"]["converged"] == report["summary"]["count"] == 6
    (printed,) = [line for line in DOC.read_text(encoding="utf-8").splitlines() if "freed part" in line]
    refused = shell(
        "lipcheck audit gsdrunet.safetensors --arch deepinv.models:GSDRUNet --arch-kwargs "
        """'{"in_channels": 1, "out_channels": 1, "pretrained": null}' --arg sigma=0.1 -d images.npy"""
    )
    assert refused.returncode == 3 and refused.stderr.strip() == printed
