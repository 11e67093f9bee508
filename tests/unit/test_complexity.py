"""Params and MACs per component against hand-computed values."""

from __future__ import annotations

from compressor.metrics.complexity import component_table
from tests.conftest import tiny_model


def conv_macs(cin: int, cout: int, k: int, h: int, w: int) -> int:
    return cin * cout * k * k * h * w


def test_factorized_encoder_macs_are_exact() -> None:
    # g_a: 4 stride-2 5x5 convs (3->8->8->8->12) and 3 GDNs (a 1x1 conv each) on 64x128
    model = tiny_model("bmshj2018-factorized")
    rows = {r["component"]: r for r in component_table(model, 64, 128)}
    sizes = [(32, 64), (16, 32), (8, 16), (4, 8)]
    chans = [(3, 8), (8, 8), (8, 8), (8, 12)]
    expected = sum(
        conv_macs(ci, co, 5, h, w) for (ci, co), (h, w) in zip(chans, sizes, strict=True)
    )
    expected += sum(conv_macs(8, 8, 1, h, w) for h, w in sizes[:3])  # GDN
    assert rows["encoder"]["macs"] == expected
    params = sum(ci * co * 25 + co for ci, co in chans) + 3 * (8 * 8 + 8)
    assert rows["encoder"]["params"] == params
    assert rows["encoder"]["size_bytes"] > 4 * params
