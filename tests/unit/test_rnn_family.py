"""The recurrent codec (family `rnn`): training, real bitstream, rate, export, pruning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor import bitstream, checkpoint
from compressor.codec import TorchCodec
from compressor.errors import BitstreamError, CheckpointError, RecipeError
from compressor.export import export_model
from compressor.export.rnn import RnnOrtCodec
from compressor.models import MODELS
from compressor.models.rnn import RnnAdapter
from compressor.prune import PruneParams, prune_model
from compressor.train import rd_loss
from tests.conftest import smooth_image


def build(seed: int = 0, **config: int) -> RnnAdapter:
    torch.manual_seed(seed)
    model = MODELS.get("rnn").build("rnn", {"N": 8, "M": 12, "iterations": 4, **config})
    assert isinstance(model, RnnAdapter)
    model.eval()
    return model


def photo_batch(n: int, size: int = 32) -> torch.Tensor:
    imgs = [smooth_image(size, size, seed) for seed in range(n)]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return -10 * math.log10(float(((a - b) ** 2).mean()))


@pytest.fixture(scope="module")
def trained() -> tuple[RnnAdapter, list[float]]:
    """A tiny 3-iteration model after 40 Adam steps on 8 photo-like crops; eval losses
    before / after."""
    model, batch = build(iterations=3), photo_batch(8)
    loss_fn = rd_loss(0.0035)
    before = loss_fn(model.eval(), batch)[0].item()
    opt = torch.optim.Adam(model.net.parameters(), lr=1e-2)
    for _ in range(40):
        model.train()
        opt.zero_grad()
        loss_fn(model, batch)[0].backward()
        opt.step()
    with torch.no_grad():
        after = loss_fn(model.eval(), batch)[0].item()
    return model, [before, after]


def test_training_lowers_the_residual_loss(trained: tuple[RnnAdapter, list[float]]) -> None:
    _, (before, after) = trained
    # bpp (3 iterations * 12 bits / 256 pixels = 0.14) is a constant part of the loss
    assert before > 0.8 and after < 0.8 * before, (before, after)


def test_more_iterations_give_better_psnr(trained: tuple[RnnAdapter, list[float]]) -> None:
    model, _ = trained
    x = photo_batch(4)
    with torch.no_grad():
        values = [psnr(model.forward_rd(x, iterations=k).x_hat, x) for k in (1, 2, 3)]
    # after 40 steps the third iteration has barely learnt to add anything (it may be a hair
    # below the second); the trained small model's Kodak numbers are in the report
    assert values[1] > values[0] + 0.3 and values[2] > values[0] + 0.3, values


def test_bitstream_roundtrip_is_the_eval_forward_exactly(
    trained: tuple[RnnAdapter, list[float]],
) -> None:
    model, _ = trained
    x = photo_batch(1, 48)
    for k in (1, 3):
        with torch.no_grad():
            ref = model.forward_rd(x, iterations=k).x_hat
        rec = model.decompress(model.compress(x, iterations=k))
        assert torch.equal(rec, ref)


def test_bpp_is_linear_in_the_iterations() -> None:
    model, x = build(), photo_batch(1, 64)
    sizes = [len(model.compress(x, iterations=k)) for k in range(1, 6)]
    steps = np.diff(sizes)
    assert (steps == 12 * 4 * 4 // 8).all(), sizes  # M bits at each 16x16 block, per iteration
    bpps = [8 * s / (64 * 64) for s in sizes]
    est = [float(model.forward_rd(x, iterations=k).bpp(64 * 64)) for k in range(1, 6)]
    # the forward's rate (one bit per code) is the bitstream's, less its 6-byte header
    assert np.allclose(np.array(bpps) - np.array(est), 8 * 6 / (64 * 64))


def test_bad_iterations_and_streams_are_refused() -> None:
    model, x = build(), photo_batch(1)
    for bad in (0, 33):
        with pytest.raises(RecipeError, match=r"1\.\.32"):
            model.compress(x, iterations=bad)
    with pytest.raises(CheckpointError, match="quality"):
        RnnAdapter.default_config("rnn", 0)
    with pytest.raises(CheckpointError, match="iterations"):
        RnnAdapter.build("rnn", {"N": 8, "M": 12, "iterations": 40})
    data = model.compress(x, iterations=2)
    strings, ints = bitstream.unpack(data)
    with pytest.raises(RecipeError, match="bitstream iterations 0"):
        model.decompress(bitstream.pack(strings, [0, *ints[1:]]))
    with pytest.raises(BitstreamError, match="code bytes"):
        model.decompress(data[:-1])
    with pytest.raises(BitstreamError, match="does not fit"):
        build(M=16).decompress(data)


def test_export_parity_and_ort_bitstream(tmp_path: Path) -> None:
    model = build()
    torch.nn.init.normal_(model.rnet.decoder.conv2.weight, std=0.2)  # non-zero increments
    folder = export_model(model, tmp_path / "rnn")
    manifest = json.loads((folder / "manifest.json").read_text())
    diffs = manifest["parity_max_rel_diff"]
    assert diffs["encoder_step"] <= 1e-4 and diffs["decoder_step"] <= 1e-4
    assert diffs["bits_flipped"] == 0.0
    img = smooth_image(40, 56, 3)  # padded to 48x64 inside both codecs
    ort_codec, torch_codec = RnnOrtCodec(folder), TorchCodec(model)
    data = ort_codec.encode(img)
    assert data == torch_codec.encode(img)
    diff = np.abs(ort_codec.decode(data).astype(int) - torch_codec.decode(data).astype(int))
    assert diff.max() <= 1


def test_structured_prune_keeps_shapes_consistent(tmp_path: Path) -> None:
    model = build(N=16)
    params = PruneParams(
        ratio={"encoder": 0.3, "decoder": 0.3}, round_to=4, latency_repeats=0,
        report_size=(64, 64),
    )  # fmt: skip
    pruned, report = prune_model(model, params)
    widths = pruned.config["widths"]
    assert widths == {"encoder": [8, 44, 88, 88], "decoder": [88, 88, 88, 44, 20]}
    assert isinstance(pruned, RnnAdapter)
    enc = pruned.rnet.encoder
    assert enc.rnn1.ih.out_channels == 4 * 44 and enc.rnn1.hh.in_channels == 44
    assert enc.rnn2.ih.in_channels == 44
    assert pruned.rnet.decoder.rnn2.ih.in_channels == 88 // 4
    assert report["total"]["macs_after"] < 0.6 * report["total"]["macs_before"]
    x = photo_batch(1, 48)
    rec = pruned.decompress(pruned.compress(x))
    assert torch.equal(rec, pruned.forward_rd(x).x_hat)
    path = checkpoint.save(pruned, tmp_path / "p.pt")
    again = checkpoint.load(path)
    assert again.config == pruned.config
    assert again.compress(x) == pruned.compress(x)
    # a bare state dict cannot tell the unpruned N, but its widths rebuild the same layers
    inferred = RnnAdapter.infer_config("rnn", pruned.state_dict())
    assert inferred["widths"] == widths
    RnnAdapter.build("rnn", inferred).load_state_dict(pruned.state_dict())
