"""Per-module widths: record them from a (pruned) net and rebuild a net with them.

A structurally pruned model has layers narrower than its (N, M) config says. The checkpoint
config records every width that differs from a fresh build as `widths`
({module path: [in, out]} for convolutions, {path: [channels]} for GDN and the entropy
bottleneck); `apply_widths` swaps those modules for freshly initialised ones of that shape,
so `load_state_dict` (strict) then fills them. No pickled module is ever needed.
"""

from __future__ import annotations

from typing import Any

import torch
from compressai.entropy_models import EntropyBottleneck
from compressai.layers import GDN
from torch import nn

from compressor.errors import CheckpointError

ShapeMap = dict[str, list[int]]
CONV_TYPES = (nn.Conv2d, nn.ConvTranspose2d)
#: the widest layer a checkpoint may ask for: 16x the zoo's widest (cheng2020/mbt2018 q8: 256
#: / 320), and small enough that no single recorded width can make a layer of gigabytes
MAX_CHANNELS = 4096
#: longest width list: [in, out] for convolutions, [channels] for norms; rnn's per-stage lists
MAX_WIDTH_ENTRIES = 8


def _short(value: Any) -> str:
    """A repr that never quotes more than ~80 characters of hostile input."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_widths(widths: Any, where: str = "config widths") -> ShapeMap:
    """`widths` as {module path: [positive ints]}, each at most MAX_CHANNELS; a CheckpointError
    naming the first bad entry otherwise. Runs before any module is built."""
    if not isinstance(widths, dict):
        raise CheckpointError(
            f"{where} must be a map {{module path: [widths]}}, got {type(widths).__name__}"
        )
    out: ShapeMap = {}
    for path, raw in widths.items():
        ok = (
            isinstance(path, str)
            and isinstance(raw, list | tuple)
            and 1 <= len(raw) <= MAX_WIDTH_ENTRIES
            and all(isinstance(v, int) and not isinstance(v, bool) for v in raw)
        )
        if not ok or not all(1 <= v <= MAX_CHANNELS for v in raw):
            raise CheckpointError(
                f"{where} give {_short(path)} = {_short(raw)}; allowed: a list of 1.."
                f"{MAX_WIDTH_ENTRIES} integers, each 1..{MAX_CHANNELS} channels"
            )
        out[path] = [int(v) for v in raw]
    return out


def module_shape(module: nn.Module) -> list[int] | None:
    """[in, out] of a convolution, [channels] of a GDN / entropy bottleneck, else None."""
    if isinstance(module, CONV_TYPES):
        return [int(module.in_channels), int(module.out_channels)]
    if isinstance(module, GDN):
        return [int(module.beta.numel())]
    if isinstance(module, EntropyBottleneck):
        return [int(module.quantiles.size(0))]
    return None


def shape_map(net: nn.Module) -> ShapeMap:
    """Widths of every resizable module of `net`, by module path."""
    out: ShapeMap = {}
    for path, module in net.named_modules():
        shape = module_shape(module)
        if shape is not None:
            out[path] = shape
    return out


def shapes_from_state_dict(net: nn.Module, state_dict: dict[str, torch.Tensor]) -> ShapeMap:
    """Widths the tensors of `state_dict` imply for the resizable modules of `net`."""
    out: ShapeMap = {}
    for path, module in net.named_modules():
        prefix = f"{path}." if path else ""
        if isinstance(module, CONV_TYPES) and f"{prefix}weight" in state_dict:
            w = state_dict[f"{prefix}weight"]
            # Conv2d weight is [out, in/groups, k, k]; ConvTranspose2d is [in, out/groups, k, k]
            a, b = int(w.size(0)), int(w.size(1)) * module.groups
            out[path] = [a, b] if isinstance(module, nn.ConvTranspose2d) else [b, a]
        elif isinstance(module, GDN) and f"{prefix}beta" in state_dict:
            out[path] = [int(state_dict[f"{prefix}beta"].numel())]
        elif isinstance(module, EntropyBottleneck) and f"{prefix}quantiles" in state_dict:
            out[path] = [int(state_dict[f"{prefix}quantiles"].size(0))]
    return out


def _resized(old: nn.Module, shape: list[int]) -> nn.Module:
    if isinstance(old, CONV_TYPES):
        if old.groups != 1:
            raise CheckpointError(f"cannot resize grouped convolution {old}")
        kwargs: dict[str, Any] = {
            "kernel_size": old.kernel_size,
            "stride": old.stride,
            "padding": old.padding,
            "dilation": old.dilation,
            "bias": old.bias is not None,
            "padding_mode": old.padding_mode,
        }
        if isinstance(old, nn.ConvTranspose2d):
            kwargs["output_padding"] = old.output_padding
        new = type(old)(shape[0], shape[1], **kwargs)
        mask = getattr(old, "mask", None)
        if isinstance(mask, torch.Tensor):  # MaskedConv2d: the mask is the same per channel
            new.mask = mask[:1, :1].expand_as(new.weight).clone()
        return new
    if isinstance(old, GDN):
        return type(old)(shape[0], inverse=old.inverse)
    if isinstance(old, EntropyBottleneck):
        return EntropyBottleneck(
            shape[0], tail_mass=old.tail_mass, init_scale=old.init_scale, filters=old.filters
        )
    raise CheckpointError(f"module {type(old).__name__} cannot be resized")


def apply_widths(net: nn.Module, widths: dict[str, Any]) -> None:
    """Replace each listed module of `net` by a fresh one of the recorded width."""
    modules = dict(net.named_modules())
    for path, shape in check_widths(widths).items():
        old = modules.get(path)
        expected = module_shape(old) if old is not None else None
        if old is None or expected is None or len(shape) != len(expected):
            raise CheckpointError(
                f"config widths name {_short(path)} = {shape}, which is not a resizable module "
                "of this model (allowed: convolutions [in, out], GDN and entropy bottleneck "
                "[channels])"
            )
        parent_path, _, name = path.rpartition(".")
        setattr(modules[parent_path] if parent_path else net, name, _resized(old, shape))
