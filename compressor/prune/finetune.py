"""Fine-tuning after pruning: the one training loop (compressor.train) with a step/time budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compressor.models import CodecAdapter
from compressor.progress import Reporter
from compressor.train import TrainConfig, TrainResult, train, trained_lambda

#: the RD lambda when neither the caller nor the checkpoint's training record gives one
DEFAULT_LMBDA = 0.0035


def finetune_config(
    model: CodecAdapter, *, max_steps: int | None, max_minutes: float | None, **overrides: Any
) -> TrainConfig:
    """TrainConfig of a recovery fine-tune: the checkpoint's own lambda unless overridden."""
    lmbda = overrides.pop("lmbda", None) or trained_lambda(model) or DEFAULT_LMBDA
    steps = max_steps if max_steps is not None else (10**9 if max_minutes else 1000)
    return TrainConfig(
        lmbda=lmbda,
        max_steps=steps,
        max_minutes=max_minutes,
        **{k: v for k, v in overrides.items() if v is not None},
    )


def finetune(
    model: CodecAdapter,
    images: list[np.ndarray],
    out: Path,
    cfg: TrainConfig,
    *,
    meta: dict[str, Any] | None = None,
    reporter: Reporter | None = None,
) -> TrainResult:
    """Train the pruned model in place and save its best held-out checkpoint to `out`.

    No resume: a resume file beside `out` may hold another pruning's shapes."""
    return train(model, images, cfg, out, resume=False, meta=meta, reporter=reporter)
