"""The export hook of the CompressAI zoo family (compressor.models.compressai_zoo)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.errors import CheckpointError
from compressor.export.onnx import ExportSpec, register_exporter
from compressor.models.base import CodecAdapter

KINDS = {
    "bmshj2018-factorized": "factorized",
    "bmshj2018-hyperprior": "scale-hyperprior",
    "mbt2018-mean": "mean-scale-hyperprior",
}
#: archs whose latent is decoded serially through a context model
SERIAL = ("mbt2018", "cheng2020-anchor")


class AbsInput(nn.Module):
    """ScaleHyperprior's compress() feeds |y| to h_a; the graph includes the abs."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.abs(x))


class ClampOutput(nn.Module):
    """decompress() clamps g_s's output to [0, 1]; the graph includes the clamp."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).clamp(0.0, 1.0)


def _unsupported(arch: str) -> CheckpointError:
    supported = ", ".join(KINDS)
    if arch in SERIAL:
        return CheckpointError(
            f"exporting {arch} is not supported yet: its context model predicts each latent "
            "element from the ones decoded before it, so y decodes one element at a time "
            "(a loop around a masked convolution), which the one-graph-per-component runtime "
            f"does not run; exportable archs: {supported}"
        )
    return CheckpointError(f"exporting {arch} is not supported; exportable archs: {supported}")


def _np(t: torch.Tensor, dtype: type) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(dtype))


def _cdf_tables(model: Any, prefix: str, what: str) -> dict[str, np.ndarray]:
    """The rANS tables every CompressAI EntropyModel keeps once update() built them."""
    if model._offset.numel() == 0:
        raise CheckpointError(f"the {what} tables are not built; call finalize() before export")
    return {
        f"{prefix}_cdf": _np(model._quantized_cdf, np.int32),
        f"{prefix}_cdf_length": _np(model._cdf_length, np.int32),
        f"{prefix}_offset": _np(model._offset, np.int32),
    }


def bottleneck_tables(net: Any) -> dict[str, np.ndarray]:
    eb = net.entropy_bottleneck
    tables = _cdf_tables(eb, "eb", "entropy")
    return {**tables, "eb_medians": _np(eb._get_medians().reshape(-1), np.float32)}


def gaussian_tables(net: Any) -> dict[str, np.ndarray]:
    gc = net.gaussian_conditional
    return {**_cdf_tables(gc, "gc", "Gaussian"), "gc_scale_table": _np(gc.scale_table, np.float32)}


@register_exporter("compressai")
def compressai_spec(model: CodecAdapter) -> ExportSpec:
    kind = KINDS.get(model.arch)
    if kind is None:
        raise _unsupported(model.arch)
    net: Any = model.net  # a CompressAI model: its parts are dynamic attributes
    graphs: dict[str, nn.Module] = {"g_a": net.g_a}
    tables = bottleneck_tables(net)
    if kind != "factorized":
        graphs["h_a"] = AbsInput(net.h_a) if kind == "scale-hyperprior" else net.h_a
        graphs["h_s"] = net.h_s
        tables.update(gaussian_tables(net))
    graphs["g_s"] = ClampOutput(net.g_s)
    return ExportSpec(kind, graphs, tables)
