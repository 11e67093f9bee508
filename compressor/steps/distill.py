"""Step `distill`: the current model teaches a narrower student (compressor.distill)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compressor import checkpoint
from compressor.artifact import Artifact
from compressor.data import image_paths, load_folder
from compressor.distill import DistillParams, distill
from compressor.errors import RecipeError
from compressor.report import md_table, write_json, write_markdown
from compressor.steps import RunContext, StepSpec, register


def run(params: DistillParams, ctx: RunContext, art: Artifact, out: Path) -> Artifact:
    teacher = checkpoint.load(art.path, ctx.recipe.arch)
    images = load_folder(Path(str(ctx.recipe.data.train)), minimum=2)
    result = distill(teacher, images, params, out / "model.pt", resume=False, reporter=ctx.reporter)
    (out / "model.distill.resume.pt").unlink(missing_ok=True)
    write_json(out / "report.json", result.report)
    write_markdown(out / "report.md", f"distill {art.id}", sections(result.report))
    return Artifact(
        "",
        "checkpoint",
        out / "model.pt",
        "distill",
        art.id,
        params.model_dump(mode="json"),
        summary=headline(result.report),
    )


def headline(report: dict[str, Any]) -> dict[str, Any]:
    last = report.get("last_eval", {})
    ratios = {
        f"macs_ratio_{r['component']}": r["macs_ratio"]
        for r in report["components"]
        if r["component"] in ("encoder", "decoder")
    }
    return {
        "steps": report["steps"],
        "stopped": report["stopped"],
        "psnr": last.get("psnr"),
        "bpp": last.get("bpp"),
        **ratios,
    }


def sections(report: dict[str, Any]) -> list[tuple[str, str]]:
    rows = report["components"]
    columns = list(rows[0]) if rows else []
    h, w = report["macs_size"]
    return [
        (
            "Student",
            md_table(
                ["", "arch", "config"],
                [
                    ["teacher", report["teacher"]["arch"], str(report["teacher"]["config"])],
                    ["student", report["student"]["arch"], str(report["student"]["config"])],
                ],
            ),
        ),
        (f"Components (MACs at {h}x{w})", md_table(columns, [list(r.values()) for r in rows])),
        (
            "Training",
            md_table(
                ["steps", "stopped", "best held-out loss", "lambda"],
                [[report["steps"], report["stopped"], report["best_val_loss"], report["lmbda"]]],
            ),
        ),
    ]


def check(params: DistillParams, recipe: Any) -> None:
    if recipe.data.train is None:
        raise RecipeError("step distill needs data.train (a folder of training images)")
    if recipe.arch is not None and params.student not in (None, recipe.arch):
        raise RecipeError(
            f"step distill makes a {params.student} student but the recipe fixes arch "
            f"{recipe.arch} for every step; leave the recipe's arch out"
        )
    image_paths(recipe.data.train, minimum=2)


SPEC = register(StepSpec("distill", DistillParams, run, check, example={"width": 0.5}))
