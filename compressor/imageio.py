"""Reading images to 8-bit RGB and the padding rule: torch-free, shared by training,
evaluation (compressor.data) and the deployable runtime (compressor.runtime)."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from compressor.errors import DataError

log = logging.getLogger(__name__)

#: the largest image read by default (2**25, about 33 Mpx: the most a bitstream can describe).
#: Checked on the header's size before any pixel is decoded, so a small file claiming a huge
#: image (a decompression bomb) costs nothing; callers pass a lower bound where they have one
#: (the runtime's `encode --max-pixels`).
MAX_PIXELS = 1 << 25


def to_rgb8(img: Image.Image, name: str) -> np.ndarray:
    """8-bit RGB HxWx3 of any PIL image ; notes the conversion."""
    if img.mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 65535.0 if arr.max() > 255 else 255.0
        grey = np.clip(np.round(arr / scale * 255.0), 0, 255).astype(np.uint8)
        log.warning("%s: %s (16-bit) image converted to 8-bit RGB", name, img.mode)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        log.warning("%s: %s image composited on white and converted to RGB", name, img.mode)
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)
    log.warning("%s: %s image converted to 8-bit RGB", name, img.mode)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_rgb8(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """8-bit RGB of an image file; DataError if unreadable or larger than max_pixels."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist or is not a file")
    try:
        with warnings.catch_warnings():
            # our own limit below decides; Pillow's warning would only be noise on stderr
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_pixels(path, img.size, max_pixels)  # from the header: nothing decoded
                img.load()
                arr = to_rgb8(img, path.name)
    except Image.DecompressionBombError as e:  # Pillow's hard limit, hit inside open()
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{found.group(1)} pixels" if found else "too many pixels"
        raise DataError(
            f"{path} declares {size}, more than the limit of {max_pixels} pixels"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path} is not a readable image ({type(e).__name__}: {e})") from None
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DataError(f"{path} has an unusable shape {arr.shape}")
    return arr


def _check_pixels(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w * h > max_pixels:
        raise DataError(
            f"{path} is a {w}x{h} image ({w * h} pixels), more than the limit of "
            f"{max_pixels} pixels"
        )


def padding(h: int, w: int, multiple: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right): centred zero padding, as compressai.ops.compute_padding."""
    out_h = (h + multiple - 1) // multiple * multiple
    out_w = (w + multiple - 1) // multiple * multiple
    top, left = (out_h - h) // 2, (out_w - w) // 2
    return top, out_h - h - top, left, out_w - w - left


def centre_crop(rgb8: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """The W x H centre of an HxWx3 image, contiguous (a side already shorter is kept whole;
    None: the image itself)."""
    if size is None:
        return rgb8
    width, height = size
    h, w = rgb8.shape[:2]
    top, left = max(0, (h - height) // 2), max(0, (w - width) // 2)
    return np.ascontiguousarray(rgb8[top : top + height, left : left + width])
