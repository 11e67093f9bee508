"""Fine-tune h_s for the integer hyper-decoder: its exact rounding in the forward pass.

The one training loop (compressor.train.train) runs unchanged; this module only
- freezes everything but h_s (which holds the mean-scale models' entropy parameters too),
- hooks h_s so its forward pass computes what compressor.runtime.integer computes: input on
  the 2^-8 grid, per-channel 12-bit weights, biases in accumulator units, every hidden
  activation rounded to its 16-bit step and clipped; straight-through gradients (round's
  gradient is 1), so the rate cost of the rounding is trained away,
- removes the hooks afterwards: the checkpoint's state_dict keeps its plain names, and the
  export then builds the integer tables from the fine-tuned weights.

The hooks recompute each convolution with quantised weights (one extra h_s run per step:
h_s is ~4 % of the model's MACs). Requantisation multipliers (m / 2^S, 15 bits) are taken as
exact here; their relative error is below 2^-14.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compressor.export import integer_hs as ih
from compressor.export.onnx import example_image, graph_inputs, spec_of
from compressor.models import CodecAdapter
from compressor.runtime import integer as ri
from compressor.train import TrainConfig, TrainResult, rd_loss, train


def ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def calibration(model: CodecAdapter) -> list[torch.Tensor]:
    """The z_hat inputs the export calibrates the integer tables on (synthetic probes)."""
    spec = spec_of(model)
    return [graph_inputs(spec, example_image(h, w))["h_s"] for h, w in ((256, 384), (384, 128))]


@contextlib.contextmanager
def integer_forward(h_s: nn.Module, calib: list[torch.Tensor]) -> Iterator[None]:
    """h_s computes with the integer path's rounding (straight-through) inside this block."""
    steps = ih.parse(h_s)
    scales = ih.activation_scales(steps, ih.calibrate(steps, calib))
    handles = []
    s_in = 2.0**-ri.IN_FRAC
    for i, st in enumerate(steps):
        last = i == len(steps) - 1
        handles.append(st.conv.register_forward_hook(_conv_hook(st, s_in, i == 0)))
        if not last:
            handles.append(st.conv.register_forward_hook(_act_hook(st, scales[i]), prepend=False))
            s_in = scales[i]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _conv_hook(st: ih.ConvStep, s_in: float, first: bool) -> Any:
    conv = st.conv
    transposed = isinstance(conv, nn.ConvTranspose2d)

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> Any:
        x = args[0]
        if first:
            x = ste_round(x * 2**ri.IN_FRAC) / 2**ri.IN_FRAC
        sw = ih.weight_scale(conv.weight, transposed)
        wq = ste_round(conv.weight / ih.per_out(sw.detach(), transposed))
        wq = wq * ih.per_out(sw.detach(), transposed)
        b = conv.bias
        if b is not None:
            step = (s_in * sw).detach()
            b = ste_round(b / step) * step
        if transposed:
            pad, out_pad = tuple(conv.padding), conv.output_padding  # ints: checked by parse
            return F.conv_transpose2d(x, wq, b, conv.stride, pad, out_pad)  # type: ignore[arg-type]
        return F.conv2d(x, wq, b, conv.stride, conv.padding)

    return hook


def _act_hook(st: ih.ConvStep, scale: float) -> Any:
    """Applied after the conv: activation, rounding to the 16-bit step, clip (the ReLU module
    that follows in h_s then changes nothing: the values are already >= 0)."""
    lo, hi = ih.act_limits(st.act)

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> Any:
        if st.act == ri.RELU:
            out = torch.relu(out)
        elif st.act == ri.LEAKY:
            out = F.leaky_relu(out, st.slope)
        return torch.clamp(ste_round(out / scale), lo, hi) * scale

    return hook


def finetune_integer(
    model: CodecAdapter,
    images: list[np.ndarray],
    cfg: TrainConfig,
    out: Path,
    **kwargs: Any,
) -> TrainResult:
    """Train h_s (only) through the integer rounding; saves `out` like train()."""
    h_s: Any = model.net.h_s
    calib = calibration(model.eval())
    # h_s, and the entropy bottleneck's quantiles (the aux loss keeps training them)
    trainable = {id(p) for p in [*h_s.parameters(), *model.aux_parameters()]}
    saved = {n: p.requires_grad for n, p in model.net.named_parameters()}
    for p in model.net.parameters():
        p.requires_grad_(id(p) in trainable)
    try:
        with integer_forward(h_s, calib):
            return train(
                model, images, cfg, out, loss_fn=rd_loss(cfg.lmbda), meta={"integer_hs": True},
                **kwargs,
            )  # fmt: skip
    finally:
        for n, p in model.net.named_parameters():
            p.requires_grad_(saved[n])
