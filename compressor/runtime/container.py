"""The bitstream file: a small header, the entropy-coded payload, a CRC-32.

Layout (all varints are LEB128, compressor.bitstream):

    magic        4 bytes   b"CMPR"
    version      1 byte    FORMAT_VERSION
    model_id     8 bytes   first 8 bytes of the export's model id (manifest.json)
    height       varint    original image size, pixels
    width        varint
    pad          4 varints top, bottom, left, right zero padding to the model's multiple
    hyper_tag    1 byte    format 4 only: what ran the float h_s (runtime.backends.TAGS)
    payload      rest      ANS words (little-endian uint32) of every latent
    crc32        4 bytes   little-endian CRC-32 of everything before it

The CRC is checked before any field is trusted, so a truncated file or flipped bytes give a
clear error instead of a garbage image, and size fields of a damaged file never size a buffer.

Versions: 3 (the default of hyperprior exports) is 2 whose scale-table indexes (and means)
come from the integer hyper-decoder (compressor.runtime.integer): it decodes bit-exactly on
any machine, and only with an export that carries the integer tables (hyper_int.npz); a
float-only export refuses it by name. 2 (float h_s run by ONNX Runtime; factorized and rnn
exports, which have no h_s, also write 2) decodes only where h_s gives the encoder's last bits
of every scale: the same kernels, in practice the same machine, ORT version and session
options (measured: another graph-optimisation level loses some Kodak files). 2 ends
the ANS payload with a 32-bit end check (runtime.entropy), so a
CRC-valid file whose payload is empty or short is refused before any graph runs. 1 (no end
check) is still read, with the weaker end test it always had. 4 is 2 with one more header
byte, the tag of the runtime and precision that ran the float h_s (e.g. OpenVINO BF16); it is
written when that is not ONNX Runtime FP32 (which formats 1-2 imply), so a decoder running
h_s elsewhere refuses the file by name instead of decoding garbage.

A CRC protects against damage, not against a forged file: its declared size is what the
decoder will allocate for. `check_pixels` bounds it (DEFAULT_MAX_PIXELS unless the caller
raises it) before any decoding work.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from compressor import bitstream
from compressor.errors import BitstreamError

MAGIC = b"CMPR"
#: the newest format: scale indexes (and means) from the integer hyper-decoder
FORMAT_VERSION = 3
#: what an export without integer tables (float h_s, factorized, rnn) writes
FLOAT_VERSION = 2
#: 2 plus the tag of the runtime that ran the float h_s (not ONNX Runtime FP32)
TAGGED_VERSION = 4
#: versions unpack() accepts; 1 lacks the payload end check
READ_VERSIONS = (1, 2, 3, 4)
MODEL_ID_BYTES = 8
#: the largest image a file may describe (about 33 Mpx, e.g. 8192 x 4096): a bound on memory
MAX_PIXELS = 1 << 25
MAX_SIDE = 1 << 15
#: the largest image decode accepts unless told otherwise (4096 x 4096): a forged header can
#: not make a decoder allocate gigabytes; legitimate larger files need max_pixels raised
DEFAULT_MAX_PIXELS = 4096 * 4096
_FIXED = len(MAGIC) + 1 + MODEL_ID_BYTES
_MIN_SIZE = _FIXED + 6 + 4  # six one-byte varints and the CRC


@dataclass(frozen=True)
class Header:
    model_id: bytes
    height: int
    width: int
    pad: tuple[int, int, int, int]  # top, bottom, left, right
    version: int = FLOAT_VERSION
    #: format 4: what ran the float h_s (runtime.backends.TAGS); 0 (ONNX Runtime FP32) else
    hyper_tag: int = 0

    @property
    def padded(self) -> tuple[int, int]:
        top, bottom, left, right = self.pad
        return self.height + top + bottom, self.width + left + right


def check_size(height: int, width: int) -> None:
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE and height * width <= MAX_PIXELS):
        raise BitstreamError(
            f"image size {height}x{width} is out of range; allowed: sides 1..{MAX_SIDE}, "
            f"at most {MAX_PIXELS} pixels"
        )


def check_pixels(height: int, width: int, max_pixels: int) -> None:
    """Refuse a declared size above the caller's budget, before anything is allocated for it."""
    if height * width > max_pixels:
        raise BitstreamError(
            f"bitstream declares a {width}x{height} image ({height * width} pixels), more than "
            f"the limit of {max_pixels} pixels; if the file is trusted, raise the limit "
            f"(decode --max-pixels, or max_pixels= in OrtCodec.decode) up to {MAX_PIXELS}"
        )


def pack(header: Header, payload: bytes) -> bytes:
    if len(header.model_id) != MODEL_ID_BYTES:
        raise ValueError(f"model id must be {MODEL_ID_BYTES} bytes")
    if header.version not in READ_VERSIONS:
        raise ValueError(f"format version must be one of {READ_VERSIONS}")
    check_size(header.height, header.width)
    out = bytearray(MAGIC)
    out.append(header.version)
    out += header.model_id
    for value in (header.height, header.width, *header.pad):
        out += bitstream.write_varint(value)
    if header.version == TAGGED_VERSION:
        if not 0 <= header.hyper_tag < 256:
            raise ValueError("hyper_tag must fit one byte")
        out.append(header.hyper_tag)
    elif header.hyper_tag:
        raise ValueError(f"only format {TAGGED_VERSION} records a hyper_tag")
    out += payload
    out += zlib.crc32(out).to_bytes(4, "little")
    return bytes(out)


def unpack(data: bytes) -> tuple[Header, bytes]:
    """(header, payload) of a file, or a BitstreamError naming what is wrong with it."""
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise BitstreamError(
            f"not a compressor bitstream (starts with {bytes(data[:4])!r}, expected {MAGIC!r})"
        )
    if len(data) < _MIN_SIZE:
        raise BitstreamError(
            f"bitstream is truncated ({len(data)} bytes; a file has at least {_MIN_SIZE})"
        )
    version = data[len(MAGIC)]
    if version not in READ_VERSIONS:
        raise BitstreamError(
            f"bitstream format version {version} is not supported; this runtime reads "
            f"versions {', '.join(map(str, READ_VERSIONS))}"
        )
    body, stored = data[:-4], int.from_bytes(data[-4:], "little")
    if zlib.crc32(body) != stored:
        raise BitstreamError("bitstream is truncated or corrupt (CRC-32 mismatch)")
    model_id = bytes(body[len(MAGIC) + 1 : _FIXED])
    pos = _FIXED
    values = []
    for _ in range(6):
        value, pos = bitstream.read_varint(body, pos)
        values.append(value)
    height, width, *pad = values
    check_size(height, width)
    if any(p >= 1 << 12 for p in pad):
        raise BitstreamError(f"bitstream is corrupt (padding {pad} out of range)")
    tag = 0
    if version == TAGGED_VERSION:
        if pos >= len(body):
            raise BitstreamError("bitstream is truncated (no hyper-decoder tag)")
        tag, pos = body[pos], pos + 1
    header = Header(model_id, height, width, (pad[0], pad[1], pad[2], pad[3]), version, tag)
    return header, bytes(body[pos:])


def peek_model_id(data: bytes) -> bytes:
    """The model id of a file that passes the magic, version and CRC checks."""
    return unpack(data)[0].model_id
