"""SSIM and MS-SSIM (Wang et al.) via pytorch-msssim, the implementation CompressAI's eval uses.

11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, valid filtering, mean over channels,
on 8-bit values (data_range 255). SSIM matches skimage's structural_similarity with
gaussian_weights=True, sigma=1.5, use_sample_covariance=False (tests/unit/test_metrics.py).
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_msssim import ms_ssim as _ms_ssim
from pytorch_msssim import ssim as _ssim

from compressor.errors import DataError

#: SSIM filters with an 11x11 window without padding ("valid"): a smaller image has no
#: complete window (pytorch-msssim then skips filtering or fails), so it has no SSIM
SSIM_MIN_SIDE = 11
#: MS-SSIM downsamples 4 times and filters with an 11-tap window at the coarsest scale
MS_SSIM_MIN_SIDE = (11 - 1) * 2**4 + 1


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float64)).permute(2, 0, 1)[None]


def ssim(original: np.ndarray, reconstruction: np.ndarray) -> float:
    if min(original.shape[:2]) < SSIM_MIN_SIDE:
        h, w = original.shape[:2]
        raise DataError(
            f"SSIM needs images of at least {SSIM_MIN_SIDE}x{SSIM_MIN_SIDE} pixels (its window); "
            f"got {w}x{h}"
        )
    return float(_ssim(_t(original), _t(reconstruction), data_range=255, size_average=True))


def ms_ssim(original: np.ndarray, reconstruction: np.ndarray) -> float | None:
    """None for images too small for five scales (smaller side < 161 px)."""
    if min(original.shape[:2]) < MS_SSIM_MIN_SIDE:
        return None
    return float(_ms_ssim(_t(original), _t(reconstruction), data_range=255, size_average=True))
