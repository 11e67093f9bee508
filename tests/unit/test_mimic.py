"""The transform imitator: learns the torchvision composite, and prunes / exports like a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.errors import CompressorError
from compressor.models import MODELS, mimic
from tests.conftest import smooth_image


def textured(h: int, w: int, seed: int) -> np.ndarray:
    """A synthetic photo with strong texture: every frequency the resampling must learn."""
    noise = np.random.default_rng(seed).integers(0, 128, (h, w, 3))
    return np.clip(smooth_image(h, w, seed) * 0.5 + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[mimic.MimicAdapter, Path]:
    """An imitator trained for ~4 s (600 steps, one thread) on textured synthetic photos."""
    out = tmp_path_factory.mktemp("mimic") / "mimic.pt"
    images = [textured(128, 160, 1), textured(160, 128, 2), textured(128, 128, 3)]
    model, result = mimic.train_mimic(
        images, out, {"max_steps": 600, "eval_every": 100, "val_crop": 64, "threads": 1}
    )
    assert result.history[-1]["loss"] < 1e-3 * result.history[0]["loss"]
    return model, out


def heldout() -> torch.Tensor:
    """Crops of smooth synthetic photos (seeds and content unseen in training)."""
    return mimic.random_crops([smooth_image(96, 128, 100 + i) for i in range(3)], 64, seed=5)


def test_pipeline_is_the_composite() -> None:
    x = torch.rand(5, 3, 32, 32)
    y = mimic.transform_pipeline()(x)
    assert y.shape == (5, 1, 28, 28)
    # grayscale of a flipped resize: the corner pixel of the output comes from the far corner
    corner = torch.zeros(1, 3, 32, 32)
    corner[..., -1, -1] = 1.0
    out = mimic.transform_pipeline()(corner)[0, 0]
    assert out[0, 0] > 0 and out[-1, -1] == 0


def test_matmul_and_conv_forms_agree() -> None:
    net = mimic.build(seed=3).net
    x = torch.rand(7, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net.matmul_form(x), net.conv_form(x), atol=1e-5)


def test_imitator_reaches_ssim_on_heldout_images(trained: tuple) -> None:
    model, _ = trained
    x = heldout()
    with torch.no_grad():
        q = mimic.quality(model.net(x), mimic.transform_pipeline()(x))
    # measured: 0.9999 for seeds 0, 1, 2 after 600 steps (lr 0.03); the acceptance bar: 0.99
    assert q["ssim"] > 0.99, q
    assert q["psnr"] > 35, q


def test_checkpoint_roundtrip_and_no_bitstream(trained: tuple) -> None:
    model, path = trained
    loaded = mimic.load(path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.net(x), model.net(x))
    assert "mimic" not in MODELS  # codecs only: evaluate/validate never meet it
    with pytest.raises(CompressorError, match="has no bitstream"):
        loaded.compress(x[:1])
    assert mimic.MimicAdapter.infer_config("mimic", model.state_dict()) == model.config


def test_onnx_export_matches_torch(trained: tuple, tmp_path: Path) -> None:
    import onnxruntime as ort

    model, _ = trained
    path = mimic.export_onnx(model, tmp_path / "m.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = torch.rand(9, 3, 32, 32)  # a batch size other than the export example's
    (y,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(y, model.net(x).numpy(), atol=1e-4)


def test_unstructured_pruning_keeps_quality(trained: tuple) -> None:
    from compressor.prune import PruneParams, prune_model

    model, _ = trained
    params = PruneParams(
        method="unstructured", ratio={"all": 0.8}, report_size=(32, 32), latency_repeats=0
    )
    pruned, report = prune_model(model, params)
    assert report["sparsity"] == pytest.approx(0.8, abs=0.01)
    x = heldout()
    with torch.no_grad():
        q = mimic.quality(pruned.net(x), mimic.transform_pipeline()(x))
    # the resampling matrices are banded (each output row reads ~3 input rows): measured 0.999
    assert q["ssim"] > 0.98, q


def test_load_refuses_a_codec_checkpoint(tiny_ckpt: Path) -> None:
    from compressor.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"bmshj2018-hyperprior.* model; allowed: mimic"):
        mimic.load(tiny_ckpt)
