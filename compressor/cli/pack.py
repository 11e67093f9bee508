"""`cli.py pack`: store a checkpoint's weights in half precision (how the bundled family ships)."""

from __future__ import annotations

from pathlib import Path

import click

from compressor.cli.common import handle_errors
from compressor.fsutil import check_output


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Checkpoint to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
@handle_errors
def pack(model: Path, out: Path, overwrite: bool) -> None:
    """Write MODEL (a checkpoint) with its float32 weights stored as float16.

    The file is about half the size and loads everywhere a checkpoint does (weights are cast
    back to float32, entropy tables rebuilt from them). The rounding changes results slightly:
    measure it with `cli.py evaluate` on both files (the README gives the bundled family's)."""
    from compressor import checkpoint
    from compressor.rich_ui import out as stdout

    check_output(out, overwrite)  # before any weights load: a directory, an existing file
    loaded = checkpoint.load(model)
    checkpoint.save(loaded, out, half=True)
    packed = checkpoint.load(out)
    full, half = loaded.state_dict(), packed.state_dict()
    worst = max(
        float((full[k] - half[k]).abs().max() / full[k].abs().max().clamp_min(1e-12))
        for k in full
        if full[k].is_floating_point() and full[k].numel() and full[k].shape == half[k].shape
    )
    size = model.stat().st_size / 2**20, out.stat().st_size / 2**20
    stdout.print(
        f"{model} ({size[0]:.1f} MiB) -> {out} ({size[1]:.1f} MiB, float16 weights); "
        f"largest change {worst:.2e} of a tensor's range"
    )
