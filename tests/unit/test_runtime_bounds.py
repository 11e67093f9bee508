"""Bounded decoding: forged sizes and short payloads are refused before any heavy work, large
images are decoded in tiles that give the same image, outputs never clobber, bombs are refused."""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from compressor import bitstream
from compressor.errors import BitstreamError, DataError, RecipeError
from compressor.export import export_model
from compressor.imageio import read_rgb8
from compressor.runtime import OrtCodec, container, load_codec
from compressor.runtime import codec as codec_mod
from compressor.runtime.cli import main
from compressor.runtime.entropy import Encoder
from compressor.threads import available_cores
from tests.conftest import REPO, smooth_image, tiny_model

ARCHS = ["bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bounds")
    out = {}
    for arch in ARCHS:
        model = tiny_model(arch, seed=3)
        g_a: Any = model.net.g_a
        with torch.no_grad():
            g_a[-1].weight.mul_(6.0)  # latents that cost real bits
        model.finalize()
        out[arch] = export_model(model, root / arch)
    return out


@pytest.fixture(scope="module")
def codec(exports: dict[str, Path]) -> OrtCodec:
    return load_codec(exports["bmshj2018-hyperprior"], threads=1)


def forge(codec: OrtCodec, h: int, w: int, payload: bytes, version: int = 2) -> bytes:
    """A CRC-valid file around chosen fields, as a hostile writer could make it."""
    from compressor.runtime import image

    body = bytearray(container.MAGIC) + bytes([version]) + codec.model_id
    for value in (h, w, *image.padding(h, w, codec.pad_multiple)):
        body += bitstream.write_varint(value)
    body += payload
    return bytes(body) + zlib.crc32(body).to_bytes(4, "little")


def spy_graphs(codec: OrtCodec, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The graphs the codec runs from now on, in order."""
    ran: list[str] = []
    real = codec._run

    def run(graph: str, *args: object, **kwargs: object) -> np.ndarray:
        ran.append(graph)
        return real(graph, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(codec, "_run", run)
    return ran


# -- declared size -------------------------------------------------------------------------
def test_declared_size_over_the_limit_is_refused_first(
    codec: OrtCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = spy_graphs(codec, monkeypatch)
    data = forge(codec, 4096, 8192, b"")
    with pytest.raises(BitstreamError, match=r"8192x4096 image \(33554432 pixels\).*16777216"):
        codec.decode(data)
    with pytest.raises(BitstreamError, match="--max-pixels"):
        codec.decode(forge(codec, 200, 300, b""), max_pixels=200 * 300 - 1)
    assert ran == []


def test_empty_payload_is_corrupt(codec: OrtCodec, monkeypatch: pytest.MonkeyPatch) -> None:
    ran = spy_graphs(codec, monkeypatch)
    for version in (1, 2):
        with pytest.raises(BitstreamError, match="payload is empty"):
            codec.decode(forge(codec, 2048, 2048, b"", version))
    assert ran == []


def test_short_payload_is_corrupt_before_synthesis(
    codec: OrtCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = codec.encode(smooth_image(96, 128, seed=1))
    _, payload = container.unpack(good)
    words = len(payload) // 4
    ran = spy_graphs(codec, monkeypatch)
    rng = np.random.default_rng(0)
    for k in sorted({1, 2, 3, words // 2, words - 1}):
        for part in (payload[: 4 * k], payload[-4 * k :]):
            with pytest.raises(BitstreamError, match="corrupt"):
                codec.decode(forge(codec, 96, 128, part))
    for _ in range(20):  # random words claiming a large image: refused before g_s
        noise = rng.integers(1, 2**32, size=int(rng.integers(1, 64)), dtype=np.uint64)
        with pytest.raises(BitstreamError, match="corrupt"):
            codec.decode(forge(codec, 1024, 1024, noise.astype("<u4").tobytes()))
    assert "g_s" not in ran


def test_format_1_files_still_decode(codec: OrtCodec, monkeypatch: pytest.MonkeyPatch) -> None:
    # formats 1 and 2 are the float hyper path (format 3: the integer one, test_integer_path)
    codec = OrtCodec(codec.folder, threads=1, hyper="float")
    rgb8 = smooth_image(80, 96, seed=2)
    v2 = codec.encode(rgb8)

    class OldEncoder(Encoder):
        def finish(self, check: bool = True) -> bytes:
            return super().finish(check=False)

    monkeypatch.setattr(codec_mod, "Encoder", OldEncoder)
    header, payload = container.unpack(codec.encode(rgb8))
    v1 = container.pack(replace(header, version=1), payload)
    assert v1[4] == 1 and v2[4] == 2 and len(v2) > len(v1)
    assert np.array_equal(codec.decode(v1), codec.decode(v2))
    with pytest.raises(BitstreamError, match=r"version 5 is not supported.*versions 1, 2, 3, 4"):
        codec.decode(v1[:4] + b"\x05" + v1[5:])


# -- tiles ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_tiled_decode_is_identical(
    exports: dict[str, Path], arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    codec = load_codec(exports[arch], threads=1)
    codec.tile = None
    data = codec.encode(smooth_image(200, 260, seed=4))  # latents 16 x 20 (padded to 64)
    whole = codec.decode(data)
    ran = spy_graphs(codec, monkeypatch)
    codec.tile = 4
    tiled = codec.decode(data)
    margin = codec._margins[16]
    assert margin is not None and 1 <= margin <= 6
    assert ran.count("g_s") == 2 + 4 * 5  # two probe runs, then 4 x 5 tiles
    assert tiled.shape == whole.shape == (200, 260, 3)
    assert np.array_equal(tiled, whole)  # exact: every tile sees its whole receptive field
    ran.clear()
    codec.tile = 64
    assert np.array_equal(codec.decode(data), whole)  # fits one tile: one run
    assert ran.count("g_s") == 1


@pytest.mark.parametrize("arch", ARCHS)
def test_tiled_encode_is_byte_identical(
    exports: dict[str, Path], arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    codec = load_codec(exports[arch], threads=1)
    rgb8 = smooth_image(190, 250, seed=5)
    codec.tile = None
    whole = codec.encode(rgb8)
    ran = spy_graphs(codec, monkeypatch)
    codec.tile = 3
    assert codec.encode(rgb8) == whole
    margin = codec._margins[-16]
    assert margin is not None and 1 <= margin <= 6
    assert ran.count("g_a") == 2 + 4 * 6  # two probe runs, then 4 x 6 tiles of 12 x 16


# -- CLI: sizes, outputs, threads ----------------------------------------------------------
def cli(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def test_forged_file_is_refused_fast_and_small(codec: OrtCodec, tmp_path: Path) -> None:
    """The issue's case: 25 bytes claiming 4096x8192, refused in a fresh process."""
    forged = tmp_path / "forged.cbin"
    forged.write_bytes(forge(codec, 4096, 8192, b""))
    assert forged.stat().st_size == 25
    # a wrapper process, so RUSAGE_CHILDREN holds only the CLI's own peak
    wrapper = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "run = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "s = time.perf_counter() - t\n"
        "kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps({'rc': run.returncode, 's': s, 'kb': kb, 'err': run.stderr}))\n"
    )
    cmd = [sys.executable, "-m", "compressor.runtime", "decode", str(forged)]
    cmd += ["-o", str(tmp_path / "x.png"), "--codec", str(codec.folder)]
    out = subprocess.run(
        [sys.executable, "-c", wrapper, *cmd], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["rc"] == 2, report
    assert "33554432 pixels" in report["err"] and "Traceback" not in report["err"]
    assert report["s"] < 2.0, report
    assert report["kb"] < 300 * 1024, report
    assert not (tmp_path / "x.png").exists()


def test_cli_max_pixels(codec: OrtCodec, tmp_path: Path) -> None:
    forged = tmp_path / "f.cbin"
    forged.write_bytes(forge(codec, 2048, 2048, b""))
    base = ["decode", str(forged), "--codec", str(codec.folder), "-o", str(tmp_path / "o.png")]
    code, output = cli([*base, "--max-pixels", "1000000"])
    assert code == 2 and "4194304 pixels" in output and "limit of 1000000" in output
    code, output = cli(base)  # within the default: the payload check refuses it
    assert code == 2 and "payload is empty" in output
    code, output = cli([*base, "--max-pixels", "0"])
    assert code == 2 and "--max-pixels" in output
    src = tmp_path / "in.png"
    Image.fromarray(smooth_image(20, 30, seed=1)).save(src)
    args = ["encode", str(src), "--codec", str(codec.folder), "-o", str(tmp_path / "a.cbin")]
    code, output = cli([*args, "--max-pixels", "599"])
    assert code == 2 and "30x20 image (600 pixels)" in output and "limit of 599" in output


def test_cli_outputs_never_clobber(codec: OrtCodec, tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    Image.fromarray(smooth_image(40, 56, seed=3)).save(src)
    cbin, png = tmp_path / "a.cbin", tmp_path / "out.png"
    enc = ["encode", str(src), "--codec", str(codec.folder), "-o", str(cbin)]
    dec = ["decode", str(cbin), "--codec", str(codec.folder), "-o", str(png)]
    for path in (cbin, png):
        path.write_bytes(b"precious")
        os.chmod(path, 0o640)
    for args in (enc, dec):
        code, output = cli(args)
        assert code == 2 and "exists; pass --overwrite" in output, output
    assert cbin.read_bytes() == png.read_bytes() == b"precious"
    mask = os.umask(0o022)
    try:
        for args in (enc, dec):
            code, output = cli([*args, "--overwrite"])
            assert code == 0, output
    finally:
        os.umask(mask)
    assert container.unpack(cbin.read_bytes())[0].height == 40
    assert np.asarray(Image.open(png)).shape == (40, 56, 3)
    assert stat.S_IMODE(cbin.stat().st_mode) == stat.S_IMODE(png.stat().st_mode) == 0o644
    code, output = cli([*enc[:-1], str(tmp_path)])  # -o an existing directory
    assert code == 2 and output.count("\n") == 1 and "is a directory" in output
    code, output = cli([*dec[:-1], str(tmp_path / "new" / "deeper" / "o.png")])
    assert code == 0 and (tmp_path / "new" / "deeper" / "o.png").is_file()  # parents made
    code, output = cli([*dec[:-1], str(src / "o.png")])  # a parent that is a file
    assert code == 2 and "not a directory" in output
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_threads_from_the_thread_policy(codec: OrtCodec, tmp_path: Path) -> None:
    opts = codec_mod.session_options(None)
    assert opts.intra_op_num_threads == available_cores()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert codec_mod.session_options(1).intra_op_num_threads == 1
    with pytest.raises(RecipeError, match=rf"allowed 1\.\.{available_cores()}"):
        codec_mod.session_options(available_cores() + 1)
    forged = tmp_path / "f.cbin"
    forged.write_bytes(forge(codec, 64, 64, b""))
    args = ["decode", str(forged), "--codec", str(codec.folder), "-o", str(tmp_path / "o.png")]
    code, output = cli([*args, "--threads", "100000"])
    assert code == 2 and "threads 100000" in output
    assert "[default: all cores available]" in " ".join(cli(["decode", "--help"])[1].split())


# -- image bombs -----------------------------------------------------------------------------
def forged_png(path: Path, width: int, height: int) -> Path:
    """A tiny real PNG whose IHDR claims another size (CRC fixed): a decompression bomb."""
    Image.fromarray(smooth_image(8, 8, seed=0)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("w", "h", "message"),
    [
        (100_000, 100_000, r"declares 10000000000 pixels, more than the limit of 33554432"),
        (6000, 6000, r"6000x6000 image \(36000000 pixels\), more than the limit of 33554432"),
        (10_000, 10_000, r"10000x10000 image \(100000000 pixels\)"),  # Pillow only warns
    ],
)
def test_image_bombs_are_refused(tmp_path: Path, w: int, h: int, message: str) -> None:
    path = forged_png(tmp_path / "bomb.png", w, h)
    with pytest.raises(DataError, match=message):
        read_rgb8(path)


def test_cli_refuses_an_image_bomb(codec: OrtCodec, tmp_path: Path) -> None:
    path = forged_png(tmp_path / "bomb.png", 100_000, 100_000)
    args = ["encode", str(path), "--codec", str(codec.folder), "-o", str(tmp_path / "a.cbin")]
    code, output = cli(args)
    assert code == 2 and "10000000000 pixels" in output and "Traceback" not in output
    assert not (tmp_path / "a.cbin").exists()


# -- bounded working memory: chunked coding, tiled integer h_s -----------------------------
@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "mbt2018-mean"])
def test_chunked_coding_and_tiled_integer_hyper_are_byte_identical(
    exports: dict[str, Path], arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    codec = load_codec(exports[arch], threads=1)
    rgb8 = smooth_image(190, 250, seed=6)  # z 4 x 4 (padded to 256 x 256), y 16 x 16
    codec.hyper_tile = None
    whole = codec.encode(rgb8)
    z_sym = codec.decode_latents(whole)[1]["z"]
    ref_idx, ref_means = codec.integer(z_sym)  # type: ignore[misc]
    codec.hyper_tile = 1  # every z latent its own tile, each seeing the computed margin
    idx, means = codec._integer_hyper(z_sym, (1, 1, 16, 16))
    assert np.array_equal(idx, ref_idx) and idx.dtype == np.int32
    assert (means is None) == (ref_means is None)
    assert means is None or np.array_equal(means, ref_means)  # type: ignore[arg-type]
    monkeypatch.setattr(codec_mod, "Encoder", lambda: Encoder(chunk=7))  # many small chunks
    codec.hyper_tile = 2
    assert codec.encode(rgb8) == whole  # chunked symbols + tiled h_s: the same bytes


def test_integer_margin_of_a_hyperprior_h_s(exports: dict[str, Path]) -> None:
    from compressor.runtime import tiles

    codec = load_codec(exports["bmshj2018-hyperprior"], threads=1)
    assert codec.integer is not None
    # deconv k5 s2 p2 (2 / 2 z) + deconv k5 s2 p2 (2 / 4) + conv k3 p1 (1 / 4): 1.75 -> 2, +1
    assert tiles.integer_margin(codec.integer.layers) == 3
    with pytest.raises(ValueError, match="chunk"):
        Encoder(chunk=0)
