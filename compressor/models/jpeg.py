"""Differentiable JPEG with learnable quantization tables (family `jpeg`, as in JPEG-DL,
arXiv 2410.07081).

The transform is baseline JPEG's, step for step as libjpeg does it, so that the tables
trained here mean the same thing in a real JPEG file: RGB -> YCbCr (JFIF matrix), 4:2:0
chroma (2x2 average, libjpeg's h2v2 downsampling), level shift -128, orthonormal 8x8
DCT-II (JPEG's FDCT), division by the luma / chroma tables, rounding, and back: multiply,
IDCT, +128, range limit, chroma upsampling by the triangle filter libjpeg's decoder uses
("fancy upsampling" = bilinear, half-pixel centres, edge replicated), YCbCr -> RGB.

Coefficients travel in the MCU layout: one 16x16 MCU is one position of a B x 384 x H/16 x
W/16 tensor (4 luma blocks x 64 frequencies, then 64 Cb and 64 Cr frequencies), so the
analysis transform is one image -> one tensor with stride 16, as every other family's latent.

Parameters: the two 8x8 tables as exp(log-table) (positive by construction), initialised
from the Annex K tables scaled as IJG scales them for an initial quality, and used as
integers 1..255 in the forward pass (straight-through rounding), exactly what the file holds.

Rounding: straight-through (hard round forward, identity backward) on the reconstruction
path, so the training distortion is JPEG's real distortion (dead zone included, which
additive noise would overstate at low rates); additive uniform noise on the rate path.

Rate proxy: CompressAI's EntropyBottleneck, a learned factorized density per coefficient
channel (384 = each luma block position's 64 frequencies and each chroma's 64). Why: JPEG's
Huffman code spends about -log2 p bits per coefficient of a per-frequency distribution (the
run-lengths code long zero runs cheaply, as a peaked p(0) does), and the learned density
follows the tables as they move, where log2 of magnitudes ignores how often zeros occur.
Not modelled: the DPCM of the DC terms (JPEG codes DC differences); for a distribution
broad against q the rate's slope in q, -1/(q ln 2) bits per block, is the same either way.

The real bitstream is a JPEG file written by Pillow with the learned integer tables
(optimized Huffman tables, 4:2:0), so bpp = 8 * len(file) / pixels exactly.
"""

from __future__ import annotations

import io
import math
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck
from compressai.models.base import CompressionModel
from PIL import Image, UnidentifiedImageError
from torch import nn

from compressor.errors import BitstreamError, CheckpointError
from compressor.models.base import MODELS, CodecAdapter, RDOutput

#: ITU-T T.81 Annex K, Tables K.1 (luminance) and K.2 (chrominance), natural (row-major)
#: order: row = vertical frequency, column = horizontal frequency, as libjpeg and Pillow's
#: `qtables=` / `im.quantization` take them (tests/unit/test_jpeg_family.py checks it)
ANNEX_K_LUMA = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
ANNEX_K_CHROMA = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8,) * 4,
)
#: the project's quality levels (CompressAI's lambdas, compressai_zoo.LAMBDAS_MSE) -> the IJG
#: quality whose standard tables start training: the one with the lowest RD loss at that
#: lambda on wikipedia-photos crops (bench/jpeg_rd.py --calibrate measures it)
INIT_QUALITY = {1: 10, 2: 16, 3: 27, 4: 51, 5: 76, 6: 85, 7: 92, 8: 94}
CONFIG_KEYS = ("init_quality",)
#: JFIF (ITU-R BT.601 full range) RGB -> YCbCr, the matrix libjpeg's jccolor.c uses
RGB_TO_YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
YCC_OFFSET = (0.0, 128.0, 128.0)
CHANNELS = 6 * 64  # one MCU: 4 luma blocks + Cb + Cr, 64 frequencies each


def ijg_table(base: tuple[tuple[int, ...], ...], quality: int) -> np.ndarray:
    """An Annex K table scaled for an IJG quality 1..100 (libjpeg's jpeg_quality_scaling and
    jpeg_add_quant_table with force_baseline: integers 1..255)."""
    if not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 100:
        raise CheckpointError(f"JPEG quality {quality!r} is out of range; allowed: 1..100")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    table = (np.array(base, dtype=np.int64) * scale + 50) // 100
    return np.clip(table, 1, 255)


def dct_matrix() -> torch.Tensor:
    """Orthonormal 8-point DCT-II: JPEG's FDCT is this on rows and columns."""
    k = torch.arange(8, dtype=torch.float64)[:, None]
    n = torch.arange(8, dtype=torch.float64)[None]
    d = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round forward, identity backward."""
    return x + (torch.round(x) - x).detach()


class QTables(nn.Module):
    """The luma and chroma tables: exp of a learned log-table, used as integers 1..255."""

    def __init__(self, init_quality: int) -> None:
        super().__init__()
        luma, chroma = (
            ijg_table(ANNEX_K_LUMA, init_quality),
            ijg_table(ANNEX_K_CHROMA, init_quality),
        )
        tables = np.stack([luma, chroma])
        self.log_q = nn.Parameter(torch.log(torch.from_numpy(tables).float()))
        # recorded so that a checkpoint's config can be read back from its tensors
        self.register_buffer("init_quality", torch.tensor(init_quality, dtype=torch.int64))

    def forward(self) -> torch.Tensor:
        """2 x 64 integer-valued tables (luma, chroma), natural order; gradient straight
        through the rounding, and zero where a clamp to 1..255 holds an entry."""
        return ste_round(torch.exp(self.log_q).clamp(1.0, 255.0)).reshape(2, 64)

    def channel_steps(self) -> torch.Tensor:
        """The step of each of the 384 MCU channels (see Analysis for the layout)."""
        q = self()
        return torch.cat([q[0].repeat_interleave(4), q[1], q[1]]).reshape(1, CHANNELS, 1, 1)


class Analysis(nn.Module):
    """1x3xHxW RGB in [0, 1] (H, W multiples of 16) -> B x 384 x H/16 x W/16 coefficients
    divided by their quantization steps (rounding them gives JPEG's quantized values).

    Channel layout: 0..255 luma, frequency f of the 2x2 luma block s at f * 4 + s (s = 2 *
    row + column, pixel_unshuffle's order); 256..319 Cb, 320..383 Cr; frequency f = 8 * v + u
    (v vertical, u horizontal), natural order."""

    rgb_to_ycc: torch.Tensor
    ycc_offset: torch.Tensor
    dct: torch.Tensor

    def __init__(self, tables: QTables) -> None:
        super().__init__()
        self.tables = tables
        self.register_buffer("rgb_to_ycc", torch.tensor(RGB_TO_YCC).reshape(3, 3, 1, 1))
        self.register_buffer("ycc_offset", torch.tensor(YCC_OFFSET))
        kron = torch.kron(dct_matrix(), dct_matrix()).float()
        self.register_buffer("dct", kron.reshape(64, 64, 1, 1))

    def block_dct(self, plane: torch.Tensor) -> torch.Tensor:
        """B x 1 x H x W samples -> B x 64 x H/8 x W/8 DCT coefficients (level shifted)."""
        return F.conv2d(F.pixel_unshuffle(plane - 128.0, 8), self.dct)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ycc = F.conv2d(x * 255.0, self.rgb_to_ycc, self.ycc_offset)
        luma = F.pixel_unshuffle(self.block_dct(ycc[:, :1]), 2)
        chroma = F.avg_pool2d(ycc[:, 1:], 2)
        cb, cr = self.block_dct(chroma[:, :1]), self.block_dct(chroma[:, 1:])
        return torch.cat([luma, cb, cr], dim=1) / self.tables.channel_steps()


class Synthesis(nn.Module):
    """Quantized coefficients (Analysis's layout) -> 1x3xHxW RGB in [0, 1]."""

    ycc_to_rgb: torch.Tensor
    ycc_offset: torch.Tensor
    idct: torch.Tensor

    def __init__(self, tables: QTables) -> None:
        super().__init__()
        self.tables = tables
        matrix = torch.tensor(RGB_TO_YCC, dtype=torch.float64).inverse().float()
        self.register_buffer("ycc_to_rgb", matrix.reshape(3, 3, 1, 1))
        self.register_buffer("ycc_offset", torch.tensor(YCC_OFFSET))
        idct = torch.kron(dct_matrix(), dct_matrix()).T.contiguous().float()
        self.register_buffer("idct", idct.reshape(64, 64, 1, 1))

    def block_idct(self, coeffs: torch.Tensor) -> torch.Tensor:
        """B x 64 x h x w -> B x 1 x 8h x 8w samples, range-limited to 0..255 as libjpeg."""
        return (F.pixel_shuffle(F.conv2d(coeffs, self.idct), 8) + 128.0).clamp(0.0, 255.0)

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        coeffs = y_hat * self.tables.channel_steps()
        luma = self.block_idct(F.pixel_shuffle(coeffs[:, :256], 2))
        cb, cr = self.block_idct(coeffs[:, 256:320]), self.block_idct(coeffs[:, 320:])
        chroma = F.interpolate(torch.cat([cb, cr], 1), scale_factor=2.0, mode="bilinear")
        ycc = torch.cat([luma, chroma], dim=1) - self.ycc_offset.reshape(1, 3, 1, 1)
        return F.conv2d(ycc, self.ycc_to_rgb).clamp(0.0, 255.0) / 255.0


class JpegNet(CompressionModel):
    """Tables, the two transforms, and the rate model (CompressionModel: its load_state_dict
    resizes the entropy tables' buffers, its update() builds them)."""

    def __init__(self, init_quality: int) -> None:
        super().__init__()
        tables = QTables(init_quality)
        self.encoder = Analysis(tables)
        self.decoder = Synthesis(tables)
        self.entropy_bottleneck = EntropyBottleneck(CHANNELS)

    @property
    def tables(self) -> QTables:
        return self.encoder.tables

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        y = self.encoder(x)
        _, likelihoods = self.entropy_bottleneck(y)  # noise in train mode: the rate proxy
        return {"x_hat": self.decoder(ste_round(y)), "likelihoods": {"y": likelihoods}}


def _check_config(arch: str, config: dict[str, Any]) -> int:
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise CheckpointError(
            f"bad config key {unknown[0]!r} for {arch}; allowed: {', '.join(CONFIG_KEYS)} "
            "(JPEG has no widths)"
        )
    quality = config.get("init_quality", INIT_QUALITY[1])
    if not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 100:
        raise CheckpointError(
            f"{arch} config init_quality={quality!r} is out of range; allowed: 1..100"
        )
    return quality


class JpegAdapter(CodecAdapter):
    family = "jpeg"
    #: 4:2:0 MCUs are 16x16
    pad_multiple = 16
    #: read by compressor.prune.prune_model, which refuses the family with this reason
    unprunable = (
        "the jpeg family has no channels or weights to remove: its parameters are two 8x8 "
        "quantization tables and a per-coefficient entropy model, its transforms fixed "
        "(colour matrix, DCT)"
    )

    @classmethod
    def build(cls, arch: str, config: dict[str, Any]) -> JpegAdapter:
        quality = _check_config(arch, config)
        return cls(arch, {"init_quality": quality}, JpegNet(quality))

    @classmethod
    def default_config(cls, arch: str, quality: int) -> dict[str, Any]:
        if quality not in INIT_QUALITY:
            levels = f"{min(INIT_QUALITY)}..{max(INIT_QUALITY)}"
            raise CheckpointError(f"{arch} has no quality {quality}; allowed: {levels}")
        return {"init_quality": INIT_QUALITY[quality]}

    @classmethod
    def infer_config(cls, arch: str, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        key = "encoder.tables.init_quality"
        if key not in state_dict:
            raise CheckpointError(f"the weights are not a {arch} model (no tensor {key!r})")
        return {"init_quality": int(state_dict[key])}

    @classmethod
    def guess_arch(cls, state_dict: dict[str, torch.Tensor]) -> str | None:
        return "jpeg" if "encoder.tables.log_q" in state_dict else None

    @property
    def jnet(self) -> JpegNet:
        return cast(JpegNet, self.net)

    def components(self) -> dict[str, nn.Module]:
        return {
            "encoder": self.jnet.encoder,
            "decoder": self.jnet.decoder,
            "entropy": self.jnet.entropy_bottleneck,
        }

    def forward_rd(self, x: torch.Tensor) -> RDOutput:
        out = self.net(x)
        return RDOutput(x_hat=out["x_hat"], likelihoods=dict(out["likelihoods"]))

    def qtables(self) -> list[list[int]]:
        """[luma, chroma]: the integer tables (natural order) the JPEG file carries."""
        with torch.no_grad():
            q = self.jnet.tables()
        return [[int(v) for v in row] for row in q.round().to(torch.int64)]

    def compress(self, x: torch.Tensor) -> bytes:
        """A baseline JPEG file (4:2:0, optimized Huffman tables) with the learned tables."""
        from compressor.baselines import PillowCodec
        from compressor.data import to_rgb8_array

        return PillowCodec("jpeg", qtables=self.qtables()).encode(to_rgb8_array(x))

    def decompress(self, data: bytes) -> torch.Tensor:
        from compressor.data import to_tensor

        try:
            with Image.open(io.BytesIO(data)) as img:
                if img.format != "JPEG" or img.mode != "RGB":
                    raise BitstreamError(
                        f"not a {self.arch} bitstream: a {img.format} {img.mode} image, "
                        "expected an RGB JPEG file"
                    )
                img.load()
                rgb8 = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise BitstreamError(
                f"{self.arch} bitstream is not a readable JPEG file ({e})"
            ) from None
        return to_tensor(rgb8)

    def aux_loss(self) -> torch.Tensor:
        return cast(torch.Tensor, self.jnet.aux_loss())

    def aux_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.net.named_parameters() if n.endswith(".quantiles")]

    def finalize(self) -> None:
        self.jnet.update(force=True)

    def example_inputs(self, h: int = 256, w: int = 256) -> torch.Tensor:
        return torch.rand(1, 3, h, w)


MODELS.add("jpeg", JpegAdapter)
