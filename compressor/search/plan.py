"""plan_search: the recipe, its `search:` block and every choice checked before weights load.

The search works on the raw recipe (a mapping): each trial is that mapping with its choices
set, validated again through parse_recipe, so a trial is exactly a recipe `cli.py run` takes.
Trials measure on search images (data.calibration, else data.train, or search.images), never
on data.eval: the chosen recipe alone is checked on data.eval, at the end.

A family (`model:` a list or a glob, compressor.families) is searched as one: each trial runs
the recipe on every member and the family is judged by BD-rate (compressor.search.trial says
how a family trial's figures are formed); BD-rate constraints need a family.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressor import pipeline
from compressor.data import image_paths
from compressor.errors import RecipeError
from compressor.families.members import is_family
from compressor.recipe import Recipe, _same_source, parse_recipe, read_recipe_file, short
from compressor.search.spec import (
    SearchSpec,
    choices_to_check,
    materialise,
    parse_spec,
    step_index,
)
from compressor.validate import FAMILY_GATES

#: steps whose `images` field the trials point at the search images
IMAGE_STEPS = ("validate", "evaluate")


@dataclass
class SearchPlan:
    spec: SearchSpec
    raw: dict[str, Any]  # the recipe without its search block
    recipe: Recipe
    source: str
    run_dir: Path
    mode: str  # new | resume | replace (compressor.runfolder)
    images: str  # what the trials measure on
    model: Path  # a family's first member
    #: a family's members (every trial runs the recipe on each); empty for one model
    members: list[Path] = field(default_factory=list)
    #: training images no fine-tune of the search trains on: the trials measure on them
    holdout: list[str] = field(default_factory=list)


def load_search(
    path: Path, output: Path | None = None, *, resume: bool = False, overwrite: bool = False
) -> SearchPlan:
    raw = read_recipe_file(path)
    if not isinstance(raw, dict) or "search" not in raw:
        raise RecipeError(f"{path}: no search: block (space, objective, constraints) to run")
    raw = dict(raw)
    block = raw.pop("search")
    return plan_search(raw, block, str(path), output, resume=resume, overwrite=overwrite)


def plan_search(
    raw: dict[str, Any],
    block: Any,
    source: str,
    output: Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
) -> SearchPlan:
    """Check everything a search needs; loads no weights and touches no folder."""
    spec = parse_spec(block, source)
    recipe = parse_recipe(raw, source)
    if not any(name == "validate" for name, _ in recipe.steps):
        raise RecipeError(
            f"{source}: a search measures each trial with the recipe's validate step: add "
            "`- validate: {}` (its gates are the constraints unless search.constraints is set)"
        )
    check_family_constraints(spec, recipe, source)
    if spec.sampler == "brute-force" and spec.space_size() == float("inf"):
        raise RecipeError(
            f"{source}: search.sampler brute-force needs a finite space: choice lists, "
            "integer ranges or ranges with a step"
        )
    if spec.screen is not None and not any(name == "finetune" for name, _ in recipe.steps):
        raise RecipeError(
            f"{source}: search.screen runs trials one-shot before their fine-tuning, but the "
            "recipe has no finetune step: drop screen or add the step"
        )
    images = search_images(spec, recipe, source)
    run_dir = Path(output or recipe.output or Path("exported") / f"{recipe.name}-search")
    base = pipeline.plan(
        recipe, run_dir, source=source, raw=raw, resume=resume, overwrite=overwrite
    )
    members = [m.path for m in base.members]
    for path, choices in spec.space.items():
        for value in choices_to_check(choices):
            check_choice(raw, path, value, source, members)
    held = search_holdout(spec, recipe, images, source)
    trial = trial_raw(raw, {}, spec, images, held)
    check_recipe(trial, f"{source} (a trial)", members)
    sp = SearchPlan(
        spec, raw, recipe, source, base.run_dir, base.mode, images, base.model, members, held
    )
    if sp.mode == "resume":
        check_same_search(sp)
    return sp


def search_holdout(spec: SearchSpec, recipe: Recipe, images: str, source: str) -> list[str]:
    """The trial images' names when they are training images of a fine-tune: a model trained
    on the photos it is measured on looks better there than on any other (measured: prune
    70% + a 5-minute fine-tune lost 0.09 dB on 8 training photos, 0.66 dB on Kodak), so
    the fine-tunes leave them out."""
    train = recipe.data.train
    if train is None or not _same_source(images, train):
        return []
    if not any(name == "finetune" for name, _ in recipe.steps):
        return []
    if spec.max_images is None:
        raise RecipeError(
            f"{source}: the search images are the fine-tune's training images, and every one "
            "of them is measured: set search.max_images (those are then held out of the "
            "fine-tune) or point search.images at other photos"
        )
    return [p.name for p in image_paths(images)[: spec.max_images]]


#: the hash of the recipe and search block a search folder was made with
SPEC_FILE = "search-spec.sha256"


#: search settings a resumed search may change: budgets and how the result is picked
RESUMABLE = {"max_trials", "max_minutes", "final_check", "tie_tolerance"}


def spec_hash(sp: SearchPlan) -> str:
    """What the study's trials depend on (a larger budget may continue the same study)."""
    body = {"spec": sp.spec.model_dump(mode="json", exclude=RESUMABLE), "recipe": sp.raw}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def check_same_search(sp: SearchPlan) -> None:
    """--resume continues the same study only: another space would mix two searches."""
    try:
        made_with = (sp.run_dir / SPEC_FILE).read_text().strip()
    except OSError:
        return  # killed before it wrote the file: nothing of it to mix with
    if made_with != spec_hash(sp):
        raise RecipeError(
            f"{sp.run_dir} holds a search of another recipe or search block; restore them to "
            "resume, or pass --overwrite to start again"
        )


def search_images(spec: SearchSpec, recipe: Recipe, source: str) -> str:
    images = spec.images or recipe.data.calibration or recipe.data.train
    if images is None:
        raise RecipeError(
            f"{source}: search trials measure on images that are not the evaluation images: "
            "set data.calibration, data.train or search.images"
        )
    if _same_source(images, recipe.data.eval):
        raise RecipeError(
            f"{source}: search.images is the evaluation source {short(images)}: the search must "
            "never see the images its result is checked on"
        )
    image_paths(images)
    return images


def check_family_constraints(spec: SearchSpec, recipe: Recipe, source: str) -> None:
    """BD-rate constraints judge a family's RD curve: they need a family as the model."""
    bd = [g for g in spec.constraints or {} if g in FAMILY_GATES]
    if bd and not is_family(recipe.model):
        raise RecipeError(
            f"{source}: search.constraints.{bd[0]} judges a family's RD curve (BD-rate): give "
            "model a list or a glob of one model per lambda, or use a single-model gate "
            "(max_psnr_drop_db, max_bpp_increase, ...)"
        )


def check_choice(
    raw: dict[str, Any], path: str, value: Any, source: str, members: list[Path] | None = None
) -> None:
    """One choice in isolation: the recipe with only that field changed must be valid."""
    where = f"{source}: search.space.{short(path, 60)} = {short(value, 40)}"
    step_index(raw, path, source)
    check_recipe(materialise(raw, {path: value}, source), where, members)  # errors name the field


def check_recipe(data: dict[str, Any], source: str, members: list[Path] | None = None) -> Recipe:
    """parse_recipe plus the plan-time checks of every step (no folder, no weights), on the
    model or on every member of a family (`members`, resolved once by the plan)."""
    recipe = parse_recipe(data, source)
    steps = [(pipeline.STEPS.get(name), params) for name, params in recipe.steps]
    try:
        if members:
            for member in members:
                as_member = recipe.model_copy(update={"model": str(member)})
                pipeline.check_steps(steps, member, as_member, member=True)
        else:
            pipeline.check_steps(steps, pipeline.resolve_model(str(recipe.model)), recipe)
    except RecipeError as e:
        raise RecipeError(f"{source}: {e}") from None
    return recipe


def trial_raw(
    raw: dict[str, Any],
    values: dict[str, Any],
    spec: SearchSpec,
    images: str | None,
    holdout: list[str] | None = None,
) -> dict[str, Any]:
    """The recipe of one trial (images: the search images) or of the result (images None:
    the recipe's own, i.e. data.eval): the choices set, the constraints as the last validate
    step's gates, no output of its own (the search gives it one), and the fine-tunes told to
    leave the `holdout` images (search_holdout) out, the chosen recipe's as well as a trial's:
    best.yaml reproduces the model the trials measured."""
    out = materialise(raw, values, "recipe")
    out.pop("output", None)
    steps = out["steps"]
    for i, step in enumerate(steps):
        ((name, params),) = step.items()
        if name == "finetune" and holdout and "exclude_images" not in (params or {}):
            steps[i] = {name: {**(params or {}), "exclude_images": list(holdout)}}
    last = max(i for i, s in enumerate(steps) if isinstance(s, dict) and "validate" in s)
    if spec.constraints is not None:
        params = dict(steps[last]["validate"] or {})
        params["gates"] = copy.deepcopy(spec.constraints)
        steps[last] = {"validate": params}
    if images is not None:
        family = is_family(out["model"])
        for i, step in enumerate(steps):
            ((name, params),) = step.items()
            if name in IMAGE_STEPS:
                limit = {"max_images": spec.max_images} if spec.max_images else {}
                steps[i] = {name: {**(params or {}), "images": images, **limit}}
            if name == "validate" and spec.crop:
                steps[i]["validate"]["crop"] = list(spec.crop)
            if name == "validate" and family:
                # the JPEG / WebP sweeps judge no constraint: measured by the final check only
                steps[i]["validate"] = {**(steps[i]["validate"] or {}), "references": []}
    return out
