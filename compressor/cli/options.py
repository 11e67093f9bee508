"""Click options that several commands share: one definition (name, type, default) each.

The help text stays a parameter where each command words the option for its own use, so
`--help` reads as before; what is shared is what must not drift apart between commands.
Only click is imported here (like compressor.cli.common): no torch at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def training_io_options(out_help: str, resume_help: str) -> Callable[[F], F]:
    """--data / --out / --resume/--no-resume of the commands that drive the one training loop
    (`train`, `distill`): a folder of training images in, a resumable checkpoint out."""
    data = click.option(
        "--data",
        required=True,
        type=click.Path(path_type=Path),
        help="Folder of training images (a share is held out for early stopping).",
    )
    out = click.option("--out", required=True, type=click.Path(path_type=Path), help=out_help)
    resume = click.option("--resume/--no-resume", default=True, show_default=True, help=resume_help)

    def decorate(fn: F) -> F:
        return data(out(resume(fn)))  # --help lists the outermost first

    return decorate


def images_option(help: str) -> Callable[[F], F]:
    """--data of the commands that measure codecs: a folder, or scikit-image's samples."""
    return click.option("--data", default="skimage", show_default=True, help=help)


def threads_option(help: str) -> Callable[[F], F]:
    """--threads: None means the project's default (compressor.threads.resolve_threads)."""
    return click.option("--threads", type=int, default=None, help=help)


def provider_option(help: str) -> Callable[[F], F]:
    """--provider: the ONNX Runtime execution provider an exported codec runs on."""
    return click.option("--provider", default="cpu", show_default=True, help=help)
