"""What a file is, from its first bytes: the signatures that models.py and datasets.py both detect.

Model and data files are untrusted input, so their format comes from their content, never from the
suffix alone. Each check takes the path and its first `HEAD_BYTES` bytes (`read_head`) and only
reads: zip archives are told apart by their member names.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

from lipcheck.options.limits import MAX_READ_BYTES

__all__ = ["MAX_READ_BYTES"]  # its home is options/limits.py, with the other budgets

HEAD_BYTES = 64
ZIP_MAGIC = b"PK\x03\x04"
NPY_MAGIC = b"\x93NUMPY"
PICKLE_PROTOCOL_MARK = 0x80


def read_head(path: Path) -> bytes:
    """The first bytes of a regular file; empty for a folder."""
    if not path.is_file():
        return b""
    with path.open("rb") as handle:
        return handle.read(HEAD_BYTES)


def zip_names(path: Path, head: bytes) -> list[str]:
    """The member names of a zip archive; empty when `path` is not a readable zip archive."""
    if not head.startswith(ZIP_MAGIC):
        return []
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def zip_members(path: Path, head: bytes) -> set[str]:
    """Member names without the archive's top folder, which torch names after the file."""
    return {name.split("/", 1)[1] if "/" in name else name for name in zip_names(path, head)}


def is_safetensors(path: Path, head: bytes) -> bool:
    """An 8-byte little-endian header length, then the JSON header."""
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= 100_000_000 and head[8:9] == b"{"


def is_torch_save(path: Path, head: bytes) -> bool:
    """A `torch.save` file: a zip archive holding data.pkl, or a legacy pickle."""
    if head.startswith(ZIP_MAGIC):
        return "data.pkl" in zip_members(path, head)
    return len(head) > 1 and head[0] == PICKLE_PROTOCOL_MARK


def is_npy(path: Path, head: bytes) -> bool:
    return head.startswith(NPY_MAGIC)


def is_npz(path: Path, head: bytes) -> bool:
    names = zip_names(path, head)
    return bool(names) and all(name.endswith(".npy") for name in names)
