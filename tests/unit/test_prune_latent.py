"""Latent pruning: every coupled tensor cut with the same channels, entropy tables rebuilt,
real bitstreams still round-trip and agree with the likelihood estimate."""

from __future__ import annotations

import pytest
import torch

from compressor import checkpoint
from compressor.data import CropDataset, load_images
from compressor.errors import RecipeError
from compressor.models import MODELS, CodecAdapter
from compressor.prune import PruneParams, prune_model
from compressor.train import rd_loss
from tests.conftest import BUNDLED, need, tiny_model

ARCHS = ["bmshj2018-hyperprior", "mbt2018-mean"]
LATENT = {"latent": 0.25, "hyper_latent": 0.25}


def params(ratio: dict[str, float]) -> PruneParams:
    return PruneParams(ratio=ratio, round_to=4, report_size=(64, 64), latency_repeats=0)


@pytest.fixture(scope="module")
def photos() -> list:
    return [a for _, a in load_images("skimage")]


def briefly_trained(arch: str, photos: list, steps: int = 300) -> CodecAdapter:
    """A tiny model with a few hundred RD steps: a random one codes next to nothing."""
    torch.manual_seed(0)
    model = MODELS.get(arch).build(arch, {"N": 16, "M": 24})
    crops = CropDataset(photos[1:], 64, train=True)
    aux_ids = {id(p) for p in model.aux_parameters()}
    opt = torch.optim.Adam([p for p in model.net.parameters() if id(p) not in aux_ids], lr=2e-3)
    aux_opt = torch.optim.Adam(model.aux_parameters(), lr=1e-2)
    loss_fn = rd_loss(0.03)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model, torch.stack([crops[i] for i in range(len(crops))]))[0].backward()
        opt.step()
        aux_opt.zero_grad()
        model.aux_loss().backward()
        aux_opt.step()
    model.finalize()
    return model.eval()


def rates(model: CodecAdapter, x: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """(real bpp, estimated bpp, max |decompress - eval forward|) of one image."""
    pixels = x.size(2) * x.size(3)
    with torch.no_grad():
        data = model.compress(x)
        estimate = float(model.forward_rd(x).bpp(pixels))
        gap = (model.decompress(data) - model.net(x)["x_hat"].clamp(0, 1)).abs().max()
    return len(data) * 8 / pixels, estimate, gap


@pytest.mark.parametrize("arch", ARCHS)
def test_coupled_tensors_cut_consistently(arch: str) -> None:
    model = tiny_model(arch)
    net = model.net
    keep_probe = net.h_s[4].weight.detach().clone()
    pruned, report = prune_model(model, params({"latent": 0.34, "hyper_latent": 0.5}))
    p = pruned.net
    assert p.g_a[6].out_channels == 4 and p.g_s[0].in_channels == 4 and p.h_a[0].in_channels == 4
    blocks = 2 if arch == "mbt2018-mean" else 1
    assert p.h_s[4].out_channels == 4 * blocks  # scales (and means) of the kept channels
    eb = p.entropy_bottleneck
    assert p.h_a[4].out_channels == 4 and p.h_s[0].in_channels == 4
    assert eb.quantiles.shape == (4, 1, 3) and all(m.size(0) == 4 for m in eb.matrices)
    assert eb._quantized_cdf.size(0) == 4 and eb._offset.numel() == 4  # tables rebuilt
    # the same channel indices in every tensor: recover them from g_a and check h_s rows
    kept = [
        next(i for i in range(12) if torch.equal(net.g_a[6].weight[i], w)) for w in p.g_a[6].weight
    ]
    for b in range(blocks):
        rows = [b * 12 + k for k in kept]
        assert torch.equal(p.h_s[4].weight[b * 4 : (b + 1) * 4], keep_probe[rows])
    assert torch.equal(p.g_s[0].weight, net.g_s[0].weight[kept])
    assert report["config"]["widths"]["entropy_bottleneck"] == [4]


@pytest.mark.parametrize("arch", ARCHS)
def test_bitstream_round_trips_and_matches_the_estimate(arch: str, photos: list) -> None:
    model = briefly_trained(arch, photos)
    x = CropDataset(photos[:1], 384, train=False)[0][None]
    real_b, est_b, _ = rates(model, x)
    pruned, _ = prune_model(model, params(LATENT))
    assert pruned.net.g_a[6].out_channels == 16
    real, est, gap = rates(pruned, x)
    assert gap == 0  # decompress gives exactly the encoder-side reconstruction
    assert real < 0.85 * real_b  # fewer latent channels, fewer bits
    # The real bitstream matches the likelihood estimate within 2 % after pruning, and agrees
    # with it as well as before: a channel cut out of step between g_a, h_s and the entropy
    # tables would cost far more than 2 %.
    assert abs(real / est - 1) < 0.02, (real, est)
    assert abs(real / est - real_b / est_b) < 0.02, (real, est, real_b, est_b)


@pytest.mark.slow
def test_bundled_model_latent_pruning_bpp_within_2_percent(photos: list) -> None:
    model = checkpoint.load(need(BUNDLED, "the bundled model"))
    pruned, _ = prune_model(model, params({"latent": 0.25}))
    x = CropDataset(photos[:1], 512, train=False)[0][None]
    real, est, gap = rates(pruned, x)
    assert gap == 0
    assert abs(real / est - 1) < 0.02, (real, est)


@pytest.mark.parametrize("arch", ["mbt2018", "cheng2020-anchor"])
def test_latent_of_autoregressive_models_is_refused(arch: str) -> None:
    with pytest.raises(RecipeError, match="autoregressive"):
        prune_model(tiny_model(arch), params({"latent": 0.25}))


def test_factorized_latent_cuts_its_entropy_bottleneck() -> None:
    pruned, _ = prune_model(tiny_model("bmshj2018-factorized"), params({"latent": 0.34}))
    assert pruned.net.entropy_bottleneck.quantiles.size(0) == 4
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        data = pruned.compress(x)
        torch.testing.assert_close(pruned.decompress(data), pruned.net(x)["x_hat"].clamp(0, 1))
