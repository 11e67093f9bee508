"""What a pruning run changed: params, MACs and latency per component (before / after, side by
side) and, given images, the quality and rate deltas against the unpruned baseline."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch

from compressor.metrics.complexity import component_inputs, count_macs, count_params
from compressor.metrics.latency import interleaved
from compressor.models import CodecAdapter

log = logging.getLogger(__name__)


def _macs(model: CodecAdapter, size: tuple[int, int]) -> dict[str, int | None]:
    model.eval()
    inputs = component_inputs(model, torch.rand(1, 3, *size, generator=torch.Generator()))
    return {
        name: count_macs(mod, inputs[name]) if name in inputs else None
        for name, mod in model.components().items()
    }


def _call(module: torch.nn.Module, args: tuple[Any, ...]) -> object:
    return module(*args)


def _latency(
    baseline: CodecAdapter, pruned: CodecAdapter, size: tuple[int, int], repeats: int
) -> dict[str, tuple[float, float]]:
    """Median ms per component, the two models timed alternately (A B A B) in one run."""
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    ins_b, ins_p = component_inputs(baseline, x), component_inputs(pruned, x)
    comps_b, comps_p = baseline.components(), pruned.components()
    out: dict[str, tuple[float, float]] = {}
    with torch.no_grad():
        for name in comps_b:
            if name not in ins_b or name not in ins_p:
                continue
            mod_b, mod_p, a_b, a_p = comps_b[name], comps_p[name], ins_b[name], ins_p[name]
            calls: dict[str, Callable[[], object]] = {
                "before": partial(_call, mod_b, a_b),
                "after": partial(_call, mod_p, a_p),
            }
            lat = interleaved(calls, repeats=repeats)
            out[name] = (lat["before"].median_ms, lat["after"].median_ms)
    return out


def component_rows(
    baseline: CodecAdapter, pruned: CodecAdapter, size: tuple[int, int], latency_repeats: int
) -> list[dict[str, Any]]:
    """Per component: params, MACs (at size) and latency before/after, with ratios."""
    macs_b, macs_p = _macs(baseline, size), _macs(pruned, size)
    lat = _latency(baseline, pruned, size, latency_repeats) if latency_repeats else {}
    comps_p = pruned.components()
    rows = []
    for name, mod in baseline.components().items():
        p_b, p_a = count_params(mod), count_params(comps_p[name])
        row: dict[str, Any] = {
            "component": name,
            "params_before": p_b,
            "params_after": p_a,
            "params_ratio": p_a / p_b if p_b else None,
            "macs_before": macs_b.get(name),
            "macs_after": macs_p.get(name),
        }
        mb, ma = row["macs_before"], row["macs_after"]
        row["macs_ratio"] = ma / mb if mb and ma is not None else None
        if name in lat:
            before, after = lat[name]
            row.update(
                latency_before_ms=before,
                latency_after_ms=after,
                latency_ratio=after / before if before else None,
            )
        rows.append(row)
    return rows


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def total(key: str) -> float:
        return float(sum(r.get(key) or 0 for r in rows))

    out: dict[str, Any] = {
        k: total(k) for k in ("params_before", "params_after", "macs_before", "macs_after")
    }
    out["params_ratio"] = out["params_after"] / out["params_before"]
    out["macs_ratio"] = out["macs_after"] / out["macs_before"] if out["macs_before"] else None
    return out


def quality_deltas(
    baseline: CodecAdapter, pruned: CodecAdapter, images: list[tuple[str, np.ndarray]]
) -> dict[str, Any]:
    """PSNR / SSIM / MS-SSIM / bpp (real bitstreams) of both models and pruned - baseline."""
    from compressor.codec import TorchCodec
    from compressor.evaluate import evaluate

    keys = ("psnr", "ssim", "ms_ssim", "bpp", "estimated_bpp")
    before = evaluate(TorchCodec(baseline, "baseline"), images).summary()
    after = evaluate(TorchCodec(pruned, "pruned"), images).summary()
    delta = {
        k: (after[k] - before[k])
        if before.get(k) is not None and after.get(k) is not None
        else None
        for k in keys
    }
    if before.get("bpp"):
        delta["bpp_relative"] = after["bpp"] / before["bpp"] - 1
    return {
        "baseline": {k: before.get(k) for k in keys},
        "pruned": {k: after.get(k) for k in keys},
        "delta": delta,
    }
