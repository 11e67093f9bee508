"""The `hific` family: GAN training, bitstreams, ChannelNorm pruning, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from compressor import checkpoint
from compressor.codec import TorchCodec
from compressor.errors import CheckpointError, RecipeError
from compressor.export import export_model
from compressor.metrics import psnr
from compressor.models import MODELS
from compressor.models.hific import ChannelNorm, HificAdapter
from compressor.prune import PruneParams, prune_model
from compressor.prune.channelnorm import build_graph, prune_channelnorm
from compressor.runtime import load_codec
from compressor.train import TrainConfig, train
from tests.conftest import smooth_image

TINY = {"N": 8, "M": 12, "H": 8, "blocks": 1, "D": 4}


def tiny_hific(seed: int = 0, **extra: int) -> HificAdapter:
    torch.manual_seed(seed)
    model = MODELS.get("hific").build("hific", {**TINY, **extra})
    assert isinstance(model, HificAdapter)
    model.finalize()
    return model


def photo_batch(n: int, size: int, seed: int = 0) -> torch.Tensor:
    imgs = [smooth_image(size, size, seed + i) for i in range(n)]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255


def test_gan_training_lowers_distortion_and_trains_the_discriminator(tmp_path: Path) -> None:
    model = tiny_hific(warmup=4)
    x = photo_batch(2, 64, seed=50)
    disc_before = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    with torch.no_grad():
        mse_before = F.mse_loss(model.eval().forward_rd(x).x_hat, x).item()
    images = [smooth_image(96, 96, i) for i in range(6)]
    cfg = TrainConfig(crop=64, val_crop=64, batch_size=2, lr=2e-3, max_steps=24, eval_every=8)
    result = train(model, images, cfg, tmp_path / "h.pt", resume=False)
    with torch.no_grad():
        mse_after = F.mse_loss(model.eval().forward_rd(x).x_hat, x).item()
    assert result.steps == 24
    assert mse_after < 0.7 * mse_before, (mse_before, mse_after)
    changed = [k for k, v in model.discriminator.state_dict().items() if "_u" not in k and
               "_v" not in k and not torch.equal(v, disc_before[k])]  # fmt: skip
    assert changed, "the discriminator never stepped after the warm-up"
    # the checkpoint carries the discriminator and reloads weights-only
    reloaded = checkpoint.load(tmp_path / "h.pt")
    assert torch.equal(
        reloaded.state_dict()["discriminator.out.weight"], model.discriminator.out.weight
    )


def test_discriminator_step_updates_only_discriminator_weights() -> None:
    model = tiny_hific(warmup=0).train()
    x = photo_batch(2, 64)
    out = model.forward_rd(x)
    assert out.extra_loss is not None
    out.extra_loss.backward()  # the generator's adversarial term reaches no D weight
    assert all(p.grad is None for p in model.discriminator.parameters())
    net_before = {k: v.clone() for k, v in model.net.state_dict().items()}
    disc_before = {k: v.clone() for k, v in model.discriminator.named_parameters()}
    logs = model.extra_step(x, step=0)
    assert logs["d_loss"] > 0
    assert all(torch.equal(v, net_before[k]) for k, v in model.net.state_dict().items())
    moved = [
        k for k, v in model.discriminator.named_parameters() if not torch.equal(v, disc_before[k])
    ]
    assert len(moved) == len(disc_before)


def test_warmup_runs_without_the_gan_term() -> None:
    model = tiny_hific(warmup=3).train()
    x = photo_batch(1, 64)
    disc_before = model.discriminator.out.weight.clone()
    for step in range(3):
        model.forward_rd(x)
        assert model.extra_step(x, step) == {}
    assert torch.equal(model.discriminator.out.weight, disc_before)
    model.forward_rd(x)  # step 3: the GAN term is on, so the discriminator steps
    assert "d_loss" in model.extra_step(x, 3)


def test_bitstream_round_trip_matches_eval_forward_and_estimate() -> None:
    model = tiny_hific().eval()
    x = photo_batch(1, 128)
    with torch.no_grad():
        out = model.forward_rd(x)
        data = model.compress(x)
        rec = model.decompress(data)
    assert rec.shape == x.shape
    assert float((rec - out.x_hat.clamp(0, 1)).abs().max()) < 1e-4
    real = len(data) * 8 / x[0, 0].numel()
    estimate = float(out.bpp(x[0, 0].numel()))
    # within a few % of the estimate, either way: the coder adds per-string overhead but codes
    # with the scale table's quantised scales (measured here: 0.194 real vs 0.213 estimated)
    assert estimate * 0.8 < real < estimate * 1.2 + 40 * 8 / x[0, 0].numel(), (real, estimate)


def test_channelnorm_pruning_keeps_kept_channels_consistent() -> None:
    torch.manual_seed(0)
    norm = ChannelNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1, 1)
    w, b = norm.weight.detach().clone(), norm.bias.detach().clone()
    x = torch.randn(2, 6, 5, 5)
    keep = [0, 2, 3, 5]
    prune_channelnorm(norm, [1, 4])
    xk = x[:, keep]
    mean, var = xk.mean(1, keepdim=True), xk.var(1, unbiased=False, keepdim=True)
    ref = (xk - mean) / torch.sqrt(var + norm.eps) * w[keep].view(1, -1, 1, 1)
    ref = ref + b[keep].view(1, -1, 1, 1)
    assert torch.allclose(norm(xk), ref, atol=1e-5)

    # through torch-pruning: conv -> ChannelNorm -> conv, one group
    seq = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), ChannelNorm(6), nn.ReLU(), nn.Conv2d(6, 2, 1)
    )
    reference = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), ChannelNorm(4), nn.ReLU(), nn.Conv2d(4, 2, 1)
    )
    with torch.no_grad():
        reference[0].weight.copy_(seq[0].weight[keep])
        reference[0].bias.copy_(seq[0].bias[keep])
        reference[3].weight.copy_(seq[3].weight[:, keep])
        reference[3].bias.copy_(seq[3].bias)
    graph = build_graph("encoder", seq, torch.rand(1, 3, 8, 8))
    graph.get_pruning_group(seq[0], tp.prune_conv_out_channels, [1, 4]).prune()
    x = torch.rand(1, 3, 8, 8)
    assert seq[1].weight.numel() == 4
    assert torch.allclose(seq(x), reference(x), atol=1e-5)


def test_structured_pruning_drops_macs_and_reloads(tmp_path: Path) -> None:
    model = tiny_hific().eval()
    params = PruneParams(
        ratio={"encoder": 0.3, "generator": 0.3, "probability_model": 0.3},
        round_to=2,
        report_size=(64, 64),
        latency_repeats=0,
    )
    pruned, report = prune_model(model, params)
    rows = {r["component"]: r for r in report["components"]}
    for name in ("encoder", "generator", "probability_model"):
        assert rows[name]["macs_after"] < 0.8 * rows[name]["macs_before"], rows[name]
    # the latent (y: 12 channels, z: 8) and the image stay as they were
    net = pruned.cnet
    assert net.g_a[-1].out_channels == 12 and net.g_s.head[0].in_channels == 12
    assert net.h_a[-1].out_channels == 8 and net.h_s[-1].out_channels == 24
    assert net.g_s.tail.out_channels == 3
    x = photo_batch(1, 64)
    checkpoint.save(pruned, tmp_path / "p.pt")
    again = checkpoint.load(tmp_path / "p.pt")
    with torch.no_grad():
        assert torch.allclose(again.forward_rd(x).x_hat, pruned.forward_rd(x).x_hat, atol=1e-6)
    assert again.decompress(again.compress(x)).shape == x.shape


def test_export_parity_and_runtime_round_trip(tmp_path: Path) -> None:
    model = tiny_hific().eval()
    folder = export_model(model, tmp_path / "exp")  # raises past parity 1e-4
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "mean-scale-hyperprior"
    assert max(manifest["parity_max_abs_diff"].values()) < 1e-4
    ops = {n.op_type for n in onnx.load(str(folder / "g_s.onnx")).graph.node}
    assert "ConvTranspose" not in ops and "DepthToSpace" in ops  # rewritten to sub-pixel
    img = smooth_image(70, 90, 3)
    codec = load_codec(folder, threads=1)
    rec_onnx = codec.decode(codec.encode(img))
    rec_torch = TorchCodec(model).decode(TorchCodec(model).encode(img))
    assert abs(psnr(img, rec_onnx) - psnr(img, rec_torch)) < 0.05
    assert np.abs(rec_onnx.astype(int) - rec_torch.astype(int)).max() <= 2


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({**TINY, "widthz": 3}, "unknown key 'widthz'"),
        ({"N": 8}, "N and M are required"),
        ({**TINY, "blocks": 0}, "blocks=0"),
        ({**TINY, "warmup": -1}, "warmup=-1"),
        ({**TINY, "gan_weight": -0.1}, "gan_weight"),
    ],
)
def test_bad_config_is_a_checkpoint_error(config: dict, match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        MODELS.get("hific").build("hific", config)


def test_bad_pruning_requests_are_recipe_errors() -> None:
    model = tiny_hific()
    with pytest.raises(RecipeError, match="no component 'decoder'"):
        prune_model(model, PruneParams(ratio={"decoder": 0.3}, latency_repeats=0))
    with pytest.raises(RecipeError, match="taylor"):
        prune_model(model, PruneParams(ratio={"generator": 0.3}, importance="taylor"))
