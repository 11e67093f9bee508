"""ONNX Runtime static post-training quantization (QDQ) of an export folder's graphs.

Only Conv nodes are quantized: they hold nearly all the MACs, and ONNX Runtime fuses
DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv. The decoder must be the
*rewritten* export (ConvTranspose -> Conv + PixelShuffle): ORT has no integer transposed
convolution on CPU, so a quantized ConvTranspose stays float between Q/DQ pairs and runs
slower than plain float (DESIGN.md). Calibration runs once per graph into a range cache;
every later variant (sensitivity, accuracy-aware trials) reuses those ranges.

Dynamic quantization does not apply here: it computes activation scales at run time for
every tensor (an extra pass over each activation) and targets MatMul/Gemm/LSTM-style models
(ORT maps Conv only to the slow ConvInteger + float rescale path); ORT's guidance is static
quantization for CNNs, which is what this backend does.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from compressor.quant import graph as qg
from compressor.quant.calib import ListReader
from compressor.quant.config import QuantParams

log = logging.getLogger(__name__)

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}


@dataclass
class GraphJob:
    """One graph to quantize: its float source, calibration inputs and range cache."""

    name: str  # g_a, g_s, h_a, h_s
    source: Path  # the float graph that is quantized (pre-processed when that worked)
    inputs: list[Any]  # input arrays, or {name: array} feeds of a multi-input graph (rnn)
    cache: Path
    keep: set[str] = field(default_factory=set)  # Conv nodes left in float
    preprocess_note: str = "not requested"

    def model(self) -> onnx.ModelProto:
        return qg.load(self.source)


def preprocess(src: Path, dst: Path) -> tuple[Path, str]:
    """ORT's quant_pre_process (shape inference + graph cleanup); on failure the original."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        # when its symbolic shape inference gives up, ORT dumps sym_shape_infer_temp.onnx and
        # its external data into the working directory: let it, in a throwaway one
        with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
            quant_pre_process(str(src.resolve()), str(dst.resolve()))
        before, after = qg.conv_names(qg.load(src)), qg.conv_names(qg.load(dst))
        if before != after:  # node names are the user's handle for keep_float: keep them
            raise ValueError("it renamed Conv nodes")
        return dst, "done"
    except Exception as e:  # ORT raises many types here; any failure means "use the original"
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        log.warning("pre-processing of %s skipped: %s", src.name, reason)
        shutil.copyfile(src, dst)
        return dst, f"skipped: {reason}"


def quantize_graph(
    job: GraphJob,
    params: QuantParams,
    dst: Path,
    *,
    keep: set[str] | None = None,
    only: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Write the QDQ graph of `job` to `dst`: every Conv but `keep` (or just `only`).

    `overrides` (ORT's TensorQuantOverrides: tensor -> [{scale, zero_point}]) replaces the
    calibrated quantization of those tensors (the inc-static and qat backends use it)."""
    cal = params.calibration
    extra: dict[str, Any] = {"TensorQuantOverrides": overrides} if overrides else {}
    if cal.method == "percentile":
        extra["CalibPercentile"] = cal.percentile
    quantize_static(
        str(job.source),
        str(dst),
        ListReader(job.inputs),  # read only when the range cache does not exist yet
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        per_channel=params.per_channel,
        activation_type=TYPES[params.activation_type],
        weight_type=TYPES[params.weight_type],
        nodes_to_quantize=only,
        nodes_to_exclude=sorted(job.keep if keep is None else keep),
        calibrate_method=METHODS[cal.method],
        extra_options=extra,
        calibration_cache_path=str(job.cache),
    )
    return dst


def prepare_jobs(
    folder: Path, params: QuantParams, inputs: dict[str, list[np.ndarray]], work: Path
) -> dict[str, GraphJob]:
    """Pre-process each graph and resolve keep_float against it (unknown names fail here)."""
    jobs = {}
    for name in params.graphs():
        src = folder / f"{name}.onnx"
        dst = work / f"{name}.float.onnx"
        if params.preprocess:
            dst, note = preprocess(src, dst)
        else:
            shutil.copyfile(src, dst)
            note = "not requested"
        jobs[name] = GraphJob(name, dst, inputs[name], work / f"{name}.ranges.json")
        jobs[name].preprocess_note = note
    keep = qg.resolve_keep_float(params.keep_float, {n: j.model() for n, j in jobs.items()})
    for name, job in jobs.items():
        job.keep = keep[name]
    return jobs


def quantize_all(jobs: dict[str, GraphJob], params: QuantParams, work: Path) -> dict[str, Path]:
    """Each graph quantized with its current keep set; returns graph -> quantized file."""
    out = {}
    for name, job in jobs.items():
        out[name] = quantize_graph(job, params, work / f"{name}.int8.onnx")
        log.info("quantized %s (%d Conv kept in float)", name, len(job.keep))
    return out


def graph_summary(jobs: dict[str, GraphJob], files: dict[str, Path]) -> list[dict[str, Any]]:
    rows = []
    for name, job in jobs.items():
        model = qg.load(files[name])
        floats = qg.float_convs(model)
        rows.append(
            {
                "graph": name,
                "convs": len(qg.conv_names(model)),
                "int8_convs": len(qg.conv_names(model)) - len(floats),
                "float_convs": floats,
                "kept_in_float": sorted(job.keep),
                "preprocess": job.preprocess_note,
                "bytes_float": job.source.stat().st_size,
                "bytes_int8": files[name].stat().st_size,
            }
        )
    return rows
