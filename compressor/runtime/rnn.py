"""The deployable codec of the recurrent family (manifest kind "rnn"): ONNX Runtime + numpy.

An rnn export (compressor.export.rnn) holds two step graphs, no entropy tables:

    encoder_step: residual, h1, c1, h2, c2, h3, c3          -> bits (+-1), 6 new states
    decoder_step: bits, h1, c1, ..., h4, c4                  -> image increment, 8 new states

The codec loops them as the torch model does (x_hat starts at 0.5; residual = x - x_hat;
x_hat += increment), `iterations` times. Every code is one bit, so the payload is the packed
codes (`pack_codes`, the same bytes the torch model's compress() gives) inside the runtime's
container (compressor.runtime.container: model id, image size, padding, CRC-32), so
`cli.py encode/decode` treat an rnn file like any other. Never imports torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from compressor import bitstream
from compressor.errors import (
    BitstreamError,
    CheckpointError,
    CompressorError,
    RecipeError,
)
from compressor.runtime import container, image
from compressor.runtime.codec import OrtCodec

KIND = "rnn"
GRAPHS = ("encoder_step", "decoder_step")
MAX_ITERATIONS = 32
#: the codes' resolution divisor: four stride-2 stages
CODE_STRIDE = 16


def check_iterations(value: Any, what: str = "iterations") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_ITERATIONS:
        raise RecipeError(f"{what} {value!r} is out of range; allowed: 1..{MAX_ITERATIONS}")
    return value


def pack_codes(codes: np.ndarray) -> bytes:
    """iterations x M x h x w of +-1 -> header [iterations, M, h, w] + np.packbits of b > 0."""
    k, m, h, w = codes.shape
    return bitstream.pack([np.packbits(codes.reshape(-1) > 0).tobytes()], [k, m, h, w])


def unpack_codes(data: bytes, bits: int) -> np.ndarray:
    """The +-1 codes (float32) of pack_codes' bytes, every header field checked."""
    strings, ints = bitstream.unpack(data)
    if len(ints) != 4 or len(strings) != 1:
        raise BitstreamError("not an rnn bitstream (header needs iterations, bits, height, width)")
    k, m, h, w = ints
    check_iterations(k, "bitstream iterations")
    if m != bits or not 1 <= h <= 4096 or not 1 <= w <= 4096:
        raise BitstreamError(
            f"bitstream of {m} bits x {h}x{w} positions does not fit this model ({bits} bits)"
        )
    n = k * m * h * w
    if len(strings[0]) != math.ceil(n / 8):
        raise BitstreamError(f"bitstream holds {len(strings[0])} code bytes, expected {n / 8:g}")
    flat = np.unpackbits(np.frombuffer(strings[0], np.uint8), count=n)
    return (flat.astype(np.float32) * 2 - 1).reshape(k, m, h, w)


class RnnOrtCodec(OrtCodec):
    """The Codec protocol over an rnn export folder: ONNX Runtime runs the step loop.

    OrtCodec's loading (manifest checked and verified, one session per graph of the kind,
    model id, provider, threads) is shared; what an rnn export has instead of entropy tables
    (iterations, code bits, state strides) is read from its manifest."""

    def _load_tables(self, path: Path) -> None:
        extra, folder = self.manifest.extra, self.folder
        try:
            self.iterations = check_iterations(extra.get("iterations"))
            self.bits = int(self.manifest.latents["bits"]["channels"])
            self.strides: dict[str, list[int]] = {
                g: [int(s) for s in extra["input_strides"][g]] for g in GRAPHS
            }
        except (RecipeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{folder}: the rnn manifest needs iterations, latents.bits and input_strides ({e})"
            ) from None
        if self.pad_multiple % CODE_STRIDE or any(
            s < 1 or CODE_STRIDE % s for v in self.strides.values() for s in v
        ):
            raise CheckpointError(f"{folder}: rnn state strides must divide {CODE_STRIDE}")
        #: calibration taps: every feed of every step graph while encoding (compressor.quant)
        self.record: dict[str, list[dict[str, np.ndarray]]] | None = None

    def check_version(self, version: int) -> None:
        """Every format's payload is the packed codes: rnn has no hyper-decoder to choose."""

    # -- the Codec protocol ----------------------------------------------------------------
    def encode(self, rgb8: np.ndarray) -> bytes:
        rgb8, h, w, pad = self._checked_input(rgb8)
        codes = self.encode_codes(image.to_input(rgb8, pad))
        return container.pack(container.Header(self.model_id, h, w, pad), pack_codes(codes))

    def decode(
        self,
        data: bytes,
        *,
        max_pixels: int = container.DEFAULT_MAX_PIXELS,
        tile: int | None = None,
    ) -> np.ndarray:
        """The image of a file; BitstreamError if it is corrupt or declares over max_pixels.
        `tile` is accepted for OrtCodec's signature and ignored: every decoder state spans
        the whole image, so the step loop runs on it in one piece."""
        header, payload = self._checked_header(data, max_pixels)
        codes = unpack_codes(payload, self.bits)
        ph, pw = header.padded
        if codes.shape[2:] != (ph // CODE_STRIDE, pw // CODE_STRIDE):
            raise BitstreamError(
                f"bitstream is corrupt ({codes.shape[2]}x{codes.shape[3]} code positions for a "
                f"{ph}x{pw} padded image)"
            )
        return image.from_output(self.decode_codes(codes), header.pad)

    # -- the step loop ---------------------------------------------------------------------
    def encode_codes(self, x: np.ndarray) -> np.ndarray:
        """iterations x M x h x w codes (+-1) of one padded 1x3xHxW input in [0, 1]."""
        enc = self._zeros("encoder_step", *x.shape[2:])
        dec = self._zeros("decoder_step", *x.shape[2:])
        x_hat = np.full_like(x, 0.5)
        codes = []
        for _ in range(self.iterations):
            b, *enc = self._step("encoder_step", x - x_hat, enc)
            inc, *dec = self._step("decoder_step", b, dec)
            x_hat = x_hat + inc
            codes.append(b[0])
        return np.stack(codes)

    def decode_codes(self, codes: np.ndarray) -> np.ndarray:
        """The unclamped 1x3xHxW reconstruction of iterations x M x h x w codes."""
        _, _, h, w = codes.shape
        size = (CODE_STRIDE * h, CODE_STRIDE * w)
        dec = self._zeros("decoder_step", *size)
        x_hat = np.full((1, 3, *size), 0.5, np.float32)
        for b in codes:
            inc, *dec = self._step("decoder_step", np.ascontiguousarray(b[None]), dec)
            x_hat = x_hat + inc
        return x_hat

    def _zeros(self, graph: str, h: int, w: int) -> list[np.ndarray]:
        """The initial (zero) states of a step graph for a padded HxW image."""
        ins = self.sessions[graph].get_inputs()[1:]
        return [
            np.zeros((1, int(i.shape[1]), h // s, w // s), np.float32)
            for i, s in zip(ins, self.strides[graph][1:], strict=True)
        ]

    def _step(self, graph: str, first: np.ndarray, states: list[np.ndarray]) -> list[np.ndarray]:
        sess = self.sessions[graph]
        feed = {i.name: a for i, a in zip(sess.get_inputs(), [first, *states], strict=True)}
        if self.record is not None:
            self.record[graph].append(feed)
        out = sess.run(None, feed)
        if not np.isfinite(out[0]).all():
            raise CompressorError(f"graph {graph} produced non-finite values")
        return [np.asarray(a, dtype=np.float32) for a in out]
