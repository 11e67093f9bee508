"""Step `validate`: the current model against the recipe's input model, with gates.

In a family run every member runs this step (its own comparison and point gates, in its
own folder); the run then judges the family from these reports (compressor.families: BD
values, the BD-rate gates, classical codecs)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from compressor.artifact import Artifact
from compressor.codec import open_codec
from compressor.errors import RecipeError
from compressor.imageio import centre_crop
from compressor.metrics.bdrate import MIN_OVERLAP
from compressor.report import write_validation_report
from compressor.steps import STEPS, RunContext, StepSpec, register
from compressor.validate import Gates, validate

Reference = Literal["jpeg", "webp"]


class ValidateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: str | None = Field(None, description="image source; default: the recipe's data.eval")
    max_images: int | None = Field(
        None, ge=1, description="only the first N images of the source (name order); default all"
    )
    crop: tuple[PositiveInt, PositiveInt] | None = Field(
        None, description="measure on the W x H centre of each image; default: full size"
    )
    gates: Gates = Field(default_factory=Gates)
    repeats: int = Field(3, ge=1, description="timed repeats per image and codec (interleaved)")
    baseline: str | None = Field(
        None,
        description="an earlier step (e.g. export) whose output is the baseline; default: the "
        "recipe's input model",
    )
    # families only (model: a list or glob): how the family's curves are judged
    bd_method: Literal["pchip", "akima", "cubic"] = Field(
        "pchip", description="families: BD interpolation (pchip: the JCT-VC / JVET CTC sheets)"
    )
    min_overlap: float = Field(
        MIN_OVERLAP,
        gt=0,
        le=1,
        description="families: share of the two curves' joint range both must cover",
    )
    references: list[Reference] = Field(
        default_factory=lambda: list(get_args(Reference)),
        description="families: classical codecs swept over quality on the same images",
    )


def run(params: ValidateParams, ctx: RunContext, art: Artifact, out: Path) -> Artifact:
    source = params.images or ctx.recipe.data.eval
    threads = ctx.threads
    reference = _baseline(params, ctx)
    base = open_codec(reference.path, ctx.recipe.arch, ctx.provider, threads, "baseline")
    cand = open_codec(art.path, ctx.recipe.arch, ctx.provider, threads, "candidate")
    result = validate(
        base,
        cand,
        measured_images(params, ctx.images(source)),
        params.gates,
        repeats=params.repeats,
        threads=threads,
        reporter=ctx.reporter,
    )
    write_validation_report(out, result, f"validate {art.id} against {reference.id}")
    return Artifact(
        "",
        "report",
        out,
        "validate",
        art.id,
        params.model_dump(),
        summary={**result.deltas, "passed": result.passed},
        failed=not result.passed,
    )


def measured_images(params: ValidateParams, images: list) -> list:
    """What a validate step measures of its source's (name, image) pairs: the first
    max_images, at their `crop` centre (the family judge measures the same)."""
    return [(name, centre_crop(a, params.crop)) for name, a in images[: params.max_images]]


def _baseline(params: ValidateParams, ctx: RunContext) -> Artifact:
    if params.baseline is None:
        return ctx.baseline
    earlier = [a for a in ctx.done if a.step == params.baseline and a.kind != "report"]
    if not earlier:
        raise RecipeError(
            f"validate baseline {params.baseline!r}: no earlier step of that name produced a "
            f"model (earlier: {', '.join(a.step for a in ctx.done) or 'none'})"
        )
    return earlier[-1]


def check(params: ValidateParams, recipe) -> None:  # type: ignore[no-untyped-def]
    from compressor.data import image_paths

    image_paths(params.images or recipe.data.eval)
    if params.baseline is None:
        return
    # the baseline is an earlier step's model: this step's own position decides what is earlier
    index = next(i for i, (_, p) in enumerate(recipe.steps) if p is params)
    earlier = [name for name, _ in recipe.steps[:index] if STEPS.get(name).produces]
    if params.baseline not in earlier:
        raise RecipeError(
            f"validate baseline {params.baseline!r} is not an earlier step that makes a model; "
            f"earlier such steps: {', '.join(earlier) or 'none'}"
        )


SPEC = register(
    StepSpec(
        "validate", ValidateParams, run, check, accepts=("checkpoint", "export"), produces=None
    )
)
