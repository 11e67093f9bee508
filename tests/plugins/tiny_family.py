"""A model family that exists only in the tests: a 2-conv factorized-prior codec.

It proves the DESIGN's claim that a new family is models/X.py + export/X.py + one
registration line each: the adapter below (what models/X.py would hold) and its export hook
(what export/X.py would hold) use only the public contract (CodecAdapter, ExportSpec, the zoo
export's helpers), and `registered()` adds them with one line each, `MODELS.add` and
`register_exporter`. The plugin tests (tests/plugins/test_contract.py) then run every
contract step over it exactly as over the shipped families. Nothing else in compressor/ knows
it: structured pruning traces it with torch-pruning's generic path, the runtime runs it as the
`factorized` kind, ort-static quantizes its two graphs.

    x -> conv 5x5/2 -> ReLU -> conv 5x5/2 -> y -> EntropyBottleneck -> y_hat
      -> deconv 5x5/2 -> ReLU -> deconv 5x5/2 -> x_hat
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, cast

import torch
from compressai.entropy_models import EntropyBottleneck
from compressai.models.base import CompressionModel
from torch import nn

from compressor import bitstream
from compressor.errors import CheckpointError
from compressor.export.onnx import EXPORTERS, ExportSpec, register_exporter
from compressor.export.zoo import ClampOutput, bottleneck_tables
from compressor.models.base import MODELS, CodecAdapter, RDOutput
from compressor.models.resize import apply_widths, shape_map, shapes_from_state_dict

ARCH = "tiny-factorized"
FAMILY = "tiny-test"
#: tensors only this family's state dicts have (guess_arch)
SIGNATURE = ("g_a.conv1.weight", "g_a.conv2.weight", "entropy_bottleneck.quantiles")


class TinyNet(CompressionModel):
    """g_a, g_s (two 5x5 stride-2 convolutions each) and a factorized entropy bottleneck."""

    def __init__(self, N: int, M: int) -> None:
        super().__init__()
        self.g_a = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(3, N, 5, stride=2, padding=2),
                act=nn.ReLU(),
                conv2=nn.Conv2d(N, M, 5, stride=2, padding=2),
            )
        )
        self.g_s = nn.Sequential(
            OrderedDict(
                deconv1=nn.ConvTranspose2d(M, N, 5, stride=2, padding=2, output_padding=1),
                act=nn.ReLU(),
                deconv2=nn.ConvTranspose2d(N, 3, 5, stride=2, padding=2, output_padding=1),
            )
        )
        self.entropy_bottleneck = EntropyBottleneck(M)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        y_hat, likelihoods = self.entropy_bottleneck(self.g_a(x))
        return {"x_hat": self.g_s(y_hat), "likelihoods": {"y": likelihoods}}


class TinyAdapter(CodecAdapter):
    family = FAMILY
    pad_multiple = 4  # two stride-2 stages

    @classmethod
    def build(cls, arch: str, config: dict[str, Any]) -> TinyAdapter:
        try:
            net = TinyNet(int(config["N"]), int(config["M"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"bad config {config} for {arch}: needs N, M") from e
        if config.get("widths"):  # a structurally pruned model records its narrower layers
            apply_widths(net, config["widths"])
        return cls(arch, config, net)

    @classmethod
    def default_config(cls, arch: str, quality: int) -> dict[str, Any]:
        return {"N": 16, "M": 24}

    @classmethod
    def infer_config(cls, arch: str, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        config: dict[str, Any] = {
            "N": int(state_dict["g_a.conv1.weight"].size(0)),
            "M": int(state_dict["g_a.conv2.weight"].size(0)),
        }
        ref = TinyNet(config["N"], config["M"])
        fresh = shape_map(ref)
        stored = shapes_from_state_dict(ref, state_dict)
        widths = {p: s for p, s in stored.items() if fresh.get(p) != s}
        return {**config, **({"widths": widths} if widths else {})}

    @classmethod
    def guess_arch(cls, state_dict: dict[str, torch.Tensor]) -> str | None:
        return ARCH if set(SIGNATURE) <= set(state_dict) else None

    @property
    def cnet(self) -> TinyNet:
        return cast(TinyNet, self.net)

    def components(self) -> dict[str, nn.Module]:
        net = self.cnet
        return {"encoder": net.g_a, "decoder": net.g_s, "entropy": net.entropy_bottleneck}

    def forward_rd(self, x: torch.Tensor) -> RDOutput:
        out = self.net(x)
        return RDOutput(x_hat=out["x_hat"], likelihoods=dict(out["likelihoods"]))

    def compress(self, x: torch.Tensor) -> bytes:
        y = self.cnet.g_a(x)
        string = self.cnet.entropy_bottleneck.compress(y)[0]
        return bitstream.pack([string], [int(v) for v in y.shape[-2:]])

    def decompress(self, data: bytes) -> torch.Tensor:
        strings, shape = bitstream.unpack(data)
        y_hat = self.cnet.entropy_bottleneck.decompress([strings[0]], shape)
        return cast(torch.Tensor, self.cnet.g_s(y_hat).clamp(0, 1))

    def aux_loss(self) -> torch.Tensor:
        return cast(torch.Tensor, self.cnet.aux_loss())

    def aux_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.net.named_parameters() if n.endswith(".quantiles")]

    def finalize(self) -> None:
        self.cnet.update(force=True)

    def coupled_channels(self) -> dict[str, list[str]]:
        return {"latent": ["encoder", "decoder", "entropy"]}


def tiny_spec(model: CodecAdapter) -> ExportSpec:
    """The export hook (export/X.py): the runtime's `factorized` kind as it is."""
    net: Any = model.net
    graphs: dict[str, nn.Module] = {"g_a": net.g_a, "g_s": ClampOutput(net.g_s)}
    return ExportSpec("factorized", graphs, bottleneck_tables(net))


@contextlib.contextmanager
def registered() -> Iterator[str]:
    """The family and its exporter registered (one line each) while the block runs; both are
    removed afterwards, so no other test ever sees them. Yields the arch name."""
    MODELS.add(ARCH, TinyAdapter)
    register_exporter(FAMILY)(tiny_spec)
    try:
        yield ARCH
    finally:
        MODELS.remove(ARCH)
        EXPORTERS.remove(FAMILY)
