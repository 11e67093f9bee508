"""The export hook of the learnable-table JPEG family (compressor.models.jpeg).

JPEG fits the `factorized` kind as it is, so no new manifest kind: g_a is the analysis
transform (RGB -> YCbCr -> 4:2:0 -> 8x8 DCT -> divided by the tables; B x 384 x H/16 x W/16,
stride 16 = pad_multiple), g_s the synthesis (x the tables -> IDCT -> upsampling -> RGB,
clamped as decompress() clamps), and the family's 384-channel factorized density the
entropy tables. The tables are built with every median at 0, so the runtime quantizes
exactly as JPEG does (round(y), where CompressAI would round around the median) and its
decoded image is the JPEG decoder's (up to libjpeg's integer IDCT). What the runtime
writes is an rANS stream of those coefficients, not a JPEG file: Pillow (compress()) stays
the family's deploy codec; the export is for ONNX Runtime / INT8 of the transforms.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import cast

import torch
from compressai.entropy_models import EntropyBottleneck
from torch import nn

from compressor.export.onnx import ExportSpec, register_exporter
from compressor.export.zoo import ClampOutput, bottleneck_tables
from compressor.models.base import CodecAdapter
from compressor.models.jpeg import JpegNet


def zero_median_bottleneck(eb: EntropyBottleneck) -> EntropyBottleneck:
    """A copy of the entropy bottleneck whose medians are 0 (its learned density and value
    range kept), with the CDF tables rebuilt."""
    eb = copy.deepcopy(eb)
    with torch.no_grad():
        q = eb.quantiles  # C x 1 x 3: lower, median, upper
        q[:, :, 0].clamp_(max=-1.0)
        q[:, :, 2].clamp_(min=1.0)
        q[:, :, 1] = 0.0
    eb.update(force=True)
    return eb


@register_exporter("jpeg")
def jpeg_spec(model: CodecAdapter) -> ExportSpec:
    net = cast(JpegNet, model.net)
    eb = zero_median_bottleneck(net.entropy_bottleneck)
    graphs: dict[str, nn.Module] = {"g_a": net.encoder, "g_s": ClampOutput(net.decoder)}
    return ExportSpec(
        "factorized", graphs, bottleneck_tables(SimpleNamespace(entropy_bottleneck=eb))
    )
