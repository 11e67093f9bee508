"""The torch model behind a float export, for the backends that quantize in torch.

inc-static and qat decide quantization parameters on torch modules, but what ships is the
ONNX export quantized by ONNX Runtime. Both sides must be the same network: the checkpoint
is rewritten exactly as the exporter rewrote it (GDN folded, ConvTranspose -> Conv +
PixelShuffle, the (I)GDN moved onto the phases or not: the export's manifest says), and its
convolutions, in the order they run, are matched one to one with the export's Conv nodes
(weights compared value by value), so a torch-side range lands on the right ONNX tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn
from torch.overrides import TorchFunctionMode

from compressor import checkpoint
from compressor.errors import CheckpointError, RecipeError
from compressor.export import rewrites
from compressor.export.onnx import spec_of
from compressor.models import CodecAdapter
from compressor.runtime import manifest as mf


@dataclass(frozen=True)
class ConvSite:
    """One Conv node of an ONNX graph: its activation tensors and weight."""

    node: str
    input: str
    output: str
    weight: np.ndarray | None  # None when the weight is not a plain initializer


def conv_sites(model: onnx.ModelProto) -> list[ConvSite]:
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        w = inits.get(n.input[1])
        out.append(
            ConvSite(n.name, n.input[0], n.output[0], numpy_helper.to_array(w) if w else None)
        )
    return out


def load_model(path: Path | None, manifest: mf.Manifest, backend: str, src: Path) -> CodecAdapter:
    """The checkpoint the float export `src` was made from."""
    if path is None:
        raise RecipeError(
            f"backend {backend} works on the torch model, but only the export {src} was given: "
            "use a checkpoint as the recipe's model, with an export step before quantize"
        )
    model = checkpoint.load(Path(path))
    if model.arch != manifest.arch:
        raise CheckpointError(f"checkpoint {path} is a {model.arch}, the export a {manifest.arch}")
    return model.eval()


def rewrite_like(module: nn.Module, manifest: mf.Manifest) -> nn.Module:
    """`module` rewritten as the exporter of `manifest` rewrote its graphs: sub-pixel unless
    exported with rewrite: false, the (I)GDN on the phases if exported with gdn_in_phases
    (an export older than that option has no key: not moved)."""
    subpixel = manifest.extra.get("rewritten") is not False
    return rewrites.rewrite(module, subpixel=subpixel, move_gdn=gdn_in_phases(manifest))


def gdn_in_phases(manifest: mf.Manifest) -> bool:
    """Whether the export ran each (I)GDN on its phases (export option gdn_in_phases)."""
    return manifest.extra.get("gdn_in_phases") is True


def rewritten(model: CodecAdapter, manifest: mf.Manifest, graph: str) -> nn.Module:
    """Graph `graph` of `model` exactly as the exporter of `manifest` rewrote it."""
    return rewrite_like(spec_of(model).graphs[graph], manifest)


class _ConvLog(TorchFunctionMode):
    """Records the weight of every conv2d that runs (modules and F.conv2d alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[torch.Tensor] = []

    def __torch_function__(self, func: Callable, types: Any, args: Any = (), kwargs: Any = None):  # type: ignore[no-untyped-def, override]
        kwargs = kwargs or {}
        if func is F.conv2d or func is torch.conv2d:
            self.weights.append(args[1] if len(args) > 1 else kwargs["weight"])
        return func(*args, **kwargs)


def conv_weights(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The weights of the convolutions `module` runs on `x`, in execution order."""
    with torch.no_grad(), _ConvLog() as log:
        module(x)
    return log.weights


def check_same(graph: str, sites: list[ConvSite], weights: list[torch.Tensor]) -> None:
    """The torch convolutions are the ONNX ones, in the same order, with the same weights."""
    if len(sites) != len(weights):
        raise CheckpointError(
            f"{graph}: the checkpoint runs {len(weights)} convolutions, the export has "
            f"{len(sites)} Conv nodes: the checkpoint is not the model that was exported"
        )
    for site, w in zip(sites, weights, strict=True):
        ref = w.detach().numpy()
        if site.weight is not None and (
            site.weight.shape != ref.shape or not np.allclose(site.weight, ref, atol=1e-6)
        ):
            raise CheckpointError(
                f"{graph}: Conv {site.node} has other weights than the checkpoint's: the "
                "checkpoint is not the model that was exported"
            )
