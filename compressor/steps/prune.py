"""Step `prune`: structured or unstructured pruning of the current model (compressor.prune)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compressor import checkpoint
from compressor.artifact import Artifact
from compressor.data import image_paths, load_folder
from compressor.errors import RecipeError
from compressor.prune import prune_model
from compressor.prune.config import PruneParams
from compressor.report import md_table, write_json, write_markdown
from compressor.steps import RunContext, StepSpec, register


def run(params: PruneParams, ctx: RunContext, art: Artifact, out: Path) -> Artifact:
    model = checkpoint.load(art.path, ctx.recipe.arch)
    calibration = None
    if params.importance == "taylor" and ctx.recipe.data.calibration:
        calibration = load_folder(Path(ctx.recipe.data.calibration))
    pruned, report = prune_model(model, params, calibration)
    checkpoint.save(pruned, out / "model.pt")
    write_json(out / "report.json", report)
    write_markdown(out / "report.md", f"prune {art.id} ({params.method})", _sections(report))
    total = report["total"]
    return Artifact(
        "",
        "checkpoint",
        out / "model.pt",
        "prune",
        art.id,
        params.model_dump(mode="json"),
        summary=_headline(total),
    )


def _headline(total: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in total.items() if isinstance(v, int | float)}


def _sections(report: dict[str, Any]) -> list[tuple[str, str]]:
    rows = report["components"]
    columns = list(rows[0]) if rows else []
    return [
        (
            "Components (before / after, timed side by side)",
            md_table(columns, [[r.get(c) for c in columns] for r in rows]),
        ),
        ("Total", md_table(list(report["total"]), [list(report["total"].values())])),
    ]


def check(params: PruneParams, recipe: Any) -> None:
    if params.importance == "taylor":
        if recipe.data.calibration is None:
            raise RecipeError("prune with importance taylor needs data.calibration (images)")
        image_paths(recipe.data.calibration)


SPEC = register(StepSpec("prune", PruneParams, run, check, example={"ratio": {"encoder": 0.3}}))
