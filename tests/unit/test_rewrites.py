"""The export rewrites are exact in float: sub-pixel convolution and folded GDN."""

from __future__ import annotations

import pytest
import torch
from compressai.layers import GDN, GDN1
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compressor.export.rewrites import FoldedGDN, SubpixelConv, rewrite
from tests.conftest import tiny_model

TOL = 1e-5

# (kernel, stride, padding, output_padding): CompressAI's deconv() is (5, 2, 2, 1) in g_s and
# h_s of every zoo model; the rest are other layouts its layers and common codecs use.
DECONVS = [
    (5, 2, 2, 1),
    (3, 2, 1, 1),
    (3, 2, 1, 0),
    (4, 2, 1, 0),
    (5, 2, 2, 0),
    (2, 2, 0, 0),
    (5, 2, 0, 0),
    (3, 1, 1, 0),
    (6, 3, 1, 2),
    (9, 4, 4, 3),
]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


@pytest.mark.parametrize(("k", "s", "p", "op"), DECONVS)
@pytest.mark.parametrize("bias", [True, False])
def test_subpixel_matches_conv_transpose(k: int, s: int, p: int, op: int, bias: bool) -> None:
    torch.manual_seed(k * 100 + s * 10 + p)
    deconv = nn.ConvTranspose2d(6, 5, k, s, p, op, bias=bias)
    sub = SubpixelConv(deconv)
    for h, w in [(1, 1), (4, 7), (9, 6), (16, 16)]:
        x = torch.randn(2, 6, h, w) * 3
        with torch.no_grad():
            assert _max_diff(deconv(x), sub(x)) <= TOL
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in sub.modules())


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 7),
    s=st.integers(1, 4),
    data=st.data(),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
)
def test_subpixel_any_layout(k: int, s: int, data: st.DataObject, h: int, w: int) -> None:
    p = data.draw(st.integers(0, (k - 1) // 2))
    op = data.draw(st.integers(0, s - 1))
    torch.manual_seed(0)
    deconv = nn.ConvTranspose2d(3, 2, k, s, p, op)
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        assert _max_diff(deconv(x), SubpixelConv(deconv)(x)) <= TOL


def test_subpixel_refuses_what_it_cannot_rewrite() -> None:
    with pytest.raises(ValueError, match="groups=1"):
        SubpixelConv(nn.ConvTranspose2d(4, 4, 5, 2, 2, 1, groups=2))


def _random_gdn(layer: GDN) -> GDN:
    # trained GDNs are far from their identity-like init; randomise through the reparam
    with torch.no_grad():
        c = layer.beta.numel()
        layer.beta.copy_(layer.beta_reparam.init(torch.rand(c) + 0.5))
        layer.gamma.copy_(layer.gamma_reparam.init(torch.rand(c, c) * 0.3))
    return layer


@pytest.mark.parametrize("cls", [GDN, GDN1])
@pytest.mark.parametrize("inverse", [False, True])
def test_folded_gdn_is_exact(cls: type[GDN], inverse: bool) -> None:
    torch.manual_seed(1)
    layer = _random_gdn(cls(7, inverse=inverse))
    folded = FoldedGDN(layer)
    x = torch.randn(2, 7, 11, 13) * 4
    with torch.no_grad():
        assert _max_diff(layer(x), folded(x)) <= TOL
    # plain tensors: nothing left to reparametrise at export time
    assert [n for n, _ in folded.named_parameters()] == []
    assert {n for n, _ in folded.named_buffers()} == {"beta", "gamma"}


@pytest.mark.parametrize("arch", ["bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean"])
def test_rewritten_model_parts_match(arch: str) -> None:
    model = tiny_model(arch, seed=3)
    for name, part in model.components().items():
        if name not in ("encoder", "decoder", "hyper_encoder", "hyper_decoder"):
            continue
        for m in part.modules():
            if isinstance(m, GDN):
                _random_gdn(m)
        new = rewrite(part)
        assert not any(isinstance(m, (nn.ConvTranspose2d, GDN)) for m in new.modules())
        c_in = next(m for m in part.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d))
        x = torch.randn(1, c_in.in_channels, 8, 12)
        with torch.no_grad():
            assert _max_diff(part(x), new(x)) <= TOL, name
