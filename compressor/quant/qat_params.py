"""The `qat:` block of a quantize step (backend qat): the fine-tuning budget and ranges.

Torch-free on purpose (the recipe parser imports it); compressor.quant.qat turns it into the
train loop's TrainConfig. A budget of zero steps or minutes is refused here, at plan time.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class QatParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(100000, ge=1, description="optimizer steps at most")
    max_minutes: float | None = Field(
        20.0, gt=0, description="wall-clock budget of the fine-tuning (None: steps only)"
    )
    lr: float = Field(2e-5, gt=0, description="Adam learning rate (small: the model is trained)")
    lmbda: float | None = Field(
        None, gt=0, description="RD trade-off; default: the one the checkpoint was trained with"
    )
    crop: int = Field(192, ge=64, description="training crop size (pixels)")
    val_crop: int = Field(256, ge=64, description="centre crop of held-out images (pixels)")
    batch_size: int = Field(4, ge=1)
    eval_every: int = Field(50, ge=1, description="steps between held-out evaluations")
    range_momentum: float = Field(
        0.01,
        ge=0,
        le=1,
        description="EMA weight of each batch's min/max in the activation ranges (0: keep the "
        "calibrated ranges fixed)",
    )
    seed: int = 0
