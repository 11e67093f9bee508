"""Bjontegaard deltas (VCEG-M33) between two RD curves, through the `bjontegaard` package.

BD-rate: the mean difference of log-rate at equal quality over the qualities both curves
cover, as a percentage (negative: the test curve needs fewer bits). BD-PSNR (BD-quality):
the mean quality difference at equal log-rate over the rates both cover.

The interpolation is the package's: 'pchip' (the default: piecewise cubic Hermite, what the
JCT-VC / JVET common-test-condition sheets use, which the package matches to 10 decimals),
'akima', or 'cubic' (Bjontegaard's original third-order polynomial fit). We add what the
package only warns about: too few points, equal qualities, and curves that share too little
of their range are errors (DataError), never an extrapolated number.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from compressor.errors import DataError

METHODS = ("pchip", "akima", "cubic")
DEFAULT_METHOD = "pchip"
#: RD points per curve: four, as the common test conditions' four QPs (a cubic fit needs them)
MIN_POINTS = 4
#: the share of the two curves' joint range that both must cover (the package's own measure:
#: overlap / union); below it a BD value would rest on extrapolation
MIN_OVERLAP = 0.5


def ms_ssim_db(value: float) -> float:
    """MS-SSIM in dB, -10 log10(1 - MS-SSIM), as CompressAI's RD plots show it."""
    if value >= 1:
        return math.inf
    return -10 * math.log10(1 - value)


def _check(name: str, rate: Sequence[float], quality: Sequence[float]) -> None:
    if len(rate) != len(quality):
        raise DataError(f"{name}: {len(rate)} rates but {len(quality)} quality values")
    if len(rate) < MIN_POINTS:
        raise DataError(
            f"{name}: BD-rate needs at least {MIN_POINTS} RD points (e.g. a family of "
            f"{MIN_POINTS} models); got {len(rate)}"
        )
    if min(rate) <= 0:
        raise DataError(f"{name}: rates must be positive (a log is taken)")
    if not all(math.isfinite(v) for v in (*rate, *quality)):
        raise DataError(f"{name}: rates and qualities must be finite numbers")
    if len(set(quality)) != len(quality):
        raise DataError(f"{name}: quality values must be distinct")


def _sorted(value: Sequence[float], key: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(value, key) in increasing key: the interpolators need an increasing abscissa."""
    order = np.argsort(np.asarray(key, float))
    return np.asarray(value, float)[order], np.asarray(key, float)[order]


def overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """The share of the union of two ranges that both cover (0: disjoint, 1: the same)."""
    lo, hi = max(min(a), min(b)), min(max(a), max(b))
    union = max(max(a), max(b)) - min(min(a), min(b))
    return max(hi - lo, 0.0) / union if union > 0 else 1.0


def _check_overlap(axis: str, a: Sequence[float], b: Sequence[float], least: float) -> None:
    share = overlap(a, b)
    if share <= 0 or share < least:
        raise DataError(
            f"the two RD curves do not overlap enough in {axis} (anchor {min(a):.4g}.."
            f"{max(a):.4g}, test {min(b):.4g}..{max(b):.4g}: {100 * share:.0f}% shared, at "
            f"least {100 * least:.0f}% needed); BD values are never extrapolated"
        )


def _method(method: str) -> str:
    if method not in METHODS:
        raise DataError(f"BD interpolation {method!r}; allowed: {', '.join(METHODS)}")
    return method


def bd_rate(
    rate_anchor: Sequence[float],
    quality_anchor: Sequence[float],
    rate_test: Sequence[float],
    quality_test: Sequence[float],
    *,
    method: str = DEFAULT_METHOD,
    min_overlap: float = MIN_OVERLAP,
    quality: str = "quality",
) -> float:
    """BD-rate of the test curve against the anchor, in percent (`quality` names the axis
    in errors: 'PSNR', 'MS-SSIM dB')."""
    import bjontegaard

    _check("anchor", rate_anchor, quality_anchor)
    _check("test", rate_test, quality_test)
    _check_overlap(quality, quality_anchor, quality_test, min_overlap)
    ra, qa = _sorted(rate_anchor, quality_anchor)
    rt, qt = _sorted(rate_test, quality_test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # overlap is checked above, as an error
        value = bjontegaard.bd_rate(
            ra, qa, rt, qt, _method(method), require_matching_points=False, min_overlap=0
        )
    return float(value)


def bd_quality(
    rate_anchor: Sequence[float],
    quality_anchor: Sequence[float],
    rate_test: Sequence[float],
    quality_test: Sequence[float],
    *,
    method: str = DEFAULT_METHOD,
    min_overlap: float = MIN_OVERLAP,
) -> float:
    """BD-PSNR (or BD of any quality): the test curve's mean quality gain at equal rate."""
    import bjontegaard

    _check("anchor", rate_anchor, quality_anchor)
    _check("test", rate_test, quality_test)
    logs = [np.log10(np.asarray(r, float)) for r in (rate_anchor, rate_test)]
    _check_overlap("bpp (log)", list(logs[0]), list(logs[1]), min_overlap)
    if len(set(rate_anchor)) != len(rate_anchor) or len(set(rate_test)) != len(rate_test):
        raise DataError("BD-PSNR: the rates of each curve must be distinct")
    # in increasing rate: BD-PSNR interpolates quality over log-rate
    qa, ra = _sorted(quality_anchor, rate_anchor)
    qt, rt = _sorted(quality_test, rate_test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = bjontegaard.bd_psnr(
            ra, qa, rt, qt, _method(method), require_matching_points=False, min_overlap=0
        )
    return float(value)
