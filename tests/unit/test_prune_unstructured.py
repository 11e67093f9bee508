"""Unstructured magnitude pruning: exact sparsity, permanent zeros, sparse-stored size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from compressor import checkpoint
from compressor.prune import PruneParams, prune_model
from tests.conftest import tiny_model


def params(**kw) -> PruneParams:
    return PruneParams(method="unstructured", report_size=(64, 64), latency_repeats=0, **kw)


def convs(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]


def test_global_half_gives_exactly_half_of_the_prunable_weights(tmp_path: Path) -> None:
    model = tiny_model("mbt2018-mean")
    total = sum(m.weight.numel() for m in convs(model.net))
    pruned, report = prune_model(model, params(ratio={"all": 0.5}, scope="global"))
    zeros = sum(int((m.weight == 0).sum()) for m in convs(pruned.net))
    assert zeros == report["zeros"] == round(0.5 * total)
    assert report["prunable_weights"] == total and report["sparsity"] == pytest.approx(0.5)
    assert sum(r["zeros"] for r in report["layers"]) == zeros
    assert len({round(r["sparsity"], 2) for r in report["layers"]}) > 1  # one global threshold
    # permanent: no masks or weight_orig left; the zeros survive a weights-only reload
    assert not any(k.endswith(("weight_orig", "weight_mask")) for k in pruned.state_dict())
    loaded = checkpoint.load(checkpoint.save(pruned, tmp_path / "u.pt"))
    assert sum(int((m.weight == 0).sum()) for m in convs(loaded.net)) == zeros
    size = report["size_after"]
    # fp32 values of non-zeros + a 1-bit mask: each zero saves 4 bytes, each weight costs 1/8
    masks = sum(-(-m.weight.numel() // 8) for m in convs(model.net))
    saved = report["size_before"]["sparse_bytes"] - size["sparse_bytes"]
    assert saved >= zeros * 4 - masks and saved > 0.4 * total * 4
    assert report["weights_dense_bytes"] == 4 * total
    assert report["weights_sparse_bytes"] == 4 * (total - zeros) + masks
    assert size["zlib_bytes"] < report["size_before"]["zlib_bytes"]
    assert "no speed-up" in report["note"]
    rows = {r["component"]: r for r in report["components"]}
    assert rows["encoder"]["macs_after"] == rows["encoder"]["macs_before"]  # dense MACs
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():  # still a working codec
        data = pruned.compress(x)
        out = pruned.decompress(data)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_per_layer_scope_prunes_each_layer_of_the_component() -> None:
    model = tiny_model()
    pruned, report = prune_model(model, params(ratio={"encoder": 0.3}, scope="layer"))
    for layer in convs(pruned.net.g_a):
        assert int((layer.weight == 0).sum()) == round(0.3 * layer.weight.numel())
    assert all(int((m.weight == 0).sum()) == 0 for m in convs(pruned.net.g_s))
    assert {r["component"] for r in report["layers"]} == {"encoder"}
    assert int((model.net.g_a[0].weight == 0).sum()) == 0  # input model untouched
