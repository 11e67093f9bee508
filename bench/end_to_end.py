"""End to end against CompressAI's own torch codec: encode + decode of Kodak, one process.

The reference is the model's CompressAI `compress()` / `decompress()` in torch FP32
(compressor.codec.TorchCodec); every other codec is an export folder run by the deployable
runtime (ONNX Runtime, OpenVINO, or `auto`: each graph on the faster one here). All codecs
code the same images interleaved (compressor.compare), so the ratios come from one run:

    OMP_NUM_THREADS=1 uv run --frozen python bench/end_to_end.py \
        --codec int8=RUN/02_quantize/onnx --codec prune30-int8=RUN/04_quantize/onnx \
        --runtimes ort auto --count 24 --repeats 2

Speed-ups are total (encode + decode) time over all images, the reference's over the codec's;
PSNR and bpp are means over the images, their changes against the reference's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compressor import checkpoint  # noqa: E402
from compressor.codec import TorchCodec  # noqa: E402
from compressor.compare import compare  # noqa: E402
from compressor.data import load_images  # noqa: E402
from compressor.runtime import load_codec  # noqa: E402
from compressor.torch_threads import torch_threads  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "compressor/assets/bmshj2018-hyperprior-q2.pt"))
    ap.add_argument("--codec", action="append", default=[], help="LABEL=EXPORT_FOLDER")
    ap.add_argument("--runtimes", nargs="+", default=["ort"], choices=["ort", "openvino", "auto"])
    ap.add_argument("--images", default=str(ROOT.parent / "shared/data/kodak"))
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    images = load_images(args.images)[: args.count]
    codecs: dict = {"compressai": TorchCodec(checkpoint.load(Path(args.model)), "compressai")}
    for item in args.codec:
        label, _, folder = item.partition("=")
        for runtime in args.runtimes:
            codec = load_codec(Path(folder), threads=args.threads, runtime=runtime)
            codecs[f"{label}/{runtime}"] = codec
            if runtime == "auto":
                print(
                    f"{label}/auto runs "
                    + ", ".join(f"{g} on {r}" for g, r in codec.runtimes.items())
                )
    with torch_threads(args.threads):
        result = compare(codecs, images, args.repeats, estimate=False, threads=args.threads)
    ref = result["compressai"]
    total_ref = sum(r["encode_ms"] + r["decode_ms"] for r in ref.rows)
    print(f"\n{len(images)} Kodak images, {args.threads} thread(s), {args.repeats} interleaved "
          "rounds (median per image)")  # fmt: skip
    print("| codec | encode ms | decode ms | end to end × | encode × | decode × | PSNR dB "
          "| ΔPSNR dB | bpp | bpp change |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label in codecs:
        r = result[label]
        enc, dec = r.mean("encode_ms"), r.mean("decode_ms")
        total = sum(row["encode_ms"] + row["decode_ms"] for row in r.rows)
        print(
            f"| {label} | {enc:.0f} | {dec:.0f} | {total_ref / total:.2f} | "
            f"{ref.mean('encode_ms') / enc:.2f} | {ref.mean('decode_ms') / dec:.2f} | "
            f"{r.mean('psnr'):.3f} | {r.mean('psnr') - ref.mean('psnr'):+.3f} | "
            f"{r.mean('bpp'):.4f} | {r.mean('bpp') / ref.mean('bpp') - 1:+.2%} |"
        )


if __name__ == "__main__":
    main()
