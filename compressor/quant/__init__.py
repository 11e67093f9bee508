"""Quantization backends (QUANTIZERS): an export folder in, an INT8 export folder out.

`QUANTIZERS.get(name)(src, out, params, images, threads) -> report` is what the recipe step
and the CLI command call. Implemented: `ort-static` (ONNX Runtime static PTQ, QDQ).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from compressor.quant.config import BACKENDS, COMPONENTS, RULES, Accuracy, Calibration, QuantParams
from compressor.registry import Registry

Backend = Callable[[Path, Path, QuantParams, list[np.ndarray], int], dict[str, Any]]
QUANTIZERS: Registry[Backend] = Registry("quantization backend")


def _register() -> None:
    from compressor.quant.workflow import run_ort_static

    QUANTIZERS.add("ort-static", run_ort_static)
    assert tuple(QUANTIZERS.names()) == tuple(sorted(BACKENDS))  # config's list is this one


_register()

__all__ = [
    "BACKENDS",
    "COMPONENTS",
    "QUANTIZERS",
    "RULES",
    "Accuracy",
    "Calibration",
    "QuantParams",
]
