"""Every registered model arch (and the test-only family), through the CodecAdapter contract
alone: the `arch` fixture (tests/plugins/conftest.py) parametrises them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compressor.codec import TorchCodec
from compressor.data import Padding, to_rgb8_array, to_tensor
from compressor.metrics import psnr
from compressor.models import MODELS
from tests.conftest import smooth_image, tiny_model

#: PSNR (dB) of the bitstream's decoded image against the eval-mode forward pass's
#: reconstruction (both 8-bit). Where compress() quantises exactly as the eval forward does,
#: the two are the same image (inf). Measured on the tiny seed-0 models, 70x90:
EVAL_FORWARD_AGREEMENT_DB = {
    # the eval forward rounds y without the context model's means, compress() around them:
    # a few latent elements land one bin apart (measured 55.3 dB)
    "mbt2018": 45.0,
    # the same, through cheng2020's attention-free residual decoder (measured 38.0 dB)
    "cheng2020-anchor": 32.0,
    # the torch forward is a float DCT / IDCT, the bitstream libjpeg's integer one with its
    # own chroma upsampling (measured 38.6 dB)
    "jpeg": 35.0,
}


def eval_forward_rgb8(model, img: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    h, w = img.shape[:2]
    pad = Padding.to_multiple(h, w, model.pad_multiple)
    with torch.no_grad():
        x_hat = model.forward_rd(pad.pad(to_tensor(img))).x_hat.clamp(0, 1)
    return to_rgb8_array(pad.crop(x_hat))


def test_forward_and_real_bitstream_roundtrip(arch: str) -> None:
    model = tiny_model(arch)
    x = torch.rand(1, 3, 64, 64)
    out = model.forward_rd(x)
    assert out.x_hat.shape == x.shape
    assert float(out.bpp(64 * 64)) > 0
    codec = TorchCodec(model)
    img = smooth_image(70, 90, 1)  # not a multiple of 64: padding and cropping are exercised
    data = codec.encode(img)
    rec = codec.decode(data)
    assert rec.shape == img.shape and rec.dtype == img.dtype
    assert codec.decode(data).tobytes() == rec.tobytes()  # decoding is deterministic
    # the metric is the textbook formula on the 8-bit images
    mse = float(np.mean((img.astype(np.float64) - rec.astype(np.float64)) ** 2))
    assert psnr(img, rec) == pytest.approx(10 * math.log10(255.0**2 / mse), abs=1e-9)
    # the decoded bitstream is the eval forward's reconstruction (up to the table's bound):
    # the bytes carry what the model computes, padding and cropping included
    reference = eval_forward_rgb8(model, img)
    agreement = psnr(reference, rec)  # inf when identical
    assert agreement >= EVAL_FORWARD_AGREEMENT_DB.get(arch, math.inf), agreement
    assert abs(psnr(img, rec) - psnr(img, reference)) < 0.01
    components = set(model.components())
    # HiFiC calls its decoder the generator (the paper's name, and the one its recipes use)
    assert "encoder" in components and components & {"decoder", "generator"}


def test_infer_config_recovers_the_widths(arch: str) -> None:
    model = tiny_model(arch)
    assert MODELS.get(arch).infer_config(arch, model.state_dict()) == model.config
    assert MODELS.get(arch).guess_arch(model.state_dict()) == arch
