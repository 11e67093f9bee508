"""Step `quantize`: an export folder -> an INT8 export folder (compressor.quant backends)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compressor.artifact import Artifact
from compressor.data import image_paths, load_folder
from compressor.errors import RecipeError
from compressor.imageio import read_rgb8
from compressor.quant import QUANTIZERS, TORCH_BACKENDS, QuantParams
from compressor.quant import report as qreport
from compressor.steps import RunContext, StepSpec, register


def calibration_images(folder: str, params: QuantParams) -> list[Any]:
    """The first calibration images, plus the accuracy-check images (the folder's last)."""
    paths = image_paths(folder)
    n_eval = params.accuracy.images if params.accuracy else 2
    chosen = paths[: params.calibration.images]
    extra = [p for p in paths[-n_eval:] if p not in chosen]
    return [read_rgb8(p) for p in chosen + extra]


def source_checkpoint(ctx: RunContext, art: Artifact) -> Path | None:
    """The checkpoint the input export was made from (the export step's input), if any."""
    for earlier in (ctx.baseline, *ctx.done):
        if earlier.id == art.parent and earlier.kind == "checkpoint":
            return Path(earlier.path)
    return None


def training_folder(recipe: Any) -> str:
    """QAT trains on data.train, else on the calibration images (never on data.eval)."""
    return str(recipe.data.train or recipe.data.calibration)


def torch_inputs(params: QuantParams, ctx: RunContext, art: Artifact) -> dict[str, Any]:
    extra: dict[str, Any] = {"checkpoint": source_checkpoint(ctx, art)}
    if params.backend == "qat":
        extra["train_images"] = load_folder(Path(training_folder(ctx.recipe)), minimum=2)
        extra["reporter"] = ctx.reporter
    return extra


def run(params: QuantParams, ctx: RunContext, art: Artifact, out: Path) -> Artifact:
    folder = str(ctx.recipe.data.calibration)
    images = calibration_images(folder, params)
    backend = QUANTIZERS.get(params.backend)
    threads = ctx.threads
    if params.backend in TORCH_BACKENDS:
        extra = torch_inputs(params, ctx, art)
        report = backend(art.path, out / "onnx", params, images, threads, **extra)
    else:
        report = backend(art.path, out / "onnx", params, images, threads)
    qreport.write(out, report, f"quantize {art.id} ({params.backend}), calibration {folder}")
    check = report["quick_check"]
    return Artifact(
        "",
        "export",
        out / "onnx",
        "quantize",
        art.id,
        params.model_dump(mode="json"),
        report=report,
        summary={
            "model_id": report["model_id"],
            "int8_convs": sum(g["int8_convs"] for g in report["graphs"]),
            "float_convs": sum(len(g["float_convs"]) for g in report["graphs"]),
            "psnr_drop_db": check["psnr_drop_db"],
            "bpp_increase": check["bpp_increase"],
        },
    )


def check(params: QuantParams, recipe: Any) -> None:
    cal = recipe.data.calibration
    if cal is None:
        raise RecipeError(
            "step quantize needs data.calibration (a folder of images that are not the "
            "evaluation images)"
        )
    image_paths(cal)  # an empty or missing folder is a DataError here, before any work
    if params.backend in TORCH_BACKENDS:
        check_torch_backend(params, recipe)
    # calibration == eval is refused by recipe.DataSpec, for 'skimage' as for folders


def check_torch_backend(params: QuantParams, recipe: Any) -> None:
    model = Path(recipe.model)
    if recipe.model != "bundled" and model.is_dir() and not (model / "model.pt").exists():
        raise RecipeError(
            f"backend {params.backend} works on the torch model, but the recipe's model "
            f"{model} is an export: give the checkpoint and an export step before quantize"
        )
    if params.backend == "qat":
        image_paths(training_folder(recipe), minimum=2)  # the train loop holds one out


SPEC = register(
    StepSpec("quantize", QuantParams, run, check, accepts=("export",), produces="export")
)
