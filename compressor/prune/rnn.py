"""Structured pruning of the recurrent codec (family `rnn`, compressor.models.rnn).

torch-pruning's one-step trace sees a ConvLSTM's recurrent state as an outside input, so it
cannot couple what belongs together: a ConvLSTM's gate convolution has 4*hidden outputs, and
a hidden channel is the same index in all four gate blocks, the recurrent conv's inputs and
(through the decoder's PixelShuffle, in groups of 4) the next layer's inputs. This pruner cuts
those couplings by hand and is registered in FAMILY_PRUNERS, so structured.prune hands rnn
models to it. The M code bits are the bitstream's format and are never pruned.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import nn

from compressor.errors import RecipeError
from compressor.models.base import CodecAdapter
from compressor.models.rnn import (
    DEC_LAYERS,
    ENC_LAYERS,
    ConvLSTM,
    Decoder,
    Encoder,
    RnnAdapter,
    default_widths,
)
from compressor.prune.config import PruneParams
from compressor.prune.structured import (
    FAMILY_PRUNERS,
    component_ratios,
    kept_channels,
    step_keep,
)


def _chain(module: Encoder | Decoder) -> tuple[list[nn.Module], nn.Conv2d, int]:
    """(producers in order, the last consumer, channels per next-layer input after a layer):
    a decoder cell feeds a PixelShuffle(2), so its hidden channels go in blocks of 4."""
    if isinstance(module, Encoder):
        return [module.conv, *module.cells()], module.binarizer, 1
    return [module.conv1, *module.cells()], module.conv2, 4


def width_of(layer: nn.Module) -> int:
    """Output channels of a plain conv, hidden channels of a ConvLSTM."""
    if isinstance(layer, ConvLSTM):
        return layer.hidden
    assert isinstance(layer, nn.Conv2d)
    return layer.out_channels


def _keep(conv: nn.Conv2d, rows: torch.Tensor | None, cols: torch.Tensor | None) -> None:
    w = conv.weight.data
    w = w if rows is None else w[rows]
    w = w if cols is None else w[:, cols]
    conv.weight = nn.Parameter(w.clone())
    if rows is not None and conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.data[rows].clone())
    conv.out_channels, conv.in_channels = w.shape[0], w.shape[1]


def _unit_scores(
    layer: nn.Module, group: int, criterion: str, gen: torch.Generator
) -> torch.Tensor:
    """Importance of each unit (a hidden channel, or a block of `group` before a shuffle)."""
    p = 2 if criterion == "l2" else 1
    if isinstance(layer, ConvLSTM):  # a hidden channel owns one row in each of the 4 gates
        rows = layer.ih.weight.abs().pow(p).sum((1, 2, 3)) + layer.hh.weight.abs().pow(p).sum(
            (1, 2, 3)
        )
        per_channel = rows.view(4, -1).sum(0)
    else:
        assert isinstance(layer, nn.Conv2d)
        per_channel = layer.weight.abs().pow(p).sum((1, 2, 3))
    units = per_channel.view(-1, group).sum(1)
    return torch.rand(units.shape, generator=gen) if criterion == "random" else units


def _cut(layer: nn.Module, consumer: nn.Module, units: torch.Tensor, group: int) -> None:
    units = units.sort().values
    idx = (units[:, None] * group + torch.arange(group)).reshape(-1)
    if isinstance(layer, ConvLSTM):
        hidden = layer.hidden
        rows = torch.cat([idx + k * hidden for k in range(4)])
        _keep(layer.ih, rows, None)
        _keep(layer.hh, rows, idx)
    else:
        assert isinstance(layer, nn.Conv2d)
        _keep(layer, idx, None)
    target = consumer.ih if isinstance(consumer, ConvLSTM) else consumer
    assert isinstance(target, nn.Conv2d)
    _keep(target, None, units)


@FAMILY_PRUNERS.register("rnn")
def prune_rnn(adapter: CodecAdapter, params: PruneParams) -> dict[str, Any]:
    """Remove the lowest-ranked channels of every layer of each component with a ratio."""
    model = cast(RnnAdapter, adapter)
    if params.importance == "taylor" or any(k in params.ratio for k in ("latent", "hyper_latent")):
        raise RecipeError(
            "rnn structured pruning supports importance l1, l2 or random and the components "
            "encoder, decoder (all); the M code bits are the bitstream's format, not prunable"
        )
    gen = torch.Generator().manual_seed(params.seed)
    layers = []
    for name, ratio in component_ratios(model, params).items():
        module = model.components()[name]
        assert isinstance(module, Encoder | Decoder)
        producers, last, shuffle = _chain(module)
        names = ENC_LAYERS if isinstance(module, Encoder) else DEC_LAYERS
        for i, layer in enumerate(producers):
            group = 1 if isinstance(layer, nn.Conv2d) else shuffle
            consumer = producers[i + 1] if i + 1 < len(producers) else last
            n = width_of(layer)
            step = math.lcm(params.round_to, group)
            keep = kept_channels(n, ratio, step, f"{name} layer {names[i]}")
            for s in range(1, params.iterative_steps + 1):
                width = step_keep(n, keep, s, params.iterative_steps, step) // group
                scores = _unit_scores(layer, group, params.importance, gen)
                if width < scores.numel():
                    _cut(layer, consumer, torch.argsort(scores, descending=True)[:width], group)
            layers.append(
                {
                    "component": name,
                    "layer": f"{name}.{names[i]}",
                    "channels_before": n,
                    "channels_after": keep,
                }
            )
    return {"layers": layers, "widths": record_widths(model)}


def record_widths(model: RnnAdapter) -> dict[str, list[int]]:
    """Store the widths in the config when they differ from N's (so the checkpoint reloads
    into the identical model); returns them, or {} when nothing changed."""
    widths = {
        "encoder": [model.rnet.encoder.conv.out_channels]
        + [c.hidden for c in model.rnet.encoder.cells()],
        "decoder": [model.rnet.decoder.conv1.out_channels]
        + [c.hidden for c in model.rnet.decoder.cells()],
    }
    base = {k: v for k, v in model.config.items() if k != "widths"}
    changed = widths != default_widths(int(base["N"]))
    model.config = {**base, **({"widths": widths} if changed else {})}
    return widths if changed else {}
