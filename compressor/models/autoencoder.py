"""The convolutional autoencoder family (`autoencoder`): BatchNorm, dropout, residual blocks.

    x -> g_a (4 stride-2 convs + BN + ReLU, residual blocks at 1/4, 1/8, 1/16; a 3x3 conv) -> y
      -> EntropyBottleneck (factorized prior: round, range-code) -> y_hat
      -> g_s (a 3x3 conv, residual blocks, 4 stride-2 transposed convs + BN + ReLU) -> x_hat

Residual (skip) connections live inside g_a or inside g_s only: the one tensor that crosses
from encoder to decoder is the quantized latent y_hat, which is exactly what the bitstream
carries (a U-Net style skip across the bottleneck would feed the decoder information no
bitstream holds). The net uses CompressAI's attribute names (g_a, g_s, entropy_bottleneck),
so the latent pruning (compressor.prune.latent) and the "factorized" runtime kind apply.

Configs: {"N": channels, "M": latent channels} (+ optional "dropout", and "widths" after
structured pruning). Full-size widths follow the zoo per quality (q1-5: 128/192, q6-8:
192/320); the small config is SMALL_CONFIG (`cli.py train --config N=32,M=64`). In eval mode
BatchNorm uses its running statistics and dropout is off, so compress/decompress are
deterministic functions of the input and the bytes.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Any, cast

import torch
from compressai.entropy_models import EntropyBottleneck
from compressai.models.base import CompressionModel
from torch import nn

from compressor import bitstream
from compressor.errors import BitstreamError, CheckpointError
from compressor.models.base import MODELS, CodecAdapter, RDOutput
from compressor.models.resize import CONV_TYPES, apply_widths, shape_map, shapes_from_state_dict

#: dropout inside each residual block while training (small: the decoder must stay sharp)
DEFAULT_DROPOUT = 0.05
#: the small config trained and used in tests / benchmarks here
SMALL_CONFIG: dict[str, Any] = {"N": 32, "M": 64}
CONFIG_KEYS = ("N", "M", "dropout", "widths")
#: a tensor only this family's state dicts have (guess_arch)
SIGNATURE = "g_a.res1.body.1.running_mean"


def _conv(c_in: int, c_out: int, k: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2)


def _deconv(c_in: int, c_out: int, k: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(
        c_in, c_out, k, stride=stride, padding=k // 2, output_padding=stride - 1
    )


def conv_bn_relu(conv: nn.Module, channels: int) -> nn.Sequential:
    """A resampling stage; conv then BN, adjacent, so export folds the BN into the conv."""
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    """x + body(x), then ReLU; body = conv-BN-ReLU-dropout-conv-BN at constant width."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(channels, channels, 3, 1),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            _conv(channels, channels, 3, 1),
            nn.BatchNorm2d(channels),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.act(x + self.body(x)))


def encoder(n: int, m: int, dropout: float) -> nn.Sequential:
    # Residual blocks sit at 1/4, 1/8 and 1/16 resolution: at 1/2 one block costs more MACs
    # than the rest of the encoder. The latent conv is registered last (pruning leaves a
    # component's last conv alone: its outputs are the latent).
    return nn.Sequential(
        OrderedDict(
            [
                ("down1", conv_bn_relu(_conv(3, n), n)),
                ("down2", conv_bn_relu(_conv(n, n), n)),
                ("res1", ResBlock(n, dropout)),
                ("down3", conv_bn_relu(_conv(n, n), n)),
                ("res2", ResBlock(n, dropout)),
                ("down4", conv_bn_relu(_conv(n, n), n)),
                ("res3", ResBlock(n, dropout)),
                ("latent", _conv(n, m, 3, 1)),  # no BN / ReLU: y is signed, its scale learned
            ]
        )
    )


def decoder(n: int, m: int, dropout: float) -> nn.Sequential:
    # the first conv reads y_hat (latent pruning cuts its inputs), the last writes pixels
    return nn.Sequential(
        OrderedDict(
            [
                ("latent", conv_bn_relu(_conv(m, n, 3, 1), n)),
                ("res1", ResBlock(n, dropout)),
                ("up1", conv_bn_relu(_deconv(n, n), n)),
                ("res2", ResBlock(n, dropout)),
                ("up2", conv_bn_relu(_deconv(n, n), n)),
                ("res3", ResBlock(n, dropout)),
                ("up3", conv_bn_relu(_deconv(n, n), n)),
                ("image", _deconv(n, 3)),
            ]
        )
    )


class AutoencoderNet(CompressionModel):
    """g_a, g_s and a factorized entropy bottleneck; CompressionModel gives update() and the
    entropy-table-resizing load_state_dict."""

    def __init__(self, N: int, M: int, dropout: float = DEFAULT_DROPOUT) -> None:
        super().__init__()
        self.g_a = encoder(N, M, dropout)
        self.g_s = decoder(N, M, dropout)
        self.entropy_bottleneck = EntropyBottleneck(M)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        y = self.g_a(x)
        y_hat, likelihoods = self.entropy_bottleneck(y)
        return {"x_hat": self.g_s(y_hat), "likelihoods": {"y": likelihoods}}

    def compress(self, x: torch.Tensor) -> dict[str, Any]:
        y = self.g_a(x)
        return {"strings": [self.entropy_bottleneck.compress(y)], "shape": y.shape[-2:]}

    def decompress(self, strings: list[list[bytes]], shape: list[int]) -> dict[str, Any]:
        # only the bytes and the latent size: nothing from g_a is reachable here
        y_hat = self.entropy_bottleneck.decompress(strings[0], shape)
        return {"x_hat": self.g_s(y_hat).clamp_(0, 1)}


def sync_batchnorms(net: nn.Module) -> None:
    """Give every BatchNorm the width of the convolution right before it (pruned configs
    record convolution widths only; a BN's width always follows its conv)."""
    for seq in net.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for (_, prev), (name, bn) in itertools.pairwise(seq.named_children()):
            if (
                isinstance(prev, CONV_TYPES)
                and isinstance(bn, nn.BatchNorm2d)
                and bn.num_features != prev.out_channels
            ):
                setattr(seq, name, nn.BatchNorm2d(prev.out_channels))


def _validate(config: dict[str, Any]) -> tuple[int, int, float]:
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise CheckpointError(
            f"bad config key {unknown[0]!r} for autoencoder; allowed: {', '.join(CONFIG_KEYS)}"
        )
    widths = []
    for key in ("N", "M"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(
                f"autoencoder config {key}={value!r}: needs a positive integer (N: channels, "
                f"M: latent channels), e.g. {SMALL_CONFIG}"
            )
        widths.append(value)
    dropout = config.get("dropout", DEFAULT_DROPOUT)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise CheckpointError(f"autoencoder config dropout={dropout!r}: needs a number in [0, 1)")
    return widths[0], widths[1], float(dropout)


class AutoencoderAdapter(CodecAdapter):
    family = "autoencoder"
    pad_multiple = 16  # four stride-2 stages

    @classmethod
    def build(cls, arch: str, config: dict[str, Any]) -> AutoencoderAdapter:
        n, m, dropout = _validate(config)
        net = AutoencoderNet(n, m, dropout)
        widths = config.get("widths")
        if widths:
            if not isinstance(widths, dict):
                raise CheckpointError(f"config widths of {arch} must be a map, got {widths!r}")
            apply_widths(net, widths)
            sync_batchnorms(net)
        return cls(arch, config, net)

    @classmethod
    def default_config(cls, arch: str, quality: int) -> dict[str, Any]:
        if not 1 <= quality <= 8:
            raise CheckpointError(f"{arch} has no quality {quality}; allowed: 1..8")
        return {"N": 128, "M": 192} if quality <= 5 else {"N": 192, "M": 320}

    @classmethod
    def infer_config(cls, arch: str, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        try:
            config: dict[str, Any] = {
                "N": int(state_dict["g_a.down1.0.weight"].size(0)),
                "M": int(state_dict["g_a.latent.weight"].size(0)),
            }
        except KeyError as e:
            raise CheckpointError(
                f"the weights are not a {arch} model (no tensor {e.args[0]!r})"
            ) from None
        ref = AutoencoderNet(config["N"], config["M"])
        fresh = shape_map(ref)
        widths = {
            p: s for p, s in shapes_from_state_dict(ref, state_dict).items() if fresh.get(p) != s
        }
        if widths:
            config["widths"] = widths
        return config

    @classmethod
    def guess_arch(cls, state_dict: dict[str, torch.Tensor]) -> str | None:
        keys = set(state_dict)
        return "autoencoder" if {SIGNATURE, "entropy_bottleneck.quantiles"} <= keys else None

    @property
    def cnet(self) -> AutoencoderNet:
        return cast(AutoencoderNet, self.net)

    def components(self) -> dict[str, nn.Module]:
        return {
            "encoder": self.cnet.g_a,
            "decoder": self.cnet.g_s,
            "entropy": self.cnet.entropy_bottleneck,
        }

    def forward_rd(self, x: torch.Tensor) -> RDOutput:
        out = self.net(x)
        return RDOutput(x_hat=out["x_hat"], likelihoods=dict(out["likelihoods"]))

    def compress(self, x: torch.Tensor) -> bytes:
        out = self.cnet.compress(x)
        return bitstream.pack([out["strings"][0][0]], [int(v) for v in out["shape"]])

    def decompress(self, data: bytes) -> torch.Tensor:
        strings, shape = bitstream.unpack(data)
        if len(strings) != 1 or len(shape) != 2:
            raise BitstreamError(
                f"not an autoencoder bitstream: {len(strings)} strings and {len(shape)} "
                "integers (expected 1 latent string and its height, width)"
            )
        return cast(torch.Tensor, self.cnet.decompress([[strings[0]]], shape)["x_hat"])

    def aux_loss(self) -> torch.Tensor:
        return self.cnet.aux_loss()

    def aux_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.net.named_parameters() if n.endswith(".quantiles")]

    def finalize(self) -> None:
        self.cnet.update(force=True)

    def coupled_channels(self) -> dict[str, list[str]]:
        return {"latent": ["encoder", "decoder", "entropy"]}


MODELS.add("autoencoder", AutoencoderAdapter)
