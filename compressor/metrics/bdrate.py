"""Bjontegaard delta rate (VCEG-M33): the average bitrate difference of two RD curves at
equal quality.

As in the reference (and CompressAI's / JVET's common implementations): fit log(rate) as a
cubic polynomial of the quality (PSNR, or MS-SSIM) for each curve, integrate both over the
overlapping quality interval, and turn the mean log-rate difference into a percentage.
Negative: the test curve needs fewer bits than the anchor for the same quality.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from compressor.errors import DataError


def _check(name: str, rate: Sequence[float], quality: Sequence[float]) -> None:
    if len(rate) != len(quality):
        raise DataError(f"{name}: {len(rate)} rates but {len(quality)} quality values")
    if len(rate) < 4:
        raise DataError(
            f"{name}: BD-rate needs at least 4 RD points (a cubic fit); got {len(rate)}"
        )
    if min(rate) <= 0:
        raise DataError(f"{name}: rates must be positive (a log is taken)")
    if len(set(quality)) != len(quality):
        raise DataError(f"{name}: quality values must be distinct")


def bd_rate(
    rate_anchor: Sequence[float],
    quality_anchor: Sequence[float],
    rate_test: Sequence[float],
    quality_test: Sequence[float],
) -> float:
    """BD-rate of the test curve against the anchor, in percent."""
    _check("anchor", rate_anchor, quality_anchor)
    _check("test", rate_test, quality_test)
    lo = max(min(quality_anchor), min(quality_test))
    hi = min(max(quality_anchor), max(quality_test))
    if lo >= hi:
        raise DataError(
            f"the two RD curves do not overlap in quality (anchor {min(quality_anchor):.3f}.."
            f"{max(quality_anchor):.3f}, test {min(quality_test):.3f}..{max(quality_test):.3f})"
        )
    fits = [
        np.polyint(np.polyfit(np.asarray(q, float), np.log(np.asarray(r, float)), 3))
        for r, q in ((rate_anchor, quality_anchor), (rate_test, quality_test))
    ]
    areas = [np.polyval(p, hi) - np.polyval(p, lo) for p in fits]
    mean_diff = (areas[1] - areas[0]) / (hi - lo)
    return (math.exp(mean_diff) - 1) * 100
