"""`encode` / `decode` commands, torch-free: `python -m compressor.runtime encode ...`.

The same command objects are registered on the main CLI (compressor.cli.deploy), so
`cli.py encode` and `cli.py decode` behave identically; this module exists so a deployment
with only onnxruntime, numpy, constriction, pillow, click and pydantic can run them.

Outputs: an existing file is never replaced without --overwrite, a directory is refused, a
missing parent folder is created; the file appears whole or not at all (fsutil.atomic_file).
Both commands refuse images over --max-pixels (default 4096 x 4096) before decoding pixels
or bitstream, so a forged file or a decompression bomb costs milliseconds, not gigabytes.
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
from compressor.errors import BitstreamError, CheckpointError, DataError
from compressor.fsutil import check_output, write_bytes
from compressor.runtime.container import DEFAULT_MAX_PIXELS, MAX_PIXELS

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
    help="ONNX Runtime execution provider: cpu, cuda, tensorrt, dnnl or a full name; "
    "openvino selects the OpenVINO runtime.",
)
runtime_option = click.option(
    "--runtime",
    type=click.Choice(["ort", "openvino", "auto"]),
    default=None,
    help="What runs the graphs: ONNX Runtime or OpenVINO [default: ort, openvino with "
    "--provider openvino]; auto: each graph on the faster of the two here, timed when the "
    "codec loads (about a second a graph; the float h_s stays on ort). Decode a float-path "
    "file with the runtime that encoded it.",
)
precision_option = click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16"]),
    default="fp32",
    show_default=True,
    help="Inference precision; bf16 needs --runtime openvino and a CPU with native BF16 "
    "(faster, slightly lower quality).",
)
threads_option = click.option(
    "--threads",
    type=int,
    default=None,
    help="Intra-op threads of the runtime [default: all cores available].",
)
overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace the output file if it exists (refused otherwise)."
)


def max_pixels_option(what: str) -> Callable[[F], F]:
    return click.option(
        "--max-pixels",
        type=click.IntRange(1, MAX_PIXELS),
        default=DEFAULT_MAX_PIXELS,
        show_default=True,
        help=f"Refuse {what} larger than this many pixels (a bound on memory and time).",
    )


def codec_options(what: str) -> Callable[[F], F]:
    """The options encode and decode share: what runs the codec, the output guard, and the
    size bound on `what` (the images or the files declaring them)."""
    # not compressor.cli.options: the torch-free wheel ships only compressor.cli.common
    options = (provider_option, runtime_option, precision_option, threads_option, overwrite_option)

    def decorate(fn: F) -> F:
        for option in reversed((*options, max_pixels_option(what))):  # --help: outermost first
            fn = option(fn)
        return fn

    return decorate


def write_output(out: Path, write: Callable[[], object]) -> None:
    """Run an atomic write; file-system refusals become one-line errors (exit 2)."""
    try:
        write()
    except FileExistsError:  # created by someone else while we worked
        raise DataError(f"output {out} exists; pass --overwrite to replace it") from None
    except OSError as e:
        raise DataError(f"cannot write {out} ({e.strerror or e})") from None


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option(
    "--codec", "codec_dir", required=True, type=click.Path(path_type=Path),
    help="Exported codec folder (from `cli.py export`).",
)  # fmt: skip
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Bitstream file.")
@codec_options("images")
@handle_errors
def encode(
    image: Path,
    codec_dir: Path,
    out: Path,
    provider: str,
    runtime: str | None,
    precision: str,
    threads: int | None,
    overwrite: bool,
    max_pixels: int,
) -> None:
    """Encode IMAGE to a bitstream file with an exported codec (no torch)."""
    from compressor.runtime import load_codec, read_rgb8

    check_output(out, overwrite)
    rgb8 = read_rgb8(image, max_pixels=max_pixels)  # the cheap input check first
    codec = load_codec(
        codec_dir, provider=provider, threads=threads, runtime=runtime, precision=precision
    )
    start = time.perf_counter()
    data = codec.encode(rgb8)
    ms = (time.perf_counter() - start) * 1e3
    write_output(out, lambda: write_bytes(out, data, overwrite=overwrite))
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
@codec_options("files declaring images")
@handle_errors
def decode(
    file: Path,
    out: Path,
    codec_dir: Path | None,
    provider: str,
    runtime: str | None,
    precision: str,
    threads: int | None,
    overwrite: bool,
    max_pixels: int,
) -> None:
    """Decode a bitstream FILE to an image (PNG, BMP, PPM or TIFF by suffix; no torch)."""
    from compressor.runtime import container, load_codec, write_rgb8
    from compressor.runtime.image import output_format

    output_format(out)
    check_output(out, overwrite)
    data = read_bitstream(file)
    header, _ = container.unpack(data)  # magic, version and CRC before any codec search
    container.check_pixels(header.height, header.width, max_pixels)  # before any model loads
    folder = codec_dir if codec_dir is not None else find_codec(header.model_id, search_roots())
    codec = load_codec(
        folder, provider=provider, threads=threads, runtime=runtime, precision=precision
    )
    start = time.perf_counter()
    rgb8 = codec.decode(data, max_pixels=max_pixels)
    ms = (time.perf_counter() - start) * 1e3
    write_output(out, lambda: write_rgb8(out, rgb8, overwrite=overwrite))
    click.echo(f"{file} -> {out} ({header.width}x{header.height}), {ms:.1f} ms")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The deployable codec, without torch: encode and decode with an exported folder."""


main.add_command(encode)
main.add_command(decode)
