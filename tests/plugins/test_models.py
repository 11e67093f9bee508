"""Every registered model arch, through the CodecAdapter contract alone."""

from __future__ import annotations

import pytest
import torch

from compressor.codec import TorchCodec
from compressor.metrics import psnr
from compressor.models import MODELS
from tests.conftest import smooth_image, tiny_model


@pytest.mark.parametrize("arch", MODELS.names())
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
    assert psnr(img, rec) > 0
    components = set(model.components())
    # HiFiC calls its decoder the generator (the paper's name, and the one its recipes use)
    assert "encoder" in components and components & {"decoder", "generator"}


@pytest.mark.parametrize("arch", MODELS.names())
def test_infer_config_recovers_the_widths(arch: str) -> None:
    model = tiny_model(arch)
    assert MODELS.get(arch).infer_config(arch, model.state_dict()) == model.config
    assert MODELS.get(arch).guess_arch(model.state_dict()) == arch
