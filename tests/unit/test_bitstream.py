from __future__ import annotations

import pytest

from compressor import bitstream
from compressor.errors import BitstreamError


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32 + 5])
def test_varint_roundtrip(value: int) -> None:
    data = bitstream.write_varint(value)
    assert bitstream.read_varint(data, 0) == (value, len(data))


def test_pack_roundtrip_and_overhead() -> None:
    strings = [b"y" * 300, b"z" * 20]
    data = bitstream.pack(strings, [4, 6])
    assert bitstream.unpack(data) == (strings, [4, 6])
    assert len(data) - 320 == 6  # n_ints, 2 ints, n_strings, one 2-byte length


@pytest.mark.parametrize("cut", [1, 3, 5])
def test_truncated_stream_is_an_error(cut: int) -> None:
    data = bitstream.pack([b"a" * 200, b"b"], [1, 2])
    with pytest.raises(BitstreamError):
        bitstream.unpack(data[:cut])
