"""Step `finetune`: the train loop on the current model, with a step or time budget.

`processes: N` (N > 1) trains data-parallel: the step starts torchrun on N processes of this
machine (compressor.distributed.launch via training.train_model) and reads the result back.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from compressor import checkpoint, distributed
from compressor.artifact import Artifact
from compressor.data import image_paths, training_images
from compressor.errors import RecipeError
from compressor.steps import RunContext, StepSpec, register
from compressor.train import TrainConfig, TrainResult, train, trained_lambda

DDP_FIELDS = {"processes", "allow_oversubscribe"}


class FinetuneParams(TrainConfig):
    """The train loop's fields plus data parallelism."""

    processes: int = Field(1, ge=1, description="data-parallel processes (DDP via torchrun)")
    allow_oversubscribe: bool = Field(False, description="allow processes x threads > cores")


def run(params: FinetuneParams, ctx: RunContext, art: Artifact, out: Path) -> Artifact:
    model = checkpoint.load(art.path, ctx.recipe.arch)
    meta = dict(getattr(model, "meta", {}) or {})
    cfg = TrainConfig.model_validate(params.model_dump(exclude=DDP_FIELDS))
    lmbda = trained_lambda(model)
    if "lmbda" not in params.model_fields_set and lmbda:
        # keep the trade-off the model was trained for unless the recipe says otherwise
        cfg = cfg.model_copy(update={"lmbda": lmbda})
    if params.processes > 1:
        result = _data_parallel(params, cfg, ctx, art, out, model.arch)
    else:
        images = training_images(Path(str(ctx.recipe.data.train)), cfg.exclude_images)
        result = train(
            model, images, cfg, out / "model.pt", resume=False, meta=meta, reporter=ctx.reporter
        )
    (out / "model.resume.pt").unlink(missing_ok=True)
    return Artifact(
        "",
        "checkpoint",
        out / "model.pt",
        "finetune",
        art.id,
        params.model_dump() if params.processes > 1 else cfg.model_dump(),
        summary={
            "steps": result.steps,
            "stopped": result.stopped,
            "best_val_loss": result.best_val_loss,
        },
    )


def _data_parallel(
    params: FinetuneParams,
    cfg: TrainConfig,
    ctx: RunContext,
    art: Artifact,
    out: Path,
    arch: str,
) -> TrainResult:
    from compressor.training import train_model

    return train_model(
        arch=arch,
        quality=None,
        config_text=None,
        init_path=art.path,
        data=Path(str(ctx.recipe.data.train)),
        out=out / "model.pt",
        resume=False,
        overrides=cfg.model_dump(exclude_none=True),
        processes=params.processes,
        allow_oversubscribe=params.allow_oversubscribe,
    )


def check(params: FinetuneParams, recipe) -> None:  # type: ignore[no-untyped-def]
    if recipe.data.train is None:
        raise RecipeError("step finetune needs data.train (a folder of training images)")
    image_paths(recipe.data.train, minimum=2)
    if params.processes > 1:
        distributed.check_cores(
            params.processes,
            params.threads,
            params.allow_oversubscribe,
            "step finetune: processes",
        )


SPEC = register(StepSpec("finetune", FinetuneParams, run, check))
