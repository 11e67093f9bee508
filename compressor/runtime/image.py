"""Images for the torch-free runtime: reading to 8-bit RGB, writing, padding.

Reading and padding come from compressor.imageio (shared with training and evaluation);
to_input/from_output mirror compressor.data's to_tensor/to_rgb8_array without torch, and
tests/unit/test_runtime.py checks they give identical arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from compressor.errors import DataError
from compressor.fsutil import atomic_file
from compressor.imageio import padding, read_rgb8, to_rgb8

__all__ = [
    "check_rgb8",
    "chw_to_rgb8",
    "from_output",
    "output_format",
    "padding",
    "read_rgb8",
    "to_input",
    "to_rgb8",
    "write_rgb8",
]

#: output formats `write_rgb8` picks from the file suffix
WRITE_FORMATS = {".png": "PNG", ".bmp": "BMP", ".ppm": "PPM", ".tif": "TIFF", ".tiff": "TIFF"}


def output_format(path: Path) -> str:
    """The PIL format for an output file name; lossy formats are refused (checked early)."""
    fmt = WRITE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise DataError(
            f"cannot write {Path(path).name}: allowed suffixes "
            f"{', '.join(sorted(WRITE_FORMATS))} (lossless formats only)"
        )
    return fmt


def write_rgb8(path: Path, rgb8: np.ndarray, overwrite: bool = True) -> Path:
    """Write losslessly (the format from the suffix), atomically; see fsutil.atomic_file."""
    path = Path(path)
    fmt = output_format(path)
    with atomic_file(path, overwrite=overwrite) as tmp:
        Image.fromarray(np.ascontiguousarray(rgb8, dtype=np.uint8), "RGB").save(tmp, format=fmt)
    return path


def check_rgb8(rgb8: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb8)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise DataError(
            f"expected an HxWx3 uint8 RGB image, got {arr.dtype} array of shape {arr.shape}"
        )
    return arr


def to_input(rgb8: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
    """1x3xHxW float32 in [0, 1], zero padded (to_tensor then Padding.pad)."""
    x = np.ascontiguousarray(rgb8.transpose(2, 0, 1)[None]).astype(np.float32) / np.float32(255)
    top, bottom, left, right = pad
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


def from_output(x_hat: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
    """HxWx3 uint8 of the decoder output: crop the padding, clamp, scale, round."""
    top, bottom, left, right = pad
    h, w = x_hat.shape[-2:]
    return np.ascontiguousarray(chw_to_rgb8(x_hat[0, :, top : h - bottom, left : w - right]))


def chw_to_rgb8(x: np.ndarray) -> np.ndarray:
    """CxHxW float in [0, 1] -> HxWx3 uint8 view: clamp, scale, round (one rule, tiles too)."""
    rgb = np.rint(np.clip(x, 0.0, 1.0) * np.float32(255)).astype(np.uint8)
    return rgb.transpose(1, 2, 0)
