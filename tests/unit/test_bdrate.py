"""Bjontegaard BD-rate against cases computed by hand."""

from __future__ import annotations

import math

import pytest

from compressor.errors import DataError
from compressor.metrics.bdrate import bd_quality, bd_rate, ms_ssim_db

PSNR = [28.0, 30.0, 32.0, 34.0, 36.0]
RATE = [0.25, 0.4, 0.7, 1.1, 1.8]


def test_same_quality_at_a_fixed_fraction_of_the_rate() -> None:
    # log-rates differ by log(0.8) everywhere: the mean difference is exactly that -> -20 %
    assert bd_rate(RATE, PSNR, [r * 0.8 for r in RATE], PSNR) == pytest.approx(-20.0, abs=1e-9)
    assert bd_rate(RATE, PSNR, RATE, PSNR) == pytest.approx(0.0, abs=1e-9)


def test_a_curve_one_db_better_on_an_exponential_anchor() -> None:
    # anchor: rate = exp(q / 10); test: 1 dB better everywhere -> rate = exp((q - 1) / 10).
    # At equal quality the rate ratio is exp(-0.1): BD-rate = (e^-0.1 - 1) * 100 = -9.516 %
    anchor = [math.exp(q / 10) for q in PSNR]
    test_q = [q + 1 for q in PSNR]
    test = [math.exp((q - 1) / 10) for q in test_q]
    expected = (math.exp(-0.1) - 1) * 100
    assert bd_rate(anchor, PSNR, test, test_q) == pytest.approx(expected, abs=1e-6)
    # swapping the roles gives the inverse ratio
    assert bd_rate(test, test_q, anchor, PSNR) == pytest.approx((math.exp(0.1) - 1) * 100, abs=1e-6)


def test_bad_curves_are_refused() -> None:
    with pytest.raises(DataError, match="at least 4"):
        bd_rate(RATE[:3], PSNR[:3], RATE, PSNR)
    with pytest.raises(DataError, match="do not overlap"):
        bd_rate(RATE, PSNR, RATE, [q + 20 for q in PSNR])
    with pytest.raises(DataError, match="positive"):
        bd_rate([0.0, *RATE[1:]], PSNR, RATE, PSNR)
    with pytest.raises(DataError, match="rates but"):
        bd_rate(RATE, PSNR[:4], RATE, PSNR)


# The bjontegaard package's published example (README and example_usage.py of
# FAU-LMS/bjontegaard: libx265, two presets, kbit/s and PSNR), written out literally, with the
# values its reference implementation (bjontegaard 1.3.0) gives for each interpolation.
RATE_ANCHOR = [9487.76, 4593.60, 2486.44, 1358.24]
PSNR_ANCHOR = [40.037, 38.615, 36.845, 34.851]
RATE_TEST = [9787.80, 4469.00, 2451.52, 1356.24]
PSNR_TEST = [40.121, 38.651, 36.970, 34.987]
REFERENCE = {  # method: (BD-rate %, BD-PSNR dB)
    "cubic": (-4.420462706125383, 0.12040941911451103),
    "pchip": (-4.417485350589045, 0.11969278542479489),
    "akima": (-4.425245156997493, 0.11940927028529469),
}
# its "test case 2 (high bitrates)", where cubic and piecewise-cubic disagree by 0.23 points
HIGH = (
    [82472.76, 26875.24, 9487.76, 4593.6],
    [43.825, 41.404, 40.037, 38.615],
    [99896.96, 33952.04, 9787.8, 4469.0],
    [44.731, 41.875, 40.121, 38.651],
)


@pytest.mark.parametrize("method", sorted(REFERENCE))
def test_the_packages_published_example(method: str) -> None:
    rate, psnr = REFERENCE[method]
    args = (RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST)
    assert bd_rate(*args, method=method) == pytest.approx(rate, abs=1e-9)
    assert bd_quality(*args, method=method) == pytest.approx(psnr, abs=1e-9)
    # the order of the points does not matter (members come in any order)
    order = [2, 0, 3, 1]
    shuffled = (
        RATE_ANCHOR[::-1],
        PSNR_ANCHOR[::-1],
        [RATE_TEST[i] for i in order],
        [PSNR_TEST[i] for i in order],
    )
    assert bd_rate(*shuffled, method=method) == pytest.approx(rate, abs=1e-9)


def test_default_is_piecewise_cubic_and_cubic_matches_vceg_m33() -> None:
    assert bd_rate(*HIGH) == pytest.approx(-4.47218200276197, abs=1e-9)
    assert bd_quality(*HIGH) == pytest.approx(0.08887484704747745, abs=1e-9)
    assert bd_rate(*HIGH, method="cubic") == pytest.approx(-4.699437548068142, abs=1e-9)
    # Bjontegaard's own formula (cubic fit of ln(rate) over PSNR, integrated), by hand
    import numpy as np

    ra, qa, rt, qt = (np.asarray(v, float) for v in HIGH)
    lo, hi = max(qa.min(), qt.min()), min(qa.max(), qt.max())
    fa, ft = (np.polyint(np.polyfit(q, np.log(r), 3)) for r, q in ((ra, qa), (rt, qt)))
    diff = np.polyval(ft, hi) - np.polyval(ft, lo) - np.polyval(fa, hi) + np.polyval(fa, lo)
    assert bd_rate(*HIGH, method="cubic") == pytest.approx(
        (math.exp(diff / (hi - lo)) - 1) * 100, abs=1e-9
    )


def test_curves_sharing_too_little_are_refused_not_extrapolated() -> None:
    # test covers 34..36 of the anchor's 28..36 and goes to 42: 2 / 14 of the union shared;
    # allowed anyway, the same bits at 6 dB more are fewer bits at equal quality
    with pytest.raises(DataError, match="do not overlap enough in PSNR"):
        bd_rate(RATE, PSNR, RATE, [q + 6 for q in PSNR], quality="PSNR")
    assert bd_rate(RATE, PSNR, RATE, [q + 6 for q in PSNR], min_overlap=0.1) < 0
    with pytest.raises(DataError, match="allowed: pchip, akima, cubic"):
        bd_rate(RATE, PSNR, RATE, PSNR, method="linear")
    assert ms_ssim_db(0.99) == pytest.approx(20.0)
