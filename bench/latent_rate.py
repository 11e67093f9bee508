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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compressor import checkpoint
from compressor.data import load_images, to_tensor
from compressor.models import CodecAdapter
from compressor.prune import PruneParams, prune_model


def rates(model: CodecAdapter, x: torch.Tensor) -> tuple[float, float]:
    """(real bpp, estimated bpp) of one padded image."""
    pixels = x.size(2) * x.size(3)
    with torch.no_grad():
        return len(model.compress(x)) * 8 / pixels, float(model.forward_rd(x).bpp(pixels))


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
    for name, img in load_images(args.images)[: args.count]:
        x = to_tensor(img)
        x = x[..., : x.size(2) // 64 * 64, : x.size(3) // 64 * 64]  # zoo archs need multiples of 64
        (r0, e0), (r1, e1) = rates(model, x), rates(pruned, x)
        cells = [f"{v:.4f}" for v in (r0, e0, r0 / e0, r1, e1, r1 / e1)]
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
