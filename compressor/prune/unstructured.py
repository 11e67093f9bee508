"""Unstructured magnitude pruning: individual weights set to zero, made permanent.

Every tensor keeps its shape, so a dense runtime (PyTorch, ONNX Runtime on CPU) performs
exactly the same multiply-adds and gains no speed. What it buys is a smaller stored model when
the zeros are stored sparsely or compressed; the report measures that size and says so.
"""

from __future__ import annotations

import io
import logging
import math
import zlib
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from compressor.errors import RecipeError
from compressor.models import CodecAdapter
from compressor.models.resize import CONV_TYPES
from compressor.prune.config import PruneParams

log = logging.getLogger(__name__)

NO_SPEEDUP = (
    "unstructured sparsity keeps every tensor dense-shaped: dense runtimes (PyTorch, ONNX "
    "Runtime CPU) do exactly the same multiply-adds, so it gives no speed-up; it only shrinks "
    "the model when stored sparsely or compressed"
)
PRUNABLE = (*CONV_TYPES, nn.Linear)


def prunable_layers(model: CodecAdapter, component: str) -> dict[str, nn.Module]:
    """{path: layer} of the convolutions / linear layers of a component ('all': the net)."""
    paths = {m: p for p, m in model.net.named_modules()}
    if component == "all":
        root: nn.Module = model.net
    else:
        comps = model.components()
        if component not in comps:
            raise RecipeError(
                f"{model.arch} has no component {component!r}; allowed: "
                f"{', '.join(c for c in comps if c != 'entropy')}, all"
            )
        root = comps[component]
    return {paths[m]: m for m in root.modules() if isinstance(m, PRUNABLE)}


def _prune_pool(layers: dict[str, nn.Module], ratio: float, scope: str) -> None:
    if scope == "layer":
        for layer in layers.values():
            torch_prune.l1_unstructured(layer, "weight", amount=ratio)
    else:
        # One threshold over the pool: exactly round(ratio * pool size) weights become zero.
        torch_prune.global_unstructured(
            [(m, "weight") for m in layers.values()],
            pruning_method=torch_prune.L1Unstructured,
            amount=ratio,
        )
    for layer in layers.values():
        torch_prune.remove(layer, "weight")  # permanent: weight_orig * mask -> weight


def layer_sparsity(layers: dict[str, nn.Module]) -> list[dict[str, Any]]:
    rows = []
    for path, layer in layers.items():
        w = layer.get_parameter("weight").detach()
        zeros = int((w == 0).sum())
        rows.append(
            {"layer": path, "weights": w.numel(), "zeros": zeros, "sparsity": zeros / w.numel()}
        )
    return rows


def stored_sizes(model: CodecAdapter) -> dict[str, int]:
    """Bytes of the state dict: dense (torch.save), zlib-compressed, and as a sparse format
    (non-zero fp32 values + a 1-bit presence mask per weight) for the pruned weights."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    dense = buf.getvalue()
    sparse = 0
    for _name, tensor in model.state_dict().items():
        nnz = int((tensor != 0).sum()) if tensor.is_floating_point() else tensor.numel()
        mask_bytes = math.ceil(tensor.numel() / 8)
        sparse += min(
            tensor.numel() * tensor.element_size(), nnz * tensor.element_size() + mask_bytes
        )
    return {
        "dense_bytes": len(dense),
        "zlib_bytes": len(zlib.compress(dense, 9)),
        "sparse_bytes": sparse,
    }


def prune(
    model: CodecAdapter, params: PruneParams, calibration: list[np.ndarray] | None
) -> tuple[CodecAdapter, dict[str, Any]]:
    """Zero the smallest-magnitude weights of `model` in place; returns it and the report."""
    del calibration  # magnitude only
    pools = {name: prunable_layers(model, name) for name, r in params.ratio.items() if r > 0}
    claimed: dict[str, str] = {}
    for name, layers in pools.items():
        if not layers:
            raise RecipeError(
                f"{model.arch} {name!r} has no prunable layers (convolution or linear weights)"
            )
        for path in layers:
            if path in claimed:
                raise RecipeError(
                    f"layer {path} is in both {claimed[path]!r} and {name!r}; "
                    "give 'all' alone or components alone"
                )
            claimed[path] = name
    before = stored_sizes(model)
    for name, layers in pools.items():
        _prune_pool(layers, params.ratio[name], params.scope)
    model.finalize()
    rows = [
        dict(r, component=name) for name, layers in pools.items() for r in layer_sparsity(layers)
    ]
    weights = sum(r["weights"] for r in rows)
    zeros = sum(r["zeros"] for r in rows)
    log.info("unstructured: %d of %d prunable weights are zero", zeros, weights)
    return model, {
        "layers": rows,
        "prunable_weights": weights,
        "zeros": zeros,
        "sparsity": zeros / weights,
        "size_before": before,
        "size_after": stored_sizes(model),
        # the prunable weights alone, fp32: dense vs non-zero values + a 1-bit presence mask
        "weights_dense_bytes": 4 * weights,
        "weights_sparse_bytes": 4 * (weights - zeros)
        + sum(math.ceil(r["weights"] / 8) for r in rows),
        "note": NO_SPEEDUP,
    }
