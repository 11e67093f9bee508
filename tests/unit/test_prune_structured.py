"""Structured pruning: channels physically removed, GDN cut on both axes, exact MAC counts,
pruned checkpoints reload (weights_only) into the identical model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from compressai.layers import GDN

from compressor import checkpoint
from compressor.cli import main
from compressor.models import MODELS
from compressor.models.resize import shape_map
from compressor.prune import PruneParams, prune_model
from compressor.prune.gdn import prune_gdn
from compressor.prune.structured import kept_channels, step_keep
from tests.conftest import tiny_model, write_images

FAST = {"report_size": (128, 128), "latency_repeats": 0}


def small(arch: str = "bmshj2018-hyperprior", n: int = 16, m: int = 24, seed: int = 0):
    torch.manual_seed(seed)
    model = MODELS.get(arch).build(arch, {"N": n, "M": m})
    model.finalize()
    return model.eval()


def params(**kw) -> PruneParams:
    return PruneParams(**{**FAST, "round_to": 4, **kw})


def test_gdn_pruning_cuts_beta_and_both_gamma_axes() -> None:
    torch.manual_seed(0)
    gdn = GDN(6)
    with torch.no_grad():
        gdn.gamma.add_(torch.rand(6, 6) * 0.1)  # non-diagonal, so columns matter
    x = torch.randn(1, 6, 5, 5)
    x[:, [1, 4]] = 0  # removed channels carry nothing: the kept outputs must not change
    expected = gdn(x)[:, [0, 2, 3, 5]]
    gamma, keep = gdn.gamma.detach().clone(), [0, 2, 3, 5]
    prune_gdn(gdn, [1, 4])
    assert gdn.beta.shape == (4,) and gdn.gamma.shape == (4, 4)
    assert torch.equal(gdn.gamma.detach(), gamma[keep][:, keep])
    torch.testing.assert_close(gdn(x[:, keep]), expected)


def test_rounding_and_schedule() -> None:
    assert kept_channels(128, 0.3, 8, "x") == 88  # 89.6 rounded down to a multiple of 8
    assert kept_channels(192, 0.25, 8, "x") == 144
    assert kept_channels(12, 0.0, 8, "x") == 12  # ratio 0 never touches a layer
    assert [step_keep(128, 88, k, 3, 8) for k in (1, 2, 3)] == [112, 96, 88]


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "mbt2018-mean", "bmshj2018-factorized"])
def test_encoder_decoder_channels_removed_and_macs_exact(arch: str) -> None:
    model = small(arch)
    pruned, report = prune_model(model, params(ratio={"encoder": 0.5, "decoder": 0.5}))
    g_a, g_s = pruned.net.g_a, pruned.net.g_s
    assert [g_a[i].out_channels for i in (0, 2, 4, 6)] == [8, 8, 8, 24]  # latent kept
    assert [g_s[i].out_channels for i in (0, 2, 4, 6)] == [8, 8, 8, 3]
    assert all(g.beta.numel() == 8 for g in (g_a[1], g_a[3], g_a[5], g_s[1], g_s[3], g_s[5]))
    assert model.net.g_a[0].out_channels == 16  # the input model is left untouched

    def encoder_macs(c: int) -> int:  # convs 5x5 stride 2 + GDN 1x1 (C x C) at 128x128
        px = [64 * 64, 32 * 32, 16 * 16, 8 * 8]
        convs = 3 * c * 25 * px[0] + c * c * 25 * (px[1] + px[2]) + c * 24 * 25 * px[3]
        return convs + c * c * (px[0] + px[1] + px[2])

    rows = {r["component"]: r for r in report["components"]}
    assert rows["encoder"]["macs_before"] == encoder_macs(16)
    assert rows["encoder"]["macs_after"] == encoder_macs(8)
    assert rows["decoder"]["macs_after"] < 0.35 * rows["decoder"]["macs_before"]
    assert report["config"]["widths"]["g_a.0"] == [3, 8]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert pruned.forward_rd(x).x_hat.shape == x.shape


def test_dead_channels_are_removed_first_and_output_is_unchanged() -> None:
    model = small()
    dead = [1, 5, 6, 9, 12, 14, 15, 3]
    with torch.no_grad():  # channels that neither produce nor feed anything, in all 3 groups
        for i in (0, 2, 4):
            model.net.g_a[i].weight[dead] = 0
            model.net.g_a[i].bias[dead] = 0
            model.net.g_a[i + 2].weight[:, dead] = 0
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = model.net.g_a(x)
    pruned, _ = prune_model(model, params(ratio={"encoder": 0.5}, importance="l1"))
    assert [pruned.net.g_a[i].out_channels for i in (0, 2, 4)] == [8, 8, 8]
    with torch.no_grad():
        torch.testing.assert_close(pruned.net.g_a(x), before, atol=1e-5, rtol=1e-5)


def test_iterative_taylor_and_random_reach_the_same_widths(tmp_path: Path) -> None:
    model = small()
    calib = [a for a in [torch.randint(0, 255, (64, 64, 3), dtype=torch.uint8).numpy()] * 2]
    shapes = []
    for imp, steps in (("taylor", 2), ("random", 1), ("l2", 3)):
        p = params(ratio={"all": 0.5}, importance=imp, iterative_steps=steps, calibration_crop=64)
        pruned, _ = prune_model(model, p, calib)
        assert all(q.grad is None for q in pruned.net.parameters())
        shapes.append(shape_map(pruned.net))
    assert shapes[0] == shapes[1] == shapes[2]
    assert shapes[0]["h_a.0"] == [24, 8] and shapes[0]["h_s.2"] == [8, 8]


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "mbt2018-mean"])
def test_pruned_checkpoint_reloads_identically(arch: str, tmp_path: Path) -> None:
    pruned, _ = prune_model(small(arch), params(ratio={"all": 0.5, "latent": 0.25}))
    path = checkpoint.save(pruned, tmp_path / "p.pt")
    raw = torch.load(path, weights_only=True)  # plain tensors and containers only
    assert raw["config"]["widths"]["g_a.6"] == [8, 16]
    loaded = checkpoint.load(path)
    assert loaded.config == pruned.config
    assert shape_map(loaded.net) == shape_map(pruned.net)
    for key, value in pruned.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        data = pruned.compress(x)
        assert loaded.compress(x) == data
        assert torch.equal(loaded.decompress(data), pruned.decompress(data))
    # a bare state dict (a foreign checkpoint) gets its widths from the tensor shapes
    torch.save(pruned.state_dict(), tmp_path / "bare.pt")
    assert shape_map(checkpoint.load(tmp_path / "bare.pt", arch).net) == shape_map(pruned.net)


def test_unpruned_configs_keep_their_form() -> None:
    model = tiny_model()
    adapter = MODELS.get(model.arch)
    assert adapter.infer_config(model.arch, model.state_dict()) == {"N": 8, "M": 12}


def test_full_size_hyperprior_macs_drop_by_half() -> None:
    """Acceptance (MACs part): 0.3 on encoder+decoder of N=128, M=192 removes >= 45%."""
    model = small(n=128, m=192)
    p = PruneParams(ratio={"encoder": 0.3, "decoder": 0.3}, report_size=(64, 64), latency_repeats=0)
    _, report = prune_model(model, p)
    rows = {r["component"]: r for r in report["components"]}
    for comp in ("encoder", "decoder"):
        assert rows[comp]["macs_ratio"] == pytest.approx(0.497, abs=0.002)
    assert rows["hyper_encoder"]["macs_ratio"] == 1.0


def test_cli_prune_finetune_and_measure(tiny_ckpt: Path, tmp_path: Path) -> None:
    images = write_images(tmp_path / "imgs", [(96, 128), (128, 96), (96, 96)])
    out = tmp_path / "p.pt"
    args = [
        "prune",
        str(tiny_ckpt),
        "--ratio",
        "encoder=0.5,decoder=0.5",
        "--latent",
        "0.25",
        "--round-to",
        "4",
        "--report-size",
        "64x64",
        "--latency-repeats",
        "1",
        "--finetune",
        str(images),
        "--finetune-steps",
        "2",
        "--finetune-crop",
        "64",
        "--finetune-batch-size",
        "2",
        "--data",
        str(images),
        "--report",
        str(tmp_path / "r.json"),
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "encoder" in result.output and "psnr" in result.output
    loaded = checkpoint.load(out)
    assert loaded.net.g_a[0].out_channels == 4 and loaded.net.g_a[6].out_channels == 8
    assert loaded.meta["train"]["steps"] == 2 and loaded.meta["prune"]["ratio"]["latent"] == 0.25
    assert (tmp_path / "r.json").stat().st_size > 0
