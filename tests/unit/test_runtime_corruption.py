"""Bad input to the runtime: a clear CompressorError (exit 2), never a crash or a hang."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from compressor import bitstream
from compressor.cli import main
from compressor.errors import BitstreamError, CheckpointError, CompressorError, DataError
from compressor.export import export_model
from compressor.runtime import OrtCodec, container, load_codec
from tests.conftest import smooth_image, tiny_model

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, seed in (("a", 0), ("b", 1)):
        model = tiny_model("bmshj2018-hyperprior", seed=seed)
        with torch.no_grad():
            model.net.g_a[-1].weight.mul_(8.0)  # latents that cost real bits
        model.finalize()
        out[name] = export_model(model, root / name)
    return out


@pytest.fixture(scope="module")
def codec(exports: dict[str, Path]) -> OrtCodec:
    return load_codec(exports["a"], threads=1)


@pytest.fixture(scope="module")
def good(codec: OrtCodec) -> bytes:
    return codec.encode(smooth_image(80, 112, seed=7))


def test_good_file_decodes(codec: OrtCodec, good: bytes) -> None:
    assert len(good) > 100
    assert codec.decode(good).shape == (80, 112, 3)


@pytest.mark.timeout(120)
@SETTINGS
@given(cut=st.integers(0, 10_000))
def test_truncated_file(codec: OrtCodec, good: bytes, cut: int) -> None:
    with pytest.raises(BitstreamError, match=r"truncated|not a compressor"):
        codec.decode(good[: cut % len(good)])


@pytest.mark.timeout(120)
@SETTINGS
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1))
def test_flipped_bytes(codec: OrtCodec, good: bytes, flips: list[tuple[int, int]]) -> None:
    data = bytearray(good)
    for pos, xor in flips:
        data[pos % len(data)] ^= xor
    if bytes(data) == good:  # two flips of one byte cancelled
        return
    with pytest.raises(BitstreamError):
        codec.decode(bytes(data))


@pytest.mark.timeout(120)
@SETTINGS
@given(data=st.binary(max_size=400))
def test_random_bytes(codec: OrtCodec, data: bytes) -> None:
    with pytest.raises(BitstreamError):
        codec.decode(data)
    with pytest.raises(BitstreamError):
        codec.decode(container.MAGIC + data)


def _forge(
    codec: OrtCodec, h: int, w: int, payload: bytes, pad: tuple[int, ...] | None = None
) -> bytes:
    """A file with a valid CRC around chosen fields: what a hostile writer could make."""
    from compressor.runtime import image

    pad = pad if pad is not None else image.padding(h, w, codec.pad_multiple)
    body = bytearray(container.MAGIC) + bytes([container.FORMAT_VERSION]) + codec.model_id
    for value in (h, w, *pad):
        body += bitstream.write_varint(value)
    body += payload
    return bytes(body) + zlib.crc32(body).to_bytes(4, "little")


@pytest.mark.timeout(180)
@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 200),
    w=st.integers(1, 200),
    words=st.lists(st.integers(0, 2**32 - 1), max_size=64),
)
def test_forged_payload_never_crashes(
    exports: dict[str, Path], h: int, w: int, words: list[int]
) -> None:
    codec = load_codec(exports["a"], threads=1)
    data = _forge(codec, h, w, np.array(words, dtype="<u4").tobytes())
    try:
        out = codec.decode(data)
    except BitstreamError:
        return
    assert out.shape == (h, w, 3) and out.dtype == np.uint8  # garbage, but an image


@pytest.mark.parametrize(
    ("h", "w", "pad", "match"),
    [
        (1 << 15, 1 << 15, None, "out of range"),
        (0, 10, None, "out of range"),
        (64, 64, (1, 0, 0, 0), "padding"),
        (64, 64, (5000, 0, 0, 0), "padding"),
    ],
)
def test_forged_header_fields(
    codec: OrtCodec, h: int, w: int, pad: tuple[int, ...] | None, match: str
) -> None:
    with pytest.raises(BitstreamError, match=match):
        codec.decode(_forge(codec, h, w, b"", pad if pad is not None else (0, 0, 0, 0)))


def test_payload_not_whole_words(codec: OrtCodec) -> None:
    with pytest.raises(BitstreamError, match="32-bit words"):
        codec.decode(_forge(codec, 64, 64, b"\x01\x02\x03"))


def test_wrong_magic_and_version(codec: OrtCodec, good: bytes) -> None:
    with pytest.raises(BitstreamError, match="not a compressor bitstream"):
        codec.decode(b"\x89PNG" + good[4:])
    with pytest.raises(BitstreamError, match="format version 9"):
        codec.decode(good[:4] + b"\x09" + good[5:])


def test_file_from_another_model(exports: dict[str, Path], good: bytes) -> None:
    other = load_codec(exports["b"], threads=1)
    with pytest.raises(BitstreamError, match="encoded by another model"):
        other.decode(good)


def test_folder_that_is_not_an_export(tmp_path: Path, exports: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match="not a folder"):
        load_codec(tmp_path / "missing")
    with pytest.raises(CheckpointError, match=r"no manifest\.json"):
        load_codec(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_codec(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="not an exported codec"):
        load_codec(tmp_path)


@pytest.mark.parametrize("damage", ["missing", "modified", "kind", "latents"])
def test_damaged_export(tmp_path: Path, exports: dict[str, Path], damage: str) -> None:
    folder = Path(shutil.copytree(exports["a"], tmp_path / "copy"))
    manifest = json.loads((folder / "manifest.json").read_text())
    if damage == "missing":
        (folder / "g_s.onnx").unlink()
    elif damage == "modified":
        (folder / "entropy.npz").write_bytes(b"PK\x03\x04 not tables")
    elif damage == "kind":
        manifest["kind"] = "autoregressive"
    else:
        manifest["latents"]["y"]["channels"] = 10**9
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError):
        load_codec(folder)


def test_encode_refuses_non_images(codec: OrtCodec) -> None:
    with pytest.raises(DataError, match="HxWx3 uint8"):
        codec.encode(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(DataError, match="HxWx3 uint8"):
        codec.encode(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(CompressorError, match="out of range"):
        # a broadcast view: the size check must come before any per-pixel work
        codec.encode(np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (1 << 15, 1 << 11, 3)))


def _cli(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def test_cli_bad_inputs_exit_2(tmp_path: Path, exports: dict[str, Path], good: bytes) -> None:
    a, b = str(exports["a"]), str(exports["b"])
    (tmp_path / "notes.png").write_text("this is not an image")
    Image.fromarray(smooth_image(40, 50, seed=1)).save(tmp_path / "real.png")
    (tmp_path / "bad.cbin").write_bytes(good[:-7])
    (tmp_path / "good.cbin").write_bytes(good)
    out = str(tmp_path / "o.png")
    cases = [
        (
            ["encode", str(tmp_path / "notes.png"), "--codec", a, "-o", str(tmp_path / "x")],
            "not a readable image",
        ),
        (
            ["encode", str(tmp_path / "none.png"), "--codec", a, "-o", str(tmp_path / "x")],
            "does not exist",
        ),
        (
            ["encode", str(tmp_path / "real.png"), "--codec", str(tmp_path), "-o", "x"],
            "not an exported codec",
        ),
        (["decode", str(tmp_path / "bad.cbin"), "--codec", a, "-o", out], "truncated or corrupt"),
        (
            ["decode", str(tmp_path / "notes.png"), "--codec", a, "-o", out],
            "not a compressor bitstream",
        ),
        (["decode", str(tmp_path / "good.cbin"), "--codec", b, "-o", out], "another model"),
        (
            ["decode", str(tmp_path / "good.cbin"), "--codec", a, "-o", str(tmp_path / "o.jpg")],
            "lossless",
        ),
        (["decode", str(tmp_path / "nope.cbin"), "--codec", a, "-o", out], "does not exist"),
    ]
    for args, message in cases:
        code, output = _cli(args)
        assert code == 2, (args, output)
        assert message in output and "Traceback" not in output, (args, output)
    assert not (tmp_path / "o.png").exists()
