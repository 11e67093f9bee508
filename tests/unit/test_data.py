"""Image reading (odd formats -> 8-bit RGB), folders, and CompressAI-identical padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from compressai.ops import compute_padding
from PIL import Image

from compressor.data import Padding, list_images, read_rgb8
from compressor.errors import DataError


def test_grey_rgba_and_16bit_become_8bit_rgb(tmp_path: Path) -> None:
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    out = read_rgb8(tmp_path / "g.png")
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], grey) and np.array_equal(out[..., 2], grey)

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # one transparent pixel -> white background
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_rgb8(tmp_path / "a.png")
    assert out.shape == (4, 4, 3)
    assert tuple(out[1, 1]) == (200, 0, 0) and tuple(out[0, 0]) == (255, 255, 255)

    deep = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    Image.fromarray(deep).save(tmp_path / "d.png")
    out = read_rgb8(tmp_path / "d.png")
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    assert out[7, 7, 0] == round(63000 / 65535 * 255)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has 0 images"):
        list_images(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"notes\.csv is not an image file"):
        list_images(tmp_path)
    (tmp_path / "notes.csv").unlink()
    (tmp_path / "fake.png").write_text("not a png")
    assert len(list_images(tmp_path)) == 2
    with pytest.raises(DataError, match=r"fake\.png is not a readable image"):
        read_rgb8(tmp_path / "fake.png")


@pytest.mark.parametrize("h,w", [(64, 64), (100, 130), (512, 768), (1, 65)])
def test_padding_matches_compressai(h: int, w: int) -> None:
    pad, _ = compute_padding(h, w, min_div=64)
    ours = Padding.to_multiple(h, w, 64)
    assert (ours.left, ours.right, ours.top, ours.bottom) == pad
    x = torch.rand(1, 3, h, w)
    assert torch.equal(ours.crop(ours.pad(x)), x)
