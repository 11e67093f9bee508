"""Graph rewrites applied before export, each exact in float arithmetic.

- `SubpixelConv`: a `ConvTranspose2d` (stride s) as one `Conv2d` with s*s times the output
  channels followed by `PixelShuffle(s)`. Integer runtimes quantize plain convolutions well but
  leave transposed ones in float (see DESIGN.md), so the decoder is rewritten this way.
- `FoldedGDN`: CompressAI's GDN/IGDN (and GDN1) with beta/gamma taken through their
  NonNegativeParametrizer once, stored as plain tensors: the exported graph then has no
  reparametrisation ops (LowerBound is an autograd Function that exporters handle badly).

Both are modules of their own so a test can compare them with the original layer directly.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from compressai.layers import GDN
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _AxisPlan:
    """How one spatial axis of a transposed convolution maps onto a sub-pixel convolution."""

    kernel: int  # K: the dense kernel size along this axis
    pad_left: int  # P: zeros before the input
    pad_right: int  # zeros after the input (so that enough output positions exist)
    crop: int  # output positions to drop at the end (s*Q - L_out, never negative)
    taps: tuple[tuple[int, ...], ...]  # taps[r][j]: transposed-kernel index of dense tap j, or -1


def _axis_plan(k: int, s: int, p: int, op: int) -> _AxisPlan:
    # Output position y = s*q + r takes input i with kernel index kk = y + p - s*i. Writing
    # r + p = s*a_r + b_r, kk = s*t + b_r with t = q + a_r - i, so phase r is a correlation over
    # the input with kernel taps w[s*t + b_r]; dense tap j reads input q + j - P, i.e.
    # t = P + a_r - j. P and K are chosen so every phase's taps fit one K-tap kernel.
    a = [(r + p) // s for r in range(s)]
    b = [(r + p) % s for r in range(s)]
    n_taps = [max(0, -(-(k - b[r]) // s)) for r in range(s)]
    pad_left = max(max(n_taps[r] - 1 - a[r] for r in range(s)), 0)
    kernel = pad_left + max(a) + 1
    taps = tuple(
        tuple(
            s * (pad_left + a[r] - j) + b[r] if 0 <= s * (pad_left + a[r] - j) + b[r] < k else -1
            for j in range(kernel)
        )
        for r in range(s)
    )
    # The transposed conv gives L_out = s*(L-1) - 2p + k + op positions; the dense conv gives
    # Q = L + pad_left + pad_right - K + 1 per phase. Q - L is a constant, so dynamic sizes work.
    extra = k + op - s - 2 * p  # L_out - s*L
    q_minus_l = max(0, -(-extra // s))  # ceil(extra / s), at least 0
    pad_right = q_minus_l + kernel - 1 - pad_left
    if pad_right < 0:
        # Never the case for CompressAI's layers; a negative pad would need an input crop.
        raise ValueError(f"unsupported transposed conv (k={k}, s={s}, p={p}, op={op})")
    crop = s * q_minus_l - extra
    return _AxisPlan(kernel, pad_left, pad_right, crop, taps)


class SubpixelConv(nn.Module):
    """`ConvTranspose2d` (groups 1, dilation 1, zero padding) as Conv2d + PixelShuffle."""

    def __init__(self, deconv: nn.ConvTranspose2d) -> None:
        super().__init__()
        s_h, s_w = (int(v) for v in deconv.stride)
        if s_h != s_w or deconv.groups != 1 or tuple(deconv.dilation) != (1, 1):
            raise ValueError(f"cannot rewrite {deconv}: needs equal strides, groups=1, dilation=1")
        if deconv.padding_mode != "zeros" or isinstance(deconv.padding, str):
            raise ValueError(f"cannot rewrite {deconv}: needs numeric zero padding")
        s = s_h
        (k_h, k_w), (p_h, p_w) = deconv.kernel_size, deconv.padding
        op_h, op_w = deconv.output_padding
        self.scale = s
        self.plan_h = _axis_plan(k_h, s, int(p_h), int(op_h))
        self.plan_w = _axis_plan(k_w, s, int(p_w), int(op_w))
        weight = deconv.weight.detach()  # (C_in, C_out, k_h, k_w)
        c_in, c_out = weight.shape[:2]
        dense = torch.zeros(c_out, s, s, c_in, self.plan_h.kernel, self.plan_w.kernel)
        for ry, taps_y in enumerate(self.plan_h.taps):
            for rx, taps_x in enumerate(self.plan_w.taps):
                for jy, ky in enumerate(taps_y):
                    for jx, kx in enumerate(taps_x):
                        if ky >= 0 and kx >= 0:
                            dense[:, ry, rx, :, jy, jx] = weight[:, :, ky, kx].t()
        # PixelShuffle reads channel o*s*s + ry*s + rx into out[o, s*h + ry, s*w + rx].
        kernel = (self.plan_h.kernel, self.plan_w.kernel)
        self.conv = nn.Conv2d(c_in, c_out * s * s, kernel, bias=deconv.bias is not None)
        self.conv.weight.data.copy_(dense.reshape(c_out * s * s, c_in, *kernel))
        if deconv.bias is not None and self.conv.bias is not None:
            self.conv.bias.data.copy_(deconv.bias.detach().repeat_interleave(s * s))
        self.shuffle = nn.PixelShuffle(s) if s > 1 else nn.Identity()
        self.pads = (self.plan_w.pad_left, self.plan_w.pad_right, self.plan_h.pad_left,
                     self.plan_h.pad_right)  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pads):
            x = F.pad(x, self.pads)
        out = self.shuffle(self.conv(x))
        crop_h, crop_w = self.plan_h.crop, self.plan_w.crop
        if crop_h:
            out = out[:, :, :-crop_h, :]
        if crop_w:
            out = out[:, :, :, :-crop_w]
        return out


class FoldedGDN(nn.Module):
    """GDN / IGDN / GDN1 with its effective beta and gamma as plain buffers."""

    beta: torch.Tensor
    gamma: torch.Tensor

    def __init__(self, gdn: GDN) -> None:
        super().__init__()
        with torch.no_grad():
            beta = gdn.beta_reparam(gdn.beta).detach().clone()
            gamma = gdn.gamma_reparam(gdn.gamma).detach().clone()
        c = beta.numel()
        self.register_buffer("beta", beta)
        self.register_buffer("gamma", gamma.reshape(c, c, 1, 1))
        self.inverse = bool(gdn.inverse)
        # GDN1 (Johnston et al.) normalises by |x| without a square root.
        self.simplified = type(gdn).__name__ == "GDN1"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.simplified:
            norm = F.conv2d(torch.abs(x), self.gamma, self.beta)
            return x * norm if self.inverse else x / norm
        norm = F.conv2d(x * x, self.gamma, self.beta)
        return x * torch.sqrt(norm) if self.inverse else x * torch.rsqrt(norm)


def fold_gdn(module: nn.Module) -> int:
    """Replace every GDN-family layer inside `module` in place; returns how many."""
    return _replace(module, lambda m: FoldedGDN(m) if isinstance(m, GDN) else None)


def deconv_to_subpixel(module: nn.Module) -> int:
    """Replace every ConvTranspose2d inside `module` in place; returns how many."""
    return _replace(
        module, lambda m: SubpixelConv(m) if isinstance(m, nn.ConvTranspose2d) else None
    )


def rewrite(module: nn.Module, *, subpixel: bool = True) -> nn.Module:
    """A rewritten deep copy (GDN always folded; deconvs to sub-pixel convs if asked)."""
    out = copy.deepcopy(module).eval()
    n_gdn = fold_gdn(out)
    n_deconv = deconv_to_subpixel(out) if subpixel else 0
    log.debug("rewrote %d GDN layers and %d transposed convolutions", n_gdn, n_deconv)
    return out


def _replace(module: nn.Module, make) -> int:  # type: ignore[no-untyped-def]
    count = 0
    for name, child in list(module.named_children()):
        new = make(child)
        if new is not None:
            setattr(module, name, new)
            count += 1
        else:
            count += _replace(child, make)
    return count
