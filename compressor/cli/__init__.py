"""The command line: click commands that parse, call the library and render (rich).

No logic of its own lives here, and library code never imports this package. Commands load
lazily (compressor.cli.common.LazyGroup): `cli.py encode` never imports torch.
"""

from __future__ import annotations

import logging

import click

from compressor.cli.common import LazyGroup
from compressor.threads import set_wait_policy

__all__ = ["main"]

# Before any command module imports torch: OpenMP reads its wait policy once, when it loads
# (click imports a lazy command before it runs the group's callback).
set_wait_policy()

#: command name -> "module:attribute"
COMMANDS = {
    "train": "compressor.cli.commands:train",
    "evaluate": "compressor.cli.commands:evaluate",
    "validate": "compressor.cli.commands:validate",
    "run": "compressor.cli.commands:run_recipe",
    "models": "compressor.cli.commands:list_models",
    "prune": "compressor.cli.prune:prune",
    "quantize": "compressor.cli.quantize:quantize",
    "distill": "compressor.cli.distill:distill",
    "export": "compressor.cli.deploy:export",
    "pack": "compressor.cli.pack:pack",
    "search": "compressor.cli.search:search",
    "encode": "compressor.runtime.cli:encode",
    "decode": "compressor.runtime.cli:decode",
}


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """compressor: prune, quantize, distill, export and validate learned image codecs.

    Exit codes: 0 ok, 1 a validation gate failed, 2 bad input, 130 interrupted.
    """
    from rich.logging import RichHandler

    from compressor.rich_ui import console

    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(
        level=level, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)]
    )
