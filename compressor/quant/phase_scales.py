"""One symmetric INT8 scale for the phase convolutions that a Concat joins.

The rewritten decoder (export.rewrites.PhaseConv) computes a transposed convolution as s*s
phase convolutions joined by Concat -> DepthToSpace. ORT's calibration gives each phase output
its own uint8 scale and zero point. OpenVINO runs each phase convolution with an INT8 output;
with per-phase parameters the Concat's dequantization is per channel, which its low-precision
passes cannot carry through DepthToSpace: it dequantizes right after the Concat with a
reference (unvectorized) Convert plus a Subtract, and moves f32 through DepthToSpace. With one
symmetric int8 scale (zero point 0, the union of the phases' calibrated ranges) the
dequantization is a single multiply that it moves past DepthToSpace.

Measured on the bundled hyperprior's INT8 g_s (1 x 192 x 32 x 48, 1 thread, interleaved):
OpenVINO 104.9 against 120.2 ms, ONNX Runtime 203 against 210 (within noise). Quality: all 24
Kodak images 23.4625 against 23.4626 dB, but 24 other photos (wikipedia-photos 17-40, not
calibrated on) 23.826 against 23.911
(-0.085 dB; the last stage's share alone costs 0.14 dB there, the first two's nothing,
sharing them alone gives OpenVINO 113.9 ms): the union of four asymmetric ranges at int8's
symmetric levels is a coarser step. So it is opt-in (`shared_phase_scale: true`), for
deployments on OpenVINO. It also makes OpenVINO load INT8 phase decoders it refuses
otherwise (the tiny test model's). Only ort-static's own calibration path uses it: the torch
backends (inc-static, qat) carry the ranges they observed or learned per phase.
"""

from __future__ import annotations

from typing import Any

import onnx
from onnxruntime.quantization import QuantType

from compressor.quant import overrides as qo
from compressor.quant.ort_static import GraphJob


def shared_overrides(
    job: GraphJob, groups: list[list[onnx.NodeProto]], int8_convs: set[str]
) -> dict[str, list[dict[str, Any]]]:
    """TensorQuantOverrides giving every group of INT8 phase convs (graph.phase_groups of the
    job's model) one symmetric int8 output scale: ORT's own arithmetic over the union of
    their calibrated ranges (the job's range cache, which must exist)."""
    ranges = qo.calibrated_ranges(job)
    out: dict[str, list[dict[str, Any]]] = {}
    for group in groups:
        tensors = [conv.output[0] for conv in group]
        if not all(conv.name in int8_convs for conv in group) or not set(tensors) <= set(ranges):
            continue
        lo = min(ranges[t][0] for t in tensors)
        hi = max(ranges[t][1] for t in tensors)
        scale, zero_point = qo.scale_zp(lo, hi, "int8", symmetric=True)
        for tensor in tensors:
            entry = qo.entry(scale, zero_point, "int8")
            entry[0]["quant_type"] = QuantType.QInt8
            out[tensor] = entry
    return out
