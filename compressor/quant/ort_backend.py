"""The ort-static backend: ONNX Runtime static PTQ (QDQ) of an export folder, any kind.

Calibrate each graph on what it sees while the float export encodes the calibration images,
quantize (keep_float_top_k: the most sensitive layers left float), optionally search
per-layer sensitivity / accuracy, check a few images, and write a new export folder
(compressor.quant.folder). The export's kind only decides which graph a component names and
what a graph's calibration inputs are (compressor.quant.calib); rnn's recurrent step graphs
go the same way as the CompressAI-shaped ones.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from compressor.quant import calib, ort_static, sensitivity
from compressor.quant.config import QuantParams
from compressor.quant.folder import check_source, write_folder
from compressor.runtime import manifest as mf

log = logging.getLogger(__name__)


def run_ort_static(
    src: Path, out: Path, params: QuantParams, images: list[np.ndarray], threads: int = 1
) -> dict[str, Any]:
    """Calibrate on `images`, quantize, optionally search sensitivity; write `out`."""
    src = mf.locate(Path(src))
    manifest = check_source(src, params)
    crops = [calib.centre_crop(a, params.calibration.crop) for a in images]
    cal = crops[: params.calibration.images]
    n_eval = params.accuracy.images if params.accuracy else 2
    with tempfile.TemporaryDirectory(prefix="quant.") as tmp:
        work = Path(tmp)
        trial = calib.Trial(src, crops[-n_eval:], threads)
        inputs = calib.calibration_inputs(trial.codec, cal, params.graphs(manifest.kind))
        jobs = ort_static.prepare_jobs(src, params, inputs, work, manifest.kind)
        ranking = None
        if params.sensitivity or params.keep_float_top_k:
            ranking = sensitivity.table(jobs, params, trial, work, manifest.model_id)
        top_k = sensitivity.keep_top_k(jobs, params, ranking)
        if params.accuracy is not None:
            files, search = sensitivity.accuracy_aware(
                jobs, params, trial, work, ranking, manifest.model_id
            )
        else:
            files, search = ort_static.quantize_all(jobs, params, work), None
        measured = trial.measure(files)
        report = {
            "backend": "ort-static",
            "source": str(src),
            "source_model_id": manifest.model_id,
            "params": params.model_dump(mode="json"),
            "calibration_images": len(cal),
            "graphs": ort_static.graph_summary(jobs, files),
            "quick_check": {"images": len(trial.images), "reference": trial.reference, **measured},
            "sensitivity": ranking if params.sensitivity else None,
            "keep_float_top_k": top_k,
            "accuracy_aware": search,
        }
        report["model_id"] = write_folder(src, manifest, files, out, report, crops[0])
    return report
