"""Bjontegaard BD-rate against cases computed by hand."""

from __future__ import annotations

import math

import pytest

from compressor.errors import DataError
from compressor.metrics.bdrate import bd_rate

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
