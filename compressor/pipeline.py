"""plan(recipe) validates everything before any weights load; run(plan) executes the steps.

Each step writes into <run>/NN_<step>/ through a temporary folder that is renamed into
place only when the step finished, so an interrupted run leaves no half artifact. The run
folder itself is managed by compressor.runfolder (ours only, replaced only when asked,
resumable). The pipeline owns the run context: one thread count and one provider, applied
to every step the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from compressor.artifact import Artifact, read_manifest, sha256, write_manifest
from compressor.data import image_paths
from compressor.errors import RecipeError
from compressor.fsutil import atomic_dir
from compressor.models import MODELS
from compressor.progress import NullReporter, Reporter
from compressor.recipe import BUNDLED, Recipe, parse_recipe, read_recipe_file
from compressor.runfolder import RunFolder, check_output
from compressor.steps import STEPS, RunContext, StepSpec
from compressor.threads import resolve_threads
from compressor.torch_threads import torch_threads

log = logging.getLogger(__name__)

BUNDLED_MODEL = Path(__file__).parent / "assets" / "bmshj2018-hyperprior-q2.pt"


@dataclass
class Plan:
    recipe: Recipe
    source: str
    model: Path
    run_dir: Path
    steps: list[tuple[StepSpec, BaseModel]]
    threads: int
    mode: str = "new"  # new | resume | replace (compressor.runfolder.check_output)
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    run_dir: Path
    artifacts: list[Artifact]
    final: Artifact
    reused: int = 0  # finished steps kept by --resume

    @property
    def passed(self) -> bool:
        return not any(a.failed for a in self.artifacts)


def resolve_model(spec: str) -> Path:
    path = BUNDLED_MODEL if spec == BUNDLED else Path(spec)
    if not path.exists():
        raise RecipeError(f"model {path} does not exist (a checkpoint, an export, or 'bundled')")
    return path


def load_plan(
    recipe_path: Path, output: Path | None = None, *, resume: bool = False, overwrite: bool = False
) -> Plan:
    """plan() of a recipe file."""
    raw = read_recipe_file(recipe_path)
    recipe = parse_recipe(raw, str(recipe_path))
    return plan(
        recipe, output, source=str(recipe_path), raw=raw, resume=resume, overwrite=overwrite
    )


def plan(
    recipe: Recipe,
    output: Path | None = None,
    *,
    source: str = "recipe",
    raw: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> Plan:
    """Check a recipe: every field, path, step order and the output folder; loads no weights
    and touches no folder."""
    if recipe.arch is not None:
        MODELS.get(recipe.arch)
    model = resolve_model(recipe.model)
    image_paths(recipe.data.eval)
    if recipe.data.calibration:
        image_paths(recipe.data.calibration)
    threads = resolve_threads(recipe.threads, "threads")
    check_provider(recipe.provider)
    steps = [(STEPS.get(name), params) for name, params in recipe.steps]
    check_order(steps, input_kind(model))
    for spec, params in steps:
        if spec.check is not None:
            spec.check(params, recipe)
    run_dir = Path(output or recipe.output or Path("exported") / recipe.name)
    mode = check_output(run_dir, resume=resume, overwrite=overwrite)
    return Plan(recipe, source, model, run_dir, steps, threads, mode, raw or {})


def check_provider(provider: str) -> None:
    from compressor.runtime.codec import providers_for

    providers_for(provider)  # RecipeError naming the available ones


def input_kind(model: Path) -> str:
    return "export" if model.is_dir() and not (model / "model.pt").exists() else "checkpoint"


def check_order(steps: list[tuple[StepSpec, BaseModel]], kind: str) -> None:
    """Every step gets the kind of model it takes (e.g. quantize needs an export first)."""
    for i, (spec, _) in enumerate(steps, start=1):
        if kind not in spec.accepts:
            raise RecipeError(
                f"step {i} ({spec.name}) takes a {' or '.join(spec.accepts)}, but the model at "
                f"that point is a {kind}; e.g. put an export step before quantize"
            )
        kind = spec.produces or kind


def input_artifact(p: Plan) -> Artifact:
    return Artifact("00_input", input_kind(p.model), p.model, "input")


def run(p: Plan, reporter: Reporter | None = None) -> RunResult:
    """Run the plan's steps in its run folder (see compressor.runfolder for the rules)."""
    folder = RunFolder.open(p.run_dir, p.mode, p.recipe.name)
    try:
        with torch_threads(p.threads):
            result = _run_steps(p, folder, reporter or NullReporter())
    except KeyboardInterrupt:
        folder.abandon("interrupted", "interrupted by the user")
        raise
    except BaseException as e:
        folder.abandon("failed", f"{type(e).__name__}: {e}"[:500])
        raise
    work = folder.work
    folder.finish("complete" if result.passed else "gate-failed")
    return _relocated(result, work, p.run_dir)


def _run_steps(p: Plan, folder: RunFolder, reporter: Reporter) -> RunResult:
    current = input_artifact(p)
    ctx = RunContext(p.recipe, folder.work, current, reporter, threads=p.threads)
    reusable = p.mode == "resume"
    reused = 0
    for i, (spec, params) in enumerate(p.steps, start=1):
        step_id = f"{i:02d}_{spec.name}"
        final_dir = folder.work / step_id
        fingerprint = step_fingerprint(p.recipe, spec, params, current)
        art = reuse(final_dir, fingerprint) if reusable else None
        if art is None:
            reusable = False  # every later step depends on this one: run them all again
            if final_dir.exists():  # a step of this run folder (ours) made with other inputs
                shutil.rmtree(final_dir)
            log.info("step %s", step_id)
            with atomic_dir(final_dir) as tmp:
                art = spec.run(params, ctx, current, tmp)
                art.id = step_id
                inputs = {"input": current.path}
                recipe = {"file": p.source, **p.raw}
                write_manifest(tmp, art, inputs, recipe, fingerprint, folder.work)
            art = art.relocated(tmp, final_dir)
        else:
            reused += 1
            log.info("step %s: finished earlier with the same inputs; kept", step_id)
        ctx.done.append(art)
        folder.steps.append(step_id)
        folder.mark("running")
        if art.kind != "report":
            current = art
        if art.failed:
            log.warning("step %s: a validation gate failed; stopping the run", step_id)
            break
    return RunResult(folder.work, ctx.done, current, reused)


def step_fingerprint(recipe: Recipe, spec: StepSpec, params: BaseModel, current: Artifact) -> str:
    """What a step's result depends on: its params, its input's bytes, the data and arch."""
    data = {k: data_fingerprint(v) for k, v in recipe.data.model_dump().items() if v}
    parts = {
        "step": spec.name,
        "params": params.model_dump(mode="json"),
        "input": sha256(Path(current.path)),
        "arch": recipe.arch,
        "data": data,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def data_fingerprint(source: str) -> list[tuple[str, int]]:
    """Names and sizes of an image source's files: a changed folder invalidates a step."""
    return [(p.name, p.stat().st_size) for p in image_paths(source)]


def reuse(step_dir: Path, fingerprint: str) -> Artifact | None:
    """The artifact of a step folder finished earlier with the same fingerprint, else None."""
    try:
        m = read_manifest(step_dir)
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("fingerprint") != fingerprint:
        return None
    path = step_dir / m["path"] if m.get("path") else step_dir
    if not path.exists():
        return None
    art = Artifact(m["id"], m["kind"], path, m["step"], m.get("parent"), m.get("params") or {})
    art.summary = m.get("summary") or {}
    art.failed = bool(m.get("failed"))
    if (step_dir / "report.json").is_file():
        art.report = json.loads((step_dir / "report.json").read_text())
    return art


def _relocated(result: RunResult, work: Path, final: Path) -> RunResult:
    if work == final:
        return result
    arts = [a.relocated(work, final) for a in result.artifacts]
    return RunResult(final, arts, result.final.relocated(work, final), result.reused)
