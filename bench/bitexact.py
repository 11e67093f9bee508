"""Bit-exact decoding: the session matrix, the one-ULP perturbation, RD and decode time.

Every image is encoded with the default session options, then decoded under intra-op
threads {1, 2} x ORT graph optimisation {disabled, basic, all}; the latent symbols must be
identical everywhere (integer hyper path). `--float-export` runs the same on a float-path
export to show what fails there, and measures bpp / PSNR / decode time of both side by side
(decodes interleaved, integer and float, so the time ratio holds on a noisy machine).

    OMP_NUM_THREADS=1 uv run python bench/bitexact.py --export INT/ --float-export FLOAT/ \
        --images /work/shared/data/kodak [--count 24] [--matrix-count 6]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compressor.errors import BitstreamError
from compressor.imageio import read_rgb8
from compressor.metrics.psnr import psnr
from compressor.runtime.codec import OrtCodec

THREADS = (1, 2)
LEVELS = ("disabled", "basic", "all")


def symbols_sha(symbols: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(symbols):
        h.update(name.encode() + np.ascontiguousarray(symbols[name], dtype="<i8").tobytes())
    return h.hexdigest()


def matrix(folder: Path, images: list[Path]) -> dict[str, int]:
    """Decode each default-encoded image in every session configuration; print per image."""
    default = OrtCodec(folder)
    codecs = {(t, o): OrtCodec(folder, threads=t, optimization=o) for t in THREADS for o in LEVELS}
    tally = {"decoded": 0, "symbols_differ": 0, "corrupt": 0, "pixels_differ": 0}
    for path in images:
        rgb8 = read_rgb8(path)
        data = default.encode(rgb8)
        _, ref_sym, _ = default.decode_latents(data)
        ref_px = default.decode(data)
        row = []
        for (t, o), codec in codecs.items():
            try:
                _, sym, _ = codec.decode_latents(data)
                px = codec.decode(data)
            except BitstreamError:
                tally["corrupt"] += 1
                row.append(f"{t}/{o}:CORRUPT")
                continue
            same = symbols_sha(sym) == symbols_sha(ref_sym)
            diff = int(np.abs(px.astype(int) - ref_px.astype(int)).max())
            share = float((px != ref_px).mean())
            tally["decoded"] += 1
            tally["symbols_differ"] += not same
            tally["pixels_differ"] += diff > 0
            row.append(f"{t}/{o}:{'sym=' if same else 'SYM!'} px<={diff} ({share:.4%})")
        print(f"{path.name}: " + "  ".join(row))
    return tally


def rd(int_dir: Path, float_dir: Path, images: list[Path], threads: int) -> None:
    """bpp, PSNR and decode time of both paths on the same images, decodes interleaved."""
    codecs = {
        "integer": OrtCodec(int_dir, threads=threads),
        "float": OrtCodec(float_dir, threads=threads),
    }
    bits, quality, secs = (dict.fromkeys(codecs, 0.0) for _ in range(3))
    pixels = 0
    for path in images:
        rgb8 = read_rgb8(path)
        pixels += rgb8.shape[0] * rgb8.shape[1]
        files = {name: codec.encode(rgb8) for name, codec in codecs.items()}
        for name in (*codecs, *reversed(codecs)):  # A B B A: neither always runs first
            t0 = time.perf_counter()
            out = codecs[name].decode(files[name])
            secs[name] += time.perf_counter() - t0
            quality[name] += psnr(rgb8, out) / 2
            bits[name] += len(files[name]) * 8 / 2
    n = len(images)
    for name in codecs:
        print(
            f"{name:8s} bpp {bits[name] / pixels:.5f}  PSNR {quality[name] / n:.4f} dB  "
            f"decode {secs[name] / (2 * n) * 1000:.1f} ms/image"
        )
    print(
        f"integer vs float: bpp {bits['integer'] / bits['float'] - 1:+.3%}, "
        f"PSNR {(quality['integer'] - quality['float']) / n:+.4f} dB, "
        f"decode time {secs['integer'] / secs['float'] - 1:+.1%}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", type=Path, required=True, help="integer-path export folder")
    ap.add_argument("--float-export", type=Path, help="float-path export of the same model")
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--count", type=int, default=24, help="images for the RD comparison")
    ap.add_argument("--matrix-count", type=int, default=24, help="images for the matrix")
    ap.add_argument("--threads", type=int, default=1, help="threads of the RD/time run")
    ap.add_argument("--float-matrix", action="store_true", help="run the matrix on it too")
    args = ap.parse_args()
    images = sorted(args.images.glob("*.png"))
    folders = [args.export] + ([args.float_export] if args.float_matrix else [])
    for folder in folders:
        if folder is not None and args.matrix_count:
            print(f"== matrix: {folder}")
            print(matrix(folder, images[: args.matrix_count]))
    if args.float_export is not None and args.count:
        print("== RD and decode time")
        rd(args.export, args.float_export, images[: args.count], args.threads)


if __name__ == "__main__":
    main()
