"""HiFiC (Mentzer et al. 2020, "High-Fidelity Generative Image Compression"), family `hific`.

- encoder g_a: 7x7 conv, four stride-2 3x3 convs (widths N, 2N, 4N, 8N, 16N; the paper's
  60..960), each followed by ChannelNorm + ReLU, and a 3x3 conv to the M latent channels
  (paper: 220). Stride 16.
- probability model: the mean-scale hyperprior of Minnen et al. (mbt2018-mean's coding):
  h_a (3x3, 5x5/2, 5x5/2 to H channels, paper 320), CompressAI's EntropyBottleneck for z,
  h_s (two 5x5/2 transposed convs, a 3x3 conv to 2M = scales then means) and a
  GaussianConditional for y. Real bitstreams through CompressAI's range coder.
- generator g_s: 3x3 conv to 16N + ChannelNorm, `blocks` residual blocks (paper 9) with a skip
  around all of them, four 3x3 stride-2 transposed convs (+ ChannelNorm + ReLU), 7x7 conv to RGB.
- discriminator (training only, not part of the codec): conditioned on the quantized latent,
  which goes through a 3x3 conv to 12 channels, is upsampled 16x (nearest) and concatenated
  to the image; 4x4 convs (D, 2D, 4D, 8D; paper D=64) with spectral norm and LeakyReLU(0.2),
  a 1x1 conv to one logit per patch; non-saturating GAN loss.

Loss = lambda * 255^2 * MSE + bpp (the train loop's RD loss) + `perceptual_weight` * (1 -
MS-SSIM) + `gan_weight` * -log D(x_hat, y_hat). The paper's perceptual term is LPIPS, whose
VGG/AlexNet backbone weights cannot be downloaded here: MS-SSIM (pytorch_msssim, offline)
stands in for it (plain SSIM on crops of 160 pixels or less, where MS-SSIM's four
downsamplings do not fit). The first `warmup` training steps run without the GAN term, as the
paper initialises its GAN training from a model trained without it.

Paper widths: `default_config` (N=60, M=220, H=320, blocks=9, D=64). SMALL_CONFIG is the one
trained and benchmarked on this CPU. Components for pruning: encoder, generator,
probability_model (h_a + h_s + the entropy models); see compressor.prune.channelnorm.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models import MeanScaleHyperprior
from compressai.models.base import CompressionModel
from compressai.models.utils import conv, deconv
from pytorch_msssim import ms_ssim, ssim
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from compressor import bitstream
from compressor.errors import CheckpointError
from compressor.models.base import MODELS, CodecAdapter, RDOutput
from compressor.models.resize import apply_widths, shape_map, shapes_from_state_dict

log = logging.getLogger(__name__)

#: the paper's widths; loss weights: its beta (GAN) and k_P (perceptual, here on MS-SSIM)
PAPER_CONFIG: dict[str, Any] = {"N": 60, "M": 220, "H": 320, "blocks": 9, "D": 64}
LOSS_DEFAULTS: dict[str, Any] = {"warmup": 0, "gan_weight": 0.15, "perceptual_weight": 1.0}
#: the config trained and benchmarked here (1 CPU thread): widths 12..192, 3 residual blocks
SMALL_CONFIG: dict[str, Any] = {"N": 12, "M": 64, "H": 64, "blocks": 3, "D": 16}
INT_KEYS = ("N", "M", "H", "blocks", "D", "warmup")
FLOAT_KEYS = ("gan_weight", "perceptual_weight")
D_LR = 1e-4  # the paper's Adam learning rate, for the discriminator
CONTEXT_CHANNELS = 12  # latent channels the discriminator sees (after its 3x3 conv)
ENCODER_LAST = 15  # index of g_a's latent convolution (5 conv/norm/relu stages before it)


class ChannelNorm(nn.Module):
    """Normalise each pixel's C values over the channels (zero mean, unit variance), then a
    learned per-channel affine. Unlike batch/instance norm its statistics do not depend on
    the image size or batch, which HiFiC found avoids darkening artefacts at test time."""

    def __init__(self, channels: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        var = (centred * centred).mean(dim=1, keepdim=True)
        normed = centred * torch.rsqrt(var + self.eps)
        return normed * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def _conv(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Conv2d:
    # reflection padding as in the paper's implementation (no dark borders from zero padding)
    return nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, padding_mode="reflect")


def encoder(n: int, m: int) -> nn.Sequential:
    layers: list[nn.Module] = [_conv(3, n, 7), ChannelNorm(n), nn.ReLU()]
    for i in range(4):
        layers += [_conv(n << i, n << (i + 1), 3, 2), ChannelNorm(n << (i + 1)), nn.ReLU()]
    layers.append(_conv(n << 4, m, 3))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.norm1 = _conv(c, c, 3), ChannelNorm(c)
        self.conv2, self.norm2 = _conv(c, c, 3), ChannelNorm(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        return x + self.norm2(self.conv2(h))


class Generator(nn.Module):
    def __init__(self, n: int, m: int, blocks: int) -> None:
        super().__init__()
        top = n << 4
        self.head = nn.Sequential(_conv(m, top, 3), ChannelNorm(top))  # first: reads y_hat
        self.blocks = nn.Sequential(*(ResidualBlock(top) for _ in range(blocks)))
        up: list[nn.Module] = []
        for i in range(4, 0, -1):
            c_in, c_out = n << i, n << (i - 1)
            up += [nn.ConvTranspose2d(c_in, c_out, 3, 2, 1, 1), ChannelNorm(c_out), nn.ReLU()]
        self.up = nn.Sequential(*up)
        self.tail = _conv(n, 3, 7)  # last: writes pixels

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        h = self.head(y_hat)
        return self.tail(self.up(h + self.blocks(h)))


class ProbabilityModel(nn.Module):
    """Hyper-encoder, hyper-decoder and both entropy models: y -> (y_hat, likelihoods)."""

    def __init__(self, m: int, h: int) -> None:
        super().__init__()
        self.h_a = nn.Sequential(
            conv(m, h, stride=1, kernel_size=3), nn.ReLU(), conv(h, h), nn.ReLU(), conv(h, h)
        )
        self.h_s = nn.Sequential(
            deconv(h, h),
            nn.ReLU(),
            deconv(h, h),
            nn.ReLU(),
            conv(h, 2 * m, stride=1, kernel_size=3),
        )
        self.entropy_bottleneck = EntropyBottleneck(h)
        self.gaussian_conditional = GaussianConditional(None)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z_hat, z_lik = self.entropy_bottleneck(self.h_a(y))
        scales, means = self.h_s(z_hat).chunk(2, 1)
        y_hat, y_lik = self.gaussian_conditional(y, scales, means=means)
        return y_hat, {"y": y_lik, "z": z_lik}


class HificNet(MeanScaleHyperprior):
    """The codec: mbt2018-mean's compress()/decompress()/update() over HiFiC's transforms.

    h_a, h_s and the entropy models live in `probability_model` (one component); the
    properties give them the names CompressAI's code (and compressor.prune.latent) use.
    """

    def __init__(self, n: int, m: int, h: int, blocks: int) -> None:
        CompressionModel.__init__(self)  # not MeanScaleHyperprior's: it would build its own
        self.N, self.M = n, m
        self.g_a = encoder(n, m)
        self.probability_model = ProbabilityModel(m, h)
        self.g_s = Generator(n, m, blocks)

    @property
    def h_a(self) -> nn.Module:
        return cast(nn.Module, self.probability_model.h_a)

    @property
    def h_s(self) -> nn.Module:
        return cast(nn.Module, self.probability_model.h_s)

    @property
    def entropy_bottleneck(self) -> EntropyBottleneck:
        return cast(EntropyBottleneck, self.probability_model.entropy_bottleneck)

    @property
    def gaussian_conditional(self) -> GaussianConditional:
        return cast(GaussianConditional, self.probability_model.gaussian_conditional)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        y_hat, likelihoods = self.probability_model(self.g_a(x))
        return {"x_hat": self.g_s(y_hat), "likelihoods": likelihoods, "y_hat": y_hat}


class Discriminator(nn.Module):
    """Conditional patch discriminator: D(x, y_hat) -> one logit per patch."""

    def __init__(self, m: int, d: int) -> None:
        super().__init__()
        self.context = nn.Conv2d(m, CONTEXT_CHANNELS, 3, padding=1)
        widths = [3 + CONTEXT_CHANNELS, d, 2 * d, 4 * d, 8 * d]
        strides = [2, 2, 2, 1]
        self.convs = nn.ModuleList(
            spectral_norm(nn.Conv2d(widths[i], widths[i + 1], 4, strides[i], 1)) for i in range(4)
        )
        self.out = nn.Conv2d(8 * d, 1, 1)

    def forward(self, x: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        context = F.leaky_relu(self.context(y_hat), 0.2)
        scale = x.shape[-1] // y_hat.shape[-1]
        h = torch.cat([x, F.interpolate(context, scale_factor=scale, mode="nearest")], 1)
        for layer in self.convs:
            h = F.leaky_relu(layer(h), 0.2)
        return cast(torch.Tensor, self.out(h))


def perceptual_distance(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1 - MS-SSIM (LPIPS's offline stand-in); 1 - SSIM where MS-SSIM does not fit."""
    if min(x.shape[-2:]) > 160:
        return 1 - ms_ssim(x_hat, x, data_range=1.0)
    return 1 - ssim(x_hat, x, data_range=1.0)


def check_config(arch: str, config: dict[str, Any]) -> dict[str, Any]:
    """The full config (defaults filled in); a CheckpointError naming a bad key."""
    allowed = (*INT_KEYS, *FLOAT_KEYS, "widths")
    unknown = sorted(set(config) - set(allowed))
    if unknown or "N" not in config or "M" not in config:
        what = f"unknown key {unknown[0]!r}" if unknown else "N and M are required"
        raise CheckpointError(f"bad config {config} for {arch}: {what}; allowed: {allowed}")
    full = {"H": config["M"], **{k: PAPER_CONFIG[k] for k in ("blocks", "D")}}
    full.update({**LOSS_DEFAULTS, **config})
    for key in INT_KEYS:
        value = full[key]
        minimum = 0 if key == "warmup" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise CheckpointError(
                f"bad config {key}={value!r} for {arch}: must be an integer >= {minimum}"
            )
    for key in FLOAT_KEYS:
        if not isinstance(full[key], int | float) or full[key] < 0:
            raise CheckpointError(f"bad config {key}={full[key]!r} for {arch}: must be >= 0")
        full[key] = float(full[key])
    return full


def norm_widths(net: nn.Module) -> dict[str, list[int]]:
    """Channels of every ChannelNorm (resize.py's shape map covers the convolutions)."""
    return {
        p: [int(m.weight.numel())] for p, m in net.named_modules() if isinstance(m, ChannelNorm)
    }


def apply_all_widths(net: nn.Module, widths: dict[str, Any]) -> None:
    norms = norm_widths(net)
    apply_widths(net, {p: w for p, w in widths.items() if p not in norms})
    for path, raw in widths.items():
        if path in norms:
            parent, _, name = path.rpartition(".")
            channels = int(raw[0]) if isinstance(raw, list | tuple) and len(raw) == 1 else 0
            if channels < 1:
                raise CheckpointError(f"config widths give ChannelNorm {path!r} {raw!r}")
            setattr(net.get_submodule(parent), name, ChannelNorm(channels))


def all_widths(net: nn.Module) -> dict[str, list[int]]:
    return {**shape_map(net), **norm_widths(net)}


class HificAdapter(CodecAdapter):
    family = "hific"

    def __init__(
        self, arch: str, config: dict[str, Any], net: nn.Module, discriminator: Discriminator
    ) -> None:
        super().__init__(arch, config, net)
        self.discriminator = discriminator
        self._d_opt: torch.optim.Optimizer | None = None
        self._fake: tuple[torch.Tensor, torch.Tensor] | None = None
        self._next_step = 0  # the train loop's step count, as its last extra_step() said

    @classmethod
    def build(cls, arch: str, config: dict[str, Any]) -> HificAdapter:
        full = check_config(arch, config)
        net = HificNet(full["N"], full["M"], full["H"], full["blocks"])
        widths = full.get("widths")
        if widths:
            if not isinstance(widths, dict):
                raise CheckpointError(f"config widths of {arch} must be a map, got {widths!r}")
            apply_all_widths(net, widths)
        return cls(arch, full, net, Discriminator(full["M"], full["D"]))

    @classmethod
    def default_config(cls, arch: str, quality: int) -> dict[str, Any]:
        # HiFiC's rate targets come from lambda, not widths: every quality has the paper's
        return dict(PAPER_CONFIG)

    @classmethod
    def infer_config(cls, arch: str, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        try:
            config: dict[str, Any] = {
                "N": int(state_dict["g_a.0.weight"].size(0)),
                "M": int(state_dict[f"g_a.{ENCODER_LAST}.weight"].size(0)),
                "H": int(state_dict["probability_model.h_a.0.weight"].size(0)),
            }
        except KeyError as e:
            raise CheckpointError(
                f"the weights are not a {arch} model (no {e.args[0]!r})"
            ) from None
        config["blocks"] = len({k.split(".")[2] for k in state_dict if k.startswith("g_s.blocks.")})
        disc = state_dict.get("discriminator.out.weight")
        config["D"] = int(disc.size(1)) // 8 if disc is not None else PAPER_CONFIG["D"]
        config = check_config(arch, config)
        ref = HificNet(config["N"], config["M"], config["H"], config["blocks"])
        stored = shapes_from_state_dict(ref, state_dict)
        stored.update(
            {p: [int(state_dict[f"{p}.weight"].numel())] for p in norm_widths(ref)
             if f"{p}.weight" in state_dict}
        )  # fmt: skip
        fresh = all_widths(ref)
        widths = {p: s for p, s in stored.items() if fresh.get(p) != s}
        return {**config, "widths": widths} if widths else config

    @classmethod
    def guess_arch(cls, state_dict: dict[str, torch.Tensor]) -> str | None:
        keys = ("probability_model.h_a.0.weight", "g_s.head.0.weight")
        return "hific" if all(k in state_dict for k in keys) else None

    @property
    def cnet(self) -> HificNet:
        return cast(HificNet, self.net)

    def components(self) -> dict[str, nn.Module]:
        net = self.cnet
        return {
            "encoder": net.g_a,
            "generator": net.g_s,
            "probability_model": net.probability_model,
        }

    def coupled_channels(self) -> dict[str, list[str]]:
        return {"latent": ["encoder", "generator", "probability_model"]}

    # -- training ------------------------------------------------------------------------
    @property
    def gan_active(self) -> bool:
        return self.net.training and self._next_step >= int(self.config["warmup"])

    def forward_rd(self, x: torch.Tensor) -> RDOutput:
        out = self.net(x)
        x_hat, y_hat = out["x_hat"], out["y_hat"]
        extra = float(self.config["perceptual_weight"]) * perceptual_distance(x_hat, x)
        if self.gan_active:
            self._fake = (x_hat.detach(), y_hat.detach())
            extra = extra + float(self.config["gan_weight"]) * self.generator_loss(x_hat, y_hat)
        return RDOutput(x_hat=x_hat, likelihoods=dict(out["likelihoods"]), extra_loss=extra)

    def generator_loss(self, x_hat: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        """Non-saturating -log D(x_hat, y_hat); no gradient reaches D's weights."""
        disc = self.discriminator
        was_training = disc.training
        disc.eval().requires_grad_(False)  # eval: spectral norm's power iteration stays put
        try:
            logits = disc(x_hat, y_hat.detach())
        finally:
            disc.train(was_training).requires_grad_(True)
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))

    def extra_step(self, x: torch.Tensor, step: int) -> dict[str, float]:
        """The discriminator's Adam step on this batch (real x, the generator's fake)."""
        self._next_step = step + 1
        fake, self._fake = self._fake, None
        if fake is None:  # warm-up (or no GAN forward this step)
            return {}
        x_hat, y_hat = fake
        disc = self.discriminator.train()
        if self._d_opt is None:
            self._d_opt = torch.optim.Adam(disc.parameters(), lr=D_LR)
        real_logits, fake_logits = disc(x, y_hat), disc(x_hat, y_hat)
        loss = F.binary_cross_entropy_with_logits(
            real_logits, torch.ones_like(real_logits)
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        self._d_opt.zero_grad(set_to_none=True)
        loss.backward()
        self._d_opt.step()
        return {"d_loss": float(loss.item())}

    # -- bitstreams and entropy models -----------------------------------------------------
    def compress(self, x: torch.Tensor) -> bytes:
        out = self.cnet.compress(x)
        return bitstream.pack([s[0] for s in out["strings"]], [int(v) for v in out["shape"]])

    def decompress(self, data: bytes) -> torch.Tensor:
        strings, shape = bitstream.unpack(data)
        return cast(torch.Tensor, self.cnet.decompress([[s] for s in strings], shape)["x_hat"])

    def aux_loss(self) -> torch.Tensor:
        return cast(torch.Tensor, self.cnet.aux_loss())

    def aux_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.net.named_parameters() if n.endswith(".quantiles")]

    def finalize(self) -> None:
        self.cnet.update(force=True)

    # -- the discriminator travels in the state dict (resume, further GAN fine-tuning) ----
    def state_dict(self) -> dict[str, torch.Tensor]:
        disc = {f"discriminator.{k}": v for k, v in self.discriminator.state_dict().items()}
        return {**self.net.state_dict(), **disc}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        prefix = "discriminator."
        disc = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        self.net.load_state_dict({k: v for k, v in state_dict.items() if not k.startswith(prefix)})
        if disc:  # a codec-only state dict keeps the current discriminator
            self.discriminator.load_state_dict(disc)


MODELS.add("hific", HificAdapter)
