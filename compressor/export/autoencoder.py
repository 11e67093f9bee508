"""The export hook of the autoencoder family (compressor.models.autoencoder).

It reuses the runtime's "factorized" kind: graphs g_a and g_s plus the entropy bottleneck's
tables, so `cli.py encode/decode` run it without torch. The graphs are eval-mode copies with
every BatchNorm folded into the convolution before it (running statistics become the conv's
weight and bias) and dropout removed, so the ONNX graphs hold convolutions, ReLUs and adds
only, which ONNX Runtime's INT8 quantizer turns into integer convolutions.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from compressor.export.onnx import ExportSpec, register_exporter
from compressor.export.zoo import ClampOutput, bottleneck_tables
from compressor.models.base import CodecAdapter
from compressor.models.resize import CONV_TYPES


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """An eval-mode deep copy: each conv + BatchNorm pair (adjacent in a Sequential) fused
    into one conv, each dropout an identity. Exact up to float rounding."""
    out = copy.deepcopy(module).eval()
    for seq in list(out.modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        for (conv_name, conv), (bn_name, bn) in itertools.pairwise(list(seq.named_children())):
            if isinstance(conv, CONV_TYPES) and isinstance(bn, nn.BatchNorm2d):
                transposed = isinstance(conv, nn.ConvTranspose2d)
                setattr(seq, conv_name, fuse_conv_bn_eval(conv, bn, transpose=transposed))
                setattr(seq, bn_name, nn.Identity())
        for name, child in list(seq.named_children()):
            if isinstance(child, nn.Dropout | nn.Dropout2d):
                setattr(seq, name, nn.Identity())
    return out


@register_exporter("autoencoder")
def autoencoder_spec(model: CodecAdapter) -> ExportSpec:
    net: Any = model.net  # AutoencoderNet: g_a, g_s, entropy_bottleneck
    graphs: dict[str, nn.Module] = {
        "g_a": fold_batchnorm(net.g_a),
        "g_s": ClampOutput(fold_batchnorm(net.g_s)),
    }
    return ExportSpec("factorized", graphs, bottleneck_tables(net))
