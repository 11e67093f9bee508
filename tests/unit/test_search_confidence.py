"""search.confidence: per-image quality gates are judged on the upper bound of their mean."""

from __future__ import annotations

import math
import statistics

import pytest

from compressor.search.confidence import bounded_gates
from compressor.search.spec import parse_spec

# the per-image PSNR drops of a measured prune-70% trial (8 held-out photos): mean 0.272 dB
DROPS = [-0.172, 0.107, 0.311, 0.357, 0.59, 0.574, 0.119, 0.291]


def report(drops: list[float], bpp_ratios: list[float]) -> dict:
    base = [{"psnr": 30.0, "bpp": 0.5} for _ in drops]
    cand = [
        {"psnr": 30.0 - d, "bpp": 0.5 * (1 + r)} for d, r in zip(drops, bpp_ratios, strict=True)
    ]
    mean_drop = statistics.fmean(drops)
    bpp_inc = statistics.fmean(c["bpp"] for c in cand) / 0.5 - 1
    return {
        "gates": [
            {"gate": "max_psnr_drop_db", "limit": 0.3, "value": mean_drop, "passed": True},
            {"gate": "max_bpp_increase", "limit": 0.02, "value": bpp_inc, "passed": True},
            {"gate": "min_speedup", "limit": 2.0, "value": 8.6, "passed": True},
        ],
        "images": {"baseline": base, "candidate": cand},
    }


def test_a_mean_within_the_limit_fails_when_its_bound_is_not() -> None:
    ratios = [-0.1, -0.12, -0.2, -0.21, -0.19, -0.15, -0.15, -0.12]
    gates = {g["gate"]: g for g in bounded_gates(report(DROPS, ratios), 0.9)}
    psnr = gates["max_psnr_drop_db"]
    # t(0.9, 7) = 1.415: 0.272 + 1.415 * 0.2535 / sqrt(8)
    want = statistics.fmean(DROPS) + 1.4149 * statistics.stdev(DROPS) / math.sqrt(8)
    assert psnr["mean"] == pytest.approx(0.272, abs=1e-3)
    assert psnr["value"] == pytest.approx(want, abs=1e-3) and psnr["value"] > 0.39
    assert psnr["passed"] is False and psnr["confidence"] == 0.9
    assert gates["max_bpp_increase"]["passed"] is True  # -15% with a bound far below +2%
    assert gates["min_speedup"] == {
        "gate": "min_speedup",
        "limit": 2.0,
        "value": 8.6,
        "passed": True,
    }


def test_confidence_zero_judges_the_mean_and_one_image_has_no_spread() -> None:
    ratios = [0.0] * len(DROPS)
    same = bounded_gates(report(DROPS, ratios), 0.0)
    assert same[0]["value"] == pytest.approx(0.272, abs=1e-3)
    assert all(g["passed"] for g in same)
    alone = bounded_gates(report([0.29], [0.0]), 0.9)
    assert alone[0]["value"] == pytest.approx(0.29) and alone[0]["passed"] is True


def test_confidence_is_a_search_setting_in_0_1() -> None:
    space = {"steps.quantize.per_channel": [True, False]}
    assert parse_spec({"space": space}, "r").confidence == 0.9
    assert parse_spec({"space": space, "confidence": 0}, "r").confidence == 0
    with pytest.raises(Exception, match="confidence"):
        parse_spec({"space": space, "confidence": 1.0}, "r")
