"""The learnable-table JPEG family: training, the Pillow bitstream, the tables in the file,
torch vs libjpeg agreement, export parity, baselines, bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from compressor import bitstream
from compressor.baselines import PillowCodec, mean_curve, sweep
from compressor.codec import TorchCodec
from compressor.data import to_rgb8_array, to_tensor
from compressor.errors import BitstreamError, CheckpointError, RecipeError
from compressor.export import export_model
from compressor.metrics import bpp_from_bytes, psnr
from compressor.models import MODELS
from compressor.models.jpeg import ANNEX_K_CHROMA, ANNEX_K_LUMA, JpegAdapter, ijg_table
from compressor.prune import PruneParams, prune_model
from compressor.train import TrainConfig, train
from tests.conftest import smooth_image


def jpeg_model(init_quality: int = 50) -> JpegAdapter:
    model = MODELS.get("jpeg").build("jpeg", {"init_quality": init_quality})
    model.finalize()
    return model.eval()  # type: ignore[return-value]


def set_tables(model: JpegAdapter, luma: torch.Tensor, chroma: torch.Tensor) -> None:
    with torch.no_grad():
        model.jnet.tables.log_q.copy_(torch.stack([luma, chroma]).float().log())


def asymmetric(model: JpegAdapter) -> None:
    """Tables that tell rows from columns: fine vertical, coarse horizontal frequencies."""
    t = torch.full((8, 8), 4.0)
    t[:, 2:] = 60.0
    t[0, 0] = 8.0
    set_tables(model, t, t + 3)


def test_ijg_scaling_and_table_order_match_pillow() -> None:
    img = smooth_image(64, 80, 3)
    for quality in (10, 50, 90):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        with Image.open(buf) as f:
            assert isinstance(f, JpegImageFile)
            assert list(f.quantization[0]) == ijg_table(ANNEX_K_LUMA, quality).ravel().tolist()
            assert list(f.quantization[1]) == ijg_table(ANNEX_K_CHROMA, quality).ravel().tolist()


def test_bitstream_is_a_jpeg_file_with_the_learned_tables() -> None:
    model = jpeg_model()
    asymmetric(model)
    img = smooth_image(96, 128, 1)
    data = model.compress(to_tensor(img))
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"  # SOI ... EOI: a JPEG file
    with Image.open(io.BytesIO(data)) as f:
        assert isinstance(f, JpegImageFile)
        assert f.format == "JPEG" and f.layer[0][1:3] == (2, 2)  # 4:2:0
        assert [list(f.quantization[i]) for i in (0, 1)] == model.qtables()
    assert model.qtables()[0][:3] == [8, 4, 60] and model.qtables()[1][8] == 7
    rec = to_rgb8_array(model.decompress(data))
    assert rec.shape == img.shape and psnr(img, rec) > 25.0  # measured 27.8 dB (coarse tables)
    # exact bpp: the payload is the file; TorchCodec adds only the two size varints
    assert bpp_from_bytes(len(data), 96, 128) == 8 * len(data) / (96 * 128)
    sizes = bitstream.write_varint(96) + bitstream.write_varint(128)
    assert TorchCodec(model).encode(img) == sizes + data


def test_torch_forward_agrees_with_libjpeg() -> None:
    """Hard-rounded torch forward vs Pillow's decoded file: measured 47.7 dB apart (libjpeg's
    integer DCT and 8-bit samples); transposed tables are far off, so the order is right."""
    model = jpeg_model()
    asymmetric(model)
    img = smooth_image(128, 160, 3)
    x = to_tensor(img)
    with torch.no_grad():
        ours = to_rgb8_array(model.forward_rd(x).x_hat)
    pillow = to_rgb8_array(model.decompress(model.compress(x)))
    agreement = psnr(pillow, ours)
    assert agreement > 44.0
    transposed = [np.array(t).reshape(8, 8).T.ravel().tolist() for t in model.qtables()]
    other = PillowCodec("jpeg", qtables=transposed)
    assert psnr(other.decode(other.encode(img)), ours) < agreement - 8.0


def test_training_lowers_the_rd_loss_and_moves_the_tables(tmp_path: Path) -> None:
    images = [smooth_image(160, 160, s) for s in range(4)]
    model = jpeg_model(51)
    before = model.qtables()
    cfg = TrainConfig(
        lmbda=0.013, crop=64, val_crop=128, batch_size=4, lr=1e-2, aux_lr=1e-2,
        max_steps=40, eval_every=10, patience=10, threads=1,
    )  # fmt: skip
    result = train(model, images, cfg, tmp_path / "j.pt", resume=False)
    first = result.history[0]["loss"]
    assert result.best_val_loss < 0.6 * first, (first, result.best_val_loss)
    assert model.qtables() != before
    loaded = JpegAdapter.build("jpeg", model.config)
    loaded.load_state_dict(torch.load(tmp_path / "j.pt", weights_only=True)["state_dict"])
    assert loaded.qtables() == model.qtables()


def test_export_parity(tmp_path: Path) -> None:
    model = jpeg_model(75)
    out = export_model(model, tmp_path / "exp")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "factorized" and manifest["latents"]["y"] == {
        "channels": 384,
        "stride": 16,
    }
    assert max(manifest["parity_max_abs_diff"].values()) < 1e-4


def test_baselines_sweep_rows() -> None:
    images = [("a", smooth_image(176, 176, 4))]
    rows = sweep(images, "jpeg", [20, 80]) + sweep(images, "webp", [20, 80])
    assert {(r["codec"], r["quality"]) for r in rows} == {
        ("jpeg", 20), ("jpeg", 80), ("webp", 20), ("webp", 80),
    }  # fmt: skip
    for kind in ("jpeg", "webp"):
        low, high = mean_curve([r for r in rows if r["codec"] == kind])
        assert 0 < low["bpp"] < high["bpp"] and low["psnr"] < high["psnr"]
        assert 0 < low["ms_ssim"] < high["ms_ssim"] <= 1


def test_bad_input_is_refused() -> None:
    with pytest.raises(CheckpointError, match=r"no quality 9; allowed: 1\.\.8"):
        JpegAdapter.default_config("jpeg", 9)
    with pytest.raises(CheckpointError, match=r"init_quality=101 is out of range"):
        JpegAdapter.build("jpeg", {"init_quality": 101})
    with pytest.raises(CheckpointError, match="bad config key 'N'"):
        JpegAdapter.build("jpeg", {"N": 8})
    with pytest.raises(CheckpointError, match=r"allowed: 1\.\.100"):
        ijg_table(ANNEX_K_LUMA, 0)
    with pytest.raises(RecipeError, match="out of range"):
        PillowCodec("webp", 0)
    with pytest.raises(RecipeError, match=r"1\.\.255"):
        PillowCodec("jpeg", qtables=[[0] * 64, [1] * 64])
    with pytest.raises(BitstreamError, match="not a readable JPEG"):
        jpeg_model().decompress(b"\x00not a jpeg")


def test_pruning_gives_a_clear_error() -> None:
    for method, ratio in (("structured", {"latent": 0.3}), ("unstructured", {"all": 0.5})):
        with pytest.raises(RecipeError, match=r"jpeg cannot be pruned.*no channels or weights"):
            prune_model(jpeg_model(), PruneParams(method=method, ratio=ratio))
