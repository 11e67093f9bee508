"""Measure one Codec on images: a comparison (compressor.compare) of one, plus the torch
model's per-component complexity. Real bitstreams, PSNR / SSIM / MS-SSIM, encode/decode ms."""

from __future__ import annotations

from typing import Any

import numpy as np

from compressor.codec import Codec
from compressor.compare import EvalResult, Images, compare
from compressor.progress import Reporter

__all__ = ["EvalResult", "Images", "evaluate", "measure_image", "model_complexity"]


def evaluate(
    codec: Codec,
    images: Images,
    *,
    repeats: int = 1,
    threads: int | None = None,
    reporter: Reporter | None = None,
) -> EvalResult:
    result = compare(
        [codec],
        images,
        repeats,
        threads=threads,
        reporter=reporter,
        description=f"evaluating {codec.name}",
    )[codec.name]
    if images:
        h, w = images[0][1].shape[:2]
        result.complexity = model_complexity(codec, h, w)
        result.complexity_size = (h, w)
    return result


def measure_image(codec: Codec, name: str, rgb8: np.ndarray) -> dict[str, Any]:
    """One image through the codec, once, no warm-up (RD sweeps that do not need latency)."""
    return compare([codec], [(name, rgb8)], 1, warmup=0)[codec.name].rows[0]


def model_complexity(codec: Codec, h: int, w: int) -> list[dict[str, Any]]:
    """Per-component params/MACs/size of a torch codec at an h x w image (padded as coded)."""
    model = getattr(codec, "model", None)
    if model is None:
        return []
    from compressor.data import Padding
    from compressor.metrics.complexity import component_table

    pad = Padding.to_multiple(h, w, model.pad_multiple)
    return component_table(model, h + pad.top + pad.bottom, w + pad.left + pad.right)
