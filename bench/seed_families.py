"""The seed-family table (HiFiC, Toderici's RNN, any checkpoint): structured pruning per
component plus INT8, measured on Kodak side by side.

Rows: every combination of a pruning ratio in {0, 0.3} over the model's prunable components
(the names of compressor.prune.config.COMPONENTS that model.components() has; all zero is the
baseline), run in torch; plus `onnx-fp32` (the exported graphs in ONNX Runtime) and
`onnx-int8` (the ort-static quantizer's QDQ graphs, calibrated on training photos, never on
Kodak), whose time ratio is against onnx-fp32. Columns (bench/prune_components.py's table):
total encode + decode time over the images, its ratio to the row's baseline (every codec is
timed in one pass, interleaved image by image, so machine noise hits all alike), PSNR, SSIM,
MS-SSIM, bpp and the average compressed size in bytes (real bitstreams). With
--finetune-minutes every pruned row is fine-tuned with that budget (the train loop) and
measured again.

    uv run python bench/seed_families.py --model /work/runs/rnn/rnn-small.pt \
        --kodak ../shared/data/kodak --images 6 --out seed.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.prune_components import (  # noqa: E402
    add_ratios,
    finetune_rows,
    load_model,
    measure,
    table,
)
from compressor.codec import Codec, TorchCodec, open_codec  # noqa: E402
from compressor.data import load_folder, load_images  # noqa: E402
from compressor.export import export_model  # noqa: E402
from compressor.models import CodecAdapter  # noqa: E402
from compressor.prune import PruneParams, prune_model  # noqa: E402
from compressor.prune.config import COMPONENTS  # noqa: E402
from compressor.quant import QUANTIZERS, Calibration, QuantParams  # noqa: E402
from compressor.threads import resolve_threads  # noqa: E402

log = logging.getLogger("bench.seed_families")
RATIOS = (0.0, 0.3)
BASELINE, FP32, INT8 = "baseline", "onnx-fp32", "onnx-int8"


def prunable(model: CodecAdapter) -> list[str]:
    return [c for c in COMPONENTS if c in model.components()]


def row_name(ratios: dict[str, float]) -> str:
    if not any(ratios.values()):
        return BASELINE
    return "-".join(f"{c}{r:g}" for c, r in ratios.items())


def prune_rows(
    base: CodecAdapter, args: argparse.Namespace
) -> tuple[dict[str, CodecAdapter], dict[str, Any]]:
    """Every non-zero combination, pruned from the same baseline; and each row's MAC ratio."""
    comps = prunable(base)
    models, macs = {}, {}
    for combo in itertools.product(RATIOS, repeat=len(comps)):
        ratios = dict(zip(comps, combo, strict=True))
        if not any(combo):
            continue
        params = PruneParams(
            ratio={c: r for c, r in ratios.items() if r},
            round_to=args.round_to,
            latency_repeats=0,
            report_size=(256, 256),
        )
        name = row_name(ratios)
        models[name], report = prune_model(base, params)
        macs[name] = report["total"]["macs_ratio"]
        log.info("pruned %s: MACs x%.3f, widths %s", name, macs[name], models[name].config)
    return models, macs


def onnx_codecs(model: CodecAdapter, work: Path, args: argparse.Namespace) -> dict[str, Codec]:
    """FP32 export and its INT8 copy (ort-static), both as ONNX Runtime codecs."""
    fp32 = export_model(model, work / "fp32")
    calib = load_folder(args.calibration, minimum=1)
    params = QuantParams(
        calibration=Calibration(images=args.calibration_images, crop=args.calibration_crop)
    )
    QUANTIZERS.get("ort-static")(fp32, work / "int8", params, calib, args.threads)
    return {
        FP32: open_codec(fp32, threads=args.threads, name=FP32),
        INT8: open_codec(work / "int8", threads=args.threads, name=INT8),
    }


def run_table(
    base: CodecAdapter,
    pruned: dict[str, CodecAdapter],
    extra: dict[str, Codec],
    images: list,
    repeats: int,
) -> dict[str, dict[str, Any]]:
    codecs: dict[str, Any] = {BASELINE: TorchCodec(base, BASELINE)}
    codecs |= {n: TorchCodec(m, n) for n, m in pruned.items()} | extra
    results = measure(codecs, images, repeats)
    torch_rows = {n: r for n, r in results.items() if n not in extra}
    add_ratios(torch_rows, BASELINE)
    if FP32 in results:
        add_ratios({n: results[n] for n in extra}, FP32)
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint (any family)")
    ap.add_argument("--kodak", default=str(REPO.parent / "shared/data/kodak"))
    ap.add_argument("--images", type=int, default=None, help="first K Kodak images only")
    ap.add_argument("--repeats", type=int, default=1, help="timed passes per image")
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--no-int8", action="store_true", help="skip the ONNX FP32 / INT8 rows")
    ap.add_argument("--calibration", default=str(REPO.parent / "shared/data/wikipedia-photos"))
    ap.add_argument("--calibration-images", type=int, default=8)
    ap.add_argument("--calibration-crop", type=int, default=256)
    ap.add_argument("--finetune-minutes", type=float, default=0.0, help="per pruned row")
    ap.add_argument("--finetune-steps", type=int, default=None)
    ap.add_argument("--finetune-data", default=str(REPO.parent / "shared/data/wikipedia-photos"))
    ap.add_argument("--finetune-crop", type=int, default=256)
    ap.add_argument("--finetune-batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write all numbers as JSON")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(resolve_threads(args.threads, "--threads"))
    images = load_images(args.kodak)[: args.images]
    base = load_model(args.model)
    pruned, macs = prune_rows(base, args)
    out: dict[str, Any] = {"macs_ratio": macs}
    with tempfile.TemporaryDirectory(prefix="seed.") as tmp:
        extra = {} if args.no_int8 else onnx_codecs(base, Path(tmp), args)
        out["before_finetune"] = run_table(base, pruned, extra, images, args.repeats)
    where = f"{len(images)} Kodak images, {args.threads} thread(s), {base.arch} {base.config}"
    note = f"ratio: torch rows vs {BASELINE}, ONNX rows vs {FP32}; MAC ratios {macs}"
    print(table(f"{where}\n{note}", out["before_finetune"]), flush=True)
    if args.finetune_minutes or args.finetune_steps:
        with tempfile.TemporaryDirectory(prefix="seed-ft.") as tmp:
            tuned = finetune_rows(pruned, args, Path(tmp))
        out["after_finetune"] = run_table(base, tuned, {}, images, args.repeats)
        print(
            table(f"after fine-tuning ({args.finetune_minutes:g} min each)", out["after_finetune"])
        )
    if args.out:
        args.out.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **out}, indent=2)
        )


if __name__ == "__main__":
    main()
