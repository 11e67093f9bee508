"""plan(recipe) validates everything before any weights load; run(plan) executes the steps.

Each step writes into <run>/NN_<step>/ through a temporary folder that is renamed into
place only when the step finished, so an interrupted run leaves no half artifact. The run
folder itself is managed by compressor.runfolder (ours only, replaced only when asked,
resumable). The pipeline owns the run context: one thread count and one provider, applied
to every step the same way.

A family (`model:` a list or a glob, compressor.families) runs the steps once per member in
<run>/<member>/NN_<step>/ (members independent: a failed member is reported and the others
kept; --resume keeps each member's finished steps), then judges the family in <run>/family/
from the members' validate reports. One run.json at the run root covers them all. Exit: 0
when everything passed, 1 when a gate failed or a member failed (the family report says
which), 2 for bad input (at plan time) and for curves that share too little of their range.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from compressor import step_cache
from compressor.artifact import Artifact, read_manifest, sha256, write_manifest
from compressor.data import image_paths
from compressor.errors import CompressorError, RecipeError
from compressor.families.members import FAMILY_DIR, Member, is_family, resolve
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
    #: a family's members (each runs every step); empty for a single model
    members: list[Member] = field(default_factory=list)

    def member_recipe(self, member: Member) -> Recipe:
        """The recipe as one member sees it: its own model, everything else shared."""
        return self.recipe.model_copy(update={"model": str(member.path)})


@dataclass
class RunResult:
    run_dir: Path
    artifacts: list[Artifact]
    final: Artifact
    reused: int = 0  # finished steps kept by --resume
    #: a family run: each member's own result, and the members that failed (one-line errors)
    members: dict[str, RunResult] = field(default_factory=dict)
    failed_members: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failed_members and not any(a.failed for a in self.artifacts)


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
    image_paths(recipe.data.eval)
    if recipe.data.calibration:
        image_paths(recipe.data.calibration)
    threads = resolve_threads(recipe.threads, "threads")
    check_provider(recipe.provider)
    steps = [(STEPS.get(name), params) for name, params in recipe.steps]
    members = plan_members(recipe, steps)
    if members:
        for member in members:
            member_recipe = recipe.model_copy(update={"model": str(member.path)})
            check_steps(steps, member.path, member_recipe, member=True)
        model = members[0].path
    else:
        model = resolve_model(str(recipe.model))
        check_steps(steps, model, recipe)
    run_dir = Path(output or recipe.output or Path("exported") / recipe.name)
    mode = check_output(run_dir, resume=resume, overwrite=overwrite)
    return Plan(recipe, source, model, run_dir, steps, threads, mode, raw or {}, members)


def check_steps(
    steps: list[tuple[StepSpec, BaseModel]], model: Path, recipe: Recipe, member: bool = False
) -> None:
    """Step order and every step's own plan-time check, for one model (or family member)."""
    try:
        check_order(steps, input_kind(model))
        for spec, params in steps:
            if spec.check is not None:
                spec.check(params, recipe)
    except RecipeError as e:
        if not member:
            raise
        raise RecipeError(f"family member {model}: {e}") from None


def plan_members(recipe: Recipe, steps: list[tuple[StepSpec, BaseModel]]) -> list[Member]:
    """A family's members (checked), or [] for a single model; BD-rate gates need a family,
    and a family needs a validate step (its curves come from the members' validations)."""
    validates = [p for s, p in steps if s.name == "validate"]
    bd_gates = [g for p in validates for g in p.gates.family_gates()]  # type: ignore[attr-defined]
    if not is_family(recipe.model):
        if bd_gates:
            raise RecipeError(
                f"validate gate {bd_gates[0]} judges a family's RD curve: give model a list or "
                "a glob of one model per lambda, or drop the gate"
            )
        return []
    if not validates:
        raise RecipeError(
            "a family run judges its RD curve from each member's validate step: add "
            "`- validate: {}` (its gates may include max_bd_rate)"
        )
    one_arch = any(spec.produces is not None for spec, _ in steps)
    return resolve(recipe.model, (BUNDLED, BUNDLED_MODEL), recipe.arch, one_arch)


def check_provider(provider: str) -> None:
    from compressor.runtime.backends import check_provider as check

    check(provider)  # RecipeError naming the available ones; "openvino" is the OpenVINO runtime


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


def input_artifact(model: Path) -> Artifact:
    return Artifact("00_input", input_kind(model), model, "input")


def run(p: Plan, reporter: Reporter | None = None) -> RunResult:
    """Run the plan's steps in its run folder (see compressor.runfolder for the rules)."""
    folder = RunFolder.open(p.run_dir, p.mode, p.recipe.name)
    reporter = reporter or NullReporter()
    run_all = _run_family if p.members else _run_steps
    with folder.guarded(), torch_threads(p.threads):
        result = run_all(p, folder, reporter)
    work = folder.work
    folder.finish("complete" if result.passed else "gate-failed")
    return _relocated(result, work, p.run_dir)


def _run_steps(
    p: Plan, folder: RunFolder, reporter: Reporter, member: Member | None = None
) -> RunResult:
    """The steps on one model: the plan's, or a family member's in <run>/<member>/."""
    recipe = p.recipe if member is None else p.member_recipe(member)
    work = folder.work if member is None else folder.work / member.name
    prefix = "" if member is None else f"{member.name}/"
    current = input_artifact(p.model if member is None else member.path)
    ctx = RunContext(recipe, work, current, reporter, threads=p.threads)
    reusable = p.mode == "resume"
    reused = 0
    for i, (spec, params) in enumerate(p.steps, start=1):
        step_id = f"{i:02d}_{spec.name}"
        final_dir = work / step_id
        fingerprint = step_fingerprint(recipe, spec, params, current)
        art = reuse(final_dir, fingerprint) if reusable else None
        if art is None and step_cache.fetch(spec.name, fingerprint, final_dir):
            art = reuse(final_dir, fingerprint)  # another run of the shared store made it
        if art is None:
            reusable = False  # every later step depends on this one: run them all again
            if final_dir.exists():  # a step of this run folder (ours) made with other inputs
                shutil.rmtree(final_dir)
            log.info("step %s%s", prefix, step_id)
            with atomic_dir(final_dir) as tmp:
                art = spec.run(params, ctx, current, tmp)
                art.id = step_id
                inputs = {"input": current.path}
                raw = {"file": p.source, **p.raw, **({"member": member.name} if member else {})}
                write_manifest(tmp, art, inputs, raw, fingerprint, folder.work)
            art = art.relocated(tmp, final_dir)
            step_cache.keep(spec.name, fingerprint, final_dir)
        else:
            reused += 1
            log.info("step %s%s: finished earlier with the same inputs; kept", prefix, step_id)
        ctx.done.append(art)
        folder.steps.append(prefix + step_id)
        folder.mark("running")
        if art.kind != "report":
            current = art
        if art.failed:
            log.warning("step %s%s: a validation gate failed; stopping", prefix, step_id)
            break
    return RunResult(work, ctx.done, current, reused)


def _run_family(p: Plan, folder: RunFolder, reporter: Reporter) -> RunResult:
    """Every member's steps (a failure is recorded, the others go on), then the judgement.
    If no member finished, the first member's error is the run's (exit 2 for bad input)."""
    runs: dict[str, RunResult] = {}
    errors: dict[str, str] = {}
    first: Exception | None = None
    for member in p.members:
        try:
            runs[member.name] = _run_steps(p, folder, reporter, member)
        except Exception as e:  # one member's failure must not cost the others
            log.warning("family member %s failed: %s", member.name, e)
            errors[member.name] = one_line(e)
            first = first or e
    if not runs and first is not None:
        raise first
    folder.failed_members = errors
    art = _judge(p, folder, runs, errors, reporter)
    artifacts = [a for r in runs.values() for a in r.artifacts] + [art]
    reused = sum(r.reused for r in runs.values())
    return RunResult(folder.work, artifacts, art, reused, runs, errors)


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return (text if isinstance(e, CompressorError) else f"{type(e).__name__}: {text}")[:300]


def _judge(
    p: Plan,
    folder: RunFolder,
    runs: dict[str, RunResult],
    errors: dict[str, str],
    reporter: Reporter,
) -> Artifact:
    """The family stage: <run>/family/ from the members' last validate reports."""
    from compressor.data import load_images
    from compressor.families.judge import judge_family
    from compressor.families.report import write_family_report
    from compressor.steps.validate import measured_images

    params: Any = next(params for spec, params in reversed(p.steps) if spec.name == "validate")
    reports = {name: _validation(run) for name, run in runs.items()}
    images = measured_images(params, load_images(params.images or p.recipe.data.eval))
    names = [m.name for m in p.members]
    j = judge_family(names, reports, errors, images, params, threads=p.threads, reporter=reporter)
    final_dir = folder.work / FAMILY_DIR
    if final_dir.exists():  # an earlier judgement of this run (ours): judged again
        shutil.rmtree(final_dir)
    with atomic_dir(final_dir) as tmp:
        write_family_report(tmp, j, f"family {p.recipe.name}: {len(names)} members")
    folder.steps.append(FAMILY_DIR)
    folder.mark("running")
    summary: dict[str, Any] = {**j.headline(), "passed": j.passed}
    return Artifact(FAMILY_DIR, "report", final_dir, FAMILY_DIR, None, {}, summary, not j.passed)


def _validation(run: RunResult) -> dict[str, Any] | None:
    """The report of a member's last validate step, if it got that far."""
    arts = [a for a in run.artifacts if a.step == "validate"]
    if not arts:
        return None
    return json.loads((Path(arts[-1].path) / "report.json").read_text())


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
    """The result with paths under the staging folder moved to the final run folder."""
    if work == final:
        return result
    arts = [a.relocated(work, final) for a in result.artifacts]
    members = {name: _relocated(r, work, final) for name, r in result.members.items()}
    return dataclasses.replace(
        result,
        run_dir=final,
        artifacts=arts,
        final=result.final.relocated(work, final),
        members=members,
    )
