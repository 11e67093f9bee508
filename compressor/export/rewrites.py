"""Graph rewrites applied before export, each exact in float arithmetic.

- `SubpixelConv`: a `ConvTranspose2d` (stride s) as one `Conv2d` with s*s times the output
  channels followed by `PixelShuffle(s)`. Integer runtimes quantize plain convolutions well but
  leave transposed ones in float (see DESIGN.md), so the decoder is rewritten this way.
  Phases with fewer real taps multiply zeros (36 MACs per pair for a 5x5 stride-2 deconv).
- `PhaseConv`: the same deconv as one `Conv2d` per output phase holding only its real taps
  (25 MACs per pair), outputs interleaved by Concat + DepthToSpace. Used for deconvs with at
  least `PHASE_MIN_CHANNELS` outputs; `SubpixelConv` for narrower ones (faster there).
- `FoldedGDN`: CompressAI's GDN/IGDN (and GDN1) with beta/gamma taken through their
  NonNegativeParametrizer once, stored as plain tensors: the exported graph then has no
  reparametrisation ops (LowerBound is an autograd Function that exporters handle badly).
- `gdn_into_phases`: a FoldedGDN right after a `PhaseConv` (CompressAI's g_s: deconv, IGDN,
  ...) moves into it and runs on each phase before the Concat. (I)GDN is pointwise in space and
  every pixel after DepthToSpace takes its channels from one phase, so this is exact, and the
  runtimes no longer normalise (nor re-layout) the interleaved tensor between the phases'
  DepthToSpace and the next layer's convs. Off unless asked (`rewrite(move_gdn=True)`, the
  export option `gdn_in_phases`, recorded in the manifest): measured on the bundled
  hyperprior, INT8 ort-static g_s at 1x192x32x48, 1 thread, in one run, ONNX Runtime takes
  0.78-0.82x the time but OpenVINO 1.07x (its Concat and DepthToSpace then move f32 instead
  of int8, plus a FakeQuantize), so it suits a codec deployed on ONNX Runtime only.

Each is a module of its own so a test can compare them with the original layer directly.
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

#: deconvs with at least this many output channels become `PhaseConv` (no MAC on zeros), the
#: rest `SubpixelConv`: with few outputs each phase conv is a thin GEMM dominated by its own
#: im2col of the whole input; measured (bench/decoder_macs.py, ORT INT8, 1 thread) on the
#: hyperprior decoder, phases win at 128 outputs and lose 2.2x at 3 (the image layer); 16 is
#: a cut between the two measured points, not itself measured
PHASE_MIN_CHANNELS = 16


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


def _check_deconv(deconv: nn.ConvTranspose2d) -> int:
    """The stride of a transposed convolution the rewrites can express; raises otherwise."""
    s_h, s_w = (int(v) for v in deconv.stride)
    if s_h != s_w or deconv.groups != 1 or tuple(deconv.dilation) != (1, 1):
        raise ValueError(f"cannot rewrite {deconv}: needs equal strides, groups=1, dilation=1")
    if deconv.padding_mode != "zeros" or isinstance(deconv.padding, str):
        raise ValueError(f"cannot rewrite {deconv}: needs numeric zero padding")
    return s_h


def _plans(deconv: nn.ConvTranspose2d, s: int) -> tuple[_AxisPlan, _AxisPlan]:
    padding = deconv.padding
    assert not isinstance(padding, str)  # _check_deconv refused string paddings
    (k_h, k_w), (p_h, p_w) = deconv.kernel_size, padding
    op_h, op_w = deconv.output_padding
    return _axis_plan(k_h, s, int(p_h), int(op_h)), _axis_plan(k_w, s, int(p_w), int(op_w))


def _crop(out: torch.Tensor, plan_h: _AxisPlan, plan_w: _AxisPlan) -> torch.Tensor:
    if plan_h.crop:
        out = out[:, :, : -plan_h.crop, :]
    if plan_w.crop:
        out = out[:, :, :, : -plan_w.crop]
    return out


def padded_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pads: tuple[int, int, int, int],
) -> torch.Tensor:
    return F.conv2d(F.pad(x, pads) if any(pads) else x, weight, bias)


def depth_to_space_dcr(x: torch.Tensor, s: int) -> torch.Tensor:
    n, c, h, w = x.shape
    y = x.reshape(n, s, s, c // (s * s), h, w).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c // (s * s), h * s, w * s)


class _PaddedConv(torch.autograd.Function):
    """conv2d with asymmetric zero padding, exported as ONE ONNX Conv (its `pads` attribute):
    no Pad nodes, so the s*s phase convs of a layer share one input (one QuantizeLinear in
    INT8) and ORT fuses each into a QLinearConv."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        pads: tuple[int, int, int, int],
    ) -> torch.Tensor:
        return padded_conv(x, weight, bias, pads)

    @staticmethod
    def symbolic(g, x, weight, bias, pads):  # type: ignore[no-untyped-def]
        left, right, top, bottom = pads
        inputs = [x, weight] if bias is None or bias.node().mustBeNone() else [x, weight, bias]
        return g.op(
            "Conv",
            *inputs,
            kernel_shape_i=list(weight.type().sizes()[2:]),
            pads_i=[top, left, bottom, right],
            strides_i=[1, 1],
            dilations_i=[1, 1],
            group_i=1,
        )


class PaddedConv2d(nn.Conv2d):
    """A Conv2d (stride 1, no groups) with asymmetric zero `pads` (left, right, top, bottom),
    exported as one ONNX Conv named after this module. `forward` may take the bias from its
    caller: the phases of a `PhaseConv` share one (see there)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: tuple[int, int], pads: tuple[int, int, int, int], *,
        bias: bool,
    ) -> None:  # fmt: skip
        super().__init__(c_in, c_out, kernel, bias=bias)
        self.pads = pads

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b = self.bias if bias is None else bias
        if torch.onnx.is_in_onnx_export():  # one ONNX Conv with pads (see _PaddedConv)
            return _PaddedConv.apply(x, self.weight, b, self.pads)
        return padded_conv(x, self.weight, b, self.pads)  # differentiable: QAT trains through it


class SubpixelConv(nn.Module):
    """`ConvTranspose2d` (groups 1, dilation 1, zero padding) as Conv2d + PixelShuffle.

    Every phase gets the same dense kernel, so phases with fewer real taps multiply zeros
    (for CompressAI's 5x5 stride-2 deconv: 36 MACs per input pixel and channel pair, 25 useful).
    `PhaseConv` spends none on zeros.
    """

    def __init__(self, deconv: nn.ConvTranspose2d) -> None:
        super().__init__()
        s = _check_deconv(deconv)
        self.scale = s
        self.plan_h, self.plan_w = _plans(deconv, s)
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
        self.pads = (self.plan_w.pad_left, self.plan_w.pad_right, self.plan_h.pad_left,
                     self.plan_h.pad_right)  # fmt: skip
        # inside the Conv, not a float Pad node in front of the INT8 conv
        self.conv = PaddedConv2d(
            c_in, c_out * s * s, kernel, self.pads, bias=deconv.bias is not None
        )
        self.conv.weight.data.copy_(dense.reshape(c_out * s * s, c_in, *kernel))
        if deconv.bias is not None and self.conv.bias is not None:
            self.conv.bias.data.copy_(deconv.bias.detach().repeat_interleave(s * s))
        self.shuffle = nn.PixelShuffle(s) if s > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _crop(self.shuffle(self.conv(x)), self.plan_h, self.plan_w)


def _span(taps: tuple[int, ...], plan: _AxisPlan) -> tuple[int, int]:
    """First and last dense tap a phase keeps: those reading real kernel taps (contiguous),
    widened by zero taps where the phase would otherwise need a negative pad (ONNX Conv pads
    are >= 0). CompressAI's layouts never widen; a phase with no tap (kernel < stride) keeps
    one zero tap."""
    used = [j for j, kk in enumerate(taps) if kk >= 0] or [plan.pad_left]
    lo = min(used[0], plan.pad_left)
    hi = max(used[-1], plan.kernel - 1 - plan.pad_right)
    return lo, hi


class _DepthToSpaceDCR(torch.autograd.Function):
    """ONNX DepthToSpace in DCR mode: channel (ry*s + rx)*C + o goes to out[o, s*h+ry, s*w+rx],
    i.e. the order of a channel Concat of the s*s phase outputs (PixelShuffle is CRD)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, s: int) -> torch.Tensor:  # type: ignore[override]
        return depth_to_space_dcr(x, s)

    @staticmethod
    def symbolic(g, x, s: int):  # type: ignore[no-untyped-def]
        return g.op("DepthToSpace", x, blocksize_i=s, mode_s="DCR")


class PhaseConv(nn.Module):
    """`ConvTranspose2d` as one Conv2d per output phase, each with only its real taps.

    Phase (ry, rx) of a k x k stride-s deconv reads ceil((k - b_y)/s) x ceil((k - b_x)/s) taps:
    3x3, 3x2, 2x3, 2x2 for CompressAI's 5x5 stride 2, i.e. 25 MACs per input pixel and channel
    pair where `SubpixelConv` spends 36. Each phase convolves the same input with its own
    (asymmetric) padding; the s*s outputs are concatenated and interleaved by DepthToSpace.
    The phases share ONE bias parameter: the ONNX exporter would merge equal copies through
    Identity nodes, and a Conv whose bias is not an initializer stays float in ORT's INT8.
    """

    def __init__(self, deconv: nn.ConvTranspose2d) -> None:
        super().__init__()
        s = _check_deconv(deconv)
        self.scale = s
        self.plan_h, self.plan_w = _plans(deconv, s)
        weight = deconv.weight.detach()  # (C_in, C_out, k_h, k_w)
        convs = []
        for taps_y in self.plan_h.taps:
            for taps_x in self.plan_w.taps:
                kernel, pad = self._phase(weight, taps_y, taps_x)
                c_out, c_in, k_h, k_w = kernel.shape
                conv = PaddedConv2d(c_in, c_out, (k_h, k_w), pad, bias=False)
                conv.weight.data.copy_(kernel)
                convs.append(conv)
        self.phases = nn.ModuleList(convs)  # ONNX names: <this>/phases.<ry*s + rx>/Conv
        bias = deconv.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        #: the (I)GDN that followed the deconv, one per phase (see `take_gdn`), or None
        self.gdns: nn.ModuleList | None = None

    def take_gdn(self, gdn: FoldedGDN) -> None:
        """Run `gdn` on every phase's output, before the Concat (the caller drops its own).

        One FoldedGDN per phase, all holding the SAME beta / gamma tensors: the export has one
        initializer each (a copy would be merged behind Identity nodes, and a Conv whose weight
        is no initializer stays float in ORT's INT8), while fake quantization (quant.fakequant)
        wraps each phase's normalisation on its own, as ORT calibrates each phase's Conv."""
        per_phase = [gdn.twin() for _ in self.phases]
        self.gdns = nn.ModuleList(per_phase)  # ONNX names: <this>/gdns.<ry*s + rx>/...

    def _phase(
        self, weight: torch.Tensor, taps_y: tuple[int, ...], taps_x: tuple[int, ...]
    ) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        """The Conv2d kernel of one phase and its padding (left, right, top, bottom)."""
        py, px = self.plan_h, self.plan_w
        (lo_y, hi_y), (lo_x, hi_x) = _span(taps_y, py), _span(taps_x, px)
        kernel = torch.zeros(weight.shape[1], weight.shape[0], hi_y - lo_y + 1, hi_x - lo_x + 1)
        for jy in range(lo_y, hi_y + 1):
            for jx in range(lo_x, hi_x + 1):
                ky, kx = taps_y[jy], taps_x[jx]
                if ky >= 0 and kx >= 0:
                    kernel[:, :, jy - lo_y, jx - lo_x] = weight[:, :, ky, kx].t()
        # the dense plan pads (pad_left, pad_right); this phase drops its unused dense taps
        pad = (px.pad_left - lo_x, px.pad_right - (px.kernel - 1 - hi_x),
               py.pad_left - lo_y, py.pad_right - (py.kernel - 1 - hi_y))  # fmt: skip
        return kernel, pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [conv(x, self.bias) for conv in self.phases]
        if self.gdns is not None:  # pointwise in space: per phase == after DepthToSpace
            outs = [gdn(out) for gdn, out in zip(self.gdns, outs, strict=True)]
        if self.scale == 1:
            return _crop(outs[0], self.plan_h, self.plan_w)
        joined = torch.cat(outs, dim=1)
        if torch.onnx.is_in_onnx_export():
            out = _DepthToSpaceDCR.apply(joined, self.scale)
        else:  # the same permutation, differentiable (QAT, fine-tuning a rewritten model)
            out = depth_to_space_dcr(joined, self.scale)
        return _crop(out, self.plan_h, self.plan_w)


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

    def twin(self) -> FoldedGDN:
        """Another FoldedGDN holding the very same beta / gamma tensors (no copies)."""
        twin = FoldedGDN.__new__(FoldedGDN)
        nn.Module.__init__(twin)
        twin.register_buffer("beta", self.beta)
        twin.register_buffer("gamma", self.gamma)
        twin.inverse, twin.simplified = self.inverse, self.simplified
        return twin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.simplified:
            norm = F.conv2d(torch.abs(x), self.gamma, self.beta)
            return x * norm if self.inverse else x / norm
        norm = F.conv2d(x * x, self.gamma, self.beta)
        return x * torch.sqrt(norm) if self.inverse else x * torch.rsqrt(norm)


def fold_gdn(module: nn.Module) -> int:
    """Replace every GDN-family layer inside `module` in place; returns how many."""
    return _replace(module, lambda m: FoldedGDN(m) if isinstance(m, GDN) else None)


def deconv_to_subpixel(module: nn.Module, *, phase_min_channels: int | None = None) -> int:
    """Replace every ConvTranspose2d inside `module` in place; returns how many.

    A deconv with at least `phase_min_channels` outputs (None: `PHASE_MIN_CHANNELS`) becomes a
    `PhaseConv`, a narrower one a `SubpixelConv` (0: always phases; a huge value: never)."""
    least = PHASE_MIN_CHANNELS if phase_min_channels is None else phase_min_channels

    def make(m: nn.Module) -> nn.Module | None:
        if not isinstance(m, nn.ConvTranspose2d):
            return None
        return PhaseConv(m) if m.out_channels >= least else SubpixelConv(m)

    return _replace(module, make)


def gdn_into_phases(module: nn.Module) -> int:
    """Move every FoldedGDN that directly follows a `PhaseConv` in an nn.Sequential into it
    (`PhaseConv.take_gdn`), leaving nn.Identity in its slot (the other layers keep their
    indexes, hence their names); returns how many. Exact: see the module docstring."""
    count = 0
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, gdn = seq[i], seq[i + 1]
            if isinstance(conv, PhaseConv) and conv.gdns is None and isinstance(gdn, FoldedGDN):
                conv.take_gdn(gdn)
                seq[i + 1] = nn.Identity()
                count += 1
    return count


def rewrite(
    module: nn.Module,
    *,
    subpixel: bool = True,
    phase_min_channels: int | None = None,
    move_gdn: bool = False,
) -> nn.Module:
    """A rewritten deep copy (GDN always folded; deconvs to sub-pixel convs if asked; the
    (I)GDN after a `PhaseConv` run on its phases if `move_gdn`, which needs `subpixel`)."""
    out = copy.deepcopy(module).eval()
    n_gdn = fold_gdn(out)
    n_deconv = deconv_to_subpixel(out, phase_min_channels=phase_min_channels) if subpixel else 0
    n_moved = gdn_into_phases(out) if subpixel and move_gdn else 0
    log.debug(
        "rewrote %d GDN layers and %d transposed convolutions; %d GDN moved into phases",
        n_gdn, n_deconv, n_moved,
    )  # fmt: skip
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
