"""The Codec protocol: 8-bit RGB in, real bytes out, and back. What evaluate/validate measure.

Two implementations: TorchCodec (a CodecAdapter, torch) here, and the deployable
compressor.runtime codec (ONNX Runtime, no torch). Padding to the model's multiple and
cropping back happen inside the codec, so bytes * 8 / pixels is the true bpp.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class Codec(Protocol):
    name: str

    def encode(self, rgb8: np.ndarray) -> bytes:
        """HxWx3 uint8 -> the bitstream."""
        ...

    def decode(self, data: bytes) -> np.ndarray:
        """The bitstream -> HxWx3 uint8 of the original size."""
        ...


class TorchCodec:
    """A torch CodecAdapter as a Codec. The payload is the adapter's compress() bytes plus
    the image size (2 varints), so the stream decodes alone."""

    def __init__(self, model, name: str = "torch") -> None:  # type: ignore[no-untyped-def]
        self.model = model.eval()
        self.name = name

    def encode(self, rgb8: np.ndarray) -> bytes:
        import torch

        from compressor import bitstream
        from compressor.data import Padding, to_tensor

        h, w = rgb8.shape[:2]
        pad = Padding.to_multiple(h, w, self.model.pad_multiple)
        with torch.no_grad():
            payload = self.model.compress(pad.pad(to_tensor(rgb8)))
        return bitstream.write_varint(h) + bitstream.write_varint(w) + payload

    def estimated_bpp(self, rgb8: np.ndarray) -> float:
        return estimated_bpp(self.model, rgb8)

    def decode(self, data: bytes) -> np.ndarray:
        import torch

        from compressor import bitstream
        from compressor.data import Padding, to_rgb8_array

        h, pos = bitstream.read_varint(data, 0)
        w, pos = bitstream.read_varint(data, pos)
        pad = Padding.to_multiple(h, w, self.model.pad_multiple)
        with torch.no_grad():
            x_hat = self.model.decompress(data[pos:])
        return to_rgb8_array(pad.crop(x_hat))


def estimated_bpp(model, rgb8: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    """The rate the entropy models predict (likelihoods), padded input, unpadded pixels."""
    import torch

    from compressor.data import Padding, to_tensor

    h, w = rgb8.shape[:2]
    pad = Padding.to_multiple(h, w, model.pad_multiple)
    with torch.no_grad():
        out = model.forward_rd(pad.pad(to_tensor(rgb8)))
    return float(out.bpp(h * w))


def open_codec(
    path: Path,
    arch: str | None = None,
    provider: str = "cpu",
    threads: int | None = None,
    name: str | None = None,
) -> Codec:
    """A Codec for a checkpoint file, or for an exported ONNX folder (the deployable runtime)."""
    from compressor.errors import CheckpointError

    path = Path(path)
    if path.is_dir():
        if (path / "model.pt").is_file():  # a pipeline step's folder
            return open_codec(path / "model.pt", arch, provider, threads, name)
        from compressor.runtime import load_codec

        codec = load_codec(path, provider=provider, threads=threads)
        codec.name = name or f"onnx:{path.name}"
        return codec
    if not path.exists():
        raise CheckpointError(f"model {path} does not exist (a checkpoint file or export folder)")
    from compressor import checkpoint

    # torch's threads are the caller's run context (compressor.threads.torch_threads), never
    # changed here for the rest of the process
    return TorchCodec(checkpoint.load(path, arch), name or f"torch:{path.name}")
