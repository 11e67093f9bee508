"""Torch FP32 vs ONNX Runtime FP32 (original graphs) vs ORT FP32 (rewritten graphs).

Encode and decode latency of the whole codec (graphs + entropy coding) per Kodak image, the
three measured side by side in one run by compressor.compare (per image, rounds of torch,
ort, ort-rw in rotating order, the same thread count), so a noisy machine slows all alike
and the ratios hold. Bytes and PSNR are reported too (they must agree).

    uv run python bench/export_runtime.py --model compressor/assets/bmshj2018-hyperprior-q2.pt
    uv run python bench/export_runtime.py --model random:128,192 --images 2   # timing only
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from compressor import checkpoint  # noqa: E402
from compressor.codec import Codec, TorchCodec  # noqa: E402
from compressor.compare import Comparison, compare  # noqa: E402
from compressor.data import load_images  # noqa: E402
from compressor.export import export_model  # noqa: E402
from compressor.models import MODELS, CodecAdapter  # noqa: E402
from compressor.runtime import load_codec  # noqa: E402
from compressor.threads import resolve_threads  # noqa: E402

NAMES = ("torch", "ort", "ort-rw")
KEYS = ("encode_ms", "decode_ms", "bpp", "psnr")


def build_model(spec: str, arch: str) -> CodecAdapter:
    """A checkpoint path, or random:N,M for random weights (timing only, rates meaningless)."""
    if spec.startswith("random:"):
        n, m = (int(v) for v in spec.split(":", 1)[1].split(","))
        torch.manual_seed(0)
        model = MODELS.get(arch).build(arch, {"N": n, "M": m})
        model.finalize()
        return model.eval()
    return checkpoint.load(Path(spec))


def render(result: Comparison) -> str:
    head = (
        f"{'image':<14}{'enc torch':>10}{'ort':>8}{'ort-rw':>8}{'ort/t':>7}{'rw/t':>7}"
        f"{'dec torch':>11}{'ort':>8}{'ort-rw':>8}{'ort/t':>7}{'rw/t':>7}{'bpp t/rw':>16}"
    )
    lines = [head]
    for image, r in result.by_image(KEYS).items():
        t, o, w = (r[n] for n in NAMES)
        lines.append(
            f"{image:<14}{t['encode_ms']:>10.1f}{o['encode_ms']:>8.1f}{w['encode_ms']:>8.1f}"
            f"{o['encode_ms'] / t['encode_ms']:>7.2f}{w['encode_ms'] / t['encode_ms']:>7.2f}"
            f"{t['decode_ms']:>11.1f}{o['decode_ms']:>8.1f}{w['decode_ms']:>8.1f}"
            f"{o['decode_ms'] / t['decode_ms']:>7.2f}{w['decode_ms'] / t['decode_ms']:>7.2f}"
            f"{t['bpp']:>9.4f}/{w['bpp']:.4f}"
        )
    for kind in ("encode_ms", "decode_ms"):
        ratios = {
            f"{a}/{b}": result.geomean_ratio(kind, a, b)
            for a, b in (("ort", "torch"), ("ort-rw", "torch"), ("ort-rw", "ort"))
        }
        lines.append(
            f"geomean {kind[:6]} ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items())
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint path, or random:N,M")
    ap.add_argument("--arch", default="bmshj2018-hyperprior", help="arch for random:N,M")
    ap.add_argument("--kodak", default=str(REPO.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--images", type=int, default=24, help="how many images (sorted)")
    ap.add_argument("--threads", type=int, default=1, help="torch and ORT threads (equal)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(resolve_threads(args.threads, "--threads"))
    model = build_model(args.model, args.arch)
    images = load_images(args.kodak)[: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        codecs: dict[str, Codec] = {
            "torch": TorchCodec(model),
            "ort": load_codec(
                export_model(model, Path(tmp) / "orig", rewrite=False), threads=args.threads
            ),
            "ort-rw": load_codec(
                export_model(model, Path(tmp) / "rw", rewrite=True), threads=args.threads
            ),
        }
        result = compare(codecs, images, args.repeats, estimate=False, threads=args.threads)
    rows = result.by_image(KEYS)
    print(
        f"model {args.model}, {len(rows)} images, {args.threads} thread(s), "
        f"medians of {args.repeats}"
    )
    print(render(result))
    if args.out:
        args.out.write_text(
            json.dumps({"model": args.model, "threads": args.threads, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
