"""plan(recipe) validates everything before any weights load; run(plan) executes the steps.

Each step writes into exported/<run>/NN_<step>/ through a temporary folder that is renamed
into place only when the step finished, so an interrupted run leaves no half artifact.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from compressor.artifact import Artifact, write_manifest
from compressor.data import image_paths
from compressor.errors import RecipeError
from compressor.fsutil import atomic_dir
from compressor.models import MODELS
from compressor.progress import NullReporter, Reporter
from compressor.recipe import BUNDLED, Recipe, parse_recipe, read_recipe_file
from compressor.steps import STEPS, RunContext, StepSpec

log = logging.getLogger(__name__)

BUNDLED_MODEL = Path(__file__).parent / "assets" / "bmshj2018-hyperprior-q2.pt"


@dataclass
class Plan:
    recipe: Recipe
    source: str
    model: Path
    run_dir: Path
    steps: list[tuple[StepSpec, BaseModel]]
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    run_dir: Path
    artifacts: list[Artifact]
    final: Artifact

    @property
    def passed(self) -> bool:
        return not any(a.failed for a in self.artifacts)


def resolve_model(spec: str) -> Path:
    path = BUNDLED_MODEL if spec == BUNDLED else Path(spec)
    if not path.exists():
        raise RecipeError(f"model {path} does not exist (a checkpoint, an export, or 'bundled')")
    return path


def plan(recipe_path: Path, output: Path | None = None) -> Plan:
    """Parse and check a recipe: every field, path and step; loads no weights."""
    raw = read_recipe_file(recipe_path)
    recipe = parse_recipe(raw, str(recipe_path))
    if recipe.arch is not None:
        MODELS.get(recipe.arch)
    model = resolve_model(recipe.model)
    image_paths(recipe.data.eval)
    if recipe.data.calibration:
        image_paths(recipe.data.calibration)
    steps = [(STEPS.get(name), params) for name, params in recipe.steps]
    for spec, params in steps:
        if spec.check is not None:
            spec.check(params, recipe)
    run_dir = Path(output or recipe.output or Path("exported") / recipe.name)
    return Plan(recipe, str(recipe_path), model, run_dir, steps, raw)


def input_artifact(p: Plan) -> Artifact:
    kind = "export" if p.model.is_dir() and not (p.model / "model.pt").exists() else "checkpoint"
    return Artifact("00_input", kind, p.model, "input")


def run(p: Plan, reporter: Reporter | None = None) -> RunResult:
    reporter = reporter or NullReporter()
    if p.run_dir.exists():
        log.info("replacing the previous run in %s", p.run_dir)
        shutil.rmtree(p.run_dir)
    p.run_dir.mkdir(parents=True)
    current = input_artifact(p)
    ctx = RunContext(p.recipe, p.run_dir, current, reporter)
    done: list[Artifact] = []
    for i, (spec, params) in enumerate(p.steps, start=1):
        if current.kind not in spec.accepts:
            raise RecipeError(
                f"step {i} ({spec.name}) takes a {' or '.join(spec.accepts)}, "
                f"but the model at that point is a {current.kind}"
            )
        step_id = f"{i:02d}_{spec.name}"
        log.info("step %s", step_id)
        final_dir = p.run_dir / step_id
        with atomic_dir(final_dir) as tmp:
            art = spec.run(params, ctx, current, tmp)
            art.id = step_id
            write_manifest(tmp, art, {"input": current.path}, {"file": p.source, **p.raw})
        art = art.relocated(tmp, final_dir)
        done.append(art)
        ctx.done.append(art)
        if art.kind != "report":
            current = art
        if art.failed:
            log.warning("step %s: a validation gate failed; stopping the run", step_id)
            break
    return RunResult(p.run_dir, done, current)
