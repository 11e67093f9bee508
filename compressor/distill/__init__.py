"""Distillation: a trained teacher teaches a smaller student (compressor.distill.rd_kd).

DISTILLERS holds the methods by the name used in recipes and on the CLI; `distill` is the one
entry point the CLI (`cli.py distill`) and the recipe step `distill` call.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from compressor.distill.config import LOSS_NAMES, DistillParams, parse_losses
from compressor.distill.rd_kd import DistillResult, build_student
from compressor.distill.rd_kd import distill as rd_kd_distill
from compressor.models import CodecAdapter
from compressor.registry import Registry

Distiller = Callable[..., DistillResult]

DISTILLERS: Registry[Distiller] = Registry("distillation method")
DISTILLERS.add("rd_kd", rd_kd_distill)


def distill(
    teacher: CodecAdapter,
    images: list[np.ndarray],
    params: DistillParams,
    out: Path,
    method: str = "rd_kd",
    **kwargs: Any,
) -> DistillResult:
    return DISTILLERS.get(method)(teacher, images, params, out, **kwargs)


__all__ = [
    "DISTILLERS",
    "LOSS_NAMES",
    "DistillParams",
    "DistillResult",
    "build_student",
    "distill",
    "parse_losses",
]
