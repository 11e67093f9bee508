"""Step `export`: the current checkpoint as ONNX graphs + entropy tables (compressor.export)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from compressor import checkpoint
from compressor.artifact import Artifact
from compressor.export import export_model
from compressor.export.onnx import MAX_OPSET, MIN_OPSET
from compressor.steps import RunContext, StepSpec, register


class ExportParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rewrite: bool = Field(True, description="ConvTranspose -> Conv + PixelShuffle, GDN folded")
    opset: int = Field(
        MIN_OPSET, ge=MIN_OPSET, le=MAX_OPSET, description="ONNX opset the exporter writes"
    )


def run(params: ExportParams, ctx: RunContext, art: Artifact, out: Path) -> Artifact:
    model = checkpoint.load(art.path, ctx.recipe.arch)
    # the export carries its own manifest.json, so it lives in a subfolder of the step's
    folder = export_model(model, out / "onnx", rewrite=params.rewrite, opset=params.opset)
    from compressor.runtime.manifest import read

    manifest = read(folder)
    return Artifact(
        "",
        "export",
        folder,
        "export",
        art.id,
        params.model_dump(),
        summary={"model_id": manifest.model_id, "kind": manifest.kind},
    )


SPEC = register(StepSpec("export", ExportParams, run, produces="export"))
