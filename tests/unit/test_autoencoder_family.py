"""The `autoencoder` family: BN + dropout + residual blocks, a factorized entropy bottleneck.

The headline test proves the decoder reconstructs from the decoded bitstream alone: a model
whose encoder is random (or gone) decodes another model's bytes to the identical image.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from compressor import checkpoint
from compressor.codec import TorchCodec
from compressor.data import to_tensor
from compressor.errors import BitstreamError, CheckpointError
from compressor.export import export_model
from compressor.metrics import psnr
from compressor.models import MODELS
from compressor.models.autoencoder import AutoencoderAdapter
from compressor.prune import PruneParams, prune_model
from compressor.quant import QUANTIZERS, QuantParams
from compressor.quant import graph as qg
from compressor.runtime import load_codec
from compressor.train import TrainConfig, rd_loss, train
from tests.conftest import smooth_image, write_images

ARCH = "autoencoder"
CONFIG = {"N": 16, "M": 24}
LMBDA = 0.0130
IMAGES = [smooth_image(96, 128, 10 + i) for i in range(3)]
TRAIN = {"crop": 64, "val_crop": 64, "batch_size": 4, "lr": 1e-3, "eval_every": 20, "seed": 0}


def build(seed: int = 0, config: dict | None = None) -> Any:
    torch.manual_seed(seed)
    model = MODELS.get(ARCH).build(ARCH, dict(config or CONFIG))
    model.finalize()
    return model.eval()


def held_out_loss(model: AutoencoderAdapter, x: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return rd_loss(LMBDA)(model, x)[0].item()


def image_batch() -> torch.Tensor:
    return torch.cat([to_tensor(img[:64, :64]) for img in IMAGES])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict]:
    """A tiny model trained 100 steps by the one train loop; its loss before and after on
    images it never saw (IMAGES are not among the training images)."""
    folder = tmp_path_factory.mktemp("ae")
    imgs = [smooth_image(96, 96, i) for i in range(8)]
    model = build()
    before = held_out_loss(model, image_batch())
    cfg = TrainConfig.model_validate({**TRAIN, "lmbda": LMBDA, "max_steps": 100, "patience": 20})
    result = train(model, imgs, cfg, folder / "ae.pt", resume=False)
    after = held_out_loss(model, image_batch())
    return model.eval(), {"before": before, "after": after, "result": result, "dir": folder}


class Boom(nn.Module):
    """Stands in for a deleted encoder: any call fails loudly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the encoder was called")


def test_decoder_reconstructs_from_the_bitstream_alone(trained) -> None:
    model, _ = trained
    x = to_tensor(IMAGES[0])
    data = model.compress(x)
    reference = model.decompress(data)
    # a fresh adapter: its encoder is randomly initialised (other seed), then deleted; only
    # the decoder and the entropy bottleneck get the trained weights
    torch.manual_seed(123)
    # not finalized: its entropy tables are empty, so load_state_dict sizes them
    fresh: Any = AutoencoderAdapter.build(ARCH, dict(CONFIG))
    assert not torch.equal(fresh.net.g_a.down1[0].weight, model.net.g_a.down1[0].weight)
    decoder_only = {
        k: v for k, v in model.state_dict().items() if k.startswith(("g_s.", "entropy_bottleneck."))
    }
    missing, unexpected = fresh.net.load_state_dict(decoder_only, strict=False)
    assert unexpected == [] and missing and all(k.startswith("g_a.") for k in missing)
    fresh.finalize()
    fresh.net.g_a = Boom()
    fresh.eval()
    rec = fresh.decompress(bytes(data))  # a copy of the bytes: nothing else is shared
    assert torch.equal(rec, reference)
    with pytest.raises(AssertionError, match="encoder was called"):
        fresh.compress(x)
    # ...and the decoder's weights are what turns the bytes into this image: another decoder
    # reads the same bytes into another picture
    other = build(seed=7)
    assert not torch.equal(other.decompress(data), reference)


def test_decoder_input_is_exactly_the_coded_latent(trained) -> None:
    """In the forward pass too, the decoder sees only y_hat, which the bytes decode to."""
    model, _ = trained
    x = to_tensor(IMAGES[1])
    seen: list[tuple[torch.Tensor, ...]] = []
    handle = model.net.g_s.register_forward_pre_hook(lambda _m, args: seen.append(args))
    try:
        with torch.no_grad():
            out = model.forward_rd(x)
    finally:
        handle.remove()
    assert len(seen) == 1 and len(seen[0]) == 1  # one call, one tensor argument
    y_hat = model.net.entropy_bottleneck.decompress(
        model.net.compress(x)["strings"][0], model.net.compress(x)["shape"]
    )
    assert torch.equal(seen[0][0], y_hat)
    assert torch.equal(out.x_hat.clamp(0, 1), model.decompress(model.compress(x)))


def test_training_lowers_the_rd_loss_and_saves_the_best(trained) -> None:
    model, info = trained
    assert info["after"] < 0.5 * info["before"], info
    result = info["result"]
    assert result.steps == 100 and result.stopped == "max_steps"
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 5 and min(losses) == result.best_val_loss and losses[-1] < losses[0]
    # the checkpoint is the best held-out state and reloads weights-only to the same codec
    loaded: Any = checkpoint.load(info["dir"] / "ae.pt")
    assert loaded.arch == ARCH and loaded.meta["train"]["lmbda"] == LMBDA
    x = to_tensor(IMAGES[2])
    assert loaded.compress(x) == model.compress(x)
    assert torch.equal(loaded.decompress(model.compress(x)), model.decompress(model.compress(x)))


def test_early_stopping_on_the_held_out_split(tmp_path: Path) -> None:
    imgs = [smooth_image(96, 96, i) for i in range(4)]
    cfg = TrainConfig.model_validate(
        {**TRAIN, "eval_every": 2, "max_steps": 100, "patience": 2, "min_delta": 1e9}
    )
    result = train(build(), imgs, cfg, tmp_path / "es.pt", resume=False)
    # the first evaluation is the best; two without a 1e9 improvement stop the run
    assert result.stopped == "early_stopping" and result.steps == 6


def test_eval_is_deterministic_and_train_mode_is_not(trained) -> None:
    model, _ = trained
    x = to_tensor(IMAGES[0])
    with torch.no_grad():
        a, b = model.forward_rd(x), model.forward_rd(x)
    assert torch.equal(a.x_hat, b.x_hat) and torch.equal(a.likelihoods["y"], b.likelihoods["y"])
    assert model.compress(x) == model.compress(x)
    data = model.compress(x)
    assert torch.equal(model.decompress(data), model.decompress(data))
    # dropout is live in training: the decoder alone gives two outputs for one input
    dropouts = [m for m in model.net.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 6 and all(m.p > 0 for m in dropouts)
    norms = [m for m in model.net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 20 and all(int(m.num_batches_tracked or 0) > 0 for m in norms)
    g_s = copy.deepcopy(model.net.g_s).train()
    y = torch.randn(2, 24, 4, 4)
    with torch.no_grad():
        assert not torch.equal(g_s(y), g_s(y))


def test_checkpoint_round_trip_and_arch_guess(tmp_path: Path, trained) -> None:
    model, _ = trained
    path = checkpoint.save(model, tmp_path / "m.pt")
    loaded = checkpoint.load(path)
    assert loaded.config == CONFIG
    # a bare state dict (no config) is recognised and its widths inferred
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    bare = checkpoint.load(tmp_path / "bare.pt")
    assert bare.arch == ARCH and bare.config == CONFIG
    x = to_tensor(IMAGES[1])
    assert bare.compress(x) == loaded.compress(x) == model.compress(x)


def onnx_run(path: Path, x: torch.Tensor) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"input": x.numpy()})[0])


def test_export_parity_bn_folded_dropout_gone(tmp_path: Path, trained) -> None:
    model, _ = trained
    folder = export_model(model, tmp_path / "exp")
    for name in ("g_a", "g_s"):
        ops = {n.op_type for n in onnx.load(folder / f"{name}.onnx").graph.node}
        assert "Conv" in ops and not ops & {"BatchNormalization", "Dropout", "ConvTranspose"}
    # parity against the original (unfolded) torch modules, not only the folded copies
    x = to_tensor(IMAGES[0])
    with torch.no_grad():
        y = model.net.g_a(x)
        y_hat = model.net.entropy_bottleneck.decompress(
            model.net.entropy_bottleneck.compress(y), y.shape[-2:]
        )
        x_hat = model.net.g_s(y_hat).clamp(0, 1)
    scale = max(1.0, float(y.abs().max()))
    assert np.abs(onnx_run(folder / "g_a.onnx", x) - y.numpy()).max() <= 1e-4 * scale
    assert np.abs(onnx_run(folder / "g_s.onnx", y_hat) - x_hat.numpy()).max() <= 1e-4
    # the torch-free runtime decodes to what torch decodes (8-bit, at most one level apart)
    ort_codec = load_codec(folder, threads=1)
    ort_rec = ort_codec.decode(ort_codec.encode(IMAGES[0]))
    torch_rec = TorchCodec(model).decode(TorchCodec(model).encode(IMAGES[0]))
    assert np.abs(ort_rec.astype(int) - torch_rec.astype(int)).max() <= 1


def test_structured_prune_keeps_it_working(tmp_path: Path, trained) -> None:
    model, _ = trained
    params = PruneParams(
        ratio={"encoder": 0.3, "decoder": 0.3},
        round_to=2,
        report_size=(128, 128),
        latency_repeats=0,
    )
    pruned: Any
    pruned, report = prune_model(model, params)
    total = report["total"]
    assert total["macs_after"] < 0.6 * total["macs_before"]  # 16 -> 10 channels: ~0.4x
    widths = report["widths"]
    assert widths["g_a.down1.0"] == [3, 10] and widths["g_s.image"] == [10, 3]
    assert pruned.net.g_a.latent.out_channels == 24  # the latent is left alone
    assert all(m.num_features == 10 for m in pruned.net.modules() if isinstance(m, nn.BatchNorm2d))
    path = checkpoint.save(pruned, tmp_path / "p.pt")
    reloaded = checkpoint.load(path)
    img = IMAGES[2]
    rec = TorchCodec(reloaded).decode(TorchCodec(pruned).encode(img))
    base = psnr(img, TorchCodec(model).decode(TorchCodec(model).encode(img)))
    print(f"PSNR unpruned {base:.2f} dB, pruned 0.3 (no fine-tune) {psnr(img, rec):.2f} dB")
    assert rec.shape == img.shape and psnr(img, rec) > base - 3.0
    x = to_tensor(img)
    assert reloaded.compress(x) == pruned.compress(x)
    export_model(pruned, tmp_path / "exp")  # and it still exports at parity


def test_latent_pruning_cuts_encoder_decoder_and_bottleneck(trained) -> None:
    model, _ = trained
    params = PruneParams(ratio={"latent": 0.5}, round_to=4, report_size=(64, 64), latency_repeats=0)
    pruned, report = prune_model(model, params)
    assert report["widths"] == {
        "g_a.latent": [16, 12],
        "g_s.latent.0": [12, 16],
        "entropy_bottleneck": [12],
    }
    rec = TorchCodec(pruned).decode(TorchCodec(pruned).encode(IMAGES[0]))
    assert rec.shape == IMAGES[0].shape


def test_int8_round_trip_through_the_runtime(tmp_path: Path, trained) -> None:
    model, _ = trained
    fp32 = export_model(model, tmp_path / "fp32")
    calibration = [smooth_image(128, 128, 40 + i) for i in range(4)]  # not the test images
    params = QuantParams.model_validate({"calibration": {"images": 4, "crop": 128}})
    report = QUANTIZERS.get("ort-static")(fp32, tmp_path / "int8", params, calibration, 1)
    counts = {g["graph"]: g["int8_convs"] for g in report["graphs"]}
    # every conv of both graphs is INT8: 4 strided + 3x2 residual + the latent conv in g_a;
    # the latent conv + 3x2 residual + 3 upsampling x 4 phases (export's PhaseConv) + the image
    # conv in g_s
    assert counts == {"g_a": 11, "g_s": 20}
    for graph in ("g_a", "g_s"):
        assert qg.float_convs(onnx.load(tmp_path / "int8" / f"{graph}.onnx")) == []
    f_codec, q_codec = load_codec(fp32, threads=1), load_codec(tmp_path / "int8", threads=1)
    img = IMAGES[1]
    f_data, q_data = f_codec.encode(img), q_codec.encode(img)
    f_psnr, q_psnr = psnr(img, f_codec.decode(f_data)), psnr(img, q_codec.decode(q_data))
    assert q_codec.decode(q_data).shape == img.shape
    print(f"PSNR FP32 export {f_psnr:.2f} dB, INT8 {q_psnr:.2f} dB")
    assert q_psnr > f_psnr - 1.5, (f_psnr, q_psnr)
    assert abs(len(q_data) / len(f_data) - 1) < 0.25
    with pytest.raises(BitstreamError):  # a float-export stream is refused by the INT8 codec
        q_codec.decode(f_data)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"N": 16}, "M=None"),
        ({"N": 0, "M": 8}, "N=0"),
        ({"N": 16, "M": 8.5}, "M=8.5"),
        ({"N": 16, "M": 8, "dropout": 1.0}, "dropout"),
        ({"N": 16, "M": 8, "depth": 3}, "bad config key 'depth'"),
        ({"N": 16, "M": 8, "widths": [1, 2]}, "must be a map"),
        ({"N": 16, "M": 8, "widths": {"g_a.nope": [1, 2]}}, "not a resizable module"),
    ],
)
def test_bad_config_is_an_error(config: dict, match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        MODELS.get(ARCH).build(ARCH, config)


def test_bad_quality_foreign_weights_and_bad_bytes(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"allowed: 1\.\.8"):
        MODELS.get(ARCH).default_config(ARCH, 9)
    assert MODELS.get(ARCH).default_config(ARCH, 3) == {"N": 128, "M": 192}
    zoo = MODELS.get("bmshj2018-factorized").build("bmshj2018-factorized", {"N": 8, "M": 12})
    torch.save(zoo.state_dict(), tmp_path / "zoo.pt")
    with pytest.raises(CheckpointError, match="not a autoencoder model"):
        checkpoint.load(tmp_path / "zoo.pt", ARCH)
    with pytest.raises(BitstreamError):
        build().decompress(b"\x00\x02ab")


def test_cli_train_writes_a_checkpoint(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from compressor.cli import main

    data = write_images(tmp_path / "imgs", [(96, 96)] * 3)
    out = tmp_path / "cli.pt"
    args = ["train", "--arch", ARCH, "--quality", "3", "--config", "N=8,M=12", "--data",
            str(data), "--out", str(out), "--max-steps", "4", "--crop", "64", "--val-crop",
            "64", "--batch-size", "2", "--eval-every", "2", "--threads", "1"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    loaded: Any = checkpoint.load(out)
    assert loaded.arch == ARCH and loaded.config == {"N": 8, "M": 12}
    assert loaded.meta["train"]["lmbda"] == 0.0067  # quality 3's lambda
