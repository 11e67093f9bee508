"""torch-pruning support for CompressAI's GDN / IGDN layers.

GDN normalises channel i by sqrt(beta[i] + sum_j gamma[i, j] x_j^2): removing channel c
removes beta[c], row c of gamma (its own normaliser) and column c (its share in every other
channel's normaliser). Input and output channels are the same channels, so one function
serves both directions and torch-pruning keeps the layer in its producer's group.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from compressai.layers import GDN
from torch import nn


def _keep(n: int, idxs: Sequence[int]) -> list[int]:
    drop = set(int(i) for i in idxs)
    return [i for i in range(n) if i not in drop]


def select_param(param: torch.Tensor, keep: list[int], dim: int) -> nn.Parameter:
    """A new Parameter of the kept indices along `dim` (its gradient sliced alike)."""
    index = torch.tensor(keep, dtype=torch.long, device=param.device)
    new = nn.Parameter(
        param.data.index_select(dim, index).contiguous(), requires_grad=param.requires_grad
    )
    if param.grad is not None:  # Taylor importance in a later iterative step reads it
        new.grad = param.grad.index_select(dim, index).contiguous()
    return new


def prune_gdn(layer: GDN, idxs: Sequence[int]) -> GDN:
    """Remove channels `idxs` from a GDN / IGDN in place: beta and both axes of gamma."""
    keep = _keep(int(layer.beta.numel()), idxs)
    layer.beta = select_param(layer.beta, keep, 0)
    layer.gamma = select_param(select_param(layer.gamma, keep, 0), keep, 1)
    return layer


class GDNPruner(tp.pruner.function.BasePruningFunc):
    """The torch-pruning pruning function of GDN (pass as customized_pruners={GDN: ...})."""

    TARGET_MODULES = (GDN,)

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        assert isinstance(layer, GDN)
        return prune_gdn(layer, idxs)

    # Same channels in and out: this makes torch-pruning propagate through the layer.
    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        assert isinstance(layer, GDN)
        return int(layer.beta.numel())

    get_in_channels = get_out_channels
