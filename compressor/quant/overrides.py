"""Carrying quantization parameters decided in torch into ONNX Runtime's QDQ graph.

ORT's `quantize_static` takes `TensorQuantOverrides` (tensor name -> scale and zero point);
a tensor with an override keeps exactly those parameters, every other one is calibrated as
usual. The scale / zero-point arithmetic is ORT's own (`compute_scale_zp`), so a range
learned in torch (qat) or observed by Neural Compressor (inc-static) becomes the same Q/DQ
pair ORT would write for that range. The torch-side backends share the rest of the
ort-static pipeline through `finish`: the same graph summary, quick check and export folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization.calibrate import load_tensors_data
from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

from compressor.quant import calib, ort_static
from compressor.quant.config import QuantParams
from compressor.quant.folder import write_folder
from compressor.quant.ort_static import GraphJob
from compressor.runtime import manifest as mf

log = logging.getLogger(__name__)

#: ONNX element type of each activation / weight type name
ONNX_TYPES = {"uint8": onnx.TensorProto.UINT8, "int8": onnx.TensorProto.INT8}
NUMPY_TYPES = {"uint8": np.uint8, "int8": np.int8}


def qrange(qtype: str, symmetric: bool = False) -> tuple[int, int]:
    """ORT's integer range of a type (symmetric int8 is -127..127, as ORT's weights)."""
    qmin, qmax = get_qmin_qmax_for_qType(ONNX_TYPES[qtype], symmetric=symmetric)
    return int(qmin), int(qmax)


def scale_zp(rmin: float, rmax: float, qtype: str, symmetric: bool = False) -> tuple[float, int]:
    """Scale and zero point ORT derives from a real range [rmin, rmax]."""
    qmin, qmax = get_qmin_qmax_for_qType(ONNX_TYPES[qtype], symmetric=symmetric)
    lo, hi = np.array(rmin, dtype=np.float32), np.array(rmax, dtype=np.float32)
    zp, scale = compute_scale_zp(lo, hi, qmin, qmax, symmetric=symmetric)
    return float(scale), int(zp)


def entry(scale: float, zero_point: int, qtype: str) -> list[dict[str, Any]]:
    """One per-tensor TensorQuantOverrides entry."""
    return [
        {
            "scale": np.array(scale, dtype=np.float32),
            "zero_point": np.array(zero_point, dtype=NUMPY_TYPES[qtype]),
        }
    ]


def calibrated_ranges(job: GraphJob) -> dict[str, tuple[float, float]]:
    """tensor -> (rmin, rmax) from ORT's calibration cache of `job` (after one quantize)."""
    data = load_tensors_data(job.cache)
    return {
        name: (float(np.min(t.range_value[0])), float(np.max(t.range_value[1])))
        for name, t in data.data.items()
        if hasattr(t, "lowest") and hasattr(t, "highest")
    }


def quantize_with(
    jobs: dict[str, GraphJob],
    params: QuantParams,
    work: Path,
    overrides: dict[str, dict[str, Any]],
) -> dict[str, Path]:
    """Each graph quantized by ORT with its overrides; returns graph -> quantized file."""
    files = {}
    for name, job in jobs.items():
        files[name] = ort_static.quantize_graph(
            job, params, work / f"{name}.int8.onnx", overrides=overrides.get(name) or None
        )
        log.info("quantized %s with %d tensor overrides", name, len(overrides.get(name, {})))
    return files


def compare(trial: calib.Trial, folder: Path) -> dict[str, Any]:
    """A whole export folder measured like trial.measure (PSNR drop, relative bpp)."""
    got = calib.Trial(folder, trial.images, threads=1).reference
    ref = trial.reference
    return {
        "psnr": got["psnr"],
        "bpp": got["bpp"],
        "psnr_drop_db": ref["psnr"] - got["psnr"],
        "bpp_increase": (got["bpp"] - ref["bpp"]) / ref["bpp"] if ref["bpp"] else 0.0,
    }


def finish(
    backend: str,
    src: Path,
    base: Path,
    jobs: dict[str, GraphJob],
    files: dict[str, Path],
    params: QuantParams,
    trial: calib.Trial,
    out: Path,
    extra: dict[str, Any],
    n_cal: int,
) -> dict[str, Any]:
    """Write the INT8 folder (graphs of `files` over the float export `base`) and its report.

    `src` is the float export the run started from (the quick check's reference); `base` is
    the one the quantized graphs were made from (the same, or QAT's fine-tuned export).
    """
    manifest = mf.read(src)
    report = {
        "backend": backend,
        "source": str(src),
        "source_model_id": manifest.model_id,
        "params": params.model_dump(mode="json"),
        "calibration_images": n_cal,
        "graphs": ort_static.graph_summary(jobs, files),
        "quick_check": {},
        "sensitivity": None,
        "keep_float_top_k": None,
        "accuracy_aware": None,
        **extra,
    }
    report["model_id"] = write_folder(base, mf.read(base), files, out, report, trial.images[0])
    # the source's id, not the fine-tuned base's: the INT8 folder stands in for `src`
    report["quick_check"] = {
        "images": len(trial.images),
        "reference": trial.reference,
        **compare(trial, out),
    }
    return report
