"""Step `export`: the current checkpoint as ONNX graphs + entropy tables (compressor.export)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compressor import checkpoint
from compressor.artifact import Artifact
from compressor.errors import RecipeError
from compressor.export import export_model
from compressor.export.onnx import GDN_NEEDS_REWRITE, MAX_OPSET, MIN_OPSET
from compressor.quant.config import INT8_GDN_WITH_GDN_IN_PHASES
from compressor.steps import RunContext, StepSpec, register


class ExportParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rewrite: bool = Field(True, description="ConvTranspose -> Conv + PixelShuffle, GDN folded")
    opset: int = Field(
        MIN_OPSET, ge=MIN_OPSET, le=MAX_OPSET, description="ONNX opset the exporter writes"
    )
    gdn_in_phases: bool = Field(
        False,
        description="run each IGDN on the phase convolutions of the deconvolution before it "
        "(before their Concat / DepthToSpace); exact in float. Measured on the bundled model's "
        "INT8 decoder, 1 thread: ONNX Runtime ~20% faster, OpenVINO ~7% slower, so only for "
        "codecs deployed on ONNX Runtime (needs rewrite: true)",
    )

    @model_validator(mode="after")
    def _gdn_needs_rewrite(self) -> ExportParams:
        if self.gdn_in_phases and not self.rewrite:  # no phase convolutions without it
            raise ValueError(GDN_NEEDS_REWRITE)
        return self


def run(params: ExportParams, ctx: RunContext, art: Artifact, out: Path) -> Artifact:
    model = checkpoint.load(art.path, ctx.recipe.arch)
    # the export carries its own manifest.json, so it lives in a subfolder of the step's
    folder = export_model(
        model,
        out / "onnx",
        rewrite=params.rewrite,
        opset=params.opset,
        gdn_in_phases=params.gdn_in_phases,
    )
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


def check(params: ExportParams, recipe: Any) -> None:
    """A quantize step with int8_gdn on this export's output, when it moves the IGDN, is
    refused here, before any weights load (ort_static refuses it again on such a folder)."""
    moved = False  # whether the export the next quantize step reads has the IGDN moved
    for i, (name, step) in enumerate(recipe.steps, start=1):
        if name == "export":
            moved = bool(getattr(step, "gdn_in_phases", False))
        elif name == "quantize" and moved and getattr(step, "int8_gdn", False):
            raise RecipeError(f"step {i} (quantize): {INT8_GDN_WITH_GDN_IN_PHASES}")


SPEC = register(StepSpec("export", ExportParams, run, check, produces="export"))
