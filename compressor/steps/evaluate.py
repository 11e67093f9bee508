"""Step `evaluate`: the current model on the evaluation images; report only."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from compressor.artifact import Artifact
from compressor.codec import open_codec
from compressor.evaluate import evaluate
from compressor.report import write_eval_report
from compressor.steps import RunContext, StepSpec, register


class EvaluateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: str | None = Field(None, description="image source; default: the recipe's data.eval")
    max_images: int | None = Field(
        None, ge=1, description="only the first N images of the source (name order); default all"
    )


def run(params: EvaluateParams, ctx: RunContext, art: Artifact, out: Path) -> Artifact:
    source = params.images or ctx.recipe.data.eval
    codec = open_codec(art.path, ctx.recipe.arch, ctx.provider, ctx.threads)
    result = evaluate(
        codec, ctx.images(source)[: params.max_images], threads=ctx.threads, reporter=ctx.reporter
    )
    write_eval_report(out, result, f"evaluate {art.id} on {source}")
    return Artifact(
        "", "report", out, "evaluate", art.id, params.model_dump(), summary=result.summary()
    )


def check(params: EvaluateParams, recipe) -> None:  # type: ignore[no-untyped-def]
    from compressor.data import image_paths

    image_paths(params.images or recipe.data.eval)


SPEC = register(
    StepSpec(
        "evaluate", EvaluateParams, run, check, accepts=("checkpoint", "export"), produces=None
    )
)
