"""What a report records of where an audit ran: the environment, the model and data sections, and
the identity a resume journal must match."""

from __future__ import annotations

import platform
from dataclasses import asdict
from typing import Any

import torch

from lipcheck.auditing.batches import resolve_device
from lipcheck.auditing.distributed import World
from lipcheck.io.datasets import Dataset
from lipcheck.io.models import LoadedModel
from lipcheck.options.version import __version__
from lipcheck.report import (
    DataSection,
    Environment,
    ModelSection,
    Settings,
    path_text,
)


def environment(device: torch.device) -> Environment:
    name = str(device)
    if device.type == "cuda":
        name = f"{name} ({torch.cuda.get_device_name(device)})"
    return Environment(
        python=platform.python_version(),
        platform=platform.platform(),
        torch=torch.__version__,
        device=name,
        threads=torch.get_num_threads(),
    )


def model_section(model: LoadedModel) -> ModelSection:
    return ModelSection(
        path=path_text(model.path),
        format=model.format,
        sha256=model.sha256,
        size_bytes=model.size_bytes,
        parameters=model.parameters,
        trusted=model.trusted,
        arch=model.arch,
        arch_kwargs=dict(model.arch_kwargs),
        input_spec=tuple(asdict(spec) for spec in model.input_spec),
    )


def data_section(data: Dataset, sha256: str | None = None) -> DataSection:
    """What was audited, with the hash of the samples (free after an audit read them in order), or
    `sha256` when it is known already."""
    info = data.info
    path = None if info.path is None else path_text(info.path)
    return DataSection(
        path, info.kind, info.key, info.count, info.total, info.sample_shape, info.dtype, info.seed,
        data.sha256() if sha256 is None else sha256,
    )  # fmt: skip


def audit_identity(model: LoadedModel, data: DataSection, settings: Settings, world: World) -> dict[str, Any]:
    """What makes two runs the same audit, row for row: a `--resume` journal records it."""
    kept = {k: v for k, v in asdict(settings).items() if k != "reduction"}  # the rows do not depend on it
    return {
        "lipcheck_version": __version__,
        "model_sha256": model.sha256,
        "model_arch": [model.arch, dict(model.arch_kwargs)],
        "data_sha256": data.sha256,
        "data_count": data.count,
        "settings": kept,
        "device": resolve_device(settings.device).type,
        "world_size": world.size,
    }
