"""A pruning run end to end (what `cli.py prune` calls): load, prune, optionally fine-tune
and measure, save."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from compressor import checkpoint
from compressor.errors import RecipeError
from compressor.fsutil import write_text
from compressor.progress import Reporter
from compressor.prune import prune_model, quality_deltas
from compressor.prune.config import PruneParams
from compressor.prune.finetune import finetune, finetune_config

log = logging.getLogger(__name__)


def run_prune(
    model_path: Path,
    params: PruneParams,
    *,
    out: Path,
    arch: str | None = None,
    calibration: Path | None = None,
    data: Path | None = None,
    finetune_data: Path | None = None,
    finetune_steps: int | None = None,
    finetune_minutes: float | None = None,
    finetune_options: dict[str, Any] | None = None,
    threads: int | None = None,
    report_path: Path | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Everything is validated (params, checkpoint, image folders, budgets) before the first
    weight is cut; `out` is written only once pruning (and fine-tuning) succeeded."""
    from compressor.data import load_folder, load_images

    if threads:
        torch.set_num_threads(threads)
    if finetune_data is None and (finetune_steps or finetune_minutes):
        raise RecipeError("--finetune-steps / --finetune-minutes need --finetune DIR")
    model = checkpoint.load(model_path, arch)
    ft_cfg = (
        finetune_config(
            model,
            max_steps=finetune_steps,
            max_minutes=finetune_minutes,
            lmbda=params.lmbda,
            **(finetune_options or {}),
        )
        if finetune_data is not None
        else None
    )
    calib = load_folder(calibration) if calibration is not None else None
    ft_images = load_folder(finetune_data, minimum=2) if finetune_data is not None else None
    eval_images = load_images(data) if data is not None else None
    pruned, report = prune_model(model, params, calib)
    result: dict[str, Any] = {"report": report}
    meta = dict(getattr(pruned, "meta", {}) or {})
    meta["prune_total"] = report["total"]
    if ft_cfg is not None and ft_images is not None:
        train_result = finetune(pruned, ft_images, out, ft_cfg, meta=meta, reporter=reporter)
        report["finetune"] = {
            "steps": train_result.steps,
            "stopped": train_result.stopped,
            "best_val_loss": train_result.best_val_loss,
        }
    else:
        checkpoint.save(pruned, out, meta)
    if eval_images is not None:
        result["quality"] = report["quality"] = quality_deltas(model, pruned.eval(), eval_images)
    if report_path is not None:
        write_text(report_path, json.dumps(report, indent=2, default=str))
    return result
