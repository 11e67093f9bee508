"""`cli.py distill`: parse, call compressor.distill.distill, render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from compressor.cli.common import given, handle_errors, options_from
from compressor.cli.options import training_io_options
from compressor.train import TrainConfig


def build_params(
    student: str | None,
    width: float | None,
    config_text: str | None,
    init: str | None,
    losses: str | None,
    train_options: dict[str, Any],
) -> Any:
    from compressor.distill import DistillParams, parse_losses
    from compressor.errors import RecipeError
    from compressor.training import parse_config

    fields: dict[str, Any] = {"student": student, "width": width, "init": init}
    if config_text:
        fields["config"] = parse_config(config_text)
    if losses:
        fields["losses"] = parse_losses(losses)
    fields["train"] = given(train_options, TrainConfig)
    from pydantic import ValidationError

    try:
        return DistillParams.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:  # the message names the option the way a recipe would
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RecipeError(f"option {where}: {first['msg'].removeprefix('Value error, ')}") from None


def render(report: dict[str, Any], out: Path) -> None:
    from compressor.rich_ui import out as stdout
    from compressor.rich_ui import table

    h, w = report["macs_size"]
    rows = [
        [
            r["component"],
            r["params_teacher"],
            r["params_student"],
            (r["macs_teacher"] or 0) / 1e6,
            (r["macs_student"] or 0) / 1e6,
            r["macs_ratio"],
        ]
        for r in report["components"]
    ]
    stdout.print(
        table(
            f"{report['teacher']['arch']} {report['teacher']['config']} -> "
            f"{report['student']['arch']} {report['student']['config']} (MACs at {h}x{w})",
            ["part", "params", "student", "MMAC", "student", "ratio"],
            rows,
        )
    )
    last = report["last_eval"]
    terms = ", ".join(f"{k[:-5]} {v:.4g}" for k, v in last.items() if k.endswith("_term"))
    stdout.print(
        f"stopped by {report['stopped']} after {report['steps']} steps; last held-out: "
        f"PSNR {last.get('psnr', float('nan')):.2f} dB, bpp {last.get('bpp', float('nan')):.4f}"
        f" ({terms}); wrote {out}"
    )


@click.command()
@click.option(
    "--teacher", required=True, type=click.Path(path_type=Path), help="Trained model checkpoint."
)
@click.option("--arch", default=None, help="Teacher arch, when the checkpoint does not say.")
@click.option(
    "--student", default=None, help="Student arch (same family) [default: the teacher's arch]."
)
@click.option(
    "--width", type=float, default=None, help="Student widths = teacher's x WIDTH [default: 0.5]."
)
@click.option(
    "--config", "config_text", default=None, help="Explicit student widths, e.g. N=64,M=96."
)
@click.option(
    "--init",
    type=click.Choice(["auto", "teacher", "random"]),
    default=None,
    help="Student start: the teacher's strongest channels, or random [default: auto].",
)
@click.option(
    "--losses",
    default=None,
    help="Loss weights, e.g. distortion=1,output=1,latent=0.1,rate=1 (terms: distortion, "
    "output, latent, rate; omitted = 0) [default: that example].",
)
@training_io_options(
    out_help="Student checkpoint to write; OUT's .distill.resume.pt allows resuming.",
    resume_help="Continue an interrupted run from its resume file.",
)
@options_from(TrainConfig)
@handle_errors
def distill(
    teacher: Path,
    arch: str | None,
    student: str | None,
    width: float | None,
    config_text: str | None,
    init: str | None,
    losses: str | None,
    data: Path,
    out: Path,
    resume: bool,
    **train_options: Any,
) -> None:
    """Distil a trained TEACHER into a narrower student of the same family."""
    from compressor import checkpoint
    from compressor.data import load_folder
    from compressor.distill import distill as run_distill
    from compressor.rich_ui import RichReporter

    params = build_params(student, width, config_text, init, losses, train_options)
    model = checkpoint.load(teacher, arch)
    images = load_folder(data, minimum=2)
    result = run_distill(
        model, images, params, out, resume=resume, reporter=RichReporter(), meta={"data": str(data)}
    )
    render(result.report, out)
