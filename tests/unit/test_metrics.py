"""Metrics against their references: skimage's SSIM, CompressAI's eval PSNR / MS-SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from compressai.utils.eval_model.__main__ import compute_metrics
from skimage.metrics import structural_similarity

from compressor.metrics import ms_ssim, psnr, ssim
from compressor.metrics.latency import interleaved, summarize
from tests.conftest import smooth_image


def _pair(h: int, w: int, sigma: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    a = smooth_image(h, w, seed)
    noise = np.random.default_rng(seed + 1).normal(0, sigma, a.shape)
    return a, np.clip(a + noise, 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("sigma", [2.0, 10.0, 40.0])
def test_ssim_matches_skimage_gaussian(sigma: float) -> None:
    a, b = _pair(96, 120, sigma)
    ref = structural_similarity(
        a,
        b,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        channel_axis=-1,
    )
    assert abs(ssim(a, b) - ref) < 1e-4
    assert 0 < ref < 1


def test_psnr_and_ms_ssim_match_compressai_eval() -> None:
    a, b = _pair(192, 200, 12.0)
    ref = compute_metrics(
        torch.from_numpy(a).permute(2, 0, 1)[None] / 255.0,
        torch.from_numpy(b).permute(2, 0, 1)[None] / 255.0,
    )
    assert abs(psnr(a, b) - ref["psnr-rgb"]) < 1e-4
    got = ms_ssim(a, b)
    assert got is not None and abs(got - ref["ms-ssim-rgb"]) < 1e-5


def test_psnr_known_value_and_identity() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 10, np.uint8)
    assert psnr(a, b) == pytest.approx(20 * math.log10(255) - 20 * math.log10(10))
    assert psnr(a, a) == math.inf


def test_ms_ssim_undefined_below_161_pixels() -> None:
    a, b = _pair(160, 300, 5.0)
    assert ms_ssim(a, b) is None
    a, b = _pair(161, 161, 5.0)
    assert ms_ssim(a, b) is not None


def test_latency_summary_and_interleaving() -> None:
    lat = summarize([0.001 * i for i in range(1, 21)], threads=1)
    assert lat.median_ms == pytest.approx(10.5)
    assert lat.p95_ms == pytest.approx(19.0)
    calls: list[str] = []
    interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2, warmup=1
    )
    assert calls == ["a", "b"] * 3
