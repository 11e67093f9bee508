"""Real bitstream vs likelihood estimate, before and after latent pruning, per image.

A channel cut out of step between g_a, h_s and the entropy tables shows as real >> estimate;
the acceptance bound is 2 %.

    OMP_NUM_THREADS=1 uv run python bench/latent_rate.py --model MBT.pt \
        --images ../shared/data/kodak --count 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compressor import checkpoint
from compressor.codec import TorchCodec
from compressor.data import load_images
from compressor.prune import PruneParams, prune_model


def rates(codec: TorchCodec, rgb8: np.ndarray) -> tuple[float, float]:
    """(real bpp of the stream `encode` writes, bpp the likelihoods estimate) of one image."""
    h, w = rgb8.shape[:2]
    return len(codec.encode(rgb8)) * 8 / (h * w), codec.estimated_bpp(rgb8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", required=True, help="folder (or 'skimage')")
    ap.add_argument("--count", type=int, default=3, help="first K images")
    ap.add_argument("--latent", type=float, default=0.25, help="latent pruning ratio")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = checkpoint.load(args.model)
    params = PruneParams(ratio={"latent": args.latent}, latency_repeats=0, report_size=(64, 64))
    pruned, _ = prune_model(model, params)
    print("| image | real bpp | est bpp | real/est | pruned real | pruned est | real/est |")
    print("|---|---|---|---|---|---|---|")
    codecs = TorchCodec(model), TorchCodec(pruned)
    for name, img in load_images(args.images)[: args.count]:
        (r0, e0), (r1, e1) = (rates(codec, img) for codec in codecs)
        cells = [f"{v:.4f}" for v in (r0, e0, r0 / e0, r1, e1, r1 / e1)]
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
