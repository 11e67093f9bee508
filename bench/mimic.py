"""The transform imitator against the real torchvision pipeline, side by side on one CPU run.

Trains (or loads) the imitator on random 32x32 crops of the training photos, measures its
SSIM / PSNR against the pipeline on crops of held-out images (Kodak by default), exports it to
ONNX (FP32) and quantizes that with ONNX Runtime (static QDQ INT8, calibrated on training
crops), then times on the same batches (256 and 1), interleaved A B C ... so machine noise
hits every contender alike, all on the same number of threads:

  sequential   the v2 pipeline applied image by image (how a data loader runs it)
  batched      the same pipeline called once on the whole batch tensor (a stronger baseline)
  torch_fp32   the imitator in torch
  ort_fp32     its ONNX graph in ONNX Runtime
  ort_int8     the INT8 graph in ONNX Runtime

    uv run python bench/mimic.py --threads 1 --out exported/bench-mimic
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from compressor.data import list_images, read_rgb8  # noqa: E402
from compressor.metrics.latency import interleaved  # noqa: E402
from compressor.models import mimic  # noqa: E402

CONTENDERS = ("sequential", "batched", "torch_fp32", "ort_fp32", "ort_int8")


def load_dir(folder: Path, limit: int | None) -> list[np.ndarray]:
    return [read_rgb8(p) for p in list_images(folder)[:limit]]


def trained_model(args: argparse.Namespace) -> tuple[mimic.MimicAdapter, dict[str, Any]]:
    path = args.out / "mimic.pt"
    if args.reuse and path.exists():
        model = mimic.load(path)
        return model, dict(getattr(model, "meta", {}).get("train", {}))
    images = load_dir(args.data, args.train_images)
    t0 = time.perf_counter()
    overrides = {"max_steps": args.max_steps, "threads": args.threads, "seed": args.seed}
    model, result = mimic.train_mimic(images, path, overrides, resume=False)
    return model, {
        "steps": result.steps,
        "stopped": result.stopped,
        "seconds": round(time.perf_counter() - t0, 1),
        "best_val_mse": result.best_val_loss,
        "train_images": len(images),
    }


class Crops:
    """onnxruntime CalibrationDataReader over a few batches of training crops."""

    def __init__(self, crops: torch.Tensor, batch: int = 64) -> None:
        self.batches = iter([{"x": b.numpy()} for b in crops.split(batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def onnx_models(model: mimic.MimicAdapter, calib: torch.Tensor, out: Path) -> tuple[Path, Path]:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    fp32 = mimic.export_onnx(model, out / "mimic.onnx")
    int8 = out / "mimic.int8.onnx"
    quantize_static(
        str(fp32),
        str(int8),
        Crops(calib),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return fp32, int8


def session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def contenders(model: mimic.MimicAdapter, sessions: dict[str, Any]) -> dict[str, Callable]:
    """name -> fn(batch tensor) -> N x 1 x 28 x 28 tensor."""
    pipeline = mimic.transform_pipeline()

    def sequential(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([pipeline(img) for img in x])

    def torch_fp32(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model.net(x)

    def ort_run(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        sess = sessions[name]
        return lambda x: torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])

    return {
        "sequential": sequential,
        "batched": pipeline,
        "torch_fp32": torch_fp32,
        "ort_fp32": ort_run("ort_fp32"),
        "ort_int8": ort_run("ort_int8"),
    }


def measure(fns: dict[str, Callable], x: torch.Tensor, repeats: int, threads: int) -> dict:
    target = fns["sequential"](x)
    quality = {name: mimic.quality(fn(x), target) for name, fn in fns.items()}
    xn = x.contiguous()
    lat = interleaved(
        {name: (lambda fn=fn: fn(xn)) for name, fn in fns.items()},
        repeats=repeats,
        warmup=3,
        threads=threads,
    )
    rows = {}
    for name in fns:
        ms = lat[name].median_ms
        rows[name] = {
            "median_ms": ms,
            "p95_ms": lat[name].p95_ms,
            "speedup_vs_sequential": lat["sequential"].median_ms / ms,
            "speedup_vs_batched": lat["batched"].median_ms / ms,
            **{k: v for k, v in quality[name].items() if k in ("ssim", "psnr")},
        }
    return rows


def print_rows(batch: int, rows: dict[str, dict[str, float]], threads: int) -> None:
    print(f"\nbatch {batch}, {threads} thread(s), interleaved; SSIM/PSNR vs the pipeline")
    print(
        f"{'contender':<12} {'median ms':>10} {'p95 ms':>9} {'x seq':>7} {'x batched':>9} "
        f"{'SSIM':>7} {'PSNR':>6}"
    )
    for name, r in rows.items():
        print(
            f"{name:<12} {r['median_ms']:>10.3f} {r['p95_ms']:>9.3f} "
            f"{r['speedup_vs_sequential']:>7.2f} {r['speedup_vs_batched']:>9.2f} "
            f"{r['ssim']:>7.4f} {r['psnr']:>6.1f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/wikipedia-photos")
    ap.add_argument("--heldout", type=Path, default=REPO.parent / "shared/data/kodak")
    ap.add_argument("--train-images", type=int, default=None, help="use the first N photos")
    ap.add_argument("--max-steps", type=int, default=4000)
    ap.add_argument("--eval-crops", type=int, default=1024, help="held-out crops for SSIM")
    ap.add_argument("--batches", default="256,1")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", action="store_true", help="load OUT/mimic.pt if it exists")
    ap.add_argument("--out", type=Path, default=REPO / "exported" / "bench-mimic")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    model, train_info = trained_model(args)
    print(f"imitator: {train_info}")
    heldout = load_dir(args.heldout, None)
    calib = mimic.random_crops(load_dir(args.data, 8), 256, seed=args.seed + 1)
    fp32, int8 = onnx_models(model, calib, args.out)
    sessions = {"ort_fp32": session(fp32, args.threads), "ort_int8": session(int8, args.threads)}
    fns = contenders(model, sessions)

    eval_x = mimic.random_crops(heldout, args.eval_crops, seed=args.seed + 2)
    target = fns["sequential"](eval_x)
    heldout_quality = {
        name: mimic.quality(fns[name](eval_x), target)
        for name in ("torch_fp32", "ort_fp32", "ort_int8")
    }
    print(f"held-out quality ({args.eval_crops} crops of {args.heldout.name}):")
    for name, q in heldout_quality.items():
        print(
            f"  {name:<11} SSIM {q['ssim']:.5f} (min {q['ssim_min']:.4f})  PSNR {q['psnr']:.2f} dB"
        )

    timings = {}
    for batch in (int(b) for b in args.batches.split(",")):
        x = mimic.random_crops(heldout, batch, seed=args.seed + 3 + batch)
        timings[batch] = measure(fns, x, args.repeats, args.threads)
        print_rows(batch, timings[batch], args.threads)

    report = {
        "threads": args.threads,
        "train": train_info,
        "heldout": str(args.heldout),
        "heldout_quality": heldout_quality,
        "timings": timings,
        "onnx": {"fp32": str(fp32), "int8": str(int8)},
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nreport: {args.out / 'report.json'}")


if __name__ == "__main__":
    main()
