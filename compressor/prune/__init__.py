"""Pruning: structured (channels physically removed) and unstructured (weights zeroed).

`prune_model` is the one entry point the CLI (`cli.py prune`) and the recipe step `prune`
call; PRUNERS holds the methods by the name used in recipes.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from compressor.errors import RecipeError
from compressor.models import CodecAdapter
from compressor.prune import (
    channelnorm,  # noqa: F401  (registers hific's structured pruner)
    rnn,  # noqa: F401  (registers rnn's structured pruner)
    structured,
    unstructured,
)
from compressor.prune.config import PruneParams, parse_ratios
from compressor.prune.report import component_rows, quality_deltas, totals
from compressor.prune.structured import FAMILY_PRUNERS
from compressor.registry import Registry

log = logging.getLogger(__name__)

Pruner = Callable[
    [CodecAdapter, PruneParams, "list[np.ndarray] | None"], tuple[CodecAdapter, dict[str, Any]]
]

PRUNERS: Registry[Pruner] = Registry("pruning method")
PRUNERS.add("structured", structured.prune)
PRUNERS.add("unstructured", unstructured.prune)


def prune_model(
    model: CodecAdapter, params: PruneParams, calibration: list[np.ndarray] | None = None
) -> tuple[CodecAdapter, dict[str, Any]]:
    """A pruned copy of `model` (the input is left untouched) and the run's report:
    per-component params / MACs / latency before and after (timed side by side), per-layer
    widths (structured) or sparsity and stored sizes (unstructured)."""
    pruner = PRUNERS.get(params.method)
    if model.unprunable:
        raise RecipeError(f"{model.arch} cannot be pruned ({params.method}): {model.unprunable}")
    pruned = copy.deepcopy(model)
    pruned, details = pruner(pruned, params, calibration)
    pruned.eval()
    meta = dict(getattr(model, "meta", {}) or {})
    meta["prune"] = params.model_dump(mode="json")
    pruned.meta = meta  # type: ignore[attr-defined]
    rows = component_rows(model, pruned, params.report_size, params.latency_repeats)
    report = {
        "method": params.method,
        "params": params.model_dump(mode="json"),
        "arch": model.arch,
        "config": pruned.config,
        "report_size": params.report_size,
        "threads": torch.get_num_threads(),
        "components": rows,
        "total": totals(rows),
        **details,
    }
    return pruned, report


__all__ = [
    "FAMILY_PRUNERS",
    "PRUNERS",
    "PruneParams",
    "parse_ratios",
    "prune_model",
    "quality_deltas",
]
