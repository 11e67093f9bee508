"""Per-layer sensitivity and the accuracy-aware keep-in-float search.

Sensitivity of a Conv = the quality lost when that layer *alone* is quantized (every other
layer float), measured through the real codec (PSNR of decoded images, bpp of real
bitstreams). The accuracy-aware search starts from everything quantized and returns the most
sensitive layers to float one at a time until the tolerance holds or the trial budget ends.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from compressor.quant import graph as qg
from compressor.quant.calib import Trial
from compressor.quant.config import Accuracy, QuantParams
from compressor.quant.ort_static import GraphJob, quantize_all, quantize_graph

log = logging.getLogger(__name__)


def table(
    jobs: dict[str, GraphJob], params: QuantParams, trial: Trial, work: Path
) -> list[dict[str, Any]]:
    """One row per Conv of the quantized graphs, most damaging first."""
    rows = []
    for name, job in jobs.items():
        model = job.model()
        gdn = set(qg.gdn_convs(model))
        for node in qg.conv_names(model):
            path = quantize_graph(
                job, params, work / f"{name}.single.onnx", keep=set(), only=[node]
            )
            row = {"graph": name, "node": node, "gdn": node in gdn, **trial.measure({name: path})}
            rows.append(row)
            log.info("sensitivity %s %s: %.3f dB", name, node, row["psnr_drop_db"])
    return sorted(rows, key=lambda r: -score(r, params.accuracy))


def score(row: dict[str, Any], acc: Accuracy | None) -> float:
    """The share of the tolerance a layer uses up alone (PSNR and bpp budgets summed)."""
    if acc is None:
        return float(row["psnr_drop_db"])
    psnr = row["psnr_drop_db"] / max(acc.max_psnr_drop_db, 1e-6)
    if acc.max_bpp_increase is None:
        return float(psnr)
    return float(psnr + row["bpp_increase"] / max(acc.max_bpp_increase, 1e-6))


def meets(result: dict[str, Any], acc: Accuracy) -> bool:
    ok = result["psnr_drop_db"] <= acc.max_psnr_drop_db
    if acc.max_bpp_increase is not None:
        ok = ok and result["bpp_increase"] <= acc.max_bpp_increase
    return bool(ok)


def accuracy_aware(
    jobs: dict[str, GraphJob],
    params: QuantParams,
    trial: Trial,
    work: Path,
    ranking: list[dict[str, Any]] | None,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Quantize, then keep layers in float (most sensitive first) until the tolerance holds."""
    acc = params.accuracy
    assert acc is not None  # the caller only comes here when the recipe asks for it
    files = quantize_all(jobs, params, work)
    result = trial.measure(files)
    trials = [{"trial": 1, "kept": None, **result, "met": meets(result, acc)}]
    kept: list[dict[str, Any]] = []
    if not trials[-1]["met"]:
        ranking = ranking if ranking is not None else table(jobs, params, trial, work)
        candidates = [r for r in ranking if r["node"] not in jobs[r["graph"]].keep]
        for row in candidates:
            if len(trials) >= acc.max_trials:
                break
            job = jobs[row["graph"]]
            job.keep.add(row["node"])
            files[job.name] = quantize_graph(job, params, work / f"{job.name}.int8.onnx")
            result = trial.measure(files)
            ok = meets(result, acc)
            trials.append({"trial": len(trials) + 1, "kept": row["node"], **result, "met": ok})
            kept.append(_why(row, result, acc))
            if ok:
                break
    met = trials[-1]["met"]
    if not met:
        log.warning(
            "accuracy-aware quantization: tolerance not met after %d trials (PSNR drop %.3f dB,"
            " bpp %+.2f%%); the validate gates will judge it",
            len(trials),
            trials[-1]["psnr_drop_db"],
            100 * trials[-1]["bpp_increase"],
        )
    report = {"tolerance": acc.model_dump(), "met": met, "trials": trials, "kept": kept}
    return files, report


def _why(row: dict[str, Any], after: dict[str, Any], acc: Accuracy) -> dict[str, Any]:
    return {
        "graph": row["graph"],
        "node": row["node"],
        "alone_psnr_drop_db": row["psnr_drop_db"],
        "alone_bpp_increase": row["bpp_increase"],
        "reason": (
            f"most sensitive layer left: alone it costs {row['psnr_drop_db']:.3f} dB and "
            f"{100 * row['bpp_increase']:+.2f}% bpp (score {score(row, acc):.2f} of the "
            f"tolerance); kept in float, the codec loses {after['psnr_drop_db']:.3f} dB, "
            f"{100 * after['bpp_increase']:+.2f}% bpp"
        ),
    }
