"""torch-pruning support for HiFiC's ChannelNorm, and the structured pruning of `hific` models.

ChannelNorm normalises each pixel over its channels, then applies a per-channel affine
(weight[c], bias[c]). Removing channel c removes weight[c] and bias[c]; the statistics of the
kept channels are then taken over the kept channels only (a fine-tune recovers what that
shifts). Input and output channels are the same, so, as for GDN, one function serves both
directions and torch-pruning keeps the layer in its producer's group.

`prune_hific` is the family's structured pruning (registered in structured.FAMILY_PRUNERS,
so structured.prune hands hific models to it): the generic planner, but its dependency
graphs know ChannelNorm and leave every latent-producing layer alone: the encoder's and
generator's last convolutions and, in the probability model, both h_a's last (z) and h_s's
last (the scales and means of y).
`latent` / `hyper_latent` ratios cut those couplings with compressor.prune.latent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
import torch_pruning as tp
from compressai.layers import GDN
from torch import nn

from compressor.errors import RecipeError
from compressor.models.hific import ChannelNorm, all_widths
from compressor.models.resize import CONV_TYPES
from compressor.prune import structured as st
from compressor.prune.config import LATENTS
from compressor.prune.gdn import GDNPruner, _keep, select_param

if TYPE_CHECKING:
    from compressor.models.base import CodecAdapter
    from compressor.models.hific import HificAdapter
    from compressor.prune.config import PruneParams


def prune_channelnorm(layer: ChannelNorm, idxs: Sequence[int]) -> ChannelNorm:
    """Remove channels `idxs` from a ChannelNorm in place (its weight and bias)."""
    keep = _keep(int(layer.weight.numel()), idxs)
    layer.weight = select_param(layer.weight, keep, 0)
    layer.bias = select_param(layer.bias, keep, 0)
    return layer


class ChannelNormPruner(tp.pruner.function.BasePruningFunc):
    """The torch-pruning function of ChannelNorm (customized_pruners={ChannelNorm: ...})."""

    TARGET_MODULES = (ChannelNorm,)

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        assert isinstance(layer, ChannelNorm)
        return prune_channelnorm(layer, idxs)

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        assert isinstance(layer, ChannelNorm)
        return int(layer.weight.numel())

    get_in_channels = get_out_channels


def _hyper_forward(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    # The channel couplings of the probability model without the entropy models' internals
    # (quantisation is elementwise; the bottleneck's per-channel tables are not convolutions).
    return module.h_s(module.h_a(y))  # type: ignore[operator]


def build_graph(name: str, module: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    forward = _hyper_forward if name == "probability_model" else None
    pruners = {GDN: GDNPruner(), ChannelNorm: ChannelNormPruner()}
    with st.no_inplace(module):
        return tp.DependencyGraph().build_dependency(
            module, example_inputs=example, forward_fn=forward, customized_pruners=pruners,
            verbose=False,
        )  # fmt: skip


def protected(name: str, module: nn.Module) -> list[nn.Module]:
    """The layers of a component whose outputs other components or the entropy coder share."""
    convs: list[nn.Module] = [m for m in module.modules() if isinstance(m, CONV_TYPES)]
    if name != "probability_model":
        return convs[-1:]
    h_a = [m for m in module.get_submodule("h_a").modules() if isinstance(m, CONV_TYPES)]
    return [h_a[-1], convs[-1]]


def plan(
    model: HificAdapter, params: PruneParams
) -> tuple[dict[str, tp.DependencyGraph], list[st.Group]]:
    from compressor.metrics.complexity import component_inputs

    traces = component_inputs(model, torch.rand(1, 3, st.TRACE_SIZE, st.TRACE_SIZE))
    paths = {m: p for p, m in model.net.named_modules()}
    graphs, groups = {}, []
    for name, ratio in st.component_ratios(model, params).items():
        module = model.components()[name]
        graphs[name] = build_graph(name, module, traces[name][0])
        for g in graphs[name].get_all_groups(
            ignored_layers=protected(name, module), root_module_types=list(CONV_TYPES)
        ):
            root = g[0].dep.target.module
            n = graphs[name].get_out_channels(root)
            where = f"{name} layer {paths[root]}"
            keep = st.kept_channels(n, ratio, params.round_to, where)
            groups.append(st.Group(name, paths[root], n, keep))
    for which in LATENTS:
        if params.ratio.get(which, 0) > 0:
            from compressor.prune import latent

            cuts = latent.couplings(model.net, which)
            n = latent.channels_of(model.net, cuts)
            keep = st.kept_channels(n, params.ratio[which], params.round_to, which)
            groups.append(st.Group(which, cuts[0].path, n, keep))
    if not groups:
        raise RecipeError(f"{model.arch}: nothing to prune with ratios {params.ratio}")
    return graphs, groups


@st.FAMILY_PRUNERS.register("hific")
def prune_hific(adapter: CodecAdapter, params: PruneParams) -> dict[str, Any]:
    """Remove channels of a hific model in place; the per-layer width report."""
    model = cast("HificAdapter", adapter)
    if params.importance == "taylor":
        raise RecipeError(
            "hific structured pruning ranks channels by l1, l2 or random (taylor needs "
            "calibration gradients, which this family's pruning hook does not receive)"
        )
    model.eval()
    graphs, groups = plan(model, params)
    with torch.random.fork_rng():  # random importance must not disturb the caller's RNG
        torch.manual_seed(params.seed)
        st.run_steps(model, params, graphs, groups, None)
    return st.record_widths(model, groups, all_widths)  # ChannelNorm widths recorded too
