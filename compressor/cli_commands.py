"""The commands of `main`, one function each; each calls a library function and renders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from compressor.cli import given, handle_errors, main, options_from
from compressor.train import TrainConfig


@main.command()
@click.option("--arch", required=True, help="Model arch (see `cli.py models`).")
@click.option("--quality", type=int, default=None, help="Quality level: widths and lambda.")
@click.option("--config", "config_text", default=None, help="Widths, e.g. N=64,M=96.")
@click.option("--init", "init_path", type=click.Path(path_type=Path), default=None,
              help="Start from this checkpoint instead of random weights (fine-tuning).")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Folder of training images (a share is held out for early stopping).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Checkpoint to write (best held-out loss); OUT.resume.pt allows resuming.")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue from OUT.resume.pt when it exists.")
@options_from(TrainConfig)
@handle_errors
def train(arch: str, quality: int | None, config_text: str | None, init_path: Path | None,
          data: Path, out: Path, resume: bool, **kwargs: Any) -> None:
    """Train a model with the rate-distortion loss (or fine-tune one with --init)."""
    from compressor.rich_ui import RichReporter, out as stdout, table
    from compressor.workflows import train_model

    result = train_model(arch=arch, quality=quality, config_text=config_text,
                         init_path=init_path, data=data, out=out, resume=resume,
                         overrides=given(kwargs, TrainConfig), reporter=RichReporter())
    rows = [[h["step"], h["loss"], h["bpp"], h["psnr"], h["lr"]] for h in result.history[-10:]]
    stdout.print(table(f"held-out evaluations (last {len(rows)})",
                       ["step", "loss", "bpp", "PSNR dB", "lr"], rows))
    stdout.print(f"stopped by {result.stopped} after {result.steps} steps; "
                 f"best held-out loss {result.best_val_loss:.4f}; wrote {out}")
