"""CompressAI's zoo architectures (bmshj2018, mbt2018, cheng2020) behind one adapter."""

from __future__ import annotations

from typing import Any, cast

import torch
from compressai.models import (
    Cheng2020Anchor,
    FactorizedPrior,
    JointAutoregressiveHierarchicalPriors,
    MeanScaleHyperprior,
    ScaleHyperprior,
)
from compressai.models.base import CompressionModel, get_scale_table
from compressai.zoo.image import cfgs
from torch import nn

from compressor import bitstream
from compressor.errors import CheckpointError
from compressor.models.base import MODELS, CodecAdapter, RDOutput
from compressor.models.resize import apply_widths, shape_map, shapes_from_state_dict

NETS: dict[str, type[CompressionModel]] = {
    "bmshj2018-factorized": FactorizedPrior,
    "bmshj2018-hyperprior": ScaleHyperprior,
    "mbt2018-mean": MeanScaleHyperprior,
    "mbt2018": JointAutoregressiveHierarchicalPriors,
    "cheng2020-anchor": Cheng2020Anchor,
}

#: CompressAI's published MSE lambdas per quality (docs: "Image compression" zoo table).
LAMBDAS_MSE = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483, 7: 0.0932, 8: 0.18}

#: which module holds each component; absent ones are skipped for that arch.
COMPONENT_ATTRS = {
    "encoder": "g_a",
    "decoder": "g_s",
    "hyper_encoder": "h_a",
    "hyper_decoder": "h_s",
    "context": "context_prediction",
    "entropy": "entropy_bottleneck",
    "entropy_parameters": "entropy_parameters",
}


#: Scales in the Gaussian conditional's table. CompressAI's default is 64 log-spaced scales
#: from 0.11 to 256 (13 % apart), and the coder rounds every predicted scale *up* to the next
#: one. On a model whose scales sit in 0.2..1 that costs 7 % of the latent's bits over the
#: likelihood estimate (measured: an mbt2018-mean N=64/M=96 on Kodak, real 0.1580 bpp vs
#: 0.1475 estimated, 0.1578 when the estimate uses the table's scales). 256 levels (3 % apart)
#: bring that model to 1.2 % over the estimate and save 0.3 % on the bundled model (a barely
#: trained model that underestimates its scales can lose ~1 %: rounding up happened to help
#: it). The table is rebuilt by finalize() on every load and travels in the export, so encoder
#: and decoder always use the same one.
SCALE_TABLE_LEVELS = 256


class ZooAdapter(CodecAdapter):
    family = "compressai"

    @classmethod
    def build(cls, arch: str, config: dict[str, Any]) -> ZooAdapter:
        net_cls = NETS[arch]
        try:
            net = net_cls(**{k: int(v) for k, v in config.items() if k != "widths"})
        except TypeError as e:
            allowed = "N" if arch.startswith("cheng2020") else "N, M"
            raise CheckpointError(f"bad config {config} for {arch}: needs {allowed}") from e
        # A pruned model's layers differ from (N, M): its config records those widths.
        widths = config.get("widths")
        if widths:
            if not isinstance(widths, dict):
                raise CheckpointError(f"config widths of {arch} must be a map, got {widths!r}")
            apply_widths(net, widths)
        return cls(arch, config, net)

    @classmethod
    def default_config(cls, arch: str, quality: int) -> dict[str, Any]:
        table = cfgs[arch]
        if quality not in table:
            raise CheckpointError(
                f"{arch} has no quality {quality}; allowed: {min(table)}..{max(table)}"
            )
        keys = ("N",) if arch.startswith("cheng2020") else ("N", "M")
        return dict(zip(keys, table[quality], strict=True))

    @classmethod
    def infer_config(cls, arch: str, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        # Same rule as CompressAI's from_state_dict: N from g_a's first conv, M from its last.
        try:
            if arch.startswith("cheng2020"):
                config: dict[str, Any] = {"N": int(state_dict["g_a.0.conv1.weight"].size(0))}
            else:
                config = {
                    "N": int(state_dict["g_a.0.weight"].size(0)),
                    "M": int(state_dict["g_a.6.weight"].size(0)),
                }
        except KeyError as e:
            raise CheckpointError(
                f"the weights are not a {arch} model (no tensor {e.args[0]!r})"
            ) from None
        # Layers whose tensors differ from an (N, M) build (a pruned model) get their widths.
        ref = NETS[arch](**config)
        stored = shapes_from_state_dict(ref, state_dict)
        fresh = shape_map(ref)
        widths = {p: s for p, s in stored.items() if fresh.get(p) != s}
        if widths:
            config["widths"] = widths
        return config

    @classmethod
    def guess_arch(cls, state_dict: dict[str, torch.Tensor]) -> str | None:
        keys = set(state_dict)
        if "context_prediction.weight" in keys:
            return "cheng2020-anchor" if "g_a.0.conv1.weight" in keys else "mbt2018"
        if "h_a.0.weight" in keys and "g_a.6.weight" in keys and "h_s.4.weight" in keys:
            latent = state_dict["g_a.6.weight"].size(0)
            scales_out = state_dict["h_s.4.weight"].size(0)
            return "mbt2018-mean" if scales_out == 2 * latent else "bmshj2018-hyperprior"
        if "g_a.6.weight" in keys and "entropy_bottleneck.quantiles" in keys:
            return "bmshj2018-factorized"
        return None

    @property
    def cnet(self) -> CompressionModel:
        """`net` typed as the CompressAI model it is."""
        return cast(CompressionModel, self.net)

    def components(self) -> dict[str, nn.Module]:
        return {
            name: getattr(self.net, attr)
            for name, attr in COMPONENT_ATTRS.items()
            if hasattr(self.net, attr)
        }

    def forward_rd(self, x: torch.Tensor) -> RDOutput:
        out = self.net(x)
        return RDOutput(x_hat=out["x_hat"], likelihoods=dict(out["likelihoods"]))

    def compress(self, x: torch.Tensor) -> bytes:
        out = self.cnet.compress(x)
        strings = [s[0] for s in out["strings"]]
        return bitstream.pack(strings, [int(v) for v in out["shape"]])

    def decompress(self, data: bytes) -> torch.Tensor:
        strings, shape = bitstream.unpack(data)
        out = self.cnet.decompress([[s] for s in strings], shape)
        return out["x_hat"]

    def aux_loss(self) -> torch.Tensor:
        return cast(torch.Tensor, self.cnet.aux_loss())

    def aux_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.net.named_parameters() if n.endswith(".quantiles")]

    def finalize(self) -> None:
        self.cnet.update(scale_table=get_scale_table(levels=SCALE_TABLE_LEVELS), force=True)

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        # CompressionModel.load_state_dict resizes the entropy tables' buffers first.
        self.net.load_state_dict(state_dict)

    def coupled_channels(self) -> dict[str, list[str]]:
        return {"latent": ["encoder", "decoder", "hyper_encoder", "entropy"]}


for _arch in NETS:
    MODELS.add(_arch, ZooAdapter)
