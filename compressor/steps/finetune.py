"""Step `finetune`: the train loop on the current model, with a step or time budget."""

from __future__ import annotations

from pathlib import Path

from compressor import checkpoint
from compressor.artifact import Artifact
from compressor.data import image_paths, load_folder
from compressor.errors import RecipeError
from compressor.steps import RunContext, StepSpec, register
from compressor.train import TrainConfig, train, trained_lambda


def run(params: TrainConfig, ctx: RunContext, art: Artifact, out: Path) -> Artifact:
    model = checkpoint.load(art.path, ctx.recipe.arch)
    meta = dict(getattr(model, "meta", {}) or {})
    cfg = params
    lmbda = trained_lambda(model)
    if "lmbda" not in params.model_fields_set and lmbda:
        # keep the trade-off the model was trained for unless the recipe says otherwise
        cfg = params.model_copy(update={"lmbda": lmbda})
    images = load_folder(Path(str(ctx.recipe.data.train)), minimum=2)
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
        cfg.model_dump(),
        summary={
            "steps": result.steps,
            "stopped": result.stopped,
            "best_val_loss": result.best_val_loss,
        },
    )


def check(params: TrainConfig, recipe) -> None:  # type: ignore[no-untyped-def]
    if recipe.data.train is None:
        raise RecipeError("step finetune needs data.train (a folder of training images)")
    image_paths(recipe.data.train, minimum=2)


SPEC = register(StepSpec("finetune", TrainConfig, run, check))
