"""INT8 side by side on Kodak: torch FP32, ORT FP32, ORT INT8 naive, ORT INT8 ours (+ pruned).

- torch:      the checkpoint through CompressAI's compress/decompress (FP32)
- ort-fp32:   the exported, rewritten graphs (ConvTranspose -> Conv + PixelShuffle), FP32
- int8-naive: onnxruntime.quantization.quantize_static with its defaults (QDQ, all op types,
              per-tensor) on the *un-rewritten* export: the transposed convolutions stay float
- int8-ours:  compressor's ort-static backend on the rewritten export (Conv only, per-channel
              weights, U8 activations, pre-processed), encoder + decoder
- int8-inc:   backend inc-static (Neural Compressor's PT2E calibration in ORT's graph), --inc
- int8-qat:   backend qat: --qat-minutes M of fake-quantized RD fine-tuning on --train images,
              then ORT's QDQ graph with the learned ranges (a fine-tuned model underneath)
- pruned-*:   the same two (FP32, ours) for a structurally pruned checkpoint, with --pruned

All codecs are measured in one run by compressor.compare (per image, rounds of A B C ... in
rotating order, the same thread count), so machine noise hits all alike; ratios are against
ort-fp32. Calibration uses
--calibration images, QAT trains on --train images (never Kodak).

    uv run python bench/quantize.py --model compressor/assets/bmshj2018-hyperprior-q2.pt \
        --images 3 --threads 1 --qat-minutes 20 --inc --pruned P.pt --out int8.json
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from compressor import checkpoint  # noqa: E402
from compressor.codec import TorchCodec  # noqa: E402
from compressor.compare import Comparison, compare  # noqa: E402
from compressor.data import load_images  # noqa: E402
from compressor.export import export_model  # noqa: E402
from compressor.quant import QuantParams, calib  # noqa: E402
from compressor.quant.folder import write_folder  # noqa: E402
from compressor.quant.inc import run_inc_static  # noqa: E402
from compressor.quant.ort_backend import run_ort_static  # noqa: E402
from compressor.quant.qat import run_qat  # noqa: E402
from compressor.quant.qat_params import QatParams  # noqa: E402
from compressor.runtime import load_codec  # noqa: E402
from compressor.runtime import manifest as mf  # noqa: E402
from compressor.threads import resolve_threads  # noqa: E402

log = logging.getLogger("bench.quantize")
KEYS = ("encode_ms", "decode_ms", "bpp", "psnr", "ms_ssim")


def naive_int8(src: Path, out: Path, images: list[np.ndarray]) -> Path:
    """quantize_static with ONNX Runtime's defaults on g_a and g_s of an un-rewritten export."""
    from onnxruntime.quantization import quantize_static

    codec = load_codec(src, threads=1)
    inputs = calib.calibration_inputs(codec, images, ["g_a", "g_s"])
    work = out.parent / f"{out.name}.work"
    work.mkdir()
    files = {}
    for g in ("g_a", "g_s"):
        files[g] = work / f"{g}.onnx"
        quantize_static(str(src / f"{g}.onnx"), str(files[g]), calib.ListReader(inputs[g]))
    report = {"backend": "ort-quantize_static-defaults", "params": {}}
    write_folder(src, mf.read(src), files, out, report, images[0])
    shutil.rmtree(work)
    return out


def folder_bytes(folder: Path) -> int:
    return sum((folder / f"{g}.onnx").stat().st_size for g in ("g_a", "h_a", "h_s", "g_s"))


def build(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, Any], dict[str, int]]:
    model = checkpoint.load(Path(args.model))
    cal = [calib.centre_crop(a, 256) for _, a in load_images(args.calibration)[: args.cal_images]]
    params = QuantParams()
    rw = export_model(model, tmp / "fp32")
    orig = export_model(model, tmp / "fp32-orig", rewrite=False)
    folders = {"ort-fp32": rw, "int8-naive": naive_int8(orig, tmp / "naive", cal)}
    run_ort_static(rw, tmp / "ours", params, cal, args.threads)
    folders["int8-ours"] = tmp / "ours"
    if args.inc:
        inc = QuantParams(backend="inc-static")
        run_inc_static(rw, tmp / "inc", inc, cal, args.threads, checkpoint=Path(args.model))
        folders["int8-inc"] = tmp / "inc"
    if args.qat_minutes:
        qat = QuantParams(backend="qat", qat=QatParams(max_minutes=args.qat_minutes))
        train_images = [a for _, a in load_images(args.train)]
        report = run_qat(
            rw, tmp / "qat", qat, cal, args.threads, checkpoint=Path(args.model),
            train_images=train_images,
        )  # fmt: skip
        log.warning("QAT: %s", {k: v for k, v in report["qat"].items() if k != "history"})
        folders["int8-qat"] = tmp / "qat"
    if args.pruned:
        pruned = export_model(checkpoint.load(Path(args.pruned)), tmp / "pruned-fp32")
        run_ort_static(pruned, tmp / "pruned-ours", params, cal, args.threads)
        folders.update({"pruned-fp32": pruned, "pruned-int8": tmp / "pruned-ours"})
    codecs: dict[str, Any] = {"torch": TorchCodec(model)}
    codecs.update({k: load_codec(f, threads=args.threads) for k, f in folders.items()})
    sizes = {"torch": sum(p.numel() * 4 for p in model.net.parameters())}
    sizes.update({k: folder_bytes(f) for k, f in folders.items()})
    return codecs, sizes


def _nan(value: float | None) -> float:
    """Undefined means (PSNR of lossless, MS-SSIM of small images) print as nan."""
    return float("nan") if value is None else value


def render(result: Comparison, sizes: dict[str, int]) -> str:
    ref = "ort-fp32"
    head = f"{'codec':<12}{'enc ms':>9}{'dec ms':>9}{'enc x':>7}{'dec x':>7}"
    lines = [head + f"{'PSNR':>8}{'dPSNR':>8}{'MS-SSIM':>9}{'bpp':>8}{'dbpp %':>8}{'MB':>7}"]
    base = result[ref]
    for n in result.labels:
        mean = {k: _nan(result[n].mean(k)) for k in KEYS}
        enc = result.geomean_ratio("encode_ms", ref, n)
        dec = result.geomean_ratio("decode_ms", ref, n)
        psnr, bpp = _nan(base.mean("psnr")), _nan(base.mean("bpp"))
        lines.append(
            f"{n:<12}{mean['encode_ms']:>9.1f}{mean['decode_ms']:>9.1f}{enc:>7.2f}{dec:>7.2f}"
            f"{mean['psnr']:>8.2f}{mean['psnr'] - psnr:>8.3f}{mean['ms_ssim']:>9.4f}"
            f"{mean['bpp']:>8.4f}{100 * (mean['bpp'] / bpp - 1):>8.2f}"
            f"{sizes[n] / 1e6:>7.2f}"
        )
    naive = result.geomean_ratio("decode_ms", "int8-naive", "int8-ours")
    lines.append(f"decode speed int8-ours vs int8-naive: {naive:.2f}x (geomean over images)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="FP32 checkpoint")
    ap.add_argument("--pruned", default=None, help="a structurally pruned checkpoint (optional)")
    ap.add_argument("--kodak", default=str(REPO.parent / "shared" / "data" / "kodak"))
    ap.add_argument(
        "--calibration", default=str(REPO.parent / "shared" / "data" / "wikipedia-photos")
    )
    ap.add_argument("--cal-images", type=int, default=16)
    ap.add_argument("--train", default=str(REPO.parent / "shared" / "data" / "wikipedia-photos"))
    ap.add_argument("--qat-minutes", type=float, default=None, help="add the QAT row")
    ap.add_argument("--inc", action="store_true", help="add the inc-static row")
    ap.add_argument("--images", type=int, default=24, help="how many Kodak images (sorted)")
    ap.add_argument("--threads", type=int, default=1, help="torch and ORT threads (equal)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(resolve_threads(args.threads, "--threads"))
    images = load_images(args.kodak)[: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        codecs, sizes = build(args, Path(tmp))
        result = compare(codecs, images, args.repeats, estimate=False, threads=args.threads)
    rows = result.by_image(KEYS)
    print(
        f"model {args.model}, {len(rows)} Kodak images, {args.threads} thread(s), medians of "
        f"{args.repeats}; ratios: ort-fp32 time / codec time"
    )
    print(render(result, sizes))
    if args.out:
        args.out.write_text(
            json.dumps(
                {"args": vars(args) | {"out": str(args.out)}, "sizes": sizes, "rows": rows},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
