"""The transform imitator (family `mimic`): a small network that learns a fixed composite of
torchvision transforms, trained by the one train loop against the real pipeline.

The composite (`transform_pipeline`): Resize 32 -> 28 (antialias), horizontal and vertical
flip, grayscale: 3x32x32 in, 1x28x28 out. On float input every step is linear and acts on
the colour axis, the rows or the columns alone, so the network is three 1x1 convolutions:
one over the colour channels (grayscale), then one over the rows and one over the columns,
each with that spatial axis moved into the channel dimension. Local (k x k) convolutions
could not do it: a flip sends pixel i to 27 - i, a global permutation no stack of
translation-equivariant layers expresses, while an axis-as-channels 1x1 convolution is a
learned 32 -> 28 resampling matrix, flip included. About 57k MACs per image.

Why not in MODELS: MODELS holds codecs; everything that iterates it (evaluate, validate, the
plugin tests, checkpoint arch guessing) needs a bitstream. The imitator has none, so it lives
in its own registry MIMICS. `MimicAdapter` still implements the CodecAdapter contract, which
is what the train loop, checkpoint.save and the pruners need; `compress()` raises a clear
CompressorError.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from compressor import checkpoint
from compressor.errors import CheckpointError, CompressorError
from compressor.models.base import CodecAdapter, RDOutput
from compressor.registry import Registry
from compressor.train import LossFn, TrainConfig, TrainResult, train

log = logging.getLogger(__name__)

IN_SIZE, OUT_SIZE = 32, 28
DEFAULT_CONFIG = {"in_channels": 3, "out_channels": 1, "in_size": IN_SIZE, "out_size": OUT_SIZE}
#: training defaults: the crop is tiled into 32x32 inputs (64 -> 4 tiles per crop); MSE of
#: [0, 1] values is small, so min_delta is too
TRAIN_DEFAULTS: dict[str, Any] = {
    "crop": 64,
    "val_crop": 128,
    "batch_size": 16,
    "lr": 3e-2,
    "max_steps": 4000,
    "eval_every": 100,
    "patience": 5,
    "lr_patience": 2,
    "min_delta": 1e-8,
    "val_fraction": 0.1,
}


def transform_pipeline() -> v2.Compose:
    """The teacher: the real torchvision pipeline (deterministic: every flip has p=1)."""
    return v2.Compose(
        [
            v2.Resize(OUT_SIZE, antialias=True),
            v2.RandomHorizontalFlip(p=1.0),
            v2.RandomVerticalFlip(p=1.0),
            v2.Grayscale(num_output_channels=1),
        ]
    )


class MimicNet(nn.Module):
    """Colour 1x1 conv, then a 1x1 conv over the rows and one over the columns."""

    def __init__(self, in_channels: int, out_channels: int, in_size: int, out_size: int) -> None:
        super().__init__()
        self.out_channels, self.in_size, self.out_size = out_channels, in_size, out_size
        self.color = nn.Conv2d(in_channels, out_channels, 1)
        self.rows = nn.Conv2d(in_size, out_size, 1)
        self.cols = nn.Conv2d(in_size, out_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One function, two spellings: torch's oneDNN 1x1 convolution with one output channel
        # takes ~20 ms on a 256 x 3 x 32 x 32 batch (measured: 70x the matmul form), while
        # ONNX Runtime runs (and INT8-quantizes) Conv well. The exported graph uses the
        # convolutions; eager torch the equal matmuls (tests/unit/test_mimic.py: same output).
        if torch.onnx.is_in_onnx_export():
            return self.conv_form(x)
        return self.matmul_form(x)

    def conv_form(self, x: torch.Tensor) -> torch.Tensor:
        s, o, c = self.in_size, self.out_size, self.out_channels
        g = self.color(x)  # B x C x H x W
        t = g.reshape(-1, s, s, 1)  # rows as channels: (B*C) x H x W x 1
        t = self.rows(t).transpose(1, 2)  # (B*C) x W x H' x 1
        t = self.cols(t)  # (B*C) x W' x H' x 1
        return t.reshape(-1, c, o, o).transpose(2, 3)  # B x C x H' x W'

    def matmul_form(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        color = self.color.weight[:, :, 0, 0]
        g = torch.matmul(color, x.reshape(b, -1, h * w)).reshape(b, -1, h, w)
        g = g + _bias(self.color)[:, None, None]
        t = torch.matmul(self.rows.weight[:, :, 0, 0], g) + _bias(self.rows)[:, None]
        return torch.matmul(t, self.cols.weight[:, :, 0, 0].T) + _bias(self.cols)


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    assert conv.bias is not None  # built with bias=True (the default) above
    return conv.bias


class MimicAdapter(CodecAdapter):
    family = "mimic"
    pad_multiple = 1

    @classmethod
    def build(cls, arch: str, config: dict[str, Any]) -> MimicAdapter:
        full = {**DEFAULT_CONFIG, **config}
        unknown = sorted(set(full) - set(DEFAULT_CONFIG))
        if unknown:
            raise CheckpointError(
                f"bad config key {unknown[0]!r} for {arch}; allowed: {', '.join(DEFAULT_CONFIG)}"
            )
        return cls(arch, full, MimicNet(**{k: int(v) for k, v in full.items()}))

    @classmethod
    def default_config(cls, arch: str, quality: int) -> dict[str, Any]:
        return dict(DEFAULT_CONFIG)

    @classmethod
    def infer_config(cls, arch: str, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        try:
            color, rows = state_dict["color.weight"], state_dict["rows.weight"]
        except KeyError as e:
            raise CheckpointError(
                f"the weights are not a {arch} model (no {e.args[0]!r})"
            ) from None
        return {
            "in_channels": int(color.size(1)),
            "out_channels": int(color.size(0)),
            "in_size": int(rows.size(1)),
            "out_size": int(rows.size(0)),
        }

    def components(self) -> dict[str, nn.Module]:
        return {"network": self.net}

    def forward_rd(self, x: torch.Tensor) -> RDOutput:
        """The imitated transform of x (no rate terms: the imitator codes nothing)."""
        return RDOutput(x_hat=self.net(x))

    def _no_bitstream(self) -> CompressorError:
        return CompressorError(
            f"{self.arch} imitates image transforms and has no bitstream; compress/decompress "
            "need a codec arch (see `cli.py models`)"
        )

    def compress(self, x: torch.Tensor) -> bytes:
        raise self._no_bitstream()

    def decompress(self, data: bytes) -> torch.Tensor:
        raise self._no_bitstream()

    def example_inputs(self, h: int = IN_SIZE, w: int = IN_SIZE) -> torch.Tensor:
        return torch.rand(1, int(self.config["in_channels"]), IN_SIZE, IN_SIZE)


MIMICS: Registry[type[MimicAdapter]] = Registry("mimic arch")
MIMICS.add("mimic", MimicAdapter)


def build(arch: str = "mimic", seed: int = 0) -> MimicAdapter:
    torch.manual_seed(seed)
    cls = MIMICS.get(arch)
    return cls.build(arch, cls.default_config(arch, 1))


def load(path: Path) -> MimicAdapter:
    """An imitator checkpoint (the common format, checked field by field) as a ready model."""
    return cast(MimicAdapter, checkpoint.load(Path(path), models=MIMICS))


# -- training against the real pipeline -------------------------------------------------------
def to_tiles(x: torch.Tensor, size: int = IN_SIZE) -> torch.Tensor:
    """B x C x kS x kS crops -> (B*k*k) x C x S x S tiles: each tile is one training input."""
    _, c, h, w = x.shape
    t = x[:, :, : h // size * size, : w // size * size].unfold(2, size, size).unfold(3, size, size)
    return t.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, size, size)


def mimic_loss() -> LossFn:
    """MSE to the torchvision pipeline on the 32x32 tiles of the train loop's crops."""
    pipeline = transform_pipeline()

    def loss_fn(model: CodecAdapter, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        tiles = to_tiles(x)
        with torch.no_grad():
            target = pipeline(tiles)
        mse = F.mse_loss(model.forward_rd(tiles).x_hat, target)
        psnr = -10 * math.log10(max(mse.item(), 1e-12))
        return mse, {"loss": mse.item(), "bpp": 0.0, "psnr": psnr}

    return loss_fn


def train_mimic(
    images: list[np.ndarray],
    out: Path,
    overrides: dict[str, Any] | None = None,
    *,
    model: MimicAdapter | None = None,
    resume: bool = True,
) -> tuple[MimicAdapter, TrainResult]:
    """Train an imitator on random crops of `images` with MSE and early stopping."""
    cfg = TrainConfig.model_validate({**TRAIN_DEFAULTS, **(overrides or {})})
    model = model or build(seed=cfg.seed)
    result = train(model, images, cfg, out, loss_fn=mimic_loss(), resume=resume)
    return cast(MimicAdapter, model.eval()), result


# -- measuring ------------------------------------------------------------------------------
def random_crops(images: list[np.ndarray], count: int, seed: int = 0) -> torch.Tensor:
    """count x 3 x 32 x 32 float crops in [0, 1] at random places of random images."""
    gen = np.random.default_rng(seed)
    out = np.empty((count, IN_SIZE, IN_SIZE, 3), dtype=np.uint8)
    for i in range(count):
        img = images[int(gen.integers(len(images)))]
        y = int(gen.integers(img.shape[0] - IN_SIZE + 1))
        x = int(gen.integers(img.shape[1] - IN_SIZE + 1))
        out[i] = img[y : y + IN_SIZE, x : x + IN_SIZE]
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255.0


def to_uint8_rgb(x: torch.Tensor) -> np.ndarray:
    """N x 1 x H x W in [0, 1] -> N x H x W x 3 uint8 (the grey channel replicated)."""
    grey = (x.clamp(0, 1) * 255.0).round().to(torch.uint8)[:, 0].numpy()
    return np.repeat(grey[..., None], 3, axis=-1)


def quality(prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean SSIM and PSNR over a batch, on 8-bit values as every metric here is measured.

    SSIM is compressor.metrics.ssim (Wang et al.: 11x11 Gaussian window, sigma 1.5, valid
    filtering, so an 18x18 map per 28x28 image) on the grey channel replicated to RGB, which
    equals single-channel SSIM because SSIM is a mean over identical channels.
    """
    from compressor.metrics import psnr, ssim

    pred, ref = to_uint8_rgb(prediction), to_uint8_rgb(target)
    ssims = [ssim(r, p) for r, p in zip(ref, pred, strict=True)]
    psnrs = [min(psnr(r, p), 100.0) for r, p in zip(ref, pred, strict=True)]
    return {
        "ssim": float(np.mean(ssims)),
        "ssim_min": float(np.min(ssims)),
        "psnr": float(np.mean(psnrs)),
    }


def export_onnx(model: MimicAdapter, path: Path, opset: int = 17) -> Path:
    """The imitator as one ONNX graph with a dynamic batch axis (input x, output y)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    torch.onnx.export(
        model.net,
        (model.example_inputs(),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    return path
