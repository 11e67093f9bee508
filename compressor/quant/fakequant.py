"""Fake quantization exactly where ONNX Runtime's QDQ format quantizes a Conv.

ORT's static QDQ quantization of a Conv (ort_static.py, op type Conv only) rounds three
things: the Conv's input activation (per tensor, uint8/int8 affine), its weight (per output
channel, symmetric int8: scale = max|w| / 127, zero point 0), and its output activation (per
tensor). `QConv` / `QGDN` round the same three with the same arithmetic
(`torch.fake_quantize_*`, whose gradient is the straight-through estimator, zero outside the
range), so the network trained is the network ORT will run. The (I)GDN normalisation is a
1x1 Conv in the exported graph (x*x -> Conv(gamma, beta)), so it is fake-quantized too; its
folded gamma / beta stay fixed (the float model keeps them non-negative through a
reparametrisation the folded form no longer has), the other convolutions' weights and biases
train. Activation ranges start from ORT's calibration and follow an exponential moving
average of each training batch's min / max (`momentum`); biases are left float (ORT's int32
bias at scale s_x * s_w differs by far less than one output step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compressor.export.rewrites import FoldedGDN, PaddedConv2d, _replace
from compressor.quant.overrides import qrange

TINY = torch.finfo(torch.float32).tiny


@dataclass(frozen=True)
class Scheme:
    """Types and granularity, as QuantParams names them (ORT's conventions)."""

    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    momentum: float = 0.01


def affine(lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int, symmetric: bool):  # type: ignore[no-untyped-def]
    """ORT's compute_scale_zp on tensors: the range widened to hold 0, float32 scale."""
    lo, hi = torch.clamp(lo.double(), max=0.0), torch.clamp(hi.double(), min=0.0)
    if symmetric:
        hi = torch.maximum(-lo, hi)
        lo = -hi
    scale = ((hi - lo) / (qmax - qmin)).float()
    degenerate = scale < TINY
    scale = torch.where(degenerate, torch.ones_like(scale), scale)
    if symmetric:
        zp = torch.full_like(scale, round((qmin + qmax) / 2.0), dtype=torch.int32)
    else:
        zp = torch.round(qmin - lo / scale.double()).clamp(qmin, qmax).to(torch.int32)
    return scale, torch.where(degenerate, torch.zeros_like(zp), zp)


def fake_weight(w: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """The weight as ORT quantizes it (per output channel unless per_channel is off)."""
    symmetric = scheme.weight_type == "int8"
    qmin, qmax = qrange(scheme.weight_type, symmetric=symmetric)
    with torch.no_grad():
        flat = w.reshape(w.shape[0], -1) if scheme.per_channel else w.reshape(1, -1)
        scale, zp = affine(flat.amin(1), flat.amax(1), qmin, qmax, symmetric)
    if scheme.per_channel:
        return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, qmin, qmax)
    return torch.fake_quantize_per_tensor_affine(w, scale, zp, qmin, qmax)


class ActQuant(nn.Module):
    """Per-tensor fake quantization of one activation, with an EMA range."""

    rmin: torch.Tensor
    rmax: torch.Tensor

    def __init__(self, scheme: Scheme) -> None:
        super().__init__()
        self.qmin, self.qmax = qrange(scheme.activation_type)
        self.momentum = scheme.momentum
        self.enabled = True
        self.register_buffer("rmin", torch.zeros(()))
        self.register_buffer("rmax", torch.zeros(()))

    def set_range(self, lo: float, hi: float) -> None:
        self.rmin.fill_(lo)
        self.rmax.fill_(hi)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale, zp = affine(self.rmin, self.rmax, self.qmin, self.qmax, symmetric=False)
        return scale.reshape(1), zp.reshape(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.training and self.momentum > 0:
            with torch.no_grad():
                self.rmin.lerp_(x.detach().min().to(self.rmin), self.momentum)
                self.rmax.lerp_(x.detach().max().to(self.rmax), self.momentum)
        scale, zp = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, self.qmin, self.qmax)


class _Quantized(nn.Module):
    """Input, weight and output fake quantization around one convolution."""

    def __init__(self, scheme: Scheme) -> None:
        super().__init__()
        self.scheme = scheme
        self.inp, self.out = ActQuant(scheme), ActQuant(scheme)
        self.quantize_weight = True

    def keep_float(self) -> None:
        self.inp.enabled = self.out.enabled = self.quantize_weight = False

    @property
    def weight(self) -> torch.Tensor:
        raise NotImplementedError

    def weight_of(self, w: torch.Tensor) -> torch.Tensor:
        return fake_weight(w, self.scheme) if self.quantize_weight else w


class QConv(_Quantized):
    def __init__(self, conv: nn.Conv2d, scheme: Scheme) -> None:
        super().__init__(scheme)
        self.conv = conv

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """`bias` from the caller: a PhaseConv's phases share one (see rewrites.PhaseConv)."""
        w = self.weight_of(self.conv.weight)
        x = self.inp(x)
        if isinstance(self.conv, PaddedConv2d):  # asymmetric zero padding, as ORT's Conv pads
            x = F.pad(x, self.conv.pads)
        return self.out(self.conv._conv_forward(x, w, self.conv.bias if bias is None else bias))


class QGDN(_Quantized):
    """FoldedGDN whose 1x1 normalisation conv is fake-quantized."""

    def __init__(self, gdn: FoldedGDN, scheme: Scheme) -> None:
        super().__init__(scheme)
        self.gdn = gdn

    @property
    def weight(self) -> torch.Tensor:
        return self.gdn.gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gdn
        energy = torch.abs(x) if g.simplified else x * x
        norm = self.out(F.conv2d(self.inp(energy), self.weight_of(g.gamma), g.beta))
        if g.simplified:
            return x * norm if g.inverse else x / norm
        return x * torch.sqrt(norm) if g.inverse else x * torch.rsqrt(norm)


def wrap(module: nn.Module, scheme: Scheme, example: torch.Tensor) -> list[_Quantized]:
    """Fake-quantize every convolution of a rewritten module in place; returns the wrappers
    in execution order (the order of the exported graph's Conv nodes)."""

    def make(m: nn.Module) -> nn.Module | None:
        if isinstance(m, nn.Conv2d):
            return QConv(m, scheme)
        return QGDN(m, scheme) if isinstance(m, FoldedGDN) else None

    _replace(module, make)
    order: list[_Quantized] = []
    hooks = [
        m.register_forward_pre_hook(_recorder(order))
        for m in module.modules()
        if isinstance(m, _Quantized)
    ]
    try:
        with torch.no_grad():
            module.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    return order


def _recorder(order: list[_Quantized]) -> Callable[..., None]:
    def hook(m: nn.Module, args: Any) -> None:
        assert isinstance(m, _Quantized)
        order.append(m)

    return hook


def strip(module: nn.Module) -> int:
    """Remove the wrappers in place (the plain rewritten module again); returns how many."""

    def make(m: nn.Module) -> nn.Module | None:
        if isinstance(m, QConv):
            return m.conv
        return m.gdn if isinstance(m, QGDN) else None

    return _replace(module, make)
