"""Classical baselines for RD reports: Pillow JPEG (standard Annex K tables, IJG quality
scaling) and WebP, each at a sweep of qualities.

Each baseline is a `Codec` (compressor.codec), so it is measured by exactly the code that
measures every learned codec (compressor.evaluate.measure_image: real bytes, the project's
PSNR / SSIM / MS-SSIM on 8-bit RGB). JPEG is written as the `jpeg` family writes its files
(4:2:0, optimized Huffman tables), so a comparison of the two differs only in the tables.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from compressor.errors import RecipeError
from compressor.progress import Reporter

#: quality sweeps used when a report asks for none
DEFAULT_QUALITIES = {
    "jpeg": (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95),
    "webp": (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95),
}
FORMATS = {"jpeg": "JPEG", "webp": "WEBP"}
#: every JPEG here: baseline sequential, 4:2:0 chroma, Huffman tables optimized per image;
#: WebP: its slowest, best-compressing method
OPTIONS: dict[str, dict[str, Any]] = {
    "jpeg": {"subsampling": 2, "optimize": True},
    "webp": {"method": 6},
}


@dataclass
class PillowCodec:
    """A Pillow format at one quality, as a Codec (HxWx3 uint8 <-> the file's bytes).

    JPEG alone may take its two quantization tables instead (`qtables`: [luma, chroma], 64
    integers 1..255 each, natural order): that is how the `jpeg` family writes its files."""

    kind: str
    quality: int | None = None
    qtables: list[list[int]] | None = None
    name: str = field(init=False)

    def __post_init__(self) -> None:
        tag = f"q{self.quality}" if self.qtables is None else "tables"
        self.name = f"{self.kind}-{tag}"
        if self.kind not in FORMATS:
            raise RecipeError(f"unknown baseline {self.kind!r}; allowed: {', '.join(FORMATS)}")
        if self.qtables is not None:
            _check_qtables(self.kind, self.qtables)
            return
        q = self.quality
        if not isinstance(q, int) or isinstance(q, bool) or not 1 <= q <= 100:
            raise RecipeError(f"{self.kind} quality {q!r} is out of range; allowed: 1..100")

    def encode(self, rgb8: np.ndarray) -> bytes:
        buf = io.BytesIO()
        setting: dict[str, Any] = (
            {"qtables": self.qtables} if self.qtables is not None else {"quality": self.quality}
        )
        Image.fromarray(rgb8).save(buf, format=FORMATS[self.kind], **setting, **OPTIONS[self.kind])
        return buf.getvalue()

    def decode(self, data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _check_qtables(kind: str, qtables: list[list[int]]) -> None:
    if kind != "jpeg":
        raise RecipeError(f"quantization tables apply to jpeg only, not {kind}")
    ok = len(qtables) == 2 and all(
        len(t) == 64 and all(isinstance(v, int) and 1 <= v <= 255 for v in t) for t in qtables
    )
    if not ok:
        raise RecipeError("qtables must be [luma, chroma]: 64 integers in 1..255 each")


def sweep(
    images: list[tuple[str, np.ndarray]], kind: str, qualities: Iterable[int] | None = None
) -> list[dict[str, Any]]:
    """One row per (quality, image): codec, quality, image, bpp, psnr, ssim, ms_ssim, bytes."""
    from compressor.evaluate import measure_image

    chosen = DEFAULT_QUALITIES.get(kind, ()) if qualities is None else qualities
    codecs = [PillowCodec(kind, q) for q in chosen]
    rows = []
    for codec in codecs:
        for name, rgb8 in images:
            row = measure_image(codec, name, rgb8)
            rows.append({"codec": kind, "quality": codec.quality, **row})
    return rows


def mean_curve(rows: list[dict[str, Any]], key: str = "quality") -> list[dict[str, float]]:
    """Per value of `key` (a quality), the mean bpp / PSNR / SSIM / MS-SSIM over images,
    sorted by bpp: one RD point per setting, as CompressAI's curves average per image."""
    points = []
    for value in sorted({r[key] for r in rows}):
        group = [r for r in rows if r[key] == value]
        point: dict[str, float] = {key: value}
        for metric in ("bpp", "psnr", "ssim", "ms_ssim"):
            values = [r[metric] for r in group if r.get(metric) is not None]
            point[metric] = float(np.mean(values)) if values else float("nan")
        points.append(point)
    return sorted(points, key=lambda p: p["bpp"])


def timed_sweep(
    images: list[tuple[str, np.ndarray]],
    kind: str,
    qualities: Iterable[int] | None = None,
    *,
    threads: int | None = None,
    reporter: Reporter | None = None,
) -> list[dict[str, Any]]:
    """One RD point per quality, in increasing bpp: the means over images of bpp, PSNR, SSIM,
    MS-SSIM and encode / decode ms, measured by compressor.compare like every learned codec
    (one timed round, qualities interleaved image by image)."""
    from compressor.compare import compare

    chosen = DEFAULT_QUALITIES.get(kind, ()) if qualities is None else qualities
    codecs = [PillowCodec(kind, q) for q in chosen]
    result = compare(
        codecs,
        images,
        1,
        estimate=False,
        threads=threads,
        reporter=reporter,
        description=f"{kind} sweep",
    )
    points = []
    for codec in codecs:
        r = result[codec.name]
        point: dict[str, Any] = {"label": codec.name, "quality": codec.quality}
        for key in ("bpp", "psnr", "ssim", "ms_ssim", "encode_ms", "decode_ms"):
            point[key] = r.mean(key)
        points.append(point)
    return sorted(points, key=lambda p: p["bpp"])
