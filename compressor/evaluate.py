"""Measure a Codec on images: real bitstreams, PSNR / SSIM / MS-SSIM, encode/decode latency."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compressor.codec import Codec
from compressor.metrics import METRICS, bpp_from_bytes
from compressor.metrics.latency import summarize
from compressor.progress import NullReporter, Reporter

Images = list[tuple[str, np.ndarray]]


@dataclass
class EvalResult:
    codec: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    threads: int | None = None
    #: params / MACs / size per component (torch models), at `complexity_size`
    complexity: list[dict[str, Any]] = field(default_factory=list)
    complexity_size: tuple[int, int] | None = None

    def mean(self, key: str) -> float | None:
        values = [r[key] for r in self.rows if r.get(key) is not None]
        return float(statistics.fmean(values)) if values else None

    def summary(self) -> dict[str, Any]:
        """Means over images (as CompressAI's eval averages per-image metrics)."""
        keys = (
            "bpp",
            "psnr",
            "ssim",
            "ms_ssim",
            "bytes",
            "encode_ms",
            "decode_ms",
            "estimated_bpp",
        )
        out: dict[str, Any] = {"codec": self.codec, "images": len(self.rows)}
        out.update({k: self.mean(k) for k in keys})
        for stage in ("encode_ms", "decode_ms"):
            lat = summarize([r[stage] / 1000 for r in self.rows], self.threads)
            out[f"{stage[:-3]}_p95_ms"] = lat.p95_ms
        out["threads"] = self.threads
        return out


def measure_image(codec: Codec, name: str, rgb8: np.ndarray) -> dict[str, Any]:
    """One image through the codec: bytes, reconstruction metrics, encode/decode time."""
    return measure_stream(codec, name, rgb8)[0]


def measure_stream(codec: Codec, name: str, rgb8: np.ndarray) -> tuple[dict[str, Any], bytes]:
    """`measure_image`'s row, and the bitstream it measured (for callers that reuse it)."""
    t0 = time.perf_counter()
    data = codec.encode(rgb8)
    t1 = time.perf_counter()
    rec = codec.decode(data)
    t2 = time.perf_counter()
    h, w = rgb8.shape[:2]
    row: dict[str, Any] = {
        "image": name,
        "height": h,
        "width": w,
        "bytes": len(data),
        "bpp": bpp_from_bytes(len(data), h, w),
    }
    for metric in METRICS:
        value = METRICS.get(metric)(rgb8, rec)
        row[metric] = None if value is None or math.isinf(value) else value
    row.update({"encode_ms": (t1 - t0) * 1000, "decode_ms": (t2 - t1) * 1000})
    estimate = getattr(codec, "estimated_bpp", None)
    if estimate is not None:
        row["estimated_bpp"] = estimate(rgb8)
    return row, data


def evaluate(
    codec: Codec, images: Images, *, threads: int | None = None, reporter: Reporter | None = None
) -> EvalResult:
    reporter = reporter or NullReporter()
    if images:  # warm-up: first calls pay for allocation and kernel selection
        codec.decode(codec.encode(images[0][1]))
    result = EvalResult(codec.name, threads=threads)
    if images:
        h, w = images[0][1].shape[:2]
        result.complexity = model_complexity(codec, h, w)
        result.complexity_size = (h, w)
    reporter.start(f"evaluating {codec.name}", len(images))
    for name, rgb8 in images:
        row = measure_image(codec, name, rgb8)
        result.rows.append(row)
        reporter.advance(1, psnr=row["psnr"] or 0.0, bpp=row["bpp"])
    reporter.finish()
    return result


def model_complexity(codec: Codec, h: int, w: int) -> list[dict[str, Any]]:
    """Per-component params/MACs/size of a torch codec at an h x w image (padded as coded)."""
    model = getattr(codec, "model", None)
    if model is None:
        return []
    from compressor.data import Padding
    from compressor.metrics.complexity import component_table

    pad = Padding.to_multiple(h, w, model.pad_multiple)
    return component_table(model, h + pad.top + pad.bottom, w + pad.left + pad.right)
