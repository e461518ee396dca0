"""A folder of PNG/JPEG images as samples: sorted by file name, float in [0, 1], (C, H, W).

Images decode one file per sample, when read. Greyscale images have one channel, the others three
(RGB); every image of a folder must have the same shape and bit depth. A 16-bit greyscale PNG is read
at its full range (65535 is 1.0) and reported as `uint16`; a 16-bit colour PNG, which Pillow reads as
8 bits, is refused rather than audited at a quarter of its precision.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lipcheck.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class ImageFolder:
    """`count` images of `sample_shape` (C, H, W), stored as `dtype`; `read(start, stop)` decodes them."""

    count: int
    sample_shape: tuple[int, ...]
    dtype: str
    read: Callable[[int, int], np.ndarray]


def open_image_folder(path: Path) -> ImageFolder:
    """The images of the folder `path`; InputError naming the image for a broken link, an unreadable
    file, another shape or bit depth than the first's, or a 16-bit colour PNG."""
    where = f"image folder '{path}'"
    named = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    broken = [p for p in named if p.is_symlink() and not p.exists()]
    if broken:
        raise InputError(
            f"{where} has {len(broken)} broken symlink(s) among its images: '{broken[0].name}' points to "
            f"'{os.readlink(broken[0])}', which does not exist; fix or remove the links"
        )
    files = [p for p in named if p.is_file()]
    if not files:
        return ImageFolder(0, (), "uint8", lambda a, b: np.zeros((0,)))
    try:
        from PIL import Image
    except ImportError:
        raise InputError(
            f'{where} needs Pillow to read PNG/JPEG images: pip install "lipcheck[images]"'
        ) from None

    stored = _depth_of(files[0])  # the dtype every image must be stored as

    def decode(file: Path) -> np.ndarray:
        try:
            with Image.open(file) as image:
                image.load()
                pixels, depth = _pixels(image, file)
        except OSError as error:
            raise InputError(f"image '{file}' cannot be read ({error}): fix or remove it") from error
        if depth != stored:
            raise InputError(
                f"image '{file}' has {depth} pixels, but '{files[0].name}' has {stored}: save the "
                f"images of {where} at one bit depth"
            )
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)

    first = decode(files[0])

    def reader(start: int, stop: int) -> np.ndarray:
        images = []
        for file in files[start:stop]:
            pixels = decode(file)
            if pixels.shape != first.shape:
                raise InputError(
                    f"image '{file}' has shape {pixels.shape} (C, H, W), but '{files[0].name}' has "
                    f"{first.shape}: resize the images of {where} to one size"
                )
            images.append(pixels)
        return np.stack(images)

    return ImageFolder(len(files), tuple(first.shape), stored, reader)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_bit_depth(file: Path) -> int:
    """The bit depth of a PNG's samples, from its header (byte 24, in IHDR); 8 for any other file."""
    with file.open("rb") as stream:
        head = stream.read(26)
    return head[24] if len(head) == 26 and head.startswith(_PNG_SIGNATURE) else 8


def _depth_of(file: Path) -> str:
    """The dtype of an image's stored values: 'uint16' for a 16-bit PNG, else 'uint8'."""
    try:
        return "uint16" if _png_bit_depth(file) == 16 else "uint8"
    except OSError as error:
        raise InputError(f"image '{file}' cannot be read ({error}): fix or remove it") from error


def _pixels(image: Any, file: Path) -> tuple[np.ndarray, str]:
    """An opened image's pixels as float32 in [0, 1], (H, W) or (H, W, 3), and the dtype they were
    stored as. A 16-bit greyscale PNG is read at its full range (65535 is 1.0); Pillow reads a 16-bit
    colour PNG as 8 bits, so that one is refused rather than audited at a quarter of its precision."""
    if _png_bit_depth(file) == 16:
        if image.mode.startswith("I;16") or image.mode == "I":
            return np.asarray(image, dtype=np.float32) / 65535.0, "uint16"
        raise InputError(
            f"image '{file}' is a 16-bit colour PNG, which Pillow reads as 8 bits: convert the images to "
            "an array of floats in [0, 1] saved with numpy.save, or to 8-bit PNGs"
        )
    grey = image.mode in ("1", "L", "LA", "I", "I;16", "F")
    return np.asarray(image.convert("L" if grey else "RGB"), dtype=np.float32) / 255.0, "uint8"
