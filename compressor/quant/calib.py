"""Calibration inputs and quick quality trials, both through the float export itself.

Each graph is calibrated on exactly what it sees when the float codec compresses an image
(the padded pixels for g_a, the rounded latent for g_s, ...), computed with ONNX Runtime from
the float graphs, so calibration needs no torch and matches the deployed arithmetic.
"""

from __future__ import annotations

import logging
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader

from compressor import imageio
from compressor.metrics.psnr import psnr
from compressor.runtime import image, load_codec
from compressor.runtime import manifest as mf
from compressor.runtime.codec import OrtCodec, session_options
from compressor.runtime.rnn import RnnOrtCodec

log = logging.getLogger(__name__)


def centre_crop(rgb8: np.ndarray, size: int) -> np.ndarray:
    """The size x size calibration crop (imageio.centre_crop)."""
    return imageio.centre_crop(rgb8, (size, size))


def _run(codec: OrtCodec, graph: str, x: np.ndarray) -> np.ndarray:
    session = codec.sessions[graph]
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0], dtype=np.float32)


def graph_inputs(codec: OrtCodec, rgb8: np.ndarray) -> dict[str, np.ndarray]:
    """The input of every graph when `codec` compresses `rgb8` (as OrtCodec.encode does)."""
    h, w = rgb8.shape[:2]
    x = image.to_input(rgb8, image.padding(h, w, codec.pad_multiple)).astype(np.float32)
    y = _run(codec, "g_a", x)
    med = codec.medians
    if codec.kind == "factorized":
        return {"g_a": x, "g_s": np.rint(y - med) + med}
    z = _run(codec, "h_a", y)
    z_hat = (np.rint(z - med) + med).astype(np.float32)
    params = _run(codec, "h_s", z_hat)
    if codec.kind == "mean-scale-hyperprior":
        means = np.split(params, 2, axis=1)[1]
        y_hat = np.rint(y - means) + means
    else:
        y_hat = np.rint(y)
    return {"g_a": x, "h_a": y, "h_s": z_hat, "g_s": y_hat.astype(np.float32)}


def calibration_inputs(
    codec: OrtCodec, images: list[np.ndarray], graphs: list[str]
) -> dict[str, list[Any]]:
    """Per graph, its inputs while `codec` encodes each image: one array per image, or for a
    recurrent (rnn) export one {input name: array} feed per call of each step graph."""
    if isinstance(codec, RnnOrtCodec):
        return step_feeds(codec, images, graphs)
    out: dict[str, list[Any]] = {g: [] for g in graphs}
    for rgb8 in images:
        inputs = graph_inputs(codec, rgb8)
        for g in graphs:
            out[g].append(inputs[g])
    return out


def step_feeds(
    codec: RnnOrtCodec, images: list[np.ndarray], graphs: list[str]
) -> dict[str, list[Any]]:
    """Every feed of each step graph while the float rnn codec encodes the images (the
    states differ from iteration to iteration, so each call is a calibration sample)."""
    codec.record = {g: [] for g in mf.GRAPHS[codec.kind]}
    try:
        for rgb8 in images:
            codec.encode(rgb8)
        return {g: codec.record[g] for g in graphs}
    finally:
        codec.record = None


class ListReader(CalibrationDataReader):
    """ONNX Runtime's calibration reader over arrays already in memory."""

    def __init__(self, arrays: list[Any], input_name: str = "input") -> None:
        # an item is one input array, or a {name: array} feed of a multi-input graph (rnn)
        self._items = iter([a if isinstance(a, dict) else {input_name: a} for a in arrays])
        self._len = len(arrays)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)

    def __len__(self) -> int:
        return self._len


class Trial:
    """Real encode/decode of a few images with some graphs swapped for quantized ones.

    The float export is loaded once; a trial replaces sessions in memory and measures mean
    PSNR and real bpp, so sensitivity and accuracy-aware search need no export folder each.
    """

    def __init__(self, folder: Path, images: list[np.ndarray], threads: int = 1) -> None:
        self.codec = load_codec(folder, threads=threads)
        self.opts = session_options(threads)
        self.images = images
        self.float_graphs = dict(self.codec.sessions)
        self.reference = self._measure()

    def _measure(self) -> dict[str, float]:
        psnrs, bpps = [], []
        for rgb8 in self.images:
            data = self.codec.encode(rgb8)
            rec = self.codec.decode(data)
            value = psnr(rgb8, rec)
            psnrs.append(100.0 if math.isinf(value) else value)
            bpps.append(len(data) * 8 / (rgb8.shape[0] * rgb8.shape[1]))
        return {"psnr": statistics.fmean(psnrs), "bpp": statistics.fmean(bpps)}

    def measure(self, graphs: dict[str, Path]) -> dict[str, Any]:
        """PSNR drop (dB) and relative bpp increase vs the float export."""
        try:
            for name, path in graphs.items():
                self.codec.sessions[name] = ort.InferenceSession(
                    str(path), self.opts, providers=["CPUExecutionProvider"]
                )
            got = self._measure()
        finally:
            self.codec.sessions.update(self.float_graphs)
        ref = self.reference
        return {
            "psnr": got["psnr"],
            "bpp": got["bpp"],
            "psnr_drop_db": ref["psnr"] - got["psnr"],
            "bpp_increase": (got["bpp"] - ref["bpp"]) / ref["bpp"] if ref["bpp"] else 0.0,
        }
