"""Parameters of one pruning run: the recipe step `prune` and `cli.py prune` share this model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compressor.options import parse_pairs

#: components whose inner channels structured pruning can remove (torch-pruning groups)
#: (generator, probability_model: HiFiC's names for its decoder and hyperprior)
COMPONENTS = (
    "encoder",
    "decoder",
    "hyper_encoder",
    "hyper_decoder",
    "generator",
    "probability_model",
)
#: channel sets shared across components and the entropy models (compressor.prune.latent)
LATENTS = ("latent", "hyper_latent")
#: "all": structured, every component the model has (not the latents); unstructured, every
#: convolution of the model as one pool
STRUCTURED_KEYS = (*COMPONENTS, *LATENTS, "all")
UNSTRUCTURED_KEYS = (*COMPONENTS, "all")
IMPORTANCE = ("l1", "l2", "taylor", "random")


class PruneParams(BaseModel):
    """What to prune, by how much, and by which criterion."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["structured", "unstructured"] = "structured"
    ratio: dict[str, float] = Field(
        default_factory=dict,
        description="share of channels (structured) or weights (unstructured) to remove, per "
        "component: encoder, decoder, hyper_encoder, hyper_decoder, latent, hyper_latent "
        "or all; each in [0, 1)",
    )
    importance: Literal["l1", "l2", "taylor", "random"] = Field(
        "l1",
        description="channel ranking: L1/L2 weight norm, Taylor on calibration images, "
        "random (a control)",
    )
    round_to: int = Field(8, ge=1, description="kept channel counts are a multiple of this")
    iterative_steps: int = Field(1, ge=1, description="1 = one-shot; K = K pruning rounds")
    scope: Literal["layer", "global"] = Field(
        "global",
        description="unstructured: each layer at the ratio, or one magnitude "
        "threshold per component (all: over the whole model)",
    )
    lmbda: float | None = Field(
        None,
        gt=0,
        description="RD lambda of the Taylor loss (default: the checkpoint's training lambda)",
    )
    calibration_crop: int = Field(256, ge=64, description="Taylor calibration crop (pixels)")
    calibration_images: int = Field(8, ge=1, description="Taylor: images used at most")
    report_size: tuple[int, int] = Field((512, 768), description="H, W of the MAC/latency input")
    latency_repeats: int = Field(5, ge=0, description="timed runs per component; 0 = skip")
    seed: int = 0

    @field_validator("ratio")
    @classmethod
    def _ratio_range(cls, value: dict[str, float]) -> dict[str, float]:
        for key, r in value.items():
            if not 0.0 <= r < 1.0:
                raise ValueError(f"ratio {key}={r} is outside [0, 1)")
        return value

    @model_validator(mode="after")
    def _ratio_keys(self) -> PruneParams:
        allowed = STRUCTURED_KEYS if self.method == "structured" else UNSTRUCTURED_KEYS
        unknown = [k for k in self.ratio if k not in allowed]
        if unknown:
            raise ValueError(
                f"unknown component {unknown[0]!r} for {self.method} pruning; "
                f"allowed: {', '.join(allowed)}"
            )
        if not any(r > 0 for r in self.ratio.values()):
            raise ValueError("no ratio above 0: nothing to prune")
        return self


def parse_ratios(text: str) -> dict[str, float]:
    """'encoder=0.3,decoder=0.3' -> {...}; a bare '0.5' means every component ('all')."""
    text = text.strip()
    try:
        return {"all": float(text)}
    except ValueError:
        pass
    return parse_pairs(
        text,
        "--ratio",
        "COMPONENT=FLOAT",
        "encoder=0.3,decoder=0.3 (or one number for every component)",
    )
