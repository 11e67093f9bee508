"""The deployable codec: ONNX Runtime or OpenVINO graphs + numpy + constriction's ANS.

Never imports torch; installable on its own (deploy/runtime/pyproject.toml).

codec = load_codec("exported/p/", provider="cpu", threads=1)
codec = load_codec("exported/p/", runtime="openvino", precision="bf16")  # opt-in, lossy-er
data = codec.encode(rgb8)          # HxWx3 uint8 -> bytes (header, payload, CRC)
rgb8 = codec.decode(data)
"""

from __future__ import annotations

from compressor.runtime.codec import PROVIDERS, OrtCodec, load_codec
from compressor.runtime.container import peek_model_id
from compressor.runtime.image import read_rgb8, write_rgb8

__all__ = ["PROVIDERS", "OrtCodec", "load_codec", "peek_model_id", "read_rgb8", "write_rgb8"]
