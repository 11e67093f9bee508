"""What the contract expects of each family, where families differ (tests/plugins/
test_contract.py runs the steps). Every entry says why; a family not named gets the default.

Numbers were measured on the tiny seed-0 models of tests/conftest.py (N=8, M=12; jpeg's
tables at quality 1) on a 70x90 image.
"""

from __future__ import annotations

from dataclasses import dataclass

from compressor.prune.config import COMPONENTS

#: archs the exporter refuses, with the documented reason (compressor/export/zoo.py): their
#: context model decodes y one element at a time, which no one-graph-per-component runtime runs
NOT_EXPORTABLE = {
    "mbt2018": "not supported yet: its context model",
    "cheng2020-anchor": "not supported yet: its context model",
}

#: the structured pruning ratio every prunable family gets (round_to=1: N=8 keeps 5 channels)
PRUNE_RATIO = 0.3
#: each pruned component keeps 5 of every 8 channels of its inner groups, so each of its
#: convolutions keeps at most 5/8 of its MACs (0.39 between two pruned groups): the component
#: must keep at most this share (0.625 plus float slack)
MAX_PRUNED_MACS_RATIO = 0.65
#: components pruned per arch; default: every prunable component (`all`)
PRUNE_RATIOS: dict[str, dict[str, float]] = {
    # its decoder and hyper-decoder upsample with PixelShuffle, which structured pruning
    # refuses (torch-pruning mis-maps the channels feeding it): the others are pruned
    "cheng2020-anchor": {"encoder": PRUNE_RATIO, "hyper_encoder": PRUNE_RATIO},
}
#: archs structured pruning refuses outright, and a fragment of the documented reason
UNPRUNABLE = {"jpeg": "no channels or weights to remove"}
#: requests refused for a documented reason: (arch, ratios, fragment of the message)
PRUNE_REFUSALS = [
    ("cheng2020-anchor", {"decoder": PRUNE_RATIO}, "upsamples with PixelShuffle"),
    ("cheng2020-anchor", {"hyper_decoder": PRUNE_RATIO}, "upsamples with PixelShuffle"),
]


def pruned_components(arch: str, present: list[str]) -> set[str]:
    """The components the contract's pruning request cuts in a model with these components."""
    ratios = PRUNE_RATIOS.get(arch, {"all": PRUNE_RATIO})
    if "all" in ratios:
        return {c for c in present if c in COMPONENTS}
    return set(ratios)


@dataclass(frozen=True)
class RuntimeTolerance:
    """How far the runtime's decoded image may be from torch's own compress/decompress."""

    max_level_diff: int  # largest per-pixel difference, 8-bit levels
    max_psnr_gap_db: float  # |PSNR(runtime) - PSNR(torch)| against the original
    min_agreement_db: float  # PSNR of the runtime's image against torch's


#: the runtime runs the same float graphs as torch and an entropy coder that is lossless:
#: a last-bit difference of ONNX Runtime's kernels may move a pixel across an 8-bit rounding
#: boundary, nothing more (measured: identical images on every such family)
RUNTIME_DEFAULT = RuntimeTolerance(max_level_diff=1, max_psnr_gap_db=0.01, min_agreement_db=48.0)
RUNTIME_TOLERANCE = {
    # the sub-pixel rewrite of its generator's transposed convolutions and ChannelNorm's
    # float reductions differ from torch in the last bits (the family test allows 2 levels)
    "hific": RuntimeTolerance(max_level_diff=2, max_psnr_gap_db=0.05, min_agreement_db=45.0),
    # torch's codec is Pillow / libjpeg (integer IDCT, its own chroma upsampling); the runtime
    # decodes the same quantized coefficients with the exported float IDCT: rare pixels differ
    # by many levels, the image as a whole does not (measured: 27 levels, 38.6 dB agreement,
    # 0.003 dB PSNR gap)
    "jpeg": RuntimeTolerance(max_level_diff=40, max_psnr_gap_db=0.05, min_agreement_db=35.0),
}
