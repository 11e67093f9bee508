"""Pruning the channels shared across components: the latent y and the hyper-latent z.

A latent channel lives in several tensors at once. For y: the encoder's last convolution
(its output), the decoder's and hyper-encoder's first convolutions (their input), the
hyper-decoder's last convolution (the scale of that channel and, for mbt2018-mean, its mean:
two blocks of M outputs) and, without a hyperprior, the entropy bottleneck. For z: the
hyper-encoder's last convolution, the hyper-decoder's first and the entropy bottleneck
(quantiles/medians, density parameters, CDF tables). Every one of them is cut with the same
channel indices; the caller's finalize() (`update(force=True)`) then rebuilds the tables.
torch-pruning cannot see these couplings (they pass through quantisation and the entropy
coder), so they are listed here explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from compressai.entropy_models import EntropyBottleneck
from torch import nn

from compressor.errors import RecipeError
from compressor.models.resize import CONV_TYPES
from compressor.prune.gdn import select_param

Kind = Literal["out", "in", "entropy"]


@dataclass(frozen=True)
class Cut:
    """One tensor axis that carries the coupled channels."""

    path: str  # module path in the net
    kind: Kind
    blocks: int = 1  # the axis holds `blocks` consecutive copies (mbt2018-mean: scales, means)


def _convs(net: nn.Module, attr: str) -> list[str]:
    part = getattr(net, attr)
    return [f"{attr}.{p}" for p, m in part.named_modules() if isinstance(m, CONV_TYPES)]


def _conv(net: nn.Module, path: str) -> nn.Conv2d | nn.ConvTranspose2d:
    module = net.get_submodule(path)
    assert isinstance(module, CONV_TYPES)
    return module


def couplings(net: nn.Module, which: str) -> list[Cut]:
    """The cuts of latent `which` ('latent' or 'hyper_latent') of a CompressAI-style net."""
    has_hyper = hasattr(net, "h_a") and hasattr(net, "h_s")
    if which == "hyper_latent":
        if not (has_hyper and hasattr(net, "entropy_bottleneck")):
            raise RecipeError(
                "ratio hyper_latent needs a hyperprior model (h_a, h_s, entropy "
                "bottleneck); this model has none"
            )
        return [
            Cut(_convs(net, "h_a")[-1], "out"),
            Cut(_convs(net, "h_s")[0], "in"),
            Cut("entropy_bottleneck", "entropy"),
        ]
    if hasattr(net, "context_prediction") or hasattr(net, "entropy_parameters"):
        raise RecipeError(
            "ratio latent is not supported for autoregressive models (mbt2018, "
            "cheng2020: the context model mixes latent channels); supported: "
            "bmshj2018-factorized, bmshj2018-hyperprior, mbt2018-mean"
        )
    cuts = [Cut(_convs(net, "g_a")[-1], "out"), Cut(_convs(net, "g_s")[0], "in")]
    if not has_hyper:
        return [*cuts, Cut("entropy_bottleneck", "entropy")]
    channels = _conv(net, cuts[0].path).out_channels
    last = _convs(net, "h_s")[-1]
    blocks, rest = divmod(_conv(net, last).out_channels, channels)
    if rest or blocks not in (1, 2):
        raise RecipeError(
            f"cannot couple {last} ({_conv(net, last).out_channels} outputs) to "
            f"{channels} latent channels"
        )
    return [*cuts, Cut(_convs(net, "h_a")[0], "in"), Cut(last, "out", blocks)]


def channels_of(net: nn.Module, cuts: list[Cut]) -> int:
    return int(_conv(net, cuts[0].path).out_channels)


def _axis(conv: nn.Module, kind: Kind) -> int:
    # Conv2d weight [out, in, k, k]; ConvTranspose2d [in, out, k, k]
    transposed = isinstance(conv, nn.ConvTranspose2d)
    return int(transposed) if kind == "out" else int(not transposed)


def importance(
    net: nn.Module, cuts: list[Cut], criterion: str, gen: torch.Generator
) -> torch.Tensor:
    """One score per coupled channel: the mean over tensors of mean-normalised scores."""
    n = channels_of(net, cuts)
    if criterion == "random":
        return torch.rand(n, generator=gen)
    total = torch.zeros(n)
    convs = [c for c in cuts if c.kind != "entropy"]
    for cut in convs:
        conv = _conv(net, cut.path)
        w = conv.weight.detach()
        if criterion == "taylor":
            if conv.weight.grad is None:
                raise RecipeError("Taylor importance needs gradients: pass calibration images")
            w = w * conv.weight.grad
        per = w.movedim(_axis(conv, cut.kind), 0).flatten(1)
        score = per.abs().sum(1) if criterion in ("l1", "taylor") else per.pow(2).sum(1)
        score = score.view(cut.blocks, n).sum(0)
        total += score / score.mean().clamp_min(1e-12)
    return total / len(convs)


def _cut_conv(conv: nn.Conv2d | nn.ConvTranspose2d, cut: Cut, keep: list[int], n: int) -> None:
    index = [b * n + k for b in range(cut.blocks) for k in keep]
    conv.weight = select_param(conv.weight, index, _axis(conv, cut.kind))
    if cut.kind == "out":
        if conv.bias is not None:
            conv.bias = select_param(conv.bias, index, 0)
        conv.out_channels = len(index)
    else:
        conv.in_channels = len(index)


def _cut_entropy(eb: EntropyBottleneck, keep: list[int]) -> None:
    for plist in (eb.matrices, eb.biases, eb.factors):
        for i in range(len(plist)):
            plist[i] = select_param(plist[i], keep, 0)
    eb.quantiles = select_param(eb.quantiles, keep, 0)
    index = torch.tensor(keep, dtype=torch.long)
    for name in ("_offset", "_quantized_cdf", "_cdf_length"):
        buf = getattr(eb, name)
        if buf.numel() and buf.size(0) == eb.channels:  # empty before the first update()
            setattr(eb, name, buf.index_select(0, index.to(buf.device)).contiguous())
    eb.channels = len(keep)


def cut(net: nn.Module, cuts: list[Cut], keep: list[int]) -> None:
    """Keep only channels `keep` (sorted) in every coupled tensor."""
    n = channels_of(net, cuts)
    for c in cuts:
        module = net.get_submodule(c.path)
        if c.kind == "entropy":
            assert isinstance(module, EntropyBottleneck)
            _cut_entropy(module, keep)
        else:
            assert isinstance(module, CONV_TYPES)
            _cut_conv(module, c, keep, n)


def prune_to(
    net: nn.Module, which: str, keep_count: int, criterion: str, gen: torch.Generator
) -> list[int]:
    """Remove the least important channels of latent `which` until `keep_count` remain."""
    cuts = couplings(net, which)
    scores = importance(net, cuts, criterion, gen)
    if keep_count >= scores.numel():
        return list(range(scores.numel()))
    keep = sorted(torch.argsort(scores, descending=True)[:keep_count].tolist())
    cut(net, cuts, keep)
    return keep
