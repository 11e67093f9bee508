"""Validate a candidate against its baseline: compressor.compare of the two (same images,
same process, interleaved latency), then pass/fail gates. The report is always written; the
caller sets the exit code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from compressor.codec import Codec
from compressor.compare import EvalResult, Images, compare
from compressor.progress import Reporter


class Gates(BaseModel):
    """Pass/fail limits. Drops and increases are candidate minus baseline; unset = not gated."""

    model_config = ConfigDict(extra="forbid")

    max_psnr_drop_db: float | None = Field(None, ge=0, description="mean PSNR drop, dB")
    max_ssim_drop: float | None = Field(None, ge=0, description="mean SSIM drop")
    max_ms_ssim_drop: float | None = Field(None, ge=0, description="mean MS-SSIM drop")
    max_bpp_increase: float | None = Field(
        None, ge=0, description="relative increase of mean bpp (0.02 = +2%)"
    )
    min_speedup: float | None = Field(
        None, gt=0, description="baseline / candidate encode+decode time"
    )
    min_encode_speedup: float | None = Field(None, gt=0)
    min_decode_speedup: float | None = Field(None, gt=0)
    max_bd_rate: float | None = Field(
        None, description="families only: BD-rate in PSNR vs the baseline family, % (0.5 = +0.5%)"
    )
    max_bd_rate_ms_ssim: float | None = Field(
        None, description="families only: BD-rate in MS-SSIM (dB) vs the baseline family, %"
    )

    def family_gates(self) -> list[str]:
        """The gates set here that judge a family's curve (BD-rate), not one model."""
        return [g for g in FAMILY_GATES if getattr(self, g) is not None]


@dataclass
class Validation:
    baseline: EvalResult
    candidate: EvalResult
    deltas: dict[str, float | None]
    gates: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(g["passed"] for g in self.gates)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compute_deltas(base: EvalResult, cand: EvalResult) -> dict[str, float | None]:
    def drop(key: str) -> float | None:
        a, b = base.mean(key), cand.mean(key)
        return a - b if a is not None and b is not None else None

    b_bpp, c_bpp = base.mean("bpp"), cand.mean("bpp")

    def total(r: EvalResult) -> float:
        return (r.mean("encode_ms") or 0.0) + (r.mean("decode_ms") or 0.0)

    return {
        "psnr_drop_db": drop("psnr"),
        "ssim_drop": drop("ssim"),
        "ms_ssim_drop": drop("ms_ssim"),
        "bpp_increase": (c_bpp - b_bpp) / b_bpp if b_bpp and c_bpp is not None else None,
        "speedup": _ratio(total(base), total(cand)),
        "encode_speedup": _ratio(base.mean("encode_ms"), cand.mean("encode_ms")),
        "decode_speedup": _ratio(base.mean("decode_ms"), cand.mean("decode_ms")),
    }


#: gate field -> (delta key, True when the limit is an upper bound)
GATE_RULES = {
    "max_psnr_drop_db": ("psnr_drop_db", True),
    "max_ssim_drop": ("ssim_drop", True),
    "max_ms_ssim_drop": ("ms_ssim_drop", True),
    "max_bpp_increase": ("bpp_increase", True),
    "min_speedup": ("speedup", False),
    "min_encode_speedup": ("encode_speedup", False),
    "min_decode_speedup": ("decode_speedup", False),
    "max_bd_rate": ("bd_rate_psnr", True),
    "max_bd_rate_ms_ssim": ("bd_rate_ms_ssim", True),
}
#: gates on a family's curve: applied once per family run (compressor.families.judge), never
#: to one member's comparison
FAMILY_GATES = ("max_bd_rate", "max_bd_rate_ms_ssim")


def apply_gates(
    gates: Gates, deltas: dict[str, float | None], *, family: bool = False
) -> list[dict[str, Any]]:
    """One row per gate set: the point gates on one comparison's deltas, or (`family`) the
    BD-rate gates on a family's BD values. A value that could not be measured fails."""
    rows = []
    for name, limit in gates.model_dump().items():
        if limit is None or (name in FAMILY_GATES) != family:
            continue
        key, upper = GATE_RULES[name]
        value = deltas.get(key)
        ok = value is not None and (value <= limit if upper else value >= limit)
        rows.append({"gate": name, "limit": limit, "value": value, "passed": ok})
    return rows


def validate(
    baseline: Codec,
    candidate: Codec,
    images: Images,
    gates: Gates,
    *,
    repeats: int = 3,
    threads: int | None = None,
    reporter: Reporter | None = None,
) -> Validation:
    """compare() of the two (labelled baseline and candidate, whatever their names), then
    the deltas and the gates."""
    both = compare(
        {"baseline": baseline, "candidate": candidate},
        images,
        repeats,
        threads=threads,
        reporter=reporter,
        description="validating",
    )
    base, cand = both["baseline"], both["candidate"]
    base.codec, cand.codec = baseline.name, candidate.name
    deltas = compute_deltas(base, cand)
    return Validation(base, cand, deltas, apply_gates(gates, deltas))
