"""Tiled graphs: run a fully convolutional g_s (or g_a) on overlapping tiles, crop, stitch.

Memory of g_s grows with the image (its widest activations hold N channels at half the
output resolution: 128 channels x 2048 x 2048 x 4 bytes is 2 GB for a 4096 x 4096 image), so
large images are decoded a tile at a time. Each tile is extended by `margin` latents on every
side that has neighbours; an output cell depends only on latents within its receptive field,
so when the margin covers that field the kept centre of every tile sees exactly the inputs it
sees in one whole-image run, and the 8-bit image is the same (tests/unit/test_runtime_bounds.py
checks it). The receptive field is measured once per codec (`receptive_margin`), because the
runtime has no torch model to read it from and families differ (HiFiC's g_s reaches far more
latents than a hyperprior's).

The encoder's g_a is tiled the same way (`analyze`): tiles start on multiples of the stride,
so every kept latent is computed from exactly the pixels of a whole-image run, and the
bitstream is byte-identical (tested); a 4096 x 4096 encode then needs a fraction of the
~8 GB the whole-image g_a takes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np

from compressor.runtime.image import chw_to_rgb8

log = logging.getLogger(__name__)

Graph = Callable[[np.ndarray], np.ndarray]

#: latents per tile side: 64 x 16 = 1024 output pixels, a few hundred MB for a q2 hyperprior
TILE = 64
#: latents either side of the poked cell in the probes; a reach past the last is "unbounded"
_PROBES = (12, 40)
_SAFETY = 1  # one latent more than measured: a poke's effect that rounds to 0 at the edge


def receptive_margin(run: Graph, channels: int, stride: int) -> int | None:
    """Latents either side that one latent's output cells depend on; None if unbounded.

    Measured: two random latents differing in one cell (all channels) go through g_s; the
    output cells that change show how far the cell reaches. Random inputs (not zeros) keep
    activations alive, so a dependence does not hide behind a dead ReLU.
    """
    rng = np.random.default_rng(0)
    for half in _PROBES:
        size = 2 * half + 1
        base = rng.normal(0.0, 2.0, (1, channels, size, size)).astype(np.float32)
        poked = base.copy()
        poked[0, :, half, half] += rng.normal(0.0, 4.0, channels).astype(np.float32) + 4.0
        a, b = run(base), run(poked)
        if a.shape[-2:] != (size * stride, size * stride):
            return None  # not a plain stride-`stride` upsampler: decode whole
        changed = np.abs(a - b).max(axis=(0, 1)) > 0
        rows, cols = np.nonzero(changed.any(axis=1))[0], np.nonzero(changed.any(axis=0))[0]
        if rows.size == 0:
            continue
        lo, hi = half * stride, (half + 1) * stride - 1  # the poked cell's own pixels
        reach = max(lo - rows.min(), rows.max() - hi, lo - cols.min(), cols.max() - hi, 0)
        margin = -(-int(reach) // stride)
        if margin < half:
            return margin + _SAFETY
    return None


def analysis_margin(run: Graph, stride: int) -> int | None:
    """Latents either side whose value one stride x stride block of pixels reaches (g_a)."""
    rng = np.random.default_rng(1)
    for half in _PROBES:
        size = (2 * half + 1) * stride
        base = rng.uniform(0.0, 1.0, (1, 3, size, size)).astype(np.float32)
        poked = base.copy()
        cell = slice(half * stride, (half + 1) * stride)  # the centre latent's pixels
        block = np.s_[0, :, cell, cell]
        poked[block] = rng.uniform(0.0, 1.0, poked[block].shape).astype(np.float32)
        a, b = run(base), run(poked)
        if a.shape[-2:] != (2 * half + 1, 2 * half + 1):
            return None
        changed = np.abs(a - b).max(axis=(0, 1)) > 0
        rows, cols = np.nonzero(changed.any(axis=1))[0], np.nonzero(changed.any(axis=0))[0]
        if rows.size == 0:
            continue
        reach = max(half - rows.min(), rows.max() - half, half - cols.min(), cols.max() - half)
        if reach < half:
            return int(reach) + _SAFETY
    return None


def analyze(run: Graph, padded: np.ndarray, stride: int, tile: int, margin: int) -> np.ndarray:
    """g_a of a padded HxWx3 uint8 image, `tile` latents at a time: 1 x C x H/s x W/s.

    Pixels become float a tile at a time (as image.to_input), so no full-size float image
    is held either.
    """
    h, w = padded.shape[0] // stride, padded.shape[1] // stride
    out: np.ndarray | None = None
    for r0, r1, ra, rb in tile_spans(h, tile, margin):
        for c0, c1, ca, cb in tile_spans(w, tile, margin):
            rgb = padded[ra * stride : rb * stride, ca * stride : cb * stride]
            x = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None]).astype(np.float32)
            y = run(x / np.float32(255))
            if out is None:
                out = np.empty((1, y.shape[1], h, w), dtype=np.float32)
            out[:, :, r0:r1, c0:c1] = y[:, :, r0 - ra : r1 - ra, c0 - ca : c1 - ca]
    assert out is not None  # an image has at least one tile
    return out


def tile_spans(length: int, tile: int, margin: int) -> list[tuple[int, int, int, int]]:
    """(keep_start, keep_stop, run_start, run_stop) along one axis, in latents."""
    spans = []
    for start in range(0, length, tile):
        stop = min(start + tile, length)
        spans.append((start, stop, max(start - margin, 0), min(stop + margin, length)))
    return spans


def synthesize(run: Graph, y_hat: np.ndarray, stride: int, tile: int, margin: int) -> np.ndarray:
    """The padded HxWx3 uint8 image of g_s(y_hat), computed `tile` latents at a time.

    Each tile becomes 8-bit at once, so no full-size float image is ever held.
    """
    _, _, h, w = y_hat.shape
    out = np.empty((h * stride, w * stride, 3), dtype=np.uint8)
    for r0, r1, ra, rb in tile_spans(h, tile, margin):
        for c0, c1, ca, cb in tile_spans(w, tile, margin):
            x = run(np.ascontiguousarray(y_hat[:, :, ra:rb, ca:cb]))
            top, left = (r0 - ra) * stride, (c0 - ca) * stride
            keep = x[0, :, top : top + (r1 - r0) * stride, left : left + (c1 - c0) * stride]
            out[r0 * stride : r1 * stride, c0 * stride : c1 * stride] = chw_to_rgb8(keep)
    return out


#: z latents per side of each integer h_s tile (32 z: 128 x 128 y latents of a hyperprior);
#: measured at 4096 x 4096: as fast as one whole run (16 was 1.3x slower), ~500 MB less
HYPER_TILE = 32


def integer_margin(layers: list[Any]) -> int | None:
    """z latents either side that one output of the integer h_s reaches (from its layers).

    Exact, read from each layer's kernel, stride and padding (runtime.integer's meta), in z
    units at the resolution the layer runs at. None when some layer's grid does not start on
    whole z latents (a strided conv): then tiles would not line up, and h_s runs whole.
    """
    reach, scale = Fraction(0), Fraction(1)  # scale: cells per z latent at the layer input
    for layer in layers:
        k = int(layer.weight.shape[-1])
        stride, pad = int(layer.meta[1]), int(layer.meta[2])
        if layer.transposed:  # output cell o sums inputs at offsets [pad - k + 1, pad] outputs
            scale *= stride
            reach += Fraction(max(k - 1 - pad, pad)) / scale
        else:  # output cell o reads inputs [o * stride - pad, o * stride - pad + k - 1]
            reach += Fraction(max(pad, k - 1 - pad)) / scale
            scale /= stride
        if scale.denominator != 1:
            return None
    return math.ceil(reach) + _SAFETY


def hyper(
    run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
    z_sym: np.ndarray,
    tile: int,
    margin: int,
    s: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The integer h_s (`run`: z 1xCxhxw -> flat indexes, means) `tile` z latents at a time.

    Integer arithmetic is exact, so a tile that sees `margin` z latents beyond its kept part
    gives the kept outputs bit for bit (tested); its float64 working arrays are a tile's.
    `s`: y latents per z latent.
    Indexes come back flat as int32 (fewer than 2^31 tables), in the whole run's order.
    """
    _, _, h, w = z_sym.shape
    idx: np.ndarray | None = None
    means: np.ndarray | None = None
    for r0, r1, ra, rb in tile_spans(h, tile, margin):
        for c0, c1, ca, cb in tile_spans(w, tile, margin):
            i, m = run(np.ascontiguousarray(z_sym[:, :, ra:rb, ca:cb]))
            i = i.reshape(-1, (rb - ra) * s, (cb - ca) * s)
            if idx is None:
                idx = np.empty((i.shape[0], h * s, w * s), dtype=np.int32)
                if m is not None:
                    means = np.empty((1, m.shape[1], h * s, w * s), dtype=np.float32)
            keep = np.s_[(r0 - ra) * s : (r1 - ra) * s, (c0 - ca) * s : (c1 - ca) * s]
            idx[:, r0 * s : r1 * s, c0 * s : c1 * s] = i[(slice(None), *keep)]
            if means is not None and m is not None:
                means[:, :, r0 * s : r1 * s, c0 * s : c1 * s] = m[(slice(None), slice(None), *keep)]
    assert idx is not None  # z has at least one tile
    return idx.reshape(-1), means
