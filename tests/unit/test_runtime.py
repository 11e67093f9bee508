"""The torch-free runtime: same images and rates as torch, deterministic, no torch imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from compressor.cli import main
from compressor.codec import TorchCodec, open_codec
from compressor.data import Padding, read_rgb8, to_rgb8_array, to_tensor
from compressor.errors import RecipeError
from compressor.export import export_model
from compressor.metrics.psnr import psnr
from compressor.models import CodecAdapter
from compressor.runtime import OrtCodec, image, load_codec
from compressor.runtime.entropy import Decoder, Encoder, Tables, _table_order
from tests.conftest import BUNDLED, KODAK, REPO, need, smooth_image, tiny_model

ARCHS = ["bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean"]
#: our header (magic, version, model id, 6 varints) + CRC, minus TorchCodec's 2 size varints
HEADER_OVERHEAD = 4 + 1 + 8 + 6 + 4
Pair = tuple[CodecAdapter, Path]


def loud_model(arch: str, gain: float = 6.0) -> CodecAdapter:
    """A tiny model whose latents are large enough to cost real bits (and hit escapes)."""
    model = tiny_model(arch, seed=2)
    with torch.no_grad():
        model.net.g_a[-1].weight.mul_(gain)
    model.finalize()
    return model.eval()


@pytest.fixture(scope="module", params=ARCHS)
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    model = loud_model(request.param)
    folder = export_model(model, tmp_path_factory.mktemp("exp") / request.param)
    return model, folder


def test_runtime_matches_torch(pair: Pair) -> None:
    model, folder = pair
    codec, ref = load_codec(folder, threads=1), TorchCodec(model)
    for i, (h, w) in enumerate([(128, 160), (70, 150), (64, 64)]):
        rgb8 = smooth_image(h, w, seed=10 + i)
        data, ref_data = codec.encode(rgb8), ref.encode(rgb8)
        decoded, ref_decoded = codec.decode(data), ref.decode(ref_data)
        assert decoded.shape == rgb8.shape and decoded.dtype == np.uint8
        # same graphs (to float rounding), same symbols: the same 8-bit image
        assert np.abs(decoded.astype(int) - ref_decoded.astype(int)).max() <= 1
        assert abs(psnr(rgb8, decoded) - psnr(rgb8, ref_decoded)) <= 0.05
        # same tables: the payload costs what compress() costs (escapes cost less here)
        assert len(data) - HEADER_OVERHEAD <= len(ref_data) * 1.01 + 2


def test_escape_coding_is_exact_at_high_rates(tmp_path: Path) -> None:
    model = loud_model("bmshj2018-hyperprior", gain=40.0)
    codec = load_codec(export_model(model, tmp_path / "exp"), threads=1)
    rgb8 = smooth_image(96, 128, seed=4)
    data = codec.encode(rgb8)
    ref = TorchCodec(model)
    assert len(data) > 1000  # far out of the tables' range: many escapes
    assert np.array_equal(codec.decode(data), ref.decode(ref.encode(rgb8)))


def _tables(count: int, seed: int) -> Tables:
    """CompressAI-layout 16-bit CDFs of discretised Gaussians, one per table."""
    rng = np.random.default_rng(seed)
    lengths, rows = [], []
    for _ in range(count):
        half = int(rng.integers(1, 12))
        x = np.arange(-half, half + 1)
        pmf = np.exp(-0.5 * (x / rng.uniform(0.3, 4.0)) ** 2)
        freqs = np.maximum(1, np.floor(pmf / pmf.sum() * (65536 - 2 * half - 40))).astype(int)
        freqs = np.append(freqs, 65536 - freqs.sum())  # the escape symbol takes the rest
        rows.append(np.concatenate([[0], np.cumsum(freqs)]))
        lengths.append(len(freqs) + 1)
    cdf = np.zeros((count, max(lengths)), dtype=np.int32)
    for k, row in enumerate(rows):
        cdf[k, : len(row)] = row
    offsets = -np.array([(n - 2) // 2 for n in lengths], dtype=np.int32)
    return Tables.from_arrays(cdf, np.array(lengths, dtype=np.int32), offsets, "test")


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.integers(-6, 6), st.integers(-(2**29), 2**29)), min_size=0, max_size=300
    ),
    seed=st.integers(0, 3),
)
def test_entropy_coder_roundtrip(values: list[int], seed: int) -> None:
    tables = _tables(5, seed)
    v = np.array(values, dtype=np.int64)
    idx = np.arange(v.size) % len(tables)
    enc = Encoder()
    enc.latent(v, idx, tables)
    enc.latent(v[::-1].copy(), idx, tables)  # a second latent on the same stack
    dec = Decoder(enc.finish())
    assert np.array_equal(dec.latent(idx, tables), v)
    assert np.array_equal(dec.latent(idx, tables), v[::-1])
    dec.finish()


@pytest.mark.parametrize("tables", [5, 256, 257, 70_000])
def test_table_order_is_the_int64_stable_argsort(tables: int) -> None:
    """Narrow keys only make the sort a radix sort: the order is unique, so it is the same."""
    idx = np.random.default_rng(tables).integers(0, tables, 50_000)
    assert np.array_equal(_table_order(idx, tables), np.argsort(idx, kind="stable"))
    with pytest.raises(ValueError, match="outside"):
        _table_order(np.array([0, tables]), tables)


def test_repeatable_and_thread_count_independent(pair: Pair) -> None:
    _, folder = pair
    one, two = load_codec(folder, threads=1), load_codec(folder, threads=2)
    for i in range(3):
        rgb8 = smooth_image(96 + 16 * i, 128, seed=20 + i)
        data = one.encode(rgb8)
        assert two.encode(rgb8) == data
        first = one.decode(data)
        assert np.array_equal(one.decode(data), first)
        assert np.array_equal(two.decode(data), first)


@settings(max_examples=200, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 300), m=st.sampled_from([1, 16, 64, 128]))
def test_padding_is_datas_padding(h: int, w: int, m: int) -> None:
    p = Padding.to_multiple(h, w, m)
    assert image.padding(h, w, m) == (p.top, p.bottom, p.left, p.right)


def test_pixel_conversions_are_datas() -> None:
    rgb8 = smooth_image(37, 53, seed=1)
    pad = image.padding(37, 53, 64)
    p = Padding.to_multiple(37, 53, 64)
    x = image.to_input(rgb8, pad)
    assert np.array_equal(x, p.pad(to_tensor(rgb8)).numpy())
    out = np.random.default_rng(0).normal(0.5, 0.4, x.shape).astype(np.float32)
    out[0, 0, 0, :8] = [0.5 / 255, 1.5 / 255, 2.5 / 255, -1, 2, np.nan, 0, 1]  # ties, clamps
    out = np.nan_to_num(out, nan=0.3)
    assert np.array_equal(image.from_output(out, pad), to_rgb8_array(p.crop(torch.from_numpy(out))))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16", "LA", "CMYK"])
def test_image_reader_is_datas(mode: str, tmp_path: Path) -> None:
    rgb = Image.fromarray(smooth_image(20, 30, seed=2))
    img = rgb.convert("I;16") if mode == "I;16" else rgb.convert(mode)
    path = tmp_path / ("a.tif" if mode in ("CMYK", "I;16") else "a.png")
    img.save(path)
    assert np.array_equal(image.read_rgb8(path), read_rgb8(path))


def test_ort_codec_is_a_codec_for_validate(pair: Pair) -> None:
    _, folder = pair
    codec = open_codec(folder, threads=1)
    assert isinstance(codec, OrtCodec) and codec.name.startswith("onnx:")
    rgb8 = smooth_image(64, 80, seed=3)
    assert codec.decode(codec.encode(rgb8)).shape == rgb8.shape


def test_bad_provider_and_threads(pair: Pair) -> None:
    _, folder = pair
    with pytest.raises(RecipeError, match=r"not available here; available: .*CPUExecutionProvider"):
        load_codec(folder, provider="nosuch")
    with pytest.raises(RecipeError, match=r"threads 0: .* allowed 1\.\."):
        load_codec(folder, threads=0)


def test_cli_encode_decode(pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, folder = pair
    src = tmp_path / "in.png"
    Image.fromarray(smooth_image(72, 100, seed=5)).save(src)
    runner = CliRunner()
    args = ["encode", str(src), "--codec", str(folder), "-o", str(tmp_path / "a.cbin")]
    result = runner.invoke(main, [*args, "--threads", "1", "--provider", "cpu"])
    assert result.exit_code == 0, result.output
    assert "bpp" in result.output
    result = runner.invoke(
        main, ["decode", str(tmp_path / "a.cbin"), "-o", str(tmp_path / "o.png")]
    )
    assert result.exit_code == 2 and "no export of model" in result.output  # not found
    monkeypatch.setenv("COMPRESSOR_CODECS", str(folder.parent))
    result = runner.invoke(
        main, ["decode", str(tmp_path / "a.cbin"), "-o", str(tmp_path / "o.png")]
    )
    assert result.exit_code == 0, result.output
    expected = load_codec(folder).decode((tmp_path / "a.cbin").read_bytes())
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o.png")), expected)


def test_encode_decode_never_import_torch(pair: Pair, tmp_path: Path) -> None:
    _, folder = pair
    src = tmp_path / "in.png"
    Image.fromarray(smooth_image(64, 96, seed=6)).save(src)
    script = (
        "import json, sys\n"
        "from compressor.runtime.cli import main\n"
        "codes = []\n"
        "for args in (sys.argv[1:7], sys.argv[7:]):\n"
        "    try:\n"
        "        main.main(args=args, standalone_mode=False)\n"
        "        codes.append(0)\n"
        "    except SystemExit as e:\n"
        "        codes.append(e.code)\n"
        "print(json.dumps({'codes': codes, 'torch': 'torch' in sys.modules}))\n"
    )
    cbin, png = tmp_path / "x.cbin", tmp_path / "x.png"
    args = ["encode", str(src), "--codec", str(folder), "-o", str(cbin)]
    args += ["decode", str(cbin), "--codec", str(folder), "-o", str(png)]
    run = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report == {"codes": [0, 0], "torch": False}
    assert np.array_equal(np.asarray(Image.open(png)), load_codec(folder).decode(cbin.read_bytes()))


def _kodak_check(tmp_path: Path, names: list[str]) -> None:
    from compressor import checkpoint

    need(BUNDLED, "the bundled trained model (compressor/assets)")
    kodak = need(KODAK, "the Kodak set")
    model = checkpoint.load(BUNDLED)
    folder = export_model(model, tmp_path / "exp")
    one, two, ref = load_codec(folder, threads=1), load_codec(folder, threads=2), TorchCodec(model)
    for name in names:
        rgb8 = read_rgb8(kodak / name)
        pixels = rgb8.shape[0] * rgb8.shape[1]
        data, ref_data = one.encode(rgb8), ref.encode(rgb8)
        bpp, ref_bpp = len(data) * 8 / pixels, len(ref_data) * 8 / pixels
        decoded = one.decode(data)
        assert abs(bpp - ref_bpp) <= 0.01 * ref_bpp, (name, bpp, ref_bpp)
        assert abs(psnr(rgb8, decoded) - psnr(rgb8, ref.decode(ref_data))) <= 0.05, name
        assert np.array_equal(one.decode(data), decoded)
        assert np.array_equal(two.decode(data), decoded)
        assert two.encode(rgb8) == data


def test_bundled_model_on_kodak_matches_torch(tmp_path: Path) -> None:
    _kodak_check(tmp_path, ["kodim01.png", "kodim12.png", "kodim23.png"])


@pytest.mark.slow
def test_bundled_model_on_all_of_kodak(tmp_path: Path) -> None:
    _kodak_check(tmp_path, [f"kodim{i:02d}.png" for i in range(1, 25)])
