"""Recipes: YAML -> validated pydantic models. Unknown keys are errors that name their path.

A recipe is untrusted input: it is read with a size limit, must be UTF-8, and YAML aliases
may not expand to more than MAX_YAML_NODES nodes (a "billion laughs" document of a few
hundred bytes would otherwise expand to 10^9 nodes when validated or quoted in an error).
Aliases stay allowed below that limit because a recipe may share a block (e.g. gates) by
anchor; the expansion is counted on the composed node graph, each shared node once, so the
count itself is linear in the file. Error messages quote at most ~80 characters of input.
"""

from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from compressor.errors import RecipeError

BUNDLED = "bundled"
MAX_RECIPE_BYTES = 1 << 20
#: values that aliases may add to a document (a recipe has ~100 values in all)
MAX_YAML_NODES = 10_000
NAME_MAX = 64
#: a name is a folder under exported/: no dots (".", ".." would name exported/ or the repo)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 76
_repr.maxlist = _repr.maxdict = _repr.maxtuple = _repr.maxset = 4
_repr.maxlevel = 2


def short(value: Any, limit: int = 80) -> str:
    """repr of `value`, never longer than `limit` characters and never built in full."""
    text = _repr.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _same_source(a: str, b: str) -> bool:
    """Whether two image sources are the same images: named sets ('skimage') by name,
    folders by their resolved path."""
    from compressor.data import SKIMAGE_SETS

    if a in SKIMAGE_SETS or b in SKIMAGE_SETS:
        return a == b
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


class DataSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    eval: str = Field("skimage", description="folder of evaluation images, or 'skimage'")
    train: str | None = Field(None, description="folder of training images (fine-tuning etc.)")
    calibration: str | None = Field(None, description="folder of calibration images")

    @model_validator(mode="after")
    def _never_fit_on_eval(self) -> DataSpec:
        # Calibrating or training on the evaluation images lets the validation measure images
        # the model has seen (README: refused). 'skimage-calibration' is the disjoint set.
        for role, verb in (("calibration", "calibrate"), ("train", "train")):
            source = getattr(self, role)
            if source is not None and _same_source(source, self.eval):
                hint = " (use skimage-calibration)" if self.eval == "skimage" else ""
                raise ValueError(
                    f"data.{role} is the evaluation folder {short(self.eval)}: {verb} on "
                    f"other images{hint}, or the validation measures images the model has seen"
                )
        return self


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="run name: the folder exported/<name>")
    model: str | list[str] = Field(
        description="checkpoint / export path, or 'bundled' for the embedded default; a family "
        "(one model per lambda): a list of them, or a glob such as 'models/*.pt'"
    )
    arch: str | None = None
    data: DataSpec = Field(default_factory=DataSpec)
    threads: int | None = Field(None, ge=1)
    provider: str = Field(
        "cpu", description="ONNX Runtime execution provider of every step (the target hardware)"
    )
    output: str | None = Field(None, description="run folder; default exported/<name>")
    steps: list[tuple[str, BaseModel]]

    @field_validator("model")
    @classmethod
    def _models(cls, value: str | list[str]) -> str | list[str]:
        items = value if isinstance(value, list) else [value]
        if not items or any(not item.strip() for item in items):
            raise ValueError("model must name a model, or list the members of a family")
        if len(set(items)) != len(items):
            raise ValueError("model: a family lists each member once")
        return value

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if len(value) > NAME_MAX or not re.fullmatch(NAME_PATTERN, value):
            raise ValueError(
                f"name must be 1..{NAME_MAX} letters, digits, '-' or '_', starting with a "
                "letter or digit (it names the run folder exported/<name>)"
            )
        return value


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            printable = isinstance(part, str) and len(part) <= 40 and part.isprintable()
            text = part if printable else short(part, 40)  # repr escapes newlines: one line
            out += f".{text}" if out else text
    return out


def _error(source: str, e: ValidationError, prefix: tuple[Any, ...] = ()) -> RecipeError:
    first = e.errors()[0]
    where = _where(prefix + tuple(first["loc"]))
    msg = first["msg"].removeprefix("Value error, ")
    msg = msg if len(msg) <= 300 else msg[:297] + "..."
    # a mapping as input means the error is about the block as a whole: the message says it
    quote = first["type"] != "missing" and not isinstance(first["input"], dict)
    got = f" (got {short(first['input'])})" if quote else ""
    return RecipeError(f"{source}: {where}: {msg}{got}")


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
        if not isinstance(name, str) or name not in STEPS:
            raise RecipeError(
                f"{source}: steps[{i}]: unknown step {short(name)}; "
                f"allowed: {', '.join(STEPS.names())}"
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


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses documents whose aliases expand past MAX_YAML_NODES."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _count_nodes(node, {}, set())
        return node


def _count_nodes(node: yaml.Node, memo: dict[int, int], open_: set[int]) -> int:
    """Nodes of `node` with every alias expanded; each shared node is visited once, so
    this runs in time linear in the file however far the aliases would expand."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_:
        raise RecipeError("a YAML alias refers to a node that contains it (a recursive alias)")
    open_.add(key)
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_count_nodes(child, memo, open_) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(
            _count_nodes(k, memo, open_) + _count_nodes(v, memo, open_) for k, v in node.value
        )
    # expanded nodes beyond every distinct node seen so far: what the aliases add (a big
    # document without aliases is bounded by MAX_RECIPE_BYTES instead)
    if total - len(memo) - len(open_) > MAX_YAML_NODES:
        raise RecipeError(
            f"its YAML aliases expand to more than {MAX_YAML_NODES} values (a 'billion "
            "laughs' document?); write the values out or use fewer aliases"
        )
    open_.discard(key)
    memo[key] = total
    return total


def read_recipe_file(path: Path) -> Any:
    """The YAML of a recipe file, parsed but not yet validated."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as e:
        raise RecipeError(f"recipe {path} cannot be read ({e.strerror or e})") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(
            f"recipe {path} is {path.stat().st_size:,} bytes; allowed: at most "
            f"{MAX_RECIPE_BYTES:,} (1 MiB)"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(
            f"recipe {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            "save it as UTF-8"
        ) from None
    try:
        loader = _BoundedLoader(text)  # its reader already refuses characters YAML forbids
    except yaml.YAMLError as e:
        problem = str(getattr(e, "problem", None) or e).splitlines()[0][:160]
        raise RecipeError(f"{path} is not valid YAML ({problem})") from None
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = str(getattr(e, "problem", None) or e)[:160]
        raise RecipeError(f"{path}:{line} is not valid YAML ({problem})") from None
    except RecipeError as e:
        raise RecipeError(f"recipe {path}: {e}") from None
    except RecursionError:
        raise RecipeError(f"recipe {path} is nested too deeply to be a recipe") from None
    finally:
        loader.dispose()
