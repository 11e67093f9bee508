"""`cli.py prune`: parse, call compressor.prune.prune_model (and the fine-tune), render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from compressor.cli.common import handle_errors
from compressor.errors import RecipeError


def _size(text: str) -> tuple[int, int]:
    h, sep, w = text.lower().partition("x")
    if not sep or not h.isdigit() or not w.isdigit() or int(h) < 64 or int(w) < 64:
        raise RecipeError(f"--report-size {text!r}: expected HxW like 512x768, each >= 64")
    return int(h), int(w)


def build_params(
    method: str, ratio: str, latent: float | None, hyper_latent: float | None, **fields: Any
) -> Any:
    from compressor.prune import PruneParams, parse_ratios

    ratios = parse_ratios(ratio)
    for key, value in (("latent", latent), ("hyper_latent", hyper_latent)):
        if value is not None:
            ratios[key] = value
    given = {k: v for k, v in fields.items() if v is not None}
    return PruneParams.model_validate({"method": method, "ratio": ratios, **given})


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(report: dict[str, Any], quality: dict[str, Any] | None) -> None:
    from compressor.rich_ui import out, table

    rows = [
        [
            r["component"],
            r["params_before"],
            r["params_after"],
            _f(r["macs_before"] and r["macs_before"] / 1e6, ".1f"),
            _f(r["macs_after"] and r["macs_after"] / 1e6, ".1f"),
            _f(r["macs_ratio"], ".3f"),
            _f(r.get("latency_before_ms"), ".1f"),
            _f(r.get("latency_after_ms"), ".1f"),
            _f(r.get("latency_ratio"), ".3f"),
        ]
        for r in report["components"]
    ]
    h, w = report["report_size"]
    out.print(
        table(
            f"{report['method']} pruning of {report['arch']}: MACs at {h}x{w}, "
            f"latency side by side, {report['threads']} thread(s)",
            ["part", "params", "after", "MMAC", "after", "ratio", "ms", "after", "ratio"],
            rows,
        )
    )
    if report["method"] == "unstructured":
        size = report["size_after"]
        out.print(
            f"sparsity {report['sparsity']:.4f} ({report['zeros']} of "
            f"{report['prunable_weights']} prunable weights); stored: dense "
            f"{size['dense_bytes']} B, zlib {size['zlib_bytes']} B, sparse "
            f"{size['sparse_bytes']} B; the prunable weights alone: "
            f"{report['weights_dense_bytes']} B dense, {report['weights_sparse_bytes']} B "
            f"sparse. Note: {report['note']}"
        )
    if quality:
        keys = ["psnr", "ssim", "ms_ssim", "bpp"]
        out.print(
            table(
                "quality against the baseline (real bitstreams)",
                ["", *keys],
                [
                    [name, *(quality[name][k] for k in keys)]
                    for name in ("baseline", "pruned", "delta")
                ],
            )
        )


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("--arch", default=None, help="Model arch, when the checkpoint does not say.")
@click.option(
    "--method",
    type=click.Choice(["structured", "unstructured"]),
    default="structured",
    show_default=True,
)
@click.option(
    "--ratio",
    required=True,
    help="Share to remove per component, e.g. encoder=0.3,decoder=0.3 (encoder, "
    "decoder, hyper_encoder, hyper_decoder, latent, hyper_latent, all), or one number "
    "for all; each in [0, 1).",
)
@click.option("--latent", type=float, default=None, help="Latent channel ratio (structured).")
@click.option("--hyper-latent", type=float, default=None, help="Hyper-latent channel ratio.")
@click.option(
    "--importance",
    type=click.Choice(["l1", "l2", "taylor", "random"]),
    default=None,
    help="Channel ranking [default: l1].",
)
@click.option("--round-to", type=int, default=None, help="Kept channels multiple [default: 8].")
@click.option("--iterative-steps", type=int, default=None, help="Pruning rounds [default: 1].")
@click.option(
    "--scope",
    type=click.Choice(["layer", "global"]),
    default=None,
    help="Unstructured: per layer or one threshold per pool [default: global].",
)
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    default=None,
    help="Images for Taylor importance.",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="Images to measure PSNR / SSIM / MS-SSIM / bpp deltas against the baseline.",
)
@click.option(
    "--finetune",
    "finetune_data",
    type=click.Path(path_type=Path),
    default=None,
    help="Fine-tune on these images after pruning (the train loop).",
)
@click.option("--finetune-steps", type=int, default=None, help="Fine-tune step budget.")
@click.option("--finetune-minutes", type=float, default=None, help="Fine-tune time budget.")
@click.option("--finetune-crop", type=int, default=None, help="Fine-tune crop [default: 256].")
@click.option("--finetune-batch-size", type=int, default=None, help="Fine-tune batch [default: 8].")
@click.option("--lmbda", type=float, default=None, help="RD lambda [default: checkpoint's].")
@click.option(
    "--report-size", default="512x768", show_default=True, help="HxW of the MAC / latency input."
)
@click.option("--latency-repeats", type=int, default=None, help="Timed runs [default: 5].")
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the report as JSON here.",
)
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Pruned checkpoint to write."
)
@handle_errors
def prune(
    model_path: Path,
    arch: str | None,
    method: str,
    ratio: str,
    latent: float | None,
    hyper_latent: float | None,
    calibration: Path | None,
    data: Path | None,
    finetune_data: Path | None,
    finetune_steps: int | None,
    finetune_minutes: float | None,
    finetune_crop: int | None,
    finetune_batch_size: int | None,
    lmbda: float | None,
    report_size: str,
    threads: int | None,
    report_path: Path | None,
    out: Path,
    **fields: Any,
) -> None:
    """Prune a model (structured: channels removed; unstructured: weights zeroed)."""
    params = build_params(
        method, ratio, latent, hyper_latent, lmbda=lmbda, report_size=_size(report_size), **fields
    )
    from compressor.prune.run import run_prune
    from compressor.threads import resolve_threads
    from compressor.torch_threads import torch_threads

    threads = resolve_threads(threads, "--threads")
    with torch_threads(threads):
        result = run_prune(
            model_path,
            params,
            arch=arch,
            calibration=calibration,
            data=data,
            finetune_data=finetune_data,
            finetune_steps=finetune_steps,
            finetune_minutes=finetune_minutes,
            finetune_options={"crop": finetune_crop, "batch_size": finetune_batch_size},
            threads=threads,
            out=out,
            report_path=report_path,
        )
    render(result["report"], result.get("quality"))
    from compressor.rich_ui import out as stdout

    stdout.print(f"wrote {out}")
