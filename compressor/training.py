"""Starting a training run from command-line-style inputs (`cli.py train`, `distill`).

`train_model` builds a model of an arch / quality / `N=..,M=..` config (or loads a checkpoint),
picks lambda and hands the image folder to compressor.train.train, the one training loop;
`new_model` and `parse_config` are the model-building half, shared with `cli.py distill`.
With `processes` > 1 it starts torchrun on itself (compressor.distributed.launch) and reads
the result back from the checkpoint rank 0 wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compressor import checkpoint, distributed
from compressor.data import training_images
from compressor.errors import CheckpointError, RecipeError
from compressor.models import MODELS, CodecAdapter
from compressor.options import parse_pairs
from compressor.progress import Reporter
from compressor.train import TrainConfig, TrainResult, train


def parse_config(text: str) -> dict[str, int]:
    """'N=64,M=96' -> {'N': 64, 'M': 96}."""
    return parse_pairs(
        text, "--config", "KEY=INT", "N=64,M=96 (positive integers)", cast=_positive_int
    )


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) == 0:
        raise ValueError(value)
    return int(value)


def new_model(arch: str, quality: int | None, config_text: str | None) -> CodecAdapter:
    adapter = MODELS.get(arch)
    config = adapter.default_config(arch, quality or 1)
    if config_text:
        config.update(parse_config(config_text))
    return adapter.build(arch, config)


def default_lambda(quality: int | None, meta: dict[str, Any]) -> float | None:
    from compressor.models.compressai_zoo import LAMBDAS_MSE

    if quality is not None:
        if quality not in LAMBDAS_MSE:
            raise CheckpointError(f"quality {quality} unknown; allowed 1..8")
        return LAMBDAS_MSE[quality]
    return meta.get("train", {}).get("lmbda")


def train_model(
    *,
    arch: str,
    quality: int | None,
    config_text: str | None,
    init_path: Path | None,
    data: Path,
    out: Path,
    resume: bool,
    overrides: dict[str, Any],
    reporter: Reporter | None = None,
    processes: int = 1,
    allow_oversubscribe: bool = False,
) -> TrainResult:
    if processes > 1 and not distributed.launched():
        threads = distributed.check_cores(
            processes, overrides.get("threads"), allow_oversubscribe, "--processes"
        )
        spec = {
            "arch": arch,
            "quality": quality,
            "config_text": config_text,
            "init_path": str(init_path) if init_path else None,
            "data": str(data),
            "out": str(out),
            "resume": resume,
            "overrides": overrides,
            "allow_oversubscribe": allow_oversubscribe,
        }
        distributed.launch(spec, processes, threads)
        return result_from_checkpoint(out)
    if processes > 1 and processes != (local := distributed.setup().local_world):
        raise RecipeError(
            f"--processes {processes} under torchrun, which started {local} here: "
            "leave --processes out under torchrun"
        )
    if init_path is not None:
        model = checkpoint.load(init_path, arch)
    else:
        model = new_model(arch, quality, config_text)
    meta = dict(getattr(model, "meta", {}) or {})
    lmbda = default_lambda(quality, meta)
    cfg = TrainConfig.model_validate({**({"lmbda": lmbda} if lmbda else {}), **overrides})
    images = training_images(data, cfg.exclude_images)
    meta.update({"quality": quality, "data": str(data)})
    return train(
        model,
        images,
        cfg,
        out,
        resume=resume,
        meta=meta,
        reporter=reporter,
        allow_oversubscribe=allow_oversubscribe,
    )


def result_from_checkpoint(path: Path) -> TrainResult:
    """The TrainResult of a run that happened in other processes, from its checkpoint."""
    meta = checkpoint.safe_load(path).get("meta") or {}
    info = meta.get("train", {})
    return TrainResult(
        int(info["steps"]), float(info["best_val_loss"]), str(info["stopped"]), meta["history"]
    )
