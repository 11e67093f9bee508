"""Parameters, MACs and stored size per component of a model."""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from compressor.models import CodecAdapter


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def size_bytes(module: nn.Module) -> int:
    """Bytes of the module's state dict as torch.save writes it."""
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getbuffer().nbytes


def component_inputs(model: CodecAdapter, x: torch.Tensor) -> dict[str, tuple[Any, ...]]:
    """The input each component receives during one forward pass (hooks record them)."""
    seen: dict[str, tuple[Any, ...]] = {}
    handles = [
        mod.register_forward_pre_hook(lambda _m, args, name=name: seen.setdefault(name, args))
        for name, mod in model.components().items()
    ]
    try:
        with torch.no_grad():
            model.forward_rd(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def count_macs(module: nn.Module, args: tuple[Any, ...]) -> int:
    """Multiply-accumulates of one call (torch's FLOP counter: FLOPs / 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*args)
    return counter.get_total_flops() // 2


def component_table(model: CodecAdapter, h: int = 512, w: int = 768) -> list[dict[str, Any]]:
    """Per component: params, MACs at an h x w input, stored size."""
    model.eval()
    inputs = component_inputs(model, torch.rand(1, 3, h, w))
    rows = []
    for name, mod in model.components().items():
        macs = count_macs(mod, inputs[name]) if name in inputs else None
        rows.append(
            {
                "component": name,
                "params": count_params(mod),
                "macs": macs,
                "size_bytes": size_bytes(mod),
            }
        )
    return rows
