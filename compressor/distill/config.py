"""Parameters of one distillation run: the recipe step `distill` and `cli.py distill` share them.

The training budget (steps, minutes, crops, early stopping, LR schedule) is the train loop's
own `TrainConfig`, nested as `train`, so the two can never drift apart.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compressor.train import TrainConfig

#: the loss terms a recipe may weight (compressor.distill.rd_kd computes them):
#: distortion  lambda * 255^2 * MSE(student x_hat, image)       (the RD loss's distortion)
#: output      lambda * 255^2 * MSE(student x_hat, teacher x_hat) (output matching)
#: latent      MSE(adapter(student y), teacher y) / mean(teacher y^2)  (g_a output matching)
#: rate        the student's estimated bits per pixel             (the RD loss's rate)
LOSS_NAMES = ("distortion", "output", "latent", "rate")
DEFAULT_LOSSES = {"distortion": 1.0, "output": 1.0, "latent": 0.1, "rate": 1.0}


def _default_losses() -> dict[str, float]:
    return dict(DEFAULT_LOSSES)


class DistillParams(BaseModel):
    """Which student, which loss terms with what weights, and the training budget."""

    model_config = ConfigDict(extra="forbid")

    student: str | None = Field(
        None,
        description="student arch (a registered arch of the teacher's family); "
        "default: the teacher's arch",
    )
    width: float = Field(
        0.5, description="student widths = teacher widths (N, M) x width; 0 < width <= 1"
    )
    config: dict[str, int] | None = Field(
        None, description="explicit student widths, e.g. {N: 64, M: 96} (overrides width)"
    )
    init: Literal["auto", "teacher", "random"] = Field(
        "auto",
        description="student start: 'teacher' = the teacher's strongest channels (L1 "
        "structured pruning), 'random' = fresh weights; 'auto' = teacher when the arch is "
        "the same",
    )
    losses: dict[str, float] = Field(
        default_factory=_default_losses,
        description=f"loss term -> weight; terms: {', '.join(LOSS_NAMES)} (omitted = 0)",
    )
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("width")
    @classmethod
    def _width_range(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError(
                f"width {value} would not make a smaller student than the teacher; "
                "allowed: 0 < width <= 1"
            )
        return value

    @field_validator("losses")
    @classmethod
    def _known_losses(cls, value: dict[str, float]) -> dict[str, float]:
        for name, weight in value.items():
            if name not in LOSS_NAMES:
                raise ValueError(f"unknown loss {name!r}; allowed: {', '.join(LOSS_NAMES)}")
            if weight < 0:
                raise ValueError(f"loss {name} has a negative weight {weight}; allowed: >= 0")
        return value

    @model_validator(mode="after")
    def _something_to_learn(self) -> DistillParams:
        weights = self.losses
        if weights.get("distortion", 0) <= 0 and weights.get("output", 0) <= 0:
            raise ValueError(
                "losses give the student no reconstruction target: weight distortion or "
                "output above 0"
            )
        if self.config is not None and any(v < 1 for v in self.config.values()):
            raise ValueError(f"config {self.config}: every width must be >= 1")
        return self


def parse_losses(text: str) -> dict[str, float]:
    """'distortion=1,output=1,latent=0.1' -> {...} (validated by DistillParams)."""
    from compressor.options import parse_pairs

    return parse_pairs(
        text, "--losses", "NAME=WEIGHT", "distortion=1,output=1", names=", ".join(LOSS_NAMES)
    )
