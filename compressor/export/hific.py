"""The export hook of the `hific` family (compressor.models.hific).

HiFiC's codec is a mean-scale hyperprior, so it reuses the runtime's "mean-scale-hyperprior"
kind as is: g_a (image -> y), h_a (y -> z), h_s (z_hat -> scales then means, 2M channels, the
order CompressAI's chunk(2, 1) reads), g_s (y_hat -> image, clamped like decompress()). The
generator's transposed convolutions become Conv + PixelShuffle in export_model's rewrite
step; ChannelNorm and the reflection padding export as plain ONNX ops. The discriminator is
training-only and not exported.
"""

from __future__ import annotations

from typing import Any

from compressor.export.onnx import ExportSpec, register_exporter
from compressor.export.zoo import ClampOutput, bottleneck_tables, gaussian_tables
from compressor.models.base import CodecAdapter


@register_exporter("hific")
def hific_spec(model: CodecAdapter) -> ExportSpec:
    net: Any = model.net  # HificNet: h_a, h_s and the entropy models are properties
    graphs = {"g_a": net.g_a, "h_a": net.h_a, "h_s": net.h_s, "g_s": ClampOutput(net.g_s)}
    return ExportSpec(
        "mean-scale-hyperprior", graphs, {**bottleneck_tables(net), **gaussian_tables(net)}
    )
