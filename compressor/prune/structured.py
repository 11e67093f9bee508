"""Structured pruning: whole channels are removed, so every layer really gets narrower.

Inside each component (encoder g_a, decoder g_s, hyper-encoder h_a, hyper-decoder h_s)
torch-pruning's dependency graph finds the channel groups (a convolution's outputs, the GDN
after it, the next convolution's inputs; residual adds in cheng2020). The component's last
layer is left alone: its outputs are the latent (or the image) that other components and the
entropy models share, and those couplings are pruned separately (compressor.prune.latent)
when a `latent` / `hyper_latent` ratio asks for it.

Families whose couplings torch-pruning's one-step trace cannot see (rnn's recurrent state,
HiFiC's ChannelNorm and latent layers) register their own structured pruner in
FAMILY_PRUNERS, keyed by the adapter's `family` (compressor.prune.rnn, .channelnorm); `prune`
hands those models to it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from compressai.layers import GDN
from torch import nn

from compressor.errors import RecipeError
from compressor.models import CodecAdapter
from compressor.models.resize import CONV_TYPES, ShapeMap, shape_map
from compressor.prune import latent
from compressor.prune.config import COMPONENTS, LATENTS, PruneParams
from compressor.prune.gdn import GDNPruner
from compressor.registry import Registry

log = logging.getLogger(__name__)

#: (model, params) -> the per-layer width report; prunes the model in place
FamilyPruner = Callable[[CodecAdapter, PruneParams], dict[str, Any]]
#: a family's own structured pruner, keyed by CodecAdapter.family
FAMILY_PRUNERS: Registry[FamilyPruner] = Registry("family structured pruner")

#: input size of the dependency-graph trace (a multiple of 64; the graph is size-independent)
TRACE_SIZE = 128


@dataclass
class Group:
    """One torch-pruning channel group of a component, rooted at a convolution's outputs."""

    component: str
    root: str  # module path of the root convolution in the net
    channels: int  # before pruning
    keep: int  # after the last step


@contextlib.contextmanager
def no_inplace(module: nn.Module) -> Iterator[None]:
    """In-place activations hide the convolution outputs from torch-pruning's autograd trace."""
    changed = [m for m in module.modules() if getattr(m, "inplace", False) is True]
    for m in changed:
        m.inplace = False  # type: ignore[assignment]
    try:
        yield
    finally:
        for m in changed:
            m.inplace = True  # type: ignore[assignment]


def kept_channels(n: int, ratio: float, round_to: int, where: str) -> int:
    """n * (1 - ratio) rounded down to a multiple of round_to; an error if that is 0."""
    if ratio == 0:
        return n
    keep = int(n * (1 - ratio)) // round_to * round_to
    if keep < 1:
        raise RecipeError(
            f"ratio {ratio} leaves 0 of the {n} channels of {where} (kept counts are rounded "
            f"down to a multiple of round_to={round_to}); use a smaller ratio or round_to"
        )
    return keep


def step_keep(channels: int, keep: int, step: int, steps: int, round_to: int) -> int:
    """The width after iterative step `step` of `steps` (linear schedule, last step exact)."""
    if step >= steps:
        return keep
    target = channels - (channels - keep) * step / steps
    return max(keep, int(target) // round_to * round_to)


def component_ratios(model: CodecAdapter, params: PruneParams) -> dict[str, float]:
    present = [c for c in COMPONENTS if c in model.components()]
    ratios = {c: params.ratio["all"] for c in present} if "all" in params.ratio else {}
    for name, r in params.ratio.items():
        if name in COMPONENTS:
            if name not in present:
                raise RecipeError(
                    f"{model.arch} has no component {name!r}; allowed: "
                    f"{', '.join(present + list(LATENTS))}"
                )
            ratios[name] = r
    return {c: r for c, r in ratios.items() if r > 0}


def build_graph(module: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    with no_inplace(module):
        return tp.DependencyGraph().build_dependency(
            module, example_inputs=example, customized_pruners={GDN: GDNPruner()}
        )


def _groups(
    model: CodecAdapter, name: str, graph: tp.DependencyGraph, ratio: float, round_to: int
) -> list[Group]:
    comp = model.components()[name]
    paths = {m: p for p, m in model.net.named_modules()}
    convs = [m for m in comp.modules() if isinstance(m, CONV_TYPES)]
    groups = []
    for g in graph.get_all_groups(ignored_layers=convs[-1:], root_module_types=list(CONV_TYPES)):
        root = g[0].dep.target.module
        n = graph.get_out_channels(root)
        where = f"{name} layer {paths[root]}"
        groups.append(Group(name, paths[root], n, kept_channels(n, ratio, round_to, where)))
    return groups


def plan(
    model: CodecAdapter, params: PruneParams, traces: dict[str, tuple[Any, ...]]
) -> tuple[dict[str, tp.DependencyGraph], list[Group]]:
    """Dependency graphs and target widths of every group; raises before anything is cut."""
    graphs, groups = {}, []
    for name, ratio in component_ratios(model, params).items():
        if any(isinstance(m, nn.PixelShuffle) for m in model.components()[name].modules()):
            # torch-pruning mis-maps the channels of a conv feeding a PixelShuffle.
            raise RecipeError(
                f"{model.arch} component {name!r} upsamples with PixelShuffle, "
                "which structured pruning does not support; prune the others"
            )
        graphs[name] = build_graph(model.components()[name], traces[name][0])
        found = _groups(model, name, graphs[name], ratio, params.round_to)
        if not found:
            raise RecipeError(
                f"{model.arch} component {name!r} has no prunable channel group "
                "(only its output layer, which other components share)"
            )
        groups += found
    for which in LATENTS:
        if params.ratio.get(which, 0) > 0:
            cuts = latent.couplings(model.net, which)
            n = latent.channels_of(model.net, cuts)
            keep = kept_channels(n, params.ratio[which], params.round_to, which)
            groups.append(Group(which, cuts[0].path, n, keep))
    if not groups:
        raise RecipeError(f"{model.arch}: nothing to prune with ratios {params.ratio}")
    return graphs, groups


def importance_fn(criterion: str) -> Any:
    return {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
        "random": lambda: tp.importance.RandomImportance(),
    }[criterion]()


def prune_group(graph: tp.DependencyGraph, module: nn.Module, keep: int, scorer: Any) -> None:
    current = graph.get_out_channels(module)
    if keep >= current:
        return
    full = graph.get_pruning_group(module, tp.prune_conv_out_channels, list(range(current)))
    scores = scorer(full)
    drop = torch.argsort(scores)[: current - keep].tolist()
    graph.get_pruning_group(module, tp.prune_conv_out_channels, drop).prune()


def taylor_gradients(model: CodecAdapter, batch: torch.Tensor, lmbda: float) -> None:
    """Gradients of the RD loss on calibration crops (training-mode noise: rounding has none)."""
    from compressor.train import rd_loss

    model.net.zero_grad(set_to_none=True)
    model.train()
    loss, _ = rd_loss(lmbda)(model, batch)
    loss.backward()
    model.eval()


def calibration_batch(images: list[np.ndarray] | None, params: PruneParams) -> torch.Tensor:
    if not images:
        raise RecipeError("importance taylor needs calibration images (--calibration DIR)")
    from compressor.data import CropDataset

    crop = min(params.calibration_crop, *(min(a.shape[:2]) for a in images)) // 64 * 64
    if crop < 64:
        raise RecipeError("calibration images must be at least 64x64 pixels")
    data = CropDataset(images[: params.calibration_images], crop, train=False)
    return torch.stack([data[i] for i in range(len(data))])


def run_steps(
    model: CodecAdapter,
    params: PruneParams,
    graphs: dict[str, tp.DependencyGraph],
    groups: list[Group],
    batch: torch.Tensor | None,
) -> None:
    scorer = importance_fn(params.importance)
    gen = torch.Generator().manual_seed(params.seed)
    lmbda = params.lmbda or (getattr(model, "meta", {}) or {}).get("train", {}).get("lmbda")
    for step in range(1, params.iterative_steps + 1):
        if batch is not None:
            taylor_gradients(model, batch, float(lmbda or 0.0035))
        for g in groups:
            keep = step_keep(g.channels, g.keep, step, params.iterative_steps, params.round_to)
            if g.component in LATENTS:
                latent.prune_to(model.net, g.component, keep, params.importance, gen)
            else:
                module = model.net.get_submodule(g.root)
                prune_group(graphs[g.component], module, keep, scorer)
        log.info("pruning step %d/%d done", step, params.iterative_steps)
    model.net.zero_grad(set_to_none=True)


def prune(
    model: CodecAdapter, params: PruneParams, calibration: list[np.ndarray] | None
) -> tuple[CodecAdapter, dict[str, Any]]:
    """Remove channels of `model` in place; returns it and the per-layer width report."""
    model.eval()
    if model.family in FAMILY_PRUNERS:  # couplings torch-pruning cannot trace
        return model, FAMILY_PRUNERS.get(model.family)(model, params)
    from compressor.metrics.complexity import component_inputs

    traces = component_inputs(model, torch.rand(1, 3, TRACE_SIZE, TRACE_SIZE))
    graphs, groups = plan(model, params, traces)
    batch = calibration_batch(calibration, params) if params.importance == "taylor" else None
    with torch.random.fork_rng():  # random importance must not disturb the caller's RNG
        torch.manual_seed(params.seed)
        run_steps(model, params, graphs, groups, batch)
    return model, record_widths(model, groups)


def record_widths(
    model: CodecAdapter, groups: list[Any], widths_of: Callable[[nn.Module], ShapeMap] = shape_map
) -> dict[str, Any]:
    """Store the widths that differ from a fresh build in the config (so the checkpoint
    reloads into the identical model), rebuild the entropy tables, report per layer."""
    base = {k: v for k, v in model.config.items() if k != "widths"}
    reference = widths_of(type(model).build(model.arch, base).net)
    widths = {p: s for p, s in widths_of(model.net).items() if reference.get(p) != s}
    model.config = {**base, **({"widths": widths} if widths else {})}
    model.finalize()
    layers = [
        {
            "component": g.component,
            "layer": g.root,
            "channels_before": g.channels,
            "channels_after": g.keep,
        }
        for g in groups
    ]
    return {"layers": layers, "widths": widths}
