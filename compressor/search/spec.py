"""The `search:` block of a recipe: which choices of the recipe's own steps to try, what to
minimise, under which constraints, with what budget.

A space key is a dotted path into the recipe's steps: `steps.STEP.FIELD[.FIELD...]`, where
STEP is a step's name (when the recipe has it once) or its 1-based position (`steps.2.ratio`).
Each value is a non-empty list of choices or a range `{low, high[, step][, log][, integer]}`.
Every choice is checked in isolation against the step's own parameter model at plan time
(before any weights load), so a choice that would make an invalid recipe is refused there.
Constraints are validate gates; the BD-rate ones (max_bd_rate, max_bd_rate_ms_ssim) judge a
family's RD curve, so they need a family as the recipe's model (checked by plan_search).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from compressor.errors import RecipeError
from compressor.recipe import _error, short
from compressor.validate import GATE_RULES

#: single-objective modes -> the latency the search minimises
OBJECTIVES = ("total_latency", "encode_latency", "decode_latency")
#: the axes of the multi-objective mode, all minimised
PARETO_AXES = ("latency", "quality_loss", "size_mb")


class Range(BaseModel):
    """A numeric range: floats by default, integers with `integer: true`."""

    model_config = ConfigDict(extra="forbid")

    low: float
    high: float
    step: float | None = Field(None, gt=0)
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _sane(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"a range needs low < high (got low {self.low}, high {self.high})")
        if self.log and (self.step is not None or self.low <= 0):
            raise ValueError("a log range needs low > 0 and no step")
        if self.integer and not (self.low.is_integer() and self.high.is_integer()):
            raise ValueError("an integer range needs whole-number low and high")
        return self

    def ends(self) -> list[float | int]:
        """The values checked at plan time: the two ends (every value lies between them)."""
        last = self.high
        if self.step is not None:  # the last grid point, not `high`, is the largest value
            last = self.low + math.floor((self.high - self.low) / self.step) * self.step
        return [int(self.low), int(last)] if self.integer else [self.low, last]

    def size(self) -> float:
        """How many distinct values it holds (inf for a continuous range)."""
        if self.integer or self.step is not None:
            return math.floor((self.high - self.low) / (self.step or 1)) + 1
        return math.inf


class Screen(BaseModel):
    """Cheap first: trials run one-shot (no fine-tune steps) on the search images first."""

    model_config = ConfigDict(extra="forbid")

    max_psnr_drop_db: float = Field(
        ge=0, description="one-shot PSNR drop above which a trial is not fine-tuned"
    )


class SearchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    space: dict[str, list[Any] | Range] = Field(
        description="dotted path into the steps -> choice list or range"
    )
    objective: Literal["total_latency", "encode_latency", "decode_latency"] = "total_latency"
    multi_objective: bool = Field(
        False, description="NSGA-II over latency x quality loss x size: the Pareto front"
    )
    constraints: dict[str, float] | None = Field(
        None, description="validate gates (name -> limit); default: the validate step's gates"
    )
    sampler: Literal["auto", "brute-force"] = Field(
        "auto",
        description="auto: seeded TPE (one objective) or NSGA-II (multi_objective); "
        "brute-force: every combination of a finite space, in a seeded order",
    )
    max_trials: int = Field(20, ge=1, le=10_000, description="trials that run (not cache hits)")
    max_minutes: float | None = Field(None, gt=0, description="wall-clock budget of the search")
    seed: int = 0
    images: str | None = Field(
        None, description="trial images; default data.calibration, else data.train (never eval)"
    )
    max_images: int | None = Field(
        8,
        ge=1,
        description="trials measure on the first N search images, full size (a trial's cost "
        "grows with them; the final check uses every evaluation image); null: all",
    )
    crop: tuple[PositiveInt, PositiveInt] | None = Field(
        None,
        description="trials measure on the W x H centre of each search image (e.g. Kodak's "
        "768 x 512: a trial's latency then weighs like the evaluation's); default: full size",
    )
    confidence: float = Field(
        0.9,
        ge=0,
        lt=1,
        description="a per-image quality constraint holds only at this one-sided confidence "
        "over the trial images (mean + t * standard error; compressor.search.confidence); 0: "
        "the mean alone",
    )
    tie_tolerance: float = Field(
        0.05, ge=0, lt=1, description="latencies within this share of the fastest are a tie"
    )
    final_check: bool = Field(True, description="run the chosen recipe on data.eval at the end")
    screen: Screen | None = Field(
        None, description="fine-tune only trials whose one-shot quality is promising"
    )

    @field_validator("space")
    @classmethod
    def _space(cls, value: dict[str, list[Any] | Range]) -> dict[str, list[Any] | Range]:
        if not value:
            raise ValueError("space is empty: name at least one recipe field to search")
        for path, choices in value.items():
            if isinstance(choices, list) and not choices:
                raise ValueError(f"{path}: an empty choice list; give at least one value")
        return value

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for name in value or {}:
            if name not in GATE_RULES:
                raise ValueError(
                    f"constraint {name!r} is not a validate gate; allowed: {', '.join(GATE_RULES)}"
                )
        return value  # a BD-rate gate needs a family as the model: plan_search checks that

    def space_size(self) -> float:
        total: float = 1
        for choices in self.space.values():
            total *= len(choices) if isinstance(choices, list) else choices.size()
        return total


def parse_spec(block: Any, source: str) -> SearchSpec:
    if not isinstance(block, dict):
        raise RecipeError(f"{source}: search: a mapping with space (and objective, constraints)")
    try:
        return SearchSpec.model_validate(block)
    except ValidationError as e:
        raise _error(source, e, ("search",)) from None


def step_index(raw: dict[str, Any], path: str, source: str) -> tuple[int, list[str]]:
    """The step a space path names (its index in raw['steps']) and the field path inside it."""
    parts = path.split(".")
    steps = raw.get("steps") or []
    names = [next(iter(s)) if isinstance(s, dict) and len(s) == 1 else None for s in steps]
    where = f"{source}: search.space.{short(path, 60)}"
    if len(parts) < 3 or parts[0] != "steps" or not all(parts):
        raise RecipeError(
            f"{where}: a space key is steps.STEP.FIELD (e.g. steps.prune.ratio.encoder); "
            f"STEP is one of: {', '.join(str(n) for n in names)} or a 1-based position"
        )
    step = parts[1]
    if step.isdigit() and 1 <= int(step) <= len(steps):
        return int(step) - 1, parts[2:]
    found = [i for i, n in enumerate(names) if n == step]
    if len(found) != 1:
        what = "appears more than once; name it by position" if found else "is not a step"
        raise RecipeError(
            f"{where}: {step!r} {what} (the recipe's steps: "
            f"{', '.join(f'{i + 1} {n}' for i, n in enumerate(names))})"
        )
    return found[0], parts[2:]


def set_choice(raw: dict[str, Any], index: int, fields: list[str], value: Any) -> None:
    """Set one field of one step in a raw recipe (in place), creating nested mappings."""
    step = raw["steps"][index]
    name = next(iter(step))
    if step[name] is None:
        step[name] = {}
    node = step[name]
    for key in fields[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[fields[-1]] = value


def materialise(raw: dict[str, Any], values: dict[str, Any], source: str) -> dict[str, Any]:
    """A deep copy of the raw recipe with each space path set to its chosen value."""
    out = copy.deepcopy(raw)
    for path, value in values.items():
        index, fields = step_index(out, path, source)
        set_choice(out, index, fields, copy.deepcopy(value))
    return out


def choices_to_check(choices: list[Any] | Range) -> list[Any]:
    return list(choices) if isinstance(choices, list) else choices.ends()
