"""The export rewrites are exact in float: sub-pixel convolution and folded GDN."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from compressai.layers import GDN, GDN1
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compressor.export import export_model, rewrites
from compressor.export.onnx import export_graph
from compressor.export.rewrites import FoldedGDN, PhaseConv, SubpixelConv, rewrite
from compressor.metrics.complexity import count_macs
from compressor.quant import QUANTIZERS, QuantParams
from compressor.quant import graph as qg
from tests.conftest import smooth_image, tiny_model

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


# both rewrites, each with the seed its own tests were written with
EXACT_FORMS = [
    pytest.param(SubpixelConv, 0, id="subpixel"),
    pytest.param(PhaseConv, 7, id="phases"),
]
ANY_LAYOUT_FORMS = [
    pytest.param(SubpixelConv, 0, id="subpixel"),
    pytest.param(PhaseConv, 1, id="phases"),
]


@pytest.mark.parametrize(("form", "seed"), EXACT_FORMS)
@pytest.mark.parametrize(("k", "s", "p", "op"), DECONVS)
@pytest.mark.parametrize("bias", [True, False])
def test_rewrite_matches_conv_transpose(
    form: type[nn.Module], seed: int, k: int, s: int, p: int, op: int, bias: bool
) -> None:
    torch.manual_seed(k * 100 + s * 10 + p + seed)
    deconv = nn.ConvTranspose2d(6, 5, k, s, p, op, bias=bias)
    rewritten = form(deconv)
    for h, w in [(1, 1), (4, 7), (9, 6), (16, 16), (7, 5)]:
        x = torch.randn(2, 6, h, w) * 3
        with torch.no_grad():
            assert _max_diff(deconv(x), rewritten(x)) <= TOL
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in rewritten.modules())


@pytest.mark.parametrize(("form", "seed"), ANY_LAYOUT_FORMS)
@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 7),
    s=st.integers(1, 4),
    data=st.data(),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
)
def test_rewrite_any_layout(
    form: type[nn.Module], seed: int, k: int, s: int, data: st.DataObject, h: int, w: int
) -> None:
    p = data.draw(st.integers(0, (k - 1) // 2))
    op = data.draw(st.integers(0, s - 1))
    torch.manual_seed(seed)
    deconv = nn.ConvTranspose2d(3, 2, k, s, p, op)
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        assert _max_diff(deconv(x), form(deconv)(x)) <= TOL


def test_phases_spend_no_mac_on_zeros() -> None:
    # CompressAI's deconv (5, 2, 2, 1): phase kernels 3x3, 3x2, 2x3, 2x2 = 25 taps per pair,
    # as many as the transposed conv itself; the one-kernel sub-pixel form spends 4 * 3x3 = 36
    deconv = nn.ConvTranspose2d(6, 5, 5, 2, 2, 1)
    phases = PhaseConv(deconv)
    assert [tuple(c.weight.shape[2:]) for c in phases.phases] == [(3, 3), (3, 2), (2, 3), (2, 2)]
    x = torch.randn(1, 6, 7, 10)
    pairs = 6 * 5 * 7 * 10
    assert count_macs(deconv, (x,)) == 25 * pairs
    assert count_macs(phases, (x,)) == 25 * pairs
    assert count_macs(SubpixelConv(deconv), (x,)) == 36 * pairs


def test_rewrite_picks_phases_by_width() -> None:
    seq = nn.Sequential(
        nn.ConvTranspose2d(4, 32, 5, 2, 2, 1), nn.ConvTranspose2d(32, 3, 5, 2, 2, 1)
    )
    default = rewrite(seq)
    assert [type(m) for m in default] == [PhaseConv, SubpixelConv]  # 32 >= 16 > 3
    assert [type(m) for m in rewrite(seq, phase_min_channels=0)] == [PhaseConv, PhaseConv]
    assert [type(m) for m in rewrite(seq, phase_min_channels=64)] == [SubpixelConv] * 2
    x = torch.randn(1, 4, 5, 6)
    with torch.no_grad():
        assert _max_diff(seq(x), default(x)) <= TOL


def test_phases_export_as_padded_convs(tmp_path: Path) -> None:
    """One ONNX Conv per phase with its own pads (no Pad node), Concat + DepthToSpace (DCR);
    ONNX Runtime matches the transposed conv at odd and even dynamic sizes."""
    torch.manual_seed(5)
    deconv = nn.ConvTranspose2d(6, 5, 5, 2, 2, 1)
    export_graph(PhaseConv(deconv), torch.randn(1, 6, 4, 6), tmp_path / "p.onnx", 17)
    graph = onnx.load(tmp_path / "p.onnx").graph
    ops = Counter(n.op_type for n in graph.node)
    assert ops == Counter({"Conv": 4, "Concat": 1, "DepthToSpace": 1})
    pads = [next(a.ints for a in n.attribute if a.name == "pads") for n in graph.node
            if n.op_type == "Conv"]  # fmt: skip
    assert [list(p) for p in pads] == [[1, 1, 1, 1], [1, 0, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]]
    d2s = next(n for n in graph.node if n.op_type == "DepthToSpace")
    assert onnx.helper.get_attribute_value(d2s.attribute[-1]) in (b"DCR", "DCR")
    sess = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    for h, w in [(5, 7), (8, 3)]:
        x = torch.randn(1, 6, h, w)
        with torch.no_grad():
            ref = deconv(x).numpy()
        got = sess.run(None, {"input": x.numpy()})[0]
        assert got.shape == ref.shape and float(np.abs(got - ref).max()) <= TOL


@pytest.mark.parametrize(("preprocess", "move_gdn"), [(True, False), (False, False), (True, True)])
def test_phase_decoder_quantizes_to_int8_convs_only(
    tmp_path: Path, preprocess: bool, move_gdn: bool
) -> None:
    """Every phase conv of the decoder runs as QLinearConv in ORT: 4 deconvs x 4 phases + 3
    IGDN convs (x 4 phases with the IGDN moved onto its deconv's phases: gdn_in_phases), none
    float (the exported parity check inside export_model passed too)."""
    model = tiny_model()
    for m in model.components()["decoder"].modules():
        if isinstance(m, GDN):
            # distinct betas: the ONNX exporter merges equal initializers through Identity
            # nodes, and ORT leaves a conv whose bias is no initializer in float
            _random_gdn(m)
    with mock.patch.object(rewrites, "PHASE_MIN_CHANNELS", 0):
        src = export_model(model, tmp_path / "fp32", gdn_in_phases=move_gdn)
    n_convs = 4 * 4 + 3 * (4 if move_gdn else 1)
    images = [smooth_image(96, 128, i) for i in range(2)]
    params = QuantParams(preprocess=preprocess)
    QUANTIZERS.get("ort-static")(src, tmp_path / "q", params, images, 1)
    g_s = onnx.load(tmp_path / "q" / "g_s.onnx")
    assert qg.float_convs(g_s) == [] and len(qg.conv_names(g_s)) == n_convs
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "g_s.opt.onnx")
    ort.InferenceSession(str(tmp_path / "q" / "g_s.onnx"), opts, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    assert ops["QLinearConv"] == n_convs and ops["Conv"] == 0 and ops["Pad"] == 0


def test_subpixel_refuses_what_it_cannot_rewrite() -> None:
    with pytest.raises(ValueError, match="groups=1"):
        SubpixelConv(nn.ConvTranspose2d(4, 4, 5, 2, 2, 1, groups=2))
    with pytest.raises(ValueError, match="groups=1"):
        PhaseConv(nn.ConvTranspose2d(4, 4, 5, 2, 2, 1, groups=2))


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


def test_phase_conv_trains_like_the_deconvolution_it_replaces() -> None:
    """QAT and fine-tuning train through a rewritten decoder: PhaseConv's forward must be
    differentiable outside ONNX export (its export-only autograd Functions have no backward;
    the bundled model's QAT failed on them), with the deconvolution's gradients."""
    torch.manual_seed(0)
    deconv = nn.ConvTranspose2d(16, 16, 5, stride=2, padding=2, output_padding=1)
    phase = PhaseConv(deconv)
    x = torch.rand(1, 16, 6, 7)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = deconv(xa), phase(xb)
    assert float((ya - yb).abs().max()) < 1e-5
    ya.square().sum().backward()
    yb.square().sum().backward()
    assert xa.grad is not None and xb.grad is not None
    assert float((xa.grad - xb.grad).abs().max()) < 1e-4
    assert deconv.bias is not None and deconv.bias.grad is not None and phase.bias is not None
    assert torch.allclose(deconv.bias.grad, phase.bias.grad, atol=1e-3)  # type: ignore[arg-type]
