"""Pipeline steps: `run(params, ctx, input_artifact, out_dir) -> Artifact`, one file each.

A step writes only inside `out_dir` (a temporary folder the pipeline renames into place when
the step returns), never into an earlier step's folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from compressor.artifact import Artifact
from compressor.progress import NullReporter, Reporter
from compressor.recipe import Recipe
from compressor.registry import Registry


@dataclass
class RunContext:
    recipe: Recipe
    run_dir: Path
    baseline: Artifact  # the recipe's input model
    reporter: Reporter = field(default_factory=NullReporter)
    cache: dict[str, Any] = field(default_factory=dict)
    #: the artifacts of the steps run so far, in order (a step may compare against one)
    done: list[Artifact] = field(default_factory=list)
    #: CPU threads of every step (torch and ONNX Runtime), resolved once by the pipeline
    threads: int = 1

    @property
    def provider(self) -> str:
        """The ONNX Runtime execution provider of every step (the recipe's target)."""
        return self.recipe.provider

    def images(self, source: str) -> list:
        """Images of a source, decoded once per run."""
        from compressor.data import load_images

        key = f"images:{source}"
        if key not in self.cache:
            self.cache[key] = load_images(source)
        return self.cache[key]


@dataclass(frozen=True)
class StepSpec:
    name: str
    params: type[BaseModel]
    run: Callable[[Any, RunContext, Artifact, Path], Artifact]
    #: cheap checks at plan time (paths exist, needed data declared); no weights loaded
    check: Callable[[Any, Recipe], None] | None = None
    #: the artifact kinds this step accepts as input
    accepts: tuple[str, ...] = ("checkpoint",)
    #: the kind of model it hands to the next step; None: a report, the model is unchanged
    produces: str | None = "checkpoint"
    #: minimal valid params (docs and the plugin tests)
    example: dict[str, Any] = field(default_factory=dict)


STEPS: Registry[StepSpec] = Registry("step")


def register(spec: StepSpec) -> StepSpec:
    STEPS.add(spec.name, spec)
    return spec


def _load_builtin_steps() -> None:
    from compressor.steps import (  # noqa: F401
        distill,
        evaluate,
        export,
        finetune,
        prune,
        quantize,
        validate,
    )


_load_builtin_steps()
