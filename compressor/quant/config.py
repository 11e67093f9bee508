"""The parameters of the `quantize` step / command (pydantic; unknown keys are errors)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compressor.quant.qat_params import QatParams

#: recipe component name -> the graph of an export folder it names
COMPONENTS = {
    "encoder": "g_a",
    "decoder": "g_s",
    "hyper_encoder": "h_a",
    "hyper_decoder": "h_s",
    "generator": "g_s",  # hific's decoder
}
#: export kinds whose graphs are not COMPONENTS' (rnn: the encoder and decoder step graphs)
KIND_COMPONENTS = {"rnn": {"encoder": "encoder_step", "decoder": "decoder_step"}}
#: keep-in-float rules, applied to every quantized component
RULES = {
    "first": "the first convolution of the graph (it sees raw pixels or the latent)",
    "last": "the last convolution of the graph (it writes pixels or the latent)",
    "gdn": "the 1x1 convolutions inside (I)GDN, whose input is x*x (a squared dynamic range)",
}
#: keep_float_top_k's upper bound (a codec has tens of Convs; more is a typo)
MAX_TOP_K = 1000
#: backends this version implements (compressor.quant.QUANTIZERS holds the same names)
BACKENDS = ("ort-static", "inc-static", "qat")
#: backends that work on the torch model the export was made from (compressor.quant.torch_src)
TORCH_BACKENDS = ("inc-static", "qat")
#: int8_gdn on an export made with gdn_in_phases (export.rewrites.gdn_into_phases) quantizes
#: nothing more (measured: the same QDQ graph): each phase's x*x already runs in INT8 between
#: its INT8 phase Conv and the IGDN's Conv, and the IGDN's last multiply now feeds the float
#: Concat (ort_static.MOVERS stay float for OpenVINO), so it would take a Q/DQ pair and a
#: second rounding before the next Conv's for no fused op. Refused rather than ignored.
INT8_GDN_WITH_GDN_IN_PHASES = (
    "int8_gdn adds nothing to an export made with gdn_in_phases (its IGDN x*x runs in INT8 "
    "already, its last multiply feeds a float Concat): drop one of the two"
)


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: int = Field(16, ge=1, le=1000, description="calibration images (sorted, first N)")
    crop: int = Field(256, ge=64, le=2048, description="centre crop of each image, pixels")
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    percentile: float = Field(99.999, gt=90, le=100, description="for method percentile")


class Accuracy(BaseModel):
    """Accuracy-aware mode: keep the most sensitive layers in float until these hold."""

    model_config = ConfigDict(extra="forbid")

    max_psnr_drop_db: float = Field(0.3, description="allowed PSNR loss vs the float export, dB")
    max_bpp_increase: float | None = Field(
        0.02, description="allowed relative bpp increase (0.02 = +2%)"
    )
    max_trials: int = Field(8, ge=1, le=200, description="quantize-and-measure rounds at most")
    images: int = Field(
        2, ge=1, le=100, description="images measured per trial (the calibration folder's last)"
    )

    @field_validator("max_psnr_drop_db", "max_bpp_increase")
    @classmethod
    def _non_negative(cls, v: float | None) -> float | None:
        if v is not None and v < 0:
            raise ValueError(
                f"a tolerance is the largest loss allowed, so it is >= 0 (0.3 = at most 0.3 "
                f"lost); got {v}"
            )
        return v


class QuantParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: str = Field("ort-static", description=f"one of: {', '.join(BACKENDS)}")
    components: list[str] = Field(
        default_factory=lambda: ["encoder", "decoder"],
        description=f"graphs to quantize: {', '.join(COMPONENTS)}",
    )
    calibration: Calibration = Field(default_factory=Calibration)
    per_channel: bool = Field(True, description="one weight scale per output channel")
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    keep_float: list[str] = Field(
        default_factory=list,
        description="rules (first, last, gdn) or COMPONENT:RULE or COMPONENT:NODE_NAME",
    )
    keep_float_top_k: int = Field(
        0,
        description="also keep the k most sensitive Convs in float (the sensitivity ranking "
        "on the calibration images, over the quantized components; 0: none)",
    )
    int8_gdn: bool = Field(
        False,
        description="ort-static: also run (I)GDN's multiplies between INT8 convs in INT8 "
        "(ONNX Runtime's decoder ~18% faster, -0.02 dB measured; OpenVINO's ~12% slower, "
        "so not the default); refused on an export made with gdn_in_phases",
    )
    shared_phase_scale: bool = Field(
        False,
        description="ort-static: the phase convs of each rewritten transposed conv share one "
        "symmetric int8 output scale, for OpenVINO (its INT8 decoder ~13% faster; ONNX "
        "Runtime's unchanged; measured -0.09 dB on other photos, 0 on Kodak)",
    )
    preprocess: bool = Field(True, description="ONNX Runtime's quant_pre_process first")
    sensitivity: bool = Field(False, description="write the per-layer sensitivity table")
    accuracy: Accuracy | None = None
    qat: QatParams | None = Field(None, description="backend qat: budget and ranges")

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        if v not in BACKENDS:
            raise ValueError(f"unknown quantization backend {v!r}; allowed: {', '.join(BACKENDS)}")
        return v

    @field_validator("components")
    @classmethod
    def _components(cls, v: list[str]) -> list[str]:
        unknown = [c for c in v if c not in COMPONENTS]
        if unknown or not v or len(set(v)) != len(v):
            raise ValueError(
                f"components must be a non-empty list of distinct names from "
                f"{', '.join(COMPONENTS)}; got {v}"
            )
        return v

    @field_validator("keep_float")
    @classmethod
    def _keep_float(cls, v: list[str]) -> list[str]:
        for entry in v:
            comp, sep, what = entry.partition(":")
            if not sep and entry not in RULES:
                raise ValueError(
                    f"keep_float entry {entry!r}: a rule ({', '.join(RULES)}) or "
                    "COMPONENT:RULE or COMPONENT:NODE_NAME"
                )
            if sep and (comp not in COMPONENTS or not what):
                raise ValueError(
                    f"keep_float entry {entry!r}: component must be one of "
                    f"{', '.join(COMPONENTS)}, followed by a rule or node name"
                )
        return v

    @field_validator("keep_float_top_k")
    @classmethod
    def _top_k(cls, v: int) -> int:
        if not 0 <= v <= MAX_TOP_K:
            raise ValueError(
                f"keep_float_top_k is how many of the most sensitive Convs stay float: "
                f"0 (none) to {MAX_TOP_K}"
            )
        return v

    @model_validator(mode="after")
    def _backend_options(self) -> QuantParams:
        if self.qat is not None and self.backend != "qat":
            raise ValueError(f"qat: is an option of backend qat, not of {self.backend}")
        if self.backend in TORCH_BACKENDS and (self.sensitivity or self.accuracy is not None):
            raise ValueError(
                f"sensitivity and accuracy are searches of backend ort-static; backend "
                f"{self.backend} does not run them"
            )
        if self.backend == "qat" and self.keep_float_top_k:
            # QAT learns its ranges: a post-training ranking says little about what it keeps
            raise ValueError(
                "keep_float_top_k ranks layers by post-training quantization: backends "
                "ort-static and inc-static; backend qat keeps only keep_float's layers"
            )
        if self.int8_gdn and self.backend != "ort-static":
            # the torch backends' fake-quant models no rounding of the GDN's normaliser
            raise ValueError(f"int8_gdn is an option of backend ort-static, not of {self.backend}")
        if self.backend == "inc-static" and self.calibration.method == "percentile":
            raise ValueError(
                "backend inc-static calibrates with minmax or entropy (INC's kl); got percentile"
            )
        return self

    def graphs(self, kind: str | None = None) -> list[str]:
        """The graphs the components name in an export of `kind` (None: COMPONENTS')."""
        names = component_graphs(kind)
        return [names.get(c, COMPONENTS[c]) for c in self.components]


def component_graphs(kind: str | None) -> dict[str, str]:
    """Component -> graph name in an export of this manifest kind."""
    return KIND_COMPONENTS.get(kind or "", COMPONENTS)
