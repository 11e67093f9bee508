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

`--stages N`: where each codec's time goes, on the first N images (best of 3 per stage after a
warm-up): g_a, h_a, the hyper-decoder (run on both sides: integer on format-3 codecs), the
entropy coder alone (encode / decode, the hyper-decoder's indexes given), g_s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compressor import checkpoint  # noqa: E402
from compressor.codec import TorchCodec  # noqa: E402
from compressor.compare import compare  # noqa: E402
from compressor.data import load_images  # noqa: E402
from compressor.runtime import container, load_codec  # noqa: E402
from compressor.runtime.codec import OrtCodec, _symbols  # noqa: E402
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
    ap.add_argument("--stages", type=int, default=0, help="time each stage on N images")
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
    if args.stages:
        runtime = {k: c for k, c in codecs.items() if isinstance(c, OrtCodec)}
        stage_table({k: c for k, c in runtime.items() if c.kind != "factorized"},
                     [rgb for _, rgb in images[: args.stages]])  # fmt: skip


def _best(fn: Callable[[], object], repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def stages(codec: OrtCodec, rgb8: np.ndarray) -> dict[str, float]:
    """ms of each stage of one image's encode and decode (hyperprior kinds)."""
    data = codec.encode(rgb8)
    header, symbols, y_hat = codec.decode_latents(data)
    pad = header.pad
    integer = header.version == container.FORMAT_VERSION
    y = codec._analyze(rgb8, pad, codec.tile)
    z_sym = _symbols(codec._run("h_a", y, "z"), codec.medians)
    shape = symbols["y"].shape
    indexes, _ = codec._hyper(z_sym, shape, integer)
    out = {
        "g_a": _best(lambda: codec._analyze(rgb8, pad, codec.tile)),
        "h_a": _best(lambda: codec._run("h_a", y, "z")),
        "h_s": _best(lambda: codec._hyper(z_sym, shape, integer)),
        "entropy enc": _best(lambda: codec.encode_symbols(header, symbols, indexes)),
    }
    out["entropy dec"] = _best(lambda: codec.decode_latents(data)) - out["h_s"]
    out["g_s"] = _best(lambda: codec._synthesize(y_hat, pad, codec.tile))
    out["encode"] = _best(lambda: codec.encode(rgb8))
    out["decode"] = _best(lambda: codec.decode(data))
    return out


def stage_table(codecs: dict[str, OrtCodec], images: list[np.ndarray]) -> None:
    names = ["g_a", "h_a", "h_s", "entropy enc", "entropy dec", "g_s", "encode", "decode"]
    print(f"\nstages, ms (median over {len(images)} image(s) of the best of 3)")
    print("| codec | " + " | ".join(names) + " | h_s share |")
    print("|---" * (len(names) + 2) + "|")
    for label, codec in codecs.items():
        rows = [stages(codec, rgb8) for rgb8 in images]
        med = {n: statistics.median(r[n] for r in rows) for n in names}
        share = 2 * med["h_s"] / (med["encode"] + med["decode"])
        print(f"| {label} | " + " | ".join(f"{med[n]:.1f}" for n in names) + f" | {share:.0%} |")


if __name__ == "__main__":
    main()
