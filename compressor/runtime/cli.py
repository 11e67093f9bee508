"""`encode` / `decode` commands, torch-free: `python -m compressor.runtime encode ...`.

The same command objects are registered on the main CLI (compressor.cli.deploy), so
`cli.py encode` and `cli.py decode` behave identically; this module exists so a deployment
with only onnxruntime, numpy, constriction, pillow, click and pydantic can run them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from compressor.cli.common import handle_errors
from compressor.errors import BitstreamError, CheckpointError
from compressor.fsutil import write_bytes

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)

#: the largest bitstream file decode reads (33 Mpx at 24 bpp is about 100 MB)
MAX_FILE_BYTES = 256 << 20
#: where decode looks for the export of a file's model when --codec is not given
CODECS_ENV = "COMPRESSOR_CODECS"
DEFAULT_ROOTS = (Path("exported"),)
_MAX_MANIFESTS = 10_000


def read_bitstream(path: Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise BitstreamError(f"bitstream {path} does not exist or is not a file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise BitstreamError(f"{path} is {size} bytes; a bitstream has at most {MAX_FILE_BYTES}")
    return path.read_bytes()


def search_roots() -> list[Path]:
    extra = [Path(p) for p in os.environ.get(CODECS_ENV, "").split(os.pathsep) if p]
    return [*extra, *DEFAULT_ROOTS]


def _manifests(roots: list[Path]) -> Iterator[Path]:
    seen = 0
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("manifest.json")):
            seen += 1
            if seen > _MAX_MANIFESTS:
                return
            yield path.parent


def find_codec(model_id: bytes, roots: list[Path]) -> Path:
    """The export folder whose model id starts with the file's 8-byte id."""
    from compressor.runtime import manifest as mf

    wanted = model_id.hex()
    for folder in _manifests(roots):
        try:
            found = mf.read(folder)
        except CheckpointError:
            continue
        if found.model_id.startswith(wanted):
            return folder
    where = ", ".join(str(r) for r in roots)
    raise CheckpointError(
        f"no export of model {wanted} found under {where}; pass --codec DIR (or list folders "
        f"in ${CODECS_ENV})"
    )


provider_option = click.option(
    "--provider",
    default="cpu",
    show_default=True,
    help="ONNX Runtime execution provider: cpu, cuda, tensorrt, openvino, dnnl or a full name.",
)
threads_option = click.option(
    "--threads", type=int, default=None, help="ONNX Runtime intra-op threads [default: all]."
)


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option(
    "--codec", "codec_dir", required=True, type=click.Path(path_type=Path),
    help="Exported codec folder (from `cli.py export`).",
)  # fmt: skip
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Bitstream file.")
@provider_option
@threads_option
@handle_errors
def encode(image: Path, codec_dir: Path, out: Path, provider: str, threads: int | None) -> None:
    """Encode IMAGE to a bitstream file with an exported codec (no torch)."""
    from compressor.runtime import load_codec, read_rgb8

    rgb8 = read_rgb8(image)  # the cheap input check first
    codec = load_codec(codec_dir, provider=provider, threads=threads)
    start = time.perf_counter()
    data = codec.encode(rgb8)
    ms = (time.perf_counter() - start) * 1e3
    write_bytes(out, data)
    h, w = rgb8.shape[:2]
    click.echo(
        f"{image} ({w}x{h}) -> {out}: {len(data)} bytes, {len(data) * 8 / (h * w):.4f} bpp, "
        f"{ms:.1f} ms ({codec.manifest.arch}, {codec.provider})"
    )


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Image to write.")
@click.option(
    "--codec", "codec_dir", default=None, type=click.Path(path_type=Path),
    help=f"Exported codec folder [default: the export of the file's model under ${CODECS_ENV} "
    "or ./exported].",
)  # fmt: skip
@provider_option
@threads_option
@handle_errors
def decode(
    file: Path, out: Path, codec_dir: Path | None, provider: str, threads: int | None
) -> None:
    """Decode a bitstream FILE to an image (PNG, BMP, PPM or TIFF by suffix; no torch)."""
    from compressor.runtime import container, load_codec, write_rgb8
    from compressor.runtime.image import output_format

    output_format(out)
    data = read_bitstream(file)
    header, _ = container.unpack(data)  # magic, version and CRC before any codec search
    folder = codec_dir if codec_dir is not None else find_codec(header.model_id, search_roots())
    codec = load_codec(folder, provider=provider, threads=threads)
    start = time.perf_counter()
    rgb8 = codec.decode(data)
    ms = (time.perf_counter() - start) * 1e3
    write_rgb8(out, rgb8)
    click.echo(f"{file} -> {out} ({header.width}x{header.height}), {ms:.1f} ms")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The deployable codec, without torch: encode and decode with an exported folder."""


main.add_command(encode)
main.add_command(decode)
