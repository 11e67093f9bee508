"""The (I)GDN after a PhaseConv runs on each phase before the Concat (rewrites.gdn_into_phases):
exact in float (torch and ONNX), differentiable, matched one to one by the quantizers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from compressai.layers import GDN, GDN1
from torch import nn

from compressor.export import rewrites
from compressor.export.onnx import export_graph
from compressor.export.rewrites import FoldedGDN, PhaseConv, SubpixelConv, rewrite
from compressor.metrics.complexity import count_macs
from compressor.quant import graph as qg
from compressor.quant import ort_static, torch_src
from compressor.quant.fakequant import QGDN, Scheme, strip, wrap

TOL = 1e-5


def _gdn(c: int, *, inverse: bool = True, cls: type[GDN] = GDN) -> GDN:
    # trained GDNs are far from their identity-like init; randomise through the reparam
    layer = cls(c, inverse=inverse)
    with torch.no_grad():
        layer.beta.copy_(layer.beta_reparam.init(torch.rand(c) + 0.5))
        layer.gamma.copy_(layer.gamma_reparam.init(torch.rand(c, c) * 0.3))
    return layer


def _decoder(seed: int, layout: tuple[int, int, int, int] = (5, 2, 2, 1)) -> nn.Sequential:
    """CompressAI's g_s pattern, small: deconv, IGDN, deconv, IGDN, deconv (3 outputs)."""
    torch.manual_seed(seed)
    k, s, p, op = layout
    return nn.Sequential(
        nn.ConvTranspose2d(12, 16, k, s, p, op), _gdn(16),
        nn.ConvTranspose2d(16, 16, k, s, p, op), _gdn(16),
        nn.ConvTranspose2d(16, 3, k, s, p, op),
    ).eval()  # fmt: skip


def _moved(module: nn.Module, *, subpixel: bool = True) -> nn.Sequential:
    out = rewrite(module, subpixel=subpixel, move_gdn=True)
    assert isinstance(out, nn.Sequential)
    return out


def _unmoved(module: nn.Module) -> nn.Sequential:
    """The rewrite without the move: GDN between DepthToSpace and the next layer."""
    out = rewrite(module, move_gdn=False)
    assert isinstance(out, nn.Sequential)
    return out


def _max_diff(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


# CompressAI's (5, 2, 2, 1), and layouts whose phases need a crop after DepthToSpace
@pytest.mark.parametrize("layout", [(5, 2, 2, 1), (5, 2, 2, 0), (4, 2, 1, 0), (6, 3, 1, 2)])
def test_moved_gdn_is_exact_in_torch(layout: tuple[int, int, int, int]) -> None:
    seq = _decoder(1, layout)
    moved, before = _moved(seq), _unmoved(seq)
    assert [type(m) for m in moved] == [PhaseConv, nn.Identity, PhaseConv, nn.Identity,
                                        SubpixelConv]  # fmt: skip
    assert [type(m) for m in before][1::2] == [FoldedGDN, FoldedGDN]
    for h, w in [(1, 1), (4, 7), (9, 6)]:
        x = torch.randn(2, 12, h, w) * 3
        with torch.no_grad():
            assert _max_diff(moved(x), before(x)) <= TOL
            assert _max_diff(moved(x), seq(x)) <= TOL


def test_moved_gdn_shares_one_beta_and_gamma() -> None:
    moved = _moved(_decoder(2))
    first = moved[0]
    assert isinstance(first, PhaseConv) and first.gdns is not None and len(first.gdns) == 4
    gdns = [g for g in first.gdns if isinstance(g, FoldedGDN)]
    gammas, betas = {g.gamma.data_ptr() for g in gdns}, {g.beta.data_ptr() for g in gdns}
    assert len(gammas) == len(betas) == 1  # the very same tensors, not copies


def test_moved_gdn_exports_exactly(tmp_path: Path) -> None:
    """ONNX Runtime runs both forms alike; each phase gets its own 1x1 normalisation Conv on
    one shared gamma initializer, found by the keep-float rule `gdn`; the Conv nodes run in
    the torch module's order (the quantizers pair them by it)."""
    seq = _decoder(3)
    moved, before = _moved(seq), _unmoved(seq)
    x = torch.randn(1, 12, 5, 7)
    export_graph(moved, x, tmp_path / "moved.onnx", 17)
    export_graph(before, x, tmp_path / "before.onnx", 17)
    model = onnx.load(tmp_path / "moved.onnx")
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["Conv"] == 4 + 4 + 1 + 2 * 4 and ops["Sqrt"] == 2 * 4  # 4 IGDNs per layer
    assert ops["Concat"] == 2 and ops["DepthToSpace"] == 3
    gammas = [i.name for i in model.graph.initializer if i.name.endswith("gamma")]
    assert gammas == ["0.gdns.0.gamma", "2.gdns.0.gamma"]
    gdn = qg.gdn_convs(model)
    assert len(gdn) == 8 and all("/gdns." in n for n in gdn)
    assert qg.rule_nodes(model, "first") == ["/0/phases.0/Conv"]
    assert qg.rule_nodes(model, "last") == ["/4/conv/Conv"]
    sites = torch_src.conv_sites(model)
    torch_src.check_same("g_s", sites, torch_src.conv_weights(moved, x))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    runs = [
        ort.InferenceSession(str(tmp_path / f), opts, providers=["CPUExecutionProvider"])
        for f in ("moved.onnx", "before.onnx")
    ]
    for h, w in [(6, 9), (11, 4)]:  # dynamic sizes, odd and even
        x = torch.randn(1, 12, h, w)
        a, b = (r.run(None, {"input": x.numpy()})[0] for r in runs)
        with torch.no_grad():
            assert _max_diff(a, b) <= TOL and _max_diff(a, seq(x).numpy()) <= TOL


def test_preprocessed_graph_keeps_the_torch_conv_order(tmp_path: Path) -> None:
    """QAT and inc-static pair the torch convs with the pre-processed export's Conv nodes."""
    moved = _moved(_decoder(4))
    x = torch.randn(1, 12, 5, 7)
    export_graph(moved, x, tmp_path / "g_s.onnx", 17)
    dst, _ = ort_static.preprocess(tmp_path / "g_s.onnx", tmp_path / "g_s.pre.onnx")
    sites = torch_src.conv_sites(onnx.load(dst))
    torch_src.check_same("g_s", sites, torch_src.conv_weights(moved, x))


def test_moved_gdn_trains_like_the_unmoved() -> None:
    """Fine-tuning and QAT train the rewritten decoder: same gradients as before the move."""
    seq = _decoder(5)
    moved, before = _moved(seq).train(), _unmoved(seq).train()
    x = torch.rand(1, 12, 4, 6)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    moved(xa).square().sum().backward()
    before(xb).square().sum().backward()
    assert xa.grad is not None and xb.grad is not None
    assert _max_diff(xa.grad, xb.grad) <= 1e-4
    for (name, pa), (_, pb) in zip(moved.named_parameters(), before.named_parameters(),
                                   strict=True):  # fmt: skip
        assert pa.grad is not None and pb.grad is not None, name
        assert torch.allclose(pa.grad, pb.grad, rtol=1e-4, atol=1e-4), name


def test_fake_quant_wraps_each_phase_gdn_on_its_own() -> None:
    """One QGDN (own activation ranges) per phase, as ORT calibrates each phase's Conv;
    stripping gives back the exact float module."""
    seq = _decoder(6)
    moved = _moved(seq)
    x = torch.randn(1, 12, 5, 7)
    order = wrap(moved, Scheme(), x)
    assert len(order) == len(torch_src.conv_weights(_unmoved(seq), x)) + 2 * 3  # 4 per IGDN
    assert len({id(q) for q in order}) == len(order)
    assert sum(isinstance(q, QGDN) for q in order) == 8
    strip(moved)
    with torch.no_grad():
        assert _max_diff(moved(x), seq(x)) <= TOL


def test_only_a_gdn_right_after_a_phase_conv_moves() -> None:
    """SubpixelConv keeps its GDN after it, as does a GDN after a plain Conv2d or first in a
    Sequential; a second rewrite changes nothing; subpixel=False moves nothing."""
    torch.manual_seed(7)
    seq = nn.Sequential(
        _gdn(12, inverse=False),
        nn.ConvTranspose2d(12, 4, 5, 2, 2, 1), _gdn(4),  # 4 < PHASE_MIN_CHANNELS: sub-pixel
        nn.Conv2d(4, 16, 3, padding=1), _gdn(16),
        nn.ConvTranspose2d(16, 16, 5, 2, 2, 1), _gdn(16, cls=GDN1),
    ).eval()  # fmt: skip
    new = _moved(seq)
    kinds = [type(m) for m in new]
    assert kinds == [FoldedGDN, SubpixelConv, FoldedGDN, nn.Conv2d, FoldedGDN, PhaseConv,
                     nn.Identity]  # fmt: skip
    assert rewrites.gdn_into_phases(new) == 0
    assert not any(isinstance(m, PhaseConv) for m in _moved(seq, subpixel=False).modules())
    x = torch.randn(1, 12, 5, 6) * 2
    with torch.no_grad():
        assert _max_diff(new(x), seq(x)) <= TOL
        assert _max_diff(_moved(new)(x), seq(x)) <= TOL


def test_moving_keeps_the_mac_count() -> None:
    """The normalisation runs on 4 quarter-size phases instead of the full-size output."""
    seq = _decoder(8)
    x = torch.randn(1, 12, 8, 12)
    assert count_macs(_moved(seq), (x,)) == count_macs(_unmoved(seq), (x,))


def test_rewrite_moves_only_when_asked() -> None:
    """`rewrite` moves nothing by default (OpenVINO runs the move slower): the exporter's
    gdn_in_phases option, recorded in the manifest, is what asks (no module switch)."""
    seq = _decoder(9)
    assert not hasattr(rewrites, "GDN_INTO_PHASES")

    def second(**kw: bool) -> type[nn.Module]:
        return type(list(rewrite(seq, **kw).children())[1])

    assert second() is FoldedGDN and second(move_gdn=False) is FoldedGDN
    assert second(move_gdn=True) is nn.Identity
    assert second(move_gdn=True, subpixel=False) is FoldedGDN  # no PhaseConv to move into
