"""PSNR on 8-bit RGB, exactly as CompressAI's eval_model computes it."""

from __future__ import annotations

import math

import numpy as np


def psnr(original: np.ndarray, reconstruction: np.ndarray, max_val: float = 255.0) -> float:
    """20 log10(max) - 10 log10(MSE) over all pixels and channels; inf when identical."""
    a = original.astype(np.float64)
    b = reconstruction.astype(np.float64)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return math.inf
    return 20 * math.log10(max_val) - 10 * math.log10(mse)
