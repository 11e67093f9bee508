"""Per-layer sensitivity and the accuracy-aware keep-in-float search.

Sensitivity of a Conv = the quality lost when that layer *alone* is quantized (every other
layer float), measured through the real codec (PSNR of decoded images, bpp of real
bitstreams). The accuracy-aware search starts from everything quantized and returns the most
sensitive layers to float one at a time until the tolerance holds or the trial budget ends;
`keep_float_top_k` keeps the k most sensitive ones float outright. A graph's rows are read
from the open ranking cache when it has them (compressor.quant.rank_cache).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from compressor.quant import graph as qg
from compressor.quant import rank_cache
from compressor.quant.calib import Trial
from compressor.quant.config import Accuracy, QuantParams
from compressor.quant.ort_static import GraphJob, quantize_all, quantize_graph

log = logging.getLogger(__name__)


def table(
    jobs: dict[str, GraphJob],
    params: QuantParams,
    trial: Trial,
    work: Path,
    model_id: str | None = None,
) -> list[dict[str, Any]]:
    """One row per Conv of the quantized graphs, most damaging first. With the float
    export's `model_id`, each graph's rows come from the open ranking cache when it holds
    them (compressor.quant.rank_cache)."""
    rows = []
    for name, job in jobs.items():
        key = rank_cache.key(model_id, name, job.inputs, trial.images, params) if model_id else ""
        cached = rank_cache.load(key) if key else None
        if cached is None:
            cached = graph_rows(job, params, trial, work)
            if key:
                rank_cache.store(key, cached)
        else:
            log.info("sensitivity of %s: %d rows from the ranking cache", name, len(cached))
        rows += cached
    return sorted(rows, key=lambda r: -score(r, params.accuracy))


def graph_rows(
    job: GraphJob, params: QuantParams, trial: Trial, work: Path
) -> list[dict[str, Any]]:
    """Each Conv of one graph quantized alone (every other layer float), measured."""
    rows = []
    model = job.model()
    gdn = set(qg.gdn_convs(model))
    for node in qg.conv_names(model):
        path = quantize_graph(
            job, params, work / f"{job.name}.single.onnx", keep=set(), only=[node]
        )
        row = {
            "graph": job.name,
            "node": node,
            "gdn": node in gdn,
            **trial.measure({job.name: path}),
        }
        rows.append(row)
        log.info("sensitivity %s %s: %.3f dB", job.name, node, row["psnr_drop_db"])
    return rows


def keep_top_k(
    jobs: dict[str, GraphJob], params: QuantParams, ranking: list[dict[str, Any]] | None
) -> dict[str, Any] | None:
    """keep_float_top_k: the k highest-ranked Convs that keep_float does not already keep
    go float too (so k always adds k layers, when the graphs have that many); the report's
    entry, or None when k is 0."""
    k = params.keep_float_top_k
    if not k:
        return None
    assert ranking is not None  # the backends rank whenever k > 0
    rest = [r for r in ranking if r["node"] not in jobs[r["graph"]].keep]
    chosen = rest[:k]
    for row in chosen:
        jobs[row["graph"]].keep.add(row["node"])
    if len(chosen) < k:
        log.warning("keep_float_top_k %d: only %d Convs were left to keep in float", k, len(rest))
    keys = ("graph", "node", "psnr_drop_db", "bpp_increase")
    return {"k": k, "kept": [{key: r[key] for key in keys} for r in chosen]}


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
    model_id: str | None = None,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Quantize, then keep layers in float (most sensitive first) until the tolerance holds."""
    acc = params.accuracy
    assert acc is not None  # the caller only comes here when the recipe asks for it
    files = quantize_all(jobs, params, work)
    result = trial.measure(files)
    trials = [{"trial": 1, "kept": None, **result, "met": meets(result, acc)}]
    kept: list[dict[str, Any]] = []
    if not trials[-1]["met"]:
        ranking = ranking if ranking is not None else table(jobs, params, trial, work, model_id)
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
