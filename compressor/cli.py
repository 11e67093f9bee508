"""Click commands: parse, call the library, render. No logic of its own lives here."""

from __future__ import annotations

import logging

import click

from compressor.cli_common import given, handle_errors, options_from

__all__ = ["given", "handle_errors", "main", "options_from"]
log = logging.getLogger("compressor")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """compressor: prune, quantize, distill, export and validate learned image codecs.

    Exit codes: 0 ok, 1 a validation gate failed, 2 bad input.
    """
    from rich.logging import RichHandler

    from compressor.rich_ui import console

    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(
        level=level, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)]
    )


def _register_commands() -> None:
    # The command modules decorate `main`, so they are imported once it exists.
    from compressor import (  # noqa: F401
        cli_commands,
        cli_deploy,
        cli_distill,
        cli_prune,
        cli_quant,
    )


_register_commands()
