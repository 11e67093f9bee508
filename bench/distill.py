"""Teacher, distilled student and the same student trained from scratch, side by side.

The student (same arch, widths x --width) is distilled from the teacher for --minutes of CPU
(compressor.distill: teacher-initialised, distortion + output + latent + rate losses), and an
identical student (same config) is trained from random weights with the plain RD loss for
the same wall-clock budget, both through the one train loop. All three are then measured on
Kodak with real bitstreams by compressor.compare (teacher, distilled, scratch per image, the
order rotating), so the encode/decode latency ratios are measured side by side in one run:
PSNR, MS-SSIM, bpp, encode/decode ms, and MACs of every component.

    uv run python bench/distill.py --teacher compressor/assets/bmshj2018-hyperprior-q2.pt \
        --kodak ../shared/data/kodak --data ../shared/data/wikipedia-photos --minutes 30 \
        --threads 1 --out exported/bench-distill
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from compressor import checkpoint  # noqa: E402
from compressor.codec import TorchCodec  # noqa: E402
from compressor.compare import compare  # noqa: E402
from compressor.data import load_folder, load_images  # noqa: E402
from compressor.distill import DistillParams, distill, parse_losses  # noqa: E402
from compressor.distill.rd_kd import MACS_SIZE, complexity, train_config  # noqa: E402
from compressor.models import MODELS, CodecAdapter  # noqa: E402
from compressor.threads import resolve_threads  # noqa: E402
from compressor.train import TrainConfig, rd_loss, train  # noqa: E402

KEYS = ("psnr", "ms_ssim", "bpp", "encode_ms", "decode_ms")


def budget(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        max_minutes=args.minutes,
        max_steps=10**9,
        crop=args.crop,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        lr=args.lr,
        threads=args.threads,
        patience=args.patience,
    )


def train_scratch(
    teacher: CodecAdapter, student: CodecAdapter, images: list, cfg: TrainConfig, out: Path
) -> tuple[CodecAdapter, dict[str, Any]]:
    """The distilled student's exact config, random weights, the RD loss, the same budget."""
    torch.manual_seed(cfg.seed)
    scratch = MODELS.get(student.arch).build(student.arch, student.config)
    scratch.finalize()
    result = train(scratch, images, cfg, out, loss_fn=rd_loss(cfg.lmbda), resume=False)
    return scratch.eval(), {"steps": result.steps, "stopped": result.stopped}


def measure(models: dict[str, CodecAdapter], kodak: list) -> dict[str, Any]:
    """compressor.compare of the models (one timed round per image, the order rotating):
    the means of KEYS, and encode / decode ratios and the PSNR delta against the teacher."""
    codecs = {name: TorchCodec(m, name) for name, m in models.items()}
    result = compare(codecs, kodak, 1, estimate=False)
    out: dict[str, Any] = {
        name: {k: res.mean(k) for k in KEYS} for name, res in result.results.items()
    }
    base = out["teacher"]
    for row in out.values():
        row["encode_ratio"] = row["encode_ms"] / base["encode_ms"]
        row["decode_ratio"] = row["decode_ms"] / base["decode_ms"]
        row["psnr_delta_db"] = row["psnr"] - base["psnr"]
    return out


def print_table(results: dict[str, Any], macs: list[dict[str, Any]], threads: int) -> None:
    print(f"\nKodak ({threads} thread(s), latency measured side by side)")
    cols = ("psnr", "psnr_delta_db", "ms_ssim", "bpp", "encode_ms", "decode_ms")
    print(f"{'model':<10}" + "".join(f"{c:>15}" for c in (*cols, "enc ratio", "dec ratio")))
    for name, r in results.items():
        vals = [r[c] for c in cols] + [r["encode_ratio"], r["decode_ratio"]]
        print(f"{name:<10}" + "".join(f"{v:>15.4f}" for v in vals))
    h, w = MACS_SIZE
    print(f"\nMACs at {h}x{w} (student / teacher)")
    for row in macs:
        print(
            f"  {row['component']:<14} {row['macs_teacher'] / 1e6:>10.1f} M -> "
            f"{row['macs_student'] / 1e6:>10.1f} M  ratio {row['macs_ratio']:.3f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--kodak", type=Path, default=REPO.parent / "shared/data/kodak")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/wikipedia-photos")
    ap.add_argument("--minutes", type=float, default=30.0, help="budget of each student")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--losses", default=None, help="e.g. distortion=1,output=1,latent=0.1,rate=1")
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--patience", type=int, default=8)
    ap.add_argument("--images", type=int, default=None, help="first N Kodak images only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-scratch", action="store_true", help="skip the from-scratch student")
    ap.add_argument("--out", type=Path, default=REPO / "exported" / "bench-distill")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(resolve_threads(args.threads, "--threads"))
    args.out.mkdir(parents=True, exist_ok=True)

    teacher = checkpoint.load(args.teacher)
    images = load_folder(args.data, minimum=2)
    fields: dict[str, Any] = {"width": args.width, "train": budget(args)}
    if args.losses:
        fields["losses"] = parse_losses(args.losses)
    params = DistillParams.model_validate(fields)
    cfg = train_config(teacher, params)
    distilled = distill(teacher, images, params, args.out / "distilled.pt", resume=False)
    models: dict[str, CodecAdapter] = {"teacher": teacher, "distilled": distilled.student}
    info: dict[str, Any] = {
        "distilled": {"steps": distilled.train.steps, "stopped": distilled.train.stopped}
    }
    if not args.no_scratch:
        models["scratch"], info["scratch"] = train_scratch(
            teacher, distilled.student, images, cfg, args.out / "scratch.pt"
        )
    kodak = load_images(args.kodak)[: args.images]
    results = measure(models, kodak)
    macs = complexity(teacher, distilled.student)
    print_table(results, macs, args.threads)
    report = {
        "teacher": str(args.teacher),
        "student_config": distilled.student.config,
        "minutes_each": args.minutes,
        "lmbda": cfg.lmbda,
        "losses": params.losses,
        "threads": args.threads,
        "training": info,
        "kodak": results,
        "macs": macs,
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nreport: {args.out / 'report.json'}")


if __name__ == "__main__":
    main()
