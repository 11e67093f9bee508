"""A quality constraint holds only beyond the trial's own measurement noise.

A trial measures quality on a few search images (8 by default), and their mean PSNR drop is
an estimate. Measured: a prune-70% + INT8 trial lost 0.272 dB on average on 8 held-out
photos, but per image anywhere from -0.17 to +0.59 dB (standard error 0.09 dB); the same
recipe lost 0.66 dB on Kodak. With `search.confidence: c` (default 0.9) a per-image quality
gate is judged on the one-sided c upper bound of its mean, mean + t_c(n-1) * sd / sqrt(n)
(Student's t over the n images), so a trial passes only when the constraint holds with that
confidence; 0 judges the mean alone, as validate itself does. The gate row keeps the mean
(`mean`) beside the bound it was judged on (`value`).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

#: gates judged per image: gate -> (per-image metric, drop | ratio)
PER_IMAGE = {
    "max_psnr_drop_db": ("psnr", "drop"),
    "max_ssim_drop": ("ssim", "drop"),
    "max_ms_ssim_drop": ("ms_ssim", "drop"),
    "max_bpp_increase": ("bpp", "ratio"),
}


def bounded_gates(report: dict[str, Any], confidence: float) -> list[dict[str, Any]]:
    """The validate report's gates, the per-image ones judged on their upper bound."""
    gates = [dict(g) for g in report["gates"]]
    if confidence <= 0:
        return gates
    rows = report.get("images") or {}
    pairs = list(zip(rows.get("baseline") or [], rows.get("candidate") or [], strict=False))
    for gate in gates:
        rule = PER_IMAGE.get(gate["gate"])
        if rule is None or gate["value"] is None:
            continue
        spread = _spread(pairs, *rule)
        if spread is None:
            continue
        sd, n = spread
        bound = gate["value"] + _t(confidence, n - 1) * sd / math.sqrt(n)
        gate.update(mean=gate["value"], value=bound, confidence=confidence)
        gate["passed"] = bound <= gate["limit"]
    return gates


def _spread(pairs: list[tuple[dict, dict]], key: str, kind: str) -> tuple[float, int] | None:
    """(standard deviation, count) of the per-image change; None under two images."""
    changes = []
    for base, cand in pairs:
        b, c = base.get(key), cand.get(key)
        if b is None or c is None or (kind == "ratio" and not b):
            continue
        changes.append(b - c if kind == "drop" else c / b - 1)
    if len(changes) < 2:
        return None
    return statistics.stdev(changes), len(changes)


def _t(confidence: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(confidence, dof))
