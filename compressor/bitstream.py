"""Byte-level packing of entropy-coded strings. Pure Python: the torch-free runtime uses it too.

A payload is a list of byte strings (one per entropy model, e.g. [y, z]) plus a few small
integers (e.g. the latent height/width). Lengths and integers are LEB128 varints, so the
container costs a handful of bytes over the entropy-coded data.
"""

from __future__ import annotations

from compressor.errors import BitstreamError


def write_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"varint must be >= 0, got {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise BitstreamError("bitstream is truncated (inside a length field)")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise BitstreamError("bitstream is corrupt (length field longer than 64 bits)")


def pack(strings: list[bytes], ints: list[int]) -> bytes:
    """Pack strings and small non-negative integers; the last string's length is implicit."""
    out = bytearray(write_varint(len(ints)))
    for value in ints:
        out += write_varint(value)
    out += write_varint(len(strings))
    for s in strings[:-1]:
        out += write_varint(len(s))
    for s in strings:
        out += s
    return bytes(out)


def unpack(data: bytes) -> tuple[list[bytes], list[int]]:
    n_ints, pos = read_varint(data, 0)
    if n_ints > 16:
        raise BitstreamError(f"bitstream is corrupt ({n_ints} header integers; at most 16)")
    ints = []
    for _ in range(n_ints):
        value, pos = read_varint(data, pos)
        ints.append(value)
    n_strings, pos = read_varint(data, pos)
    if not 1 <= n_strings <= 16:
        raise BitstreamError(f"bitstream is corrupt ({n_strings} strings; 1 to 16 allowed)")
    lengths = []
    for _ in range(n_strings - 1):
        length, pos = read_varint(data, pos)
        lengths.append(length)
    strings = []
    for length in lengths:
        if pos + length > len(data):
            raise BitstreamError("bitstream is truncated (a string runs past the end)")
        strings.append(data[pos : pos + length])
        pos += length
    strings.append(data[pos:])
    return strings, ints
