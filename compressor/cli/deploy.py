"""`cli.py export` (torch side); `encode` / `decode` are the torch-free runtime's own commands
(compressor.runtime.cli), registered on the main CLI by name."""

from __future__ import annotations

from pathlib import Path

import click

from compressor.cli.common import handle_errors
from compressor.errors import RecipeError

PARITY_KEYS = (("parity_max_abs_diff", "max |Δ|"), ("parity_max_rel_diff", "max rel |Δ|"))


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Export folder to write."
)
@click.option("--arch", default=None, help="Arch of a foreign checkpoint (guessed if left out).")
@click.option(
    "--opset", type=click.IntRange(17, 20), default=17, show_default=True, help="ONNX opset."
)
@click.option(
    "--rewrite/--no-rewrite",
    default=True,
    show_default=True,
    help="Transposed convolutions as Conv + PixelShuffle (exact; quantizes to INT8 well).",
)
@click.option(
    "--gdn-in-phases",
    is_flag=True,
    help="Run each IGDN on the phase convolutions of the deconvolution before it (exact; "
    "ONNX Runtime's INT8 decoder ~20% faster, OpenVINO's ~7% slower; needs --rewrite).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing export folder.")
@handle_errors
def export(
    model: Path,
    out: Path,
    arch: str | None,
    opset: int,
    rewrite: bool,
    gdn_in_phases: bool,
    overwrite: bool,
) -> None:
    """Export MODEL (a checkpoint) to ONNX graphs + entropy tables + manifest.json."""
    from compressor import checkpoint
    from compressor.export import export_model
    from compressor.rich_ui import out as stdout
    from compressor.rich_ui import table
    from compressor.runtime import manifest as mf

    check_export_target(out, overwrite)  # before the (slow) load, like every input error
    if gdn_in_phases and not rewrite:
        raise RecipeError(
            "--gdn-in-phases moves the IGDN onto the phase convolutions of the rewritten "
            "decoder: it needs --rewrite"
        )
    adapter = checkpoint.load(model, arch)
    folder = export_model(
        adapter, out, rewrite=rewrite, opset=opset, overwrite=overwrite,
        gdn_in_phases=gdn_in_phases,
    )  # fmt: skip
    found = mf.read(folder)
    # graph exports state the largest absolute difference; rnn's step graphs a relative one
    kind, label = next(((k, lab) for k, lab in PARITY_KEYS if k in found.extra), (None, "max |Δ|"))
    diffs = found.extra.get(kind, {}) if kind else {}
    rows = [
        [name, (folder / name).stat().st_size, diffs.get(name.removesuffix(".onnx"))]
        for name in found.files
    ]
    stdout.print(table(f"export of {found.arch} ({found.kind})", ["file", "bytes", label], rows))
    stdout.print(f"model id {found.model_id[:16]}, opset {found.opset}; wrote {folder}")


def check_export_target(out: Path, overwrite: bool) -> None:
    """--out may be new, empty, or (with --overwrite) an earlier export; never a user's file
    or a folder of other files."""
    from compressor.errors import CheckpointError
    from compressor.runtime import manifest as mf

    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir():
        raise RecipeError(f"--out {out} is a file; an export is a folder")
    try:
        mf.read(out)
    except CheckpointError:
        raise RecipeError(
            f"--out {out} is a folder of other files (no export manifest.json); refusing to "
            "replace it: choose a new or empty folder"
        ) from None
    if not overwrite:
        raise RecipeError(f"--out {out} holds an export; pass --overwrite or choose another folder")
