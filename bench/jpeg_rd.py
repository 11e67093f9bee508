"""Learned JPEG quantization tables against the standard ones, on Kodak, at matched bpp.

1. Train the `jpeg` family's two tables at several quality levels (CompressAI's lambda of
   each level; start: the IJG quality of compressor.models.jpeg.INIT_QUALITY) on crops of
   the training photos; checkpoints go to --runs.
2. On every Kodak image: the learned tables' real JPEG files (the family's compress(): Pillow,
   4:2:0, optimized Huffman) against Pillow's standard tables over a quality sweep (same
   options), and WebP; bpp from the file bytes, PSNR / MS-SSIM from compressor.metrics.
3. BD-rate (compressor.metrics.bdrate) of learned vs standard, in PSNR and in MS-SSIM, the
   PSNR gain at each learned point's bpp, a table and a plot (--out/jpeg_rd.png, .json).

    OMP_NUM_THREADS=1 uv run python bench/jpeg_rd.py --out /work/runs/jpeg/report
    OMP_NUM_THREADS=1 uv run python bench/jpeg_rd.py --calibrate   # INIT_QUALITY's numbers
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from compressor import checkpoint  # noqa: E402
from compressor.baselines import PillowCodec, mean_curve, sweep  # noqa: E402
from compressor.data import CropDataset, list_images, load_folder, read_rgb8, to_tensor  # noqa: E402
from compressor.evaluate import measure_image  # noqa: E402
from compressor.metrics.bdrate import bd_rate  # noqa: E402
from compressor.models.compressai_zoo import LAMBDAS_MSE  # noqa: E402
from compressor.models.jpeg import JpegAdapter  # noqa: E402
from compressor.train import TrainConfig, train  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
STANDARD_QUALITIES = (3, 5, 8, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 85, 90, 95, 98)


class LearnedJpeg:
    """The family's real bitstream path as a Codec: compress() writes the JPEG file."""

    def __init__(self, model: JpegAdapter, name: str) -> None:
        self.model, self.name = model, name

    def encode(self, rgb8: np.ndarray) -> bytes:
        if rgb8.shape[0] % 16 or rgb8.shape[1] % 16:
            raise ValueError("this benchmark codes whole MCUs (Kodak is 768x512)")
        return self.model.compress(to_tensor(rgb8))

    def decode(self, data: bytes) -> np.ndarray:
        from compressor.data import to_rgb8_array

        return to_rgb8_array(self.model.decompress(data))


def calibrate(args: argparse.Namespace) -> dict[int, int]:
    """Per level, the IJG quality of lowest mean RD loss (lambda*255^2*MSE + bpp, real files)
    on centre crops of the training photos: the start of training, and the point to beat."""
    from compressor.metrics import bpp_from_bytes, psnr

    crops = CropDataset(load_folder(args.data, minimum=2), 256, train=False)
    images = [
        (crops[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        for i in range(len(crops))
    ]
    qualities = range(2, 100)
    stats = {}  # quality -> (mean MSE, mean bpp); MSE only: SSIM is not in the loss
    for q in qualities:
        codec = PillowCodec("jpeg", q)
        pairs = [(codec.encode(im), im) for im in images]
        mse = [255**2 * 10 ** (-psnr(im, codec.decode(b)) / 10) for b, im in pairs]
        bpp = [bpp_from_bytes(len(b), *im.shape[:2]) for b, im in pairs]
        stats[q] = (float(np.mean(mse)) / 255**2, float(np.mean(bpp)))
    return {
        level: min(qualities, key=lambda q: lmbda * 255**2 * stats[q][0] + stats[q][1])
        for level, lmbda in LAMBDAS_MSE.items()
    }


def train_level(level: int, args: argparse.Namespace, images: list[np.ndarray]) -> JpegAdapter:
    path = args.runs / f"jpeg-q{level}.pt"
    if args.reuse and path.exists():
        return cast(JpegAdapter, checkpoint.load(path, "jpeg"))
    torch.manual_seed(args.seed)
    model = JpegAdapter.build("jpeg", JpegAdapter.default_config("jpeg", level))
    cfg = TrainConfig(
        lmbda=LAMBDAS_MSE[level],
        crop=args.crop,
        batch_size=args.batch_size,
        lr=args.lr,
        aux_lr=args.lr,
        max_steps=args.steps,
        max_minutes=args.minutes_each,
        eval_every=args.eval_every,
        patience=args.patience,
        seed=args.seed,
        threads=args.threads,
    )
    t0 = time.perf_counter()
    result = train(model, images, cfg, path, resume=False, meta={"quality": level})
    first, best = result.history[0]["loss"], result.best_val_loss
    print(
        f"q{level}: {result.steps} steps in {time.perf_counter() - t0:.0f} s ({result.stopped}); "
        f"held-out RD loss {first:.4f} -> {best:.4f}; tables {model.qtables()[0][:8]}..."
    )
    model.eval()
    return model


def evaluate_learned(models: dict[int, JpegAdapter], kodak: list[tuple[str, np.ndarray]]) -> list:
    rows = []
    for level, model in models.items():
        codec = LearnedJpeg(model, f"learned-q{level}")
        for name, rgb8 in kodak:
            rows.append({"codec": "learned", "quality": level, **measure_image(codec, name, rgb8)})
    return rows


def init_rows(models: dict[int, JpegAdapter], kodak: list[tuple[str, np.ndarray]]) -> list:
    """The standard tables each level started from, on Kodak (the untrained model)."""
    qualities = [int(m.config["init_quality"]) for m in models.values()]
    return sweep(kodak, "jpeg", qualities)


def matched(points: list[dict[str, float]], anchor: list[dict[str, float]], key: str) -> list:
    """Each point's gain in `key` over the anchor curve interpolated at the same bpp."""
    bpp = [p["bpp"] for p in anchor]
    return [
        p[key] - float(np.interp(p["bpp"], bpp, [a[key] for a in anchor]))
        if bpp[0] <= p["bpp"] <= bpp[-1]
        else float("nan")
        for p in points
    ]


def bd(points: list[dict[str, float]], anchor: list[dict[str, float]], key: str) -> float:
    """BD-rate over the anchor points inside the learned curve's quality range (+1 each side)."""
    lo, hi = min(p[key] for p in points), max(p[key] for p in points)
    idx = [i for i, a in enumerate(anchor) if lo <= a[key] <= hi]
    idx = list(range(max(idx[0] - 1, 0), min(idx[-1] + 2, len(anchor)))) if idx else []
    sel = [anchor[i] for i in idx]
    return bd_rate(
        [a["bpp"] for a in sel],
        [a[key] for a in sel],
        [p["bpp"] for p in points],
        [p[key] for p in points],
    )


def plot(curves: dict[str, list[dict[str, float]]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, pts in curves.items():
        style = {"learned": "o-", "standard": "s--", "webp": "^:"}.get(name, ".-")
        for ax, key in zip(axes, ("psnr", "ms_ssim"), strict=True):
            ax.plot([p["bpp"] for p in pts], [p[key] for p in pts], style, label=name, ms=4)
    for ax, label in zip(axes, ("PSNR (dB)", "MS-SSIM"), strict=True):
        ax.set_xlabel("bpp (real files)")
        ax.set_ylabel(label)
        ax.set_xlim(0, 2.5)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("Kodak (24 images): learned vs standard JPEG tables")
    path = out / "jpeg_rd.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def print_table(learned: list, init: list, anchor: list) -> None:
    d_psnr, d_ms = matched(learned, anchor, "psnr"), matched(learned, anchor, "ms_ssim")
    print(
        f"{'level':>5} {'bpp':>7} {'PSNR':>7} {'MS-SSIM':>8} | {'init bpp':>8} {'init PSNR':>9}"
        f" | {'dPSNR@bpp':>9} {'dMS-SSIM@bpp':>12}"
    )
    for p, i, dp, dm in zip(learned, init, d_psnr, d_ms, strict=True):
        print(
            f"{p['quality']:>5} {p['bpp']:7.4f} {p['psnr']:7.3f} {p['ms_ssim']:8.5f} | "
            f"{i['bpp']:8.4f} {i['psnr']:9.3f} | {dp:+9.3f} {dm:+12.5f}"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.calibrate:
        print("IJG quality of lowest RD loss per level:", calibrate(args))
        return {}
    args.runs.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    images = load_folder(args.data, minimum=2)
    models = {level: train_level(level, args, images) for level in args.levels}
    kodak = [(p.name, read_rgb8(p)) for p in list_images(args.kodak)]
    learned = mean_curve(evaluate_learned(models, kodak))
    init = mean_curve(init_rows(models, kodak))
    init = sorted(init, key=lambda p: p["quality"])
    standard = mean_curve(sweep(kodak, "jpeg", STANDARD_QUALITIES))
    webp = mean_curve(sweep(kodak, "webp", STANDARD_QUALITIES))
    result = {
        "levels": args.levels,
        "learned": learned,
        "init": init,
        "standard": standard,
        "webp": webp,
        "bd_rate_psnr": bd(learned, standard, "psnr"),
        "bd_rate_ms_ssim": bd(learned, standard, "ms_ssim"),
        "tables": {lv: m.qtables() for lv, m in models.items()},
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    print_table(learned, init, standard)
    print(
        "BD-rate learned vs standard tables (Kodak, 24 images): "
        f"PSNR {result['bd_rate_psnr']:+.2f}%, MS-SSIM {result['bd_rate_ms_ssim']:+.2f}%"
    )
    png = plot({"learned": learned, "standard": standard, "webp": webp}, args.out)
    (args.out / "jpeg_rd.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {png} and {args.out / 'jpeg_rd.json'}")
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, default=SHARED / "wikipedia-photos")
    p.add_argument("--kodak", type=Path, default=SHARED / "kodak")
    p.add_argument("--runs", type=Path, default=Path("/work/runs/jpeg"))
    p.add_argument("--out", type=Path, default=Path("/work/runs/jpeg/report"))
    p.add_argument("--levels", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--minutes-each", type=float, default=1.2)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--patience", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reuse", action="store_true", help="load checkpoints already in --runs")
    p.add_argument("--calibrate", action="store_true", help="only print INIT_QUALITY's numbers")
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
