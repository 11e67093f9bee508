"""The CodecAdapter contract: everything the toolkit needs from a model family.

A new family is one file in this package and one `MODELS.add(...)` line; the plugin tests
(tests/plugins) then exercise it through this interface alone.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from compressor.registry import Registry


@dataclass
class RDOutput:
    """What one training forward pass gives: the reconstruction and the rate terms."""

    x_hat: torch.Tensor
    likelihoods: dict[str, torch.Tensor] = field(default_factory=dict)
    extra_loss: torch.Tensor | None = None  # family-specific loss terms (e.g. adversarial)

    def bpp(self, num_pixels: int) -> torch.Tensor:
        """Rate estimated from the likelihoods, bits per pixel (not the real bitstream)."""
        total = sum(
            (torch.log(lk).sum() / (-math.log(2) * num_pixels) for lk in self.likelihoods.values()),
            torch.zeros(()),
        )
        return total


class CodecAdapter(ABC):
    """A trained codec with a uniform interface. `net` is the underlying nn.Module."""

    family: ClassVar[str]
    #: why this family has nothing for the pruners to remove (None: it has); prune_model
    #: refuses it with this reason
    unprunable: ClassVar[str | None] = None
    #: False when `RDOutput.extra_loss` is the family's whole distortion term (rnn's L1 of the
    #: residuals): the train loop's rd_loss then adds no MSE term of its own
    rd_distortion: ClassVar[bool] = True
    #: padding multiple the architecture needs (CompressAI's 6 stride-2 stages -> 64)
    pad_multiple: ClassVar[int] = 64

    def __init__(self, arch: str, config: dict[str, Any], net: nn.Module) -> None:
        self.arch = arch
        self.config = dict(config)
        self.net = net

    # -- construction -------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def build(cls, arch: str, config: dict[str, Any]) -> CodecAdapter:
        """A freshly initialised model of this arch and config."""

    @classmethod
    @abstractmethod
    def default_config(cls, arch: str, quality: int) -> dict[str, Any]:
        """The config of a quality level (widths etc.)."""

    @classmethod
    @abstractmethod
    def infer_config(cls, arch: str, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The config that gives modules of the shapes in this state dict."""

    @classmethod
    def guess_arch(cls, state_dict: dict[str, torch.Tensor]) -> str | None:
        """The arch of a foreign state dict, if its keys identify one of this family."""
        return None

    # -- the model ----------------------------------------------------------------------
    @abstractmethod
    def components(self) -> dict[str, nn.Module]:
        """Named parts: encoder, decoder, hyper_encoder, hyper_decoder, entropy..."""

    @abstractmethod
    def forward_rd(self, x: torch.Tensor) -> RDOutput:
        """Training forward pass (noisy quantisation), x in [0, 1], padded."""

    @abstractmethod
    def compress(self, x: torch.Tensor) -> bytes:
        """Real bitstream of one padded image (1x3xHxW in [0, 1])."""

    @abstractmethod
    def decompress(self, data: bytes) -> torch.Tensor:
        """Reconstruction (1x3xHxW, padded size) from `compress()`'s bytes."""

    def aux_loss(self) -> torch.Tensor:
        """Auxiliary loss of the entropy models (CompressAI's quantile fitting); 0 if none."""
        return torch.zeros(())

    def aux_parameters(self) -> list[nn.Parameter]:
        """Parameters trained by the aux optimizer only (never by the main one)."""
        return []

    def extra_step(self, x: torch.Tensor, step: int) -> dict[str, float]:
        """A family's own optimizer step (e.g. a GAN discriminator's), run by the train loop
        after the main and aux steps of training step `step` (0-based) on the same batch x.
        Its parameters must not be in `net` (the main optimizer trains all of those).
        Returns values to log; default: no extra step."""
        return {}

    def finalize(self) -> None:
        """Rebuild derived state (entropy tables) after training or a structural change."""
        return None

    def coupled_channels(self) -> dict[str, list[str]]:
        """Channel groups shared across components (e.g. the latent), by parameter name."""
        return {}

    def example_inputs(self, h: int = 256, w: int = 256) -> torch.Tensor:
        return torch.rand(1, 3, h, w)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state_dict)

    def eval(self) -> CodecAdapter:
        self.net.eval()
        return self

    def train(self) -> CodecAdapter:
        self.net.train()
        return self


MODELS: Registry[type[CodecAdapter]] = Registry("model arch")
