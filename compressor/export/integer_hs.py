"""Build the integer hyper-decoder tables (compressor.runtime.integer) from a torch h_s.

The design and rounding rules are documented in compressor/runtime/integer.py; this module
only chooses the numbers: per-channel weight scales, activation scales from a calibration
run of the float network (with HEADROOM, so a photo brighter than the calibration still
fits the 16-bit range), requantisation multipliers, and the scale-index thresholds.
The same quantisers, as straight-through fake quantisation, drive the fine-tune
(compressor.integer_train), so training sees exactly the rounding the runtime does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.errors import CheckpointError
from compressor.runtime import integer as ri

#: activation range = HEADROOM x the largest calibration activation (3 bits of 16). Measured
#: on the bundled model: the synthetic probe images' peaks are within 2x of Kodak's and of
#: wikipedia-photos' (layer 1: 0.91 vs 1.00-1.73); a larger one is clipped, deterministically.
HEADROOM = 8.0


@dataclass
class ConvStep:
    conv: nn.Conv2d | nn.ConvTranspose2d
    act: int  # ri.NONE / RELU / LEAKY
    slope: float = 0.0


def parse(h_s: nn.Module) -> list[ConvStep]:
    """h_s as convolutions, each followed by an optional (leaky) ReLU; CheckpointError else."""
    mods = list(h_s.children()) if isinstance(h_s, nn.Sequential) else [h_s]
    steps: list[ConvStep] = []
    for m in mods:
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            _check_conv(m)
            steps.append(ConvStep(m, ri.NONE))
        elif isinstance(m, nn.ReLU | nn.LeakyReLU) and steps and steps[-1].act == ri.NONE:
            leaky = isinstance(m, nn.LeakyReLU)
            steps[-1].act = ri.LEAKY if leaky else ri.RELU
            steps[-1].slope = float(m.negative_slope) if isinstance(m, nn.LeakyReLU) else 0.0
        else:
            raise CheckpointError(
                f"the integer hyper-decoder supports Conv2d/ConvTranspose2d + (Leaky)ReLU "
                f"chains; h_s has {type(m).__name__}"
            )
    if not steps:
        raise CheckpointError("h_s has no convolution")
    return steps


def _check_conv(m: nn.Conv2d | nn.ConvTranspose2d) -> None:
    k, s, p = m.kernel_size, m.stride, m.padding
    ok = (
        m.groups == 1
        and m.dilation in ((1, 1), 1)
        and isinstance(p, tuple)
        and k[0] == k[1]
        and s[0] == s[1]
        and p[0] == p[1]
        and m.padding_mode == "zeros"
    )
    if isinstance(m, nn.ConvTranspose2d):
        ok = ok and m.output_padding[0] == m.output_padding[1]
    if not ok:
        raise CheckpointError(f"the integer hyper-decoder cannot run {m} (square, ungrouped only)")


def weight_scale(w: torch.Tensor, transposed: bool) -> torch.Tensor:
    """Per output channel step of W_BITS symmetric weights."""
    dims = (0, 2, 3) if transposed else (1, 2, 3)
    peak = w.detach().abs().amax(dim=dims).clamp_min(1e-12)
    return peak / (2 ** (ri.W_BITS - 1) - 1)


def per_out(v: torch.Tensor, transposed: bool) -> torch.Tensor:
    """A per-output-channel vector shaped to broadcast over the weight tensor."""
    return v.reshape(1, -1, 1, 1) if transposed else v.reshape(-1, 1, 1, 1)


def act_limits(act: int) -> tuple[int, int]:
    top = 2**ri.A_BITS - 1
    return (0, top) if act == ri.RELU else (-(top // 2), top // 2)


@torch.no_grad()
def calibrate(steps: list[ConvStep], inputs: list[torch.Tensor]) -> list[float]:
    """The largest |activation| after each step of the float network over `inputs`."""
    peaks = [0.0] * len(steps)
    for x in inputs:
        for i, st in enumerate(steps):
            x = _activate(st.conv(x), st)
            peaks[i] = max(peaks[i], float(x.abs().max()))
    return peaks


def _activate(x: torch.Tensor, st: ConvStep) -> torch.Tensor:
    if st.act == ri.RELU:
        return torch.relu(x)
    if st.act == ri.LEAKY:
        return nn.functional.leaky_relu(x, st.slope)
    return x


def activation_scales(steps: list[ConvStep], peaks: list[float]) -> list[float]:
    """Real value of one integer step of each hidden activation (the last has none)."""
    out = []
    for st, peak in zip(steps[:-1], peaks[:-1], strict=True):
        hi = act_limits(st.act)[1]
        out.append(max(peak, 1e-6) * HEADROOM / hi)
    return out


def _multiplier(r: np.ndarray) -> tuple[np.ndarray, int]:
    """(m, S) with m / 2^S ~ r and every m < 2^15."""
    top = float(np.abs(r).max())
    shift = math.floor(math.log2((ri.MULT_LIMIT - 1) / max(top, 1e-30)))
    shift = min(max(shift, 1), 62)
    m = np.round(r * 2.0**shift).astype(np.int64)
    return m, shift


def build(
    h_s: nn.Module,
    kind: str,
    medians: np.ndarray,
    scale_table: np.ndarray,
    calib: list[torch.Tensor],
) -> ri.IntegerHyper:
    """The integer tables of h_s; `calib`: z_hat inputs the float h_s sees when encoding."""
    steps = parse(h_s)
    scales = activation_scales(steps, calibrate(steps, calib))
    s_in = 2.0**-ri.IN_FRAC
    layers = []
    for i, st in enumerate(steps):
        transposed = isinstance(st.conv, nn.ConvTranspose2d)
        w = st.conv.weight.detach().double()
        sw = weight_scale(w, transposed)
        wq = torch.round(w / per_out(sw, transposed)).numpy().astype(np.int32)
        step_acc = (s_in * sw).numpy()  # real value of one accumulator unit, per channel
        bias = st.conv.bias.detach().double().numpy() if st.conv.bias is not None else 0.0
        bq = np.round(np.zeros(step_acc.shape) + bias / step_acc).astype(np.int64)
        last = i == len(steps) - 1
        lo, hi = act_limits(st.act) if not last else (0, 0)
        m, shift = _multiplier(step_acc / scales[i]) if not last else (np.ones_like(bq), 1)
        m_neg = np.round(m * st.slope).astype(np.int64) if st.act == ri.LEAKY else m
        op = st.conv.output_padding[0] if transposed else 0
        meta = [int(transposed), st.conv.stride[0], st.conv.padding[0], op, st.act, lo, hi, shift]
        layers.append(ri.Layer(wq, bq, m, m_neg, np.array(meta, np.int64)))
        if not last:
            s_in = scales[i]
    offset = np.round(medians.astype(np.float64).ravel() * 2**ri.IN_FRAC).astype(np.int64)
    c = len(step_acc) if kind == "scale-hyperprior" else len(step_acc) // 2
    thresholds = _thresholds(scale_table, step_acc[:c])
    mean_mult, mean_shift = None, 1
    if kind == "mean-scale-hyperprior":
        mean_mult, mean_shift = _multiplier(step_acc[c:] * 2.0**ri.MEAN_FRAC)
    return ri.IntegerHyper(layers, offset, thresholds, mean_mult, mean_shift)


def _thresholds(scale_table: np.ndarray, step: np.ndarray) -> np.ndarray:
    """T[c, j]: the smallest accumulator whose scale acc * step[c] exceeds table[j]."""
    t = scale_table[:-1].astype(np.float64)  # as CompressAI: count of table[:-1] < scale
    raw = np.floor(t[None, :] / step[:, None]) + 1
    return np.clip(raw, -(2.0**62), 2.0**62).astype(np.int64)


@torch.no_grad()
def agreement(spec: Any, hyper: ri.IntegerHyper, calib: list[torch.Tensor]) -> dict[str, float]:
    """Share of y elements whose integer scale index equals the float h_s's (export report)."""
    table = torch.from_numpy(spec.tables["gc_scale_table"][:-1])
    medians = spec.tables["eb_medians"].reshape(1, -1, 1, 1)
    same = total = 0
    worst_mean = 0.0
    for z_hat in calib:
        params = spec.graphs["h_s"](z_hat)
        z_sym = np.rint(z_hat.numpy() - medians).astype(np.int64)
        idx, means = hyper(z_sym)
        c = hyper.thresholds.shape[0]
        ref = (table[None, :] < params[:, :c].reshape(-1, 1)).sum(1).numpy()
        same += int((ref == idx).sum())
        total += idx.size
        if means is not None:
            worst_mean = max(worst_mean, float(np.abs(means - params[:, c:].numpy()).max()))
    out = {"index_agreement": same / max(total, 1)}
    if hyper.mean_mult is not None:
        out["means_max_abs_diff"] = worst_mean
    return out
