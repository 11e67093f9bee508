"""The recurrent codec of Toderici et al. 2017 (family `rnn`): full-resolution, additive
residual reconstruction.

Every iteration t encodes the current residual r = x - x_hat with a convolutional-LSTM
encoder (a stride-2 conv, then three stride-2 ConvLSTM cells), a binarizer (1x1 conv, tanh,
sign: M bits per 16x16 block), and a ConvLSTM decoder whose depth-to-space (PixelShuffle)
upsampling gives an image increment: x_hat_t = x_hat_(t-1) + D(b_t), x_hat_0 = 0.5 (grey).
Both recurrent states persist across iterations, so later iterations refine earlier ones.
Quality = the number of iterations: each adds M * H * W / 256 bits. The loss is the paper's:
the L1 norm of the residual summed over the iterations (RDOutput.extra_loss); the rate is
fixed by the iterations, so the "likelihoods" are 0.5 per code bit (exactly one bit each,
which is what the packed bitstream costs).

Config: N (base width; Toderici: 64 -> encoder 64/256/512/512, decoder 512/512/512/256/128),
M (bits per position; Toderici: 32), iterations (used by compress; 1..MAX_ITERATIONS), and
`widths` once structured pruning narrowed layers. Structured pruning is the family's own
(compressor.prune.rnn): torch-pruning's one-step trace sees the recurrent state as an outside
input and cannot couple a ConvLSTM's gate blocks.

The packed code bits are compressor.runtime.rnn's format (numpy only), so this torch codec
and the deployable ONNX Runtime codec there read and write the same codes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compressor.errors import CheckpointError, RecipeError
from compressor.models.base import MODELS, CodecAdapter, RDOutput
from compressor.runtime.rnn import MAX_ITERATIONS, check_iterations, pack_codes, unpack_codes

DEFAULT_ITERATIONS = 8
#: Toderici et al. 2017's widths (N=64) and bits; SMALL is what is trained and tested here
FULL_CONFIG: dict[str, int] = {"N": 64, "M": 32, "iterations": 16}
SMALL_CONFIG: dict[str, int] = {"N": 16, "M": 32, "iterations": 8}
ENC_LAYERS = ("conv", "rnn1", "rnn2", "rnn3")
DEC_LAYERS = ("conv1", "rnn1", "rnn2", "rnn3", "rnn4")


def default_widths(n: int) -> dict[str, list[int]]:
    return {"encoder": [n, 4 * n, 8 * n, 8 * n], "decoder": [8 * n, 8 * n, 8 * n, 4 * n, 2 * n]}


class ConvLSTM(nn.Module):
    """Gates = conv(x) + conv(h), split into input/forget/cell/output blocks of `hidden`."""

    def __init__(self, cin: int, hidden: int, stride: int, hidden_kernel: int) -> None:
        super().__init__()
        self.ih = nn.Conv2d(cin, 4 * hidden, 3, stride, 1)
        self.hh = nn.Conv2d(hidden, 4 * hidden, hidden_kernel, 1, hidden_kernel // 2, bias=False)

    @property
    def hidden(self) -> int:
        return self.hh.in_channels

    def forward(
        self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        i, f, g, o = (self.ih(x) + self.hh(h)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class Encoder(nn.Module):
    """residual + (h, c) of 3 cells -> tanh code (before binarization) + new states."""

    strides = (4, 8, 16)  # state resolutions relative to the image

    def __init__(self, widths: list[int], bits: int) -> None:
        super().__init__()
        c0, h1, h2, h3 = widths
        self.conv = nn.Conv2d(3, c0, 3, 2, 1)
        self.rnn1 = ConvLSTM(c0, h1, 2, 1)
        self.rnn2 = ConvLSTM(h1, h2, 2, 1)
        self.rnn3 = ConvLSTM(h2, h3, 2, 1)
        self.binarizer = nn.Conv2d(h3, bits, 1, bias=False)

    def cells(self) -> list[ConvLSTM]:
        return [self.rnn1, self.rnn2, self.rnn3]

    def forward(self, r: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, new = self.conv(r), []
        for k, cell in enumerate(self.cells()):
            x, c = cell(x, states[2 * k], states[2 * k + 1])
            new += [x, c]
        return (torch.tanh(self.binarizer(x)), *new)


class Decoder(nn.Module):
    """bits + (h, c) of 4 cells -> image increment in [-0.5, 0.5] + new states."""

    strides = (16, 8, 4, 2)

    def __init__(self, widths: list[int], bits: int) -> None:
        super().__init__()
        d0, d1, d2, d3, d4 = widths
        self.conv1 = nn.Conv2d(bits, d0, 1)
        self.rnn1 = ConvLSTM(d0, d1, 1, 1)
        self.rnn2 = ConvLSTM(d1 // 4, d2, 1, 1)
        self.rnn3 = ConvLSTM(d2 // 4, d3, 1, 3)
        self.rnn4 = ConvLSTM(d3 // 4, d4, 1, 3)
        self.conv2 = nn.Conv2d(d4 // 4, 3, 1)
        self.shuffle = nn.PixelShuffle(2)
        # zero increments at start: an untrained model reconstructs grey instead of piling up
        # random increments over the iterations (which made the first steps very slow)
        for p in self.conv2.parameters():
            nn.init.zeros_(p)

    def cells(self) -> list[ConvLSTM]:
        return [self.rnn1, self.rnn2, self.rnn3, self.rnn4]

    def forward(self, b: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, new = self.conv1(b), []
        for k, cell in enumerate(self.cells()):
            h, c = cell(x, states[2 * k], states[2 * k + 1])
            new += [h, c]
            x = self.shuffle(h)
        return (torch.tanh(self.conv2(x)) / 2, *new)


def zero_states(module: Encoder | Decoder, x: torch.Tensor) -> list[torch.Tensor]:
    n, _, h, w = x.shape
    out = []
    for cell, s in zip(module.cells(), module.strides, strict=True):
        z = x.new_zeros(n, cell.hidden, h // s, w // s)
        out += [z, z]
    return out


def binarize(z: torch.Tensor, stochastic: bool) -> torch.Tensor:
    """+-1 codes. Training: +1 with probability (1 + z) / 2 (unbiased), gradient straight
    through (Toderici et al.); otherwise the sign (0 -> +1, so every code is a bit)."""
    if not stochastic:
        return torch.where(z >= 0, 1.0, -1.0)
    b = torch.where(torch.rand_like(z) < (1 + z) / 2, 1.0, -1.0)
    return z + (b - z).detach()


class RnnNet(nn.Module):
    def __init__(self, widths: dict[str, list[int]], bits: int, iterations: int) -> None:
        super().__init__()
        self.encoder = Encoder(widths["encoder"], bits)
        self.decoder = Decoder(widths["decoder"], bits)
        # in the state dict so a bare one still tells its quality (infer_config)
        self.register_buffer("iterations", torch.tensor(iterations))

    def run(self, x: torch.Tensor, iterations: int) -> tuple[torch.Tensor, list, torch.Tensor]:
        """(reconstruction, codes per iteration, L1 of the residuals summed over iterations)."""
        enc, dec = zero_states(self.encoder, x), zero_states(self.decoder, x)
        x_hat = torch.full_like(x, 0.5)
        codes, loss = [], x.new_zeros(())
        for _ in range(iterations):
            z, *enc = self.encoder(x - x_hat, *enc)
            # one memory layout on both sides: conv kernels picked for another layout (z may
            # come out channels-last) round differently, and decompress must match exactly
            b = binarize(z, self.training).contiguous()
            inc, *dec = self.decoder(b, *dec)
            x_hat = x_hat + inc
            loss = loss + (x - x_hat).abs().mean()
            codes.append(b)
        return x_hat, codes, loss

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: iterations x N x M x h x w of +-1 -> the reconstruction (unclamped)."""
        _, n, _, h, w = codes.shape
        shape = torch.empty(n, 3, 16 * h, 16 * w)
        dec = zero_states(self.decoder, shape)
        x_hat = torch.full_like(shape, 0.5)
        for b in codes:
            inc, *dec = self.decoder(b.contiguous(), *dec)
            x_hat = x_hat + inc
        return x_hat


def _widths(config: dict[str, Any]) -> dict[str, list[int]]:
    widths = config.get("widths") or default_widths(config["N"])
    ok = (
        isinstance(widths, dict)
        and len(widths.get("encoder", ())) == len(ENC_LAYERS)
        and len(widths.get("decoder", ())) == len(DEC_LAYERS)
        and all(isinstance(v, int) and v > 0 for k in widths for v in widths[k])
        and all(v % 4 == 0 for v in widths["decoder"][1:])
    )
    if not ok:
        raise CheckpointError(
            f"rnn config widths {widths!r} are invalid: need encoder (4 positive ints) and "
            "decoder (5 positive ints, the last 4 multiples of 4: they feed a PixelShuffle)"
        )
    return {"encoder": list(widths["encoder"]), "decoder": list(widths["decoder"])}


class RnnAdapter(CodecAdapter):
    family = "rnn"
    pad_multiple = 16  # four stride-2 stages
    #: the train loop adds no lambda * MSE term: extra_loss (L1 of residuals) is the distortion
    rd_distortion = False

    @property
    def rnet(self) -> RnnNet:
        assert isinstance(self.net, RnnNet)
        return self.net

    @classmethod
    def build(cls, arch: str, config: dict[str, Any]) -> RnnAdapter:
        unknown = set(config) - {"N", "M", "iterations", "widths"}
        n, m = config.get("N"), config.get("M", 32)
        if unknown or not isinstance(n, int) or n < 2 or n % 2 or not isinstance(m, int) or m < 1:
            raise CheckpointError(
                f"bad config {config} for rnn: needs N (even int >= 2), M (bits per position, "
                "int >= 1), optional iterations (1..32) and widths"
            )
        iterations = config.get("iterations", DEFAULT_ITERATIONS)
        try:
            check_iterations(iterations, "config iterations")
        except RecipeError as e:
            raise CheckpointError(str(e)) from None
        full = {"N": n, "M": m, "iterations": iterations}
        if config.get("widths"):
            full["widths"] = _widths(config)
        return cls(arch, full, RnnNet(_widths(full), m, iterations))

    @classmethod
    def default_config(cls, arch: str, quality: int) -> dict[str, Any]:
        if not isinstance(quality, int) or not 1 <= quality <= MAX_ITERATIONS:
            raise CheckpointError(
                f"rnn has no quality {quality}; allowed: 1..{MAX_ITERATIONS} (iterations)"
            )
        return {**FULL_CONFIG, "iterations": quality}

    @classmethod
    def infer_config(cls, arch: str, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        try:
            enc = [state_dict["encoder.conv.weight"].size(0)]
            enc += [state_dict[f"encoder.{k}.hh.weight"].size(1) for k in ENC_LAYERS[1:]]
            dec = [state_dict["decoder.conv1.weight"].size(0)]
            dec += [state_dict[f"decoder.{k}.hh.weight"].size(1) for k in DEC_LAYERS[1:]]
            m = int(state_dict["encoder.binarizer.weight"].size(0))
            iterations = int(state_dict["iterations"])
        except KeyError as e:
            raise CheckpointError(f"the weights are not an rnn model (no {e.args[0]!r})") from None
        n = int(enc[0])
        widths = {"encoder": [int(v) for v in enc], "decoder": [int(v) for v in dec]}
        config: dict[str, Any] = {"N": n, "M": m, "iterations": iterations}
        if widths != default_widths(n):
            config["widths"] = widths
        return config

    @classmethod
    def guess_arch(cls, state_dict: dict[str, torch.Tensor]) -> str | None:
        keys = {"encoder.rnn1.ih.weight", "encoder.binarizer.weight", "decoder.rnn4.hh.weight"}
        return "rnn" if keys <= set(state_dict) else None

    def components(self) -> dict[str, nn.Module]:
        return {"encoder": self.rnet.encoder, "decoder": self.rnet.decoder}

    def iterations(self, value: int | None) -> int:
        return check_iterations(self.config["iterations"] if value is None else value)

    def forward_rd(self, x: torch.Tensor, iterations: int | None = None) -> RDOutput:
        x_hat, codes, loss = self.rnet.run(x, self.iterations(iterations))
        # one bit per code: a likelihood of 1/2 each, so RDOutput.bpp is the exact rate
        bits = torch.full((sum(c.numel() for c in codes),), 0.5)
        return RDOutput(x_hat=x_hat.clamp(0, 1), likelihoods={"bits": bits}, extra_loss=loss)

    @torch.no_grad()
    def compress(self, x: torch.Tensor, iterations: int | None = None) -> bytes:
        k = self.iterations(iterations)
        if x.dim() != 4 or x.size(0) != 1 or x.size(2) % 16 or x.size(3) % 16:
            raise RecipeError("compress takes one padded 1x3xHxW image (H, W multiples of 16)")
        _, codes, _ = self.rnet.run(x, k)
        return pack_codes(torch.stack(codes)[:, 0].numpy())

    @torch.no_grad()
    def decompress(self, data: bytes) -> torch.Tensor:
        codes = unpack_codes(data, int(self.config["M"]))
        return self.rnet.decode(torch.from_numpy(codes)[:, None]).clamp(0, 1)


MODELS.add("rnn", RnnAdapter)
