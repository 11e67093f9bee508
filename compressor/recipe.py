"""Recipes: YAML -> validated pydantic models. Unknown keys are errors that name their path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compressor.errors import RecipeError

BUNDLED = "bundled"


class DataSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    eval: str = Field("skimage", description="folder of evaluation images, or 'skimage'")
    train: str | None = Field(None, description="folder of training images (fine-tuning etc.)")
    calibration: str | None = Field(None, description="folder of calibration images")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = Field(description="checkpoint path, or 'bundled' for the embedded default")
    arch: str | None = None
    data: DataSpec = Field(default_factory=DataSpec)
    threads: int | None = Field(None, ge=1)
    output: str | None = Field(None, description="run folder; default exported/<name>")
    steps: list[tuple[str, BaseModel]]


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _error(source: str, e: ValidationError, prefix: tuple[Any, ...] = ()) -> RecipeError:
    first = e.errors()[0]
    where = _where(prefix + tuple(first["loc"]))
    got = f" (got {first['input']!r})" if first["type"] != "missing" else ""
    return RecipeError(f"{source}: {where}: {first['msg']}{got}")


def parse_steps(raw: Any, source: str) -> list[tuple[str, BaseModel]]:
    from compressor.steps import STEPS

    if not isinstance(raw, list) or not raw:
        raise RecipeError(f"{source}: steps: a non-empty list of steps is required")
    steps = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or len(item) != 1:
            raise RecipeError(
                f"{source}: steps[{i}]: each step is one mapping `- STEP: {{params}}`; "
                f"steps: {', '.join(STEPS.names())}"
            )
        ((name, params),) = item.items()
        if name not in STEPS:
            raise RecipeError(
                f"{source}: steps[{i}]: unknown step {name!r}; allowed: {', '.join(STEPS.names())}"
            )
        try:
            steps.append((name, STEPS.get(name).params.model_validate(params or {})))
        except ValidationError as e:
            raise _error(source, e, ("steps", i, name)) from None
    return steps


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a mapping with name, model and steps")
    steps = parse_steps(data.get("steps"), source)
    try:
        return Recipe.model_validate({**data, "steps": steps})
    except ValidationError as e:
        raise _error(source, e) from None


def load_recipe(path: Path) -> Recipe:
    return parse_recipe(read_recipe_file(path), str(path))


def read_recipe_file(path: Path) -> Any:
    """The YAML of a recipe file, parsed but not yet validated."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}:{line} is not valid YAML ({getattr(e, 'problem', e)})") from None
    return data
