"""Which component to prune? Structured pruning per component, measured on Kodak.

Rows: encoder / decoder / hyper (hyper_encoder + hyper_decoder) ratios in {0, 0.3}, all
combinations (the all-zero row is the baseline), plus 0.5 on encoder + decoder. Columns: total
encode + decode time over the images, its ratio to the baseline (all rows timed in one run,
by compressor.compare: per image, rounds of baseline, row 1, row 2, ... in rotating order,
so machine noise hits all alike),
PSNR, SSIM, MS-SSIM, bpp and the average compressed size in bytes (real bitstreams). With
--finetune-minutes > 0 every pruned row is fine-tuned with that budget (the train loop) and
measured again.

    uv run python bench/prune_components.py --model compressor/assets/bmshj2018-hyperprior-q2.pt \
        --kodak ../shared/data/kodak --finetune-minutes 20 --rows e0.3-d0.3-h0 --out r.json
    uv run python bench/prune_components.py --model random:128,192 --images 4   # timing only
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from compressor import checkpoint  # noqa: E402
from compressor.codec import Codec, TorchCodec  # noqa: E402
from compressor.compare import compare  # noqa: E402
from compressor.data import load_folder, load_images  # noqa: E402
from compressor.models import MODELS, CodecAdapter  # noqa: E402
from compressor.prune import PruneParams, prune_model  # noqa: E402
from compressor.prune.finetune import finetune, finetune_config  # noqa: E402
from compressor.threads import resolve_threads  # noqa: E402

log = logging.getLogger("bench.prune_components")
RATIOS = [(e, d, h) for e in (0.0, 0.3) for d in (0.0, 0.3) for h in (0.0, 0.3)]
RATIOS.append((0.5, 0.5, 0.0))


def row_name(e: float, d: float, h: float) -> str:
    return f"e{e:g}-d{d:g}-h{h:g}"


def ratio_dict(e: float, d: float, h: float) -> dict[str, float]:
    out = {"encoder": e, "decoder": d, "hyper_encoder": h, "hyper_decoder": h}
    return {k: v for k, v in out.items() if v > 0}


def load_model(spec: str) -> CodecAdapter:
    """A checkpoint path, or random:N,M for a randomly initialised hyperprior (timing only)."""
    if spec.startswith("random:"):
        n, m = (int(v) for v in spec.removeprefix("random:").split(","))
        torch.manual_seed(0)
        model = MODELS.get("bmshj2018-hyperprior").build("bmshj2018-hyperprior", {"N": n, "M": m})
        model.finalize()
        return model.eval()
    return checkpoint.load(Path(spec))


def measure(
    codecs: Mapping[str, Codec], images: list[tuple[str, np.ndarray]], repeats: int
) -> dict[str, dict[str, Any]]:
    """compressor.compare of every codec on every image; per codec: the total of the median
    encode + decode times over the images, and the mean quality and size."""
    result = compare(codecs, images, repeats, estimate=False)
    return {
        name: {
            "time_s": sum(r["encode_ms"] + r["decode_ms"] for r in res.rows) / 1000,
            **{k: res.mean(k) for k in ("psnr", "ssim", "ms_ssim", "bpp", "bytes")},
        }
        for name, res in result.results.items()
    }


def add_ratios(results: dict[str, dict[str, Any]], baseline: str) -> None:
    base = results[baseline]
    for res in results.values():
        res["time_ratio"] = res["time_s"] / base["time_s"]
        res["psnr_delta"] = res["psnr"] - base["psnr"]
        res["bpp_relative"] = res["bpp"] / base["bpp"] - 1


def table(title: str, results: dict[str, dict[str, Any]]) -> str:
    head = (
        "| row | enc+dec s | ratio | PSNR dB | dPSNR | SSIM | MS-SSIM | bpp | dbpp % "
        "| bytes |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [f"### {title}", "", head]
    for name, r in results.items():
        ms = "-" if r["ms_ssim"] is None else f"{r['ms_ssim']:.4f}"
        lines.append(
            f"| {name} | {r['time_s']:.2f} | {r['time_ratio']:.3f} | {r['psnr']:.2f} | "
            f"{r['psnr_delta']:+.2f} | {r['ssim']:.4f} | {ms} | {r['bpp']:.4f} | "
            f"{100 * r['bpp_relative']:+.1f} | {r['bytes']:.0f} |"
        )
    return "\n".join(lines)


def prune_rows(
    base: CodecAdapter, names: list[str], args: argparse.Namespace
) -> dict[str, CodecAdapter]:
    out = {}
    for e, d, h in RATIOS:
        name = row_name(e, d, h)
        if name not in names or not (e or d or h):
            continue
        params = PruneParams(
            ratio=ratio_dict(e, d, h),
            importance=args.importance,
            round_to=args.round_to,
            latency_repeats=0,
            report_size=(256, 256),
        )
        out[name], _ = prune_model(base, params)
        log.info("pruned %s: widths %s", name, out[name].config.get("widths"))
    return out


def finetune_rows(
    models: dict[str, CodecAdapter], args: argparse.Namespace, workdir: Path
) -> dict[str, CodecAdapter]:
    images = load_folder(args.finetune_data, minimum=2)
    tuned = {}
    for name, model in models.items():
        cfg = finetune_config(
            model,
            max_steps=args.finetune_steps,
            max_minutes=args.finetune_minutes,
            crop=args.finetune_crop,
            batch_size=args.finetune_batch_size,
            threads=args.threads,
        )
        result = finetune(model, images, workdir / f"{name}.pt", cfg)
        log.info("fine-tuned %s: %d steps (%s)", name, result.steps, result.stopped)
        tuned[name] = checkpoint.load(workdir / f"{name}.pt")
    return tuned


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model",
        default=str(REPO / "compressor/assets/bmshj2018-hyperprior-q2.pt"),
        help="checkpoint, or random:N,M (a random hyperprior: timing only)",
    )
    ap.add_argument("--kodak", default=str(REPO.parent / "shared/data/kodak"))
    ap.add_argument("--images", type=int, default=None, help="first K Kodak images only")
    ap.add_argument("--rows", default=None, help="comma list of row names (default: all)")
    ap.add_argument("--repeats", type=int, default=1, help="timed passes per image")
    ap.add_argument("--importance", default="l1", choices=["l1", "l2", "random"])
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--finetune-minutes", type=float, default=0.0)
    ap.add_argument("--finetune-steps", type=int, default=None)
    ap.add_argument("--finetune-data", default=str(REPO.parent / "shared/data/wikipedia-photos"))
    ap.add_argument("--finetune-crop", type=int, default=256)
    ap.add_argument("--finetune-batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write all numbers as JSON")
    ap.add_argument(
        "--keep", type=Path, default=None, help="keep the fine-tuned checkpoints in this folder"
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(resolve_threads(args.threads, "--threads"))
    images = load_images(args.kodak)[: args.images]
    base = load_model(args.model)
    names = args.rows.split(",") if args.rows else [row_name(*r) for r in RATIOS]
    baseline = row_name(0, 0, 0)
    pruned = prune_rows(base, names, args)
    results = {
        "before_finetune": measure(
            {baseline: TorchCodec(base, baseline)}
            | {n: TorchCodec(m, n) for n, m in pruned.items()},
            images,
            args.repeats,
        )
    }
    add_ratios(results["before_finetune"], baseline)
    print(
        table(
            f"before fine-tuning ({len(images)} Kodak images, {args.threads} thread(s))",
            results["before_finetune"],
        ),
        flush=True,
    )
    if args.finetune_minutes or args.finetune_steps:
        with tempfile.TemporaryDirectory() as tmp:
            tuned = finetune_rows(pruned, args, args.keep or Path(tmp))
        codecs = {baseline: TorchCodec(base, baseline)} | {
            n: TorchCodec(m, n) for n, m in tuned.items()
        }
        results["after_finetune"] = measure(codecs, images, args.repeats)
        add_ratios(results["after_finetune"], baseline)
        print(
            table(
                f"after fine-tuning ({args.finetune_minutes:g} min / "
                f"{args.finetune_steps} steps each)",
                results["after_finetune"],
            )
        )
    if args.out:
        args.out.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **results}, indent=2)
        )


if __name__ == "__main__":
    main()
